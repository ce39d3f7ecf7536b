"""Recovery in the service: a generation past serving.generation_timeout_s is cancelled and
answered 504 (its llama.cpp slot freed), and SIGTERM during a long generation stops the
process within shutdown_grace_s + 10 s.

The service runs as `evolora serve` in a subprocess, on the packaged SmolLM2 GGUF (real
speed, so 1,500 tokens take far longer than the limits here) with the tiny model folder's
tokenizer (the same SmolLM2 tokenizer).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from evolora.models import PACKAGED_MODELS
from evolora.paths import PROJECT_ROOT

pytestmark = pytest.mark.server

GENERATION_TIMEOUT_S = 5
SHUTDOWN_GRACE_S = 1
STOP_DEADLINE_S = SHUTDOWN_GRACE_S + 10
LONG = {"model": "base", "max_tokens": 1500, "temperature": 0,
        "messages": [{"role": "user", "content": "Count from 1 to 5000, separated by commas: "
                      "1, 2, 3,"}]}


def test_a_long_generation_times_out_and_sigterm_stops_within_the_deadline(
        tmp_path: Path, tiny_model_dir: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVOLORA_")}
    env.update({
        "PYTHONPATH": str(PROJECT_ROOT),
        "EVOLORA_MODEL__BASE": str(tiny_model_dir),
        "EVOLORA_MODEL__GGUF": str(PACKAGED_MODELS["smollm2-135m"].gguf_path()),
        "EVOLORA_MODEL__MAX_NEW_TOKENS": "1500",
        "EVOLORA_PATHS__DATA_DIR": str(tmp_path / "data"),
        "EVOLORA_PATHS__MLRUNS_DIR": str(tmp_path / "mlruns"),
        "EVOLORA_SERVING__PORT": str(port),
        "EVOLORA_SERVING__PARALLEL_SLOTS": "1",  # a slot left busy would block the next call
        "EVOLORA_SERVING__GENERATION_TIMEOUT_S": str(GENERATION_TIMEOUT_S),
        "EVOLORA_SERVING__SHUTDOWN_GRACE_S": str(SHUTDOWN_GRACE_S),
    })
    log_path = tmp_path / "service.log"
    url = f"http://127.0.0.1:{port}"
    with log_path.open("w") as log_file:
        service = subprocess.Popen([sys.executable, "-m", "cli", "serve", "-c", "tiny"],
                                   env=env, cwd=PROJECT_ROOT, stdout=log_file,
                                   stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert service.poll() is None, log_path.read_text()[-3000:]
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the service did not get ready"
            time.sleep(0.3)

        # 1. The time limit: 504, and the one slot is free again at once.
        started = time.monotonic()
        timed_out = httpx.post(f"{url}/v1/chat/completions", json=LONG, timeout=120)
        assert timed_out.status_code == 504, timed_out.text
        assert timed_out.json()["error"]["code"] == "generation_timeout"
        assert "serving.generation_timeout_s" in timed_out.json()["error"]["message"]
        assert time.monotonic() - started < GENERATION_TIMEOUT_S + 30
        short = httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
            **LONG, "max_tokens": 4})
        assert short.status_code == 200, short.text
        metrics = httpx.get(f"{url}/metrics").text
        assert "evolora_generation_timeouts_total 1.0" in metrics

        # 2. SIGTERM while a long generation runs.
        answer: dict[str, object] = {}

        def ask() -> None:
            try:
                answer["status"] = httpx.post(f"{url}/v1/chat/completions", json=LONG,
                                              timeout=120).status_code
            except httpx.HTTPError as exc:
                answer["status"] = type(exc).__name__

        asking = threading.Thread(target=ask)
        asking.start()
        time.sleep(1.5)
        assert service.poll() is None
        stop_sent = time.monotonic()
        service.send_signal(signal.SIGTERM)
        service.wait(STOP_DEADLINE_S + 20)
        took = time.monotonic() - stop_sent
        asking.join(30)
        print(f"\nSIGTERM during a generation: stopped in {took:.1f} s "
              f"(deadline {STOP_DEADLINE_S} s), the request got {answer.get('status')}")
        assert took < STOP_DEADLINE_S
        log = log_path.read_text()
        # The shutdown cancelled it, not the time limit (which fired once, in part 1).
        assert "timeout graceful shutdown exceeded" in log
        assert log.count("engine.generation_timeout") == 1
        assert answer["status"] != 200
    finally:
        if service.poll() is None:
            service.kill()
            service.wait()
