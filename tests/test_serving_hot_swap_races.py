"""Hot-swap races against the real service (uvicorn on 127.0.0.1, the tiny model, llama.cpp,
a real MLflow registry): streams across swaps under 4 clients, leases that cannot leak,
refusals retried with backoff, and stale adapter copies swept at start."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from mlflow.tracking import MlflowClient
from support.serving import (
    make_empty_db,
    prepare_registry,
    register_adapter,
    save_tiny_adapter,
    serving_settings,
    store_path,
)

from evolora.paths import PROJECT_ROOT
from evolora.scratch import Scratch, claim_scratch
from evolora.vocabulary import CHAMPION, REGISTERED_MODEL_NAME
from serving.app import create_app
from serving.local_server import running_server

pytestmark = pytest.mark.server

VERSIONS = 3
SWAPS = 4
RETRY_S = 1.0  # serving.refused_retry_s: the first backoff
HEALTHZ_BOUND_S = 1.0
STORY = [{"role": "user", "content": "Tell me a story."}]
# A process that claims a scratch folder under each root, writes a half-done copy, and
# waits to be killed (as a service killed mid-download would be).
CLAIM_AND_WAIT = """
import sys, time
from pathlib import Path
from evolora.scratch import claim_scratch
for root in sys.argv[1:]:
    (claim_scratch(Path(root)).path / "v1-0123abcd.gguf").write_bytes(b"half")
print("claimed", flush=True)
time.sleep(600)
"""


@dataclass
class Swapping:
    url: str
    app: FastAPI
    client: MlflowClient
    versions: list[str]
    root: Path
    stale: list[Path]
    live: Scratch
    model_dir: Path

    @property
    def loader(self) -> Any:
        return self.app.state.services.loader

    @property
    def runtime(self) -> Any:
        return self.app.state.services.runtime

    def set_champion(self, version: str) -> dict[str, Any]:
        self.client.set_registered_model_alias(REGISTERED_MODEL_NAME, CHAMPION, version)
        return httpx.post(f"{self.url}/admin/reload", timeout=60).json()

    def wait_for(self, condition: Any, timeout_s: float = 15.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True


def kill_a_claiming_process(roots: list[Path]) -> list[Path]:
    """Start a process that claims a scratch folder under each root, then SIGKILL it; the
    owner folders it left."""
    before = {root: set(root.iterdir()) if root.exists() else set() for root in roots}
    child = subprocess.Popen([sys.executable, "-c", CLAIM_AND_WAIT, *map(str, roots)],
                             stdout=subprocess.PIPE, text=True, cwd=PROJECT_ROOT,
                             env={"PYTHONPATH": str(PROJECT_ROOT), "PATH": "/usr/bin:/bin"})
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "claimed"
    finally:
        child.kill()
        child.wait(10)
    left = [path for root in roots for path in set(root.iterdir()) - before[root]
            if path.is_dir()]
    assert len(left) == len(roots) and all((p / "v1-0123abcd.gguf").is_file() for p in left)
    return left


@pytest.fixture(scope="module")
def swapping(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
             ) -> Iterator[Swapping]:
    """Auth off (the local user may load any version), limits out of the way, v1 champion;
    stale copies of a killed process and of the old layout under the data dir."""
    root = tmp_path_factory.mktemp("races")
    settings = serving_settings(root, tiny_model_dir, poll_interval_s=3600,
                                rate_limit_per_minute=1_000_000,
                                token_limit_per_minute=1_000_000_000, max_concurrent_per_key=64,
                                refused_retry_s=RETRY_S, refused_retry_max_s=4 * RETRY_S)
    client = prepare_registry(settings, make_empty_db(root))
    versions = [str(register_adapter(client, save_tiny_adapter(
        tiny_model_dir, root / f"adapter-{i}", seed=i), f"member-{i}").version)
        for i in range(VERSIONS)]
    client.set_registered_model_alias(REGISTERED_MODEL_NAME, CHAMPION, versions[0])

    engine_root = settings.paths.data_dir / "engine" / "adapters"
    downloads_root = settings.paths.data_dir / "serving" / "adapters"
    stale = kill_a_claiming_process([engine_root, downloads_root])
    legacy = [engine_root / "v9-deadbeef.gguf", engine_root / "v9-deadbeef.gguf.sha256",
              downloads_root / "v9-deadbeef", downloads_root / ".evolora-registry-x1y2"]
    for path in legacy:
        if path.suffix:
            path.write_bytes(b"old")
        else:
            path.mkdir()
            (path / "adapter_model.safetensors").write_bytes(b"old")
    live = claim_scratch(engine_root)  # another live process's folder (an evaluation)
    (live.path / "candidate.gguf").write_bytes(b"in use")

    app = create_app(settings)
    with running_server(app) as url:
        yield Swapping(url, app, client, versions, root, [*stale, *legacy], live,
                       tiny_model_dir)
        own = [app.state.services.loader.work_dir, app.state.services.runtime.work_dir]
    live.release()
    # A clean stop removes the service's own copies too.
    assert not any(path.exists() for path in own), own


def test_stale_adapter_copies_are_swept_at_start(swapping: Swapping) -> None:
    assert [path for path in swapping.stale if path.exists()] == []
    # A live owner's folder is never touched, nor is the service's own.
    assert (swapping.live.path / "candidate.gguf").read_bytes() == b"in use"
    for own, root in ((swapping.loader.work_dir, "serving"), (swapping.runtime.work_dir,
                                                              "engine")):
        assert own.is_dir() and own.parent.parent.name == root, own
    champion = swapping.loader.serving
    assert champion == (f"v{swapping.versions[0]}", swapping.versions[0])
    # The champion's download lives in the service's own folder.
    assert Path(swapping.runtime.adapters[champion[0]]).parent == swapping.loader.work_dir


def stream(http: httpx.Client, model: str) -> tuple[int, str, bool, str]:
    """(status, adapter header, ended with [DONE], text) of one streamed raw completion."""
    body = {"model": model, "evolora_raw": True, "messages": STORY, "max_tokens": 8,
            "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        lines = [line for line in response.iter_lines() if line]
    text = "".join(json.loads(line[6:])["choices"][0]["delta"].get("content", "")
                   for line in lines if line.startswith("data: {") and '"choices": [{' in line)
    return (response.status_code, response.headers.get("x-evolora-adapter", ""),
            bool(lines) and lines[-1] == "data: [DONE]", text)


def test_streams_survive_swaps_under_four_clients(swapping: Swapping) -> None:
    """Two clients stream from `champion`, two ask by name for the version the last swap
    retired (so they ask for it while it is retired, while it is being detached, and after,
    when it loads again): every stream is whole, and /healthz answers within a second
    throughout (on-demand downloads and loads happen off the event loop; on the event loop,
    as before, /healthz waited up to 18 s)."""
    versions = swapping.versions
    retired = [versions[-1]]  # the version the by-name clients ask for; unattached at first
    results: list[tuple[str, tuple[int, str, bool, str]]] = []
    failures: list[str] = []
    health: list[float] = []
    stop = threading.Event()

    def client(use_retired: bool) -> None:
        with httpx.Client(base_url=swapping.url, timeout=60) as http:
            while not stop.is_set():
                model = f"v{retired[-1]}" if use_retired else "champion"
                try:
                    results.append((model, stream(http, model)))
                except httpx.HTTPError as exc:
                    failures.append(f"{model}: {exc!r}")

    def poll_health() -> None:
        with httpx.Client(base_url=swapping.url, timeout=30) as http:
            while not stop.wait(0.1):
                started = time.perf_counter()
                ok = http.get("/healthz").status_code == 200
                health.append(time.perf_counter() - started if ok else float("inf"))

    threads = [threading.Thread(target=client, args=(index >= 2,)) for index in range(4)]
    threads.append(threading.Thread(target=poll_health))
    for thread in threads:
        thread.start()
    try:
        for swap in range(SWAPS):
            before = swapping.loader.serving[1]
            reload = swapping.set_champion(versions[(swap + 1) % VERSIONS])
            assert reload["changed"] and reload["error"] is None, reload
            retired.append(before)  # asked for by name now: retired, maybe being detached
            time.sleep(0.6)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)

    bad = [(model, result[:3]) for model, result in results
           if result[0] != 200 or not result[2]
           or (model != "champion" and result[1] != model)]
    assert not failures and not bad, (failures[:3], bad[:3])
    asked_retired = [model for model, _ in results if model != "champion"]
    assert len(set(asked_retired)) >= 2, asked_retired  # several retired versions were hit
    assert {result[1] for _, result in results} <= {f"v{v}" for v in versions}
    assert max(health) < HEALTHZ_BOUND_S, sorted(health)[-3:]
    assert swapping.wait_for(lambda: swapping.loader.leases() == {})


def test_a_stream_failing_before_its_first_piece_leaks_no_lease(swapping: Swapping) -> None:
    """A stream the engine refuses (over the model's own context) is a 400, not a cut 200;
    it and a client leaving while its version loads release their leases, so a retired
    champion is detached."""
    champion = swapping.loader.serving[1]
    too_long = {"model": "champion", "evolora_raw": True, "stream": True, "max_tokens": 4,
                "messages": [{"role": "user", "content": "word " * 1100}]}
    with httpx.Client(base_url=swapping.url, timeout=60) as http:
        for _ in range(3):
            refused = http.post("/v1/chat/completions", json=too_long)
            assert refused.status_code == 400, refused.text[:300]
            assert refused.json()["error"]["code"] == "context_length_exceeded"
    assert swapping.loader.leases() == {}

    # A client that gives up while its (unattached) version downloads and loads.
    fresh = str(register_adapter(swapping.client, save_tiny_adapter(
        swapping.model_dir, swapping.root / "adapter-fresh",
        seed=11), "fresh").version)
    with suppress(httpx.TimeoutException), \
            httpx.Client(base_url=swapping.url, timeout=0.05) as impatient:
        impatient.post("/v1/chat/completions", json={
            "model": f"v{fresh}", "evolora_raw": True, "stream": True, "messages": STORY,
            "max_tokens": 4})
    assert swapping.wait_for(lambda: f"v{fresh}" in swapping.runtime.adapters)
    assert swapping.wait_for(lambda: swapping.loader.leases() == {}), swapping.loader.leases()

    other = next(v for v in swapping.versions if v != champion)
    assert swapping.set_champion(other)["changed"]
    # No lease holds the old champion: it is detached (its llama.cpp instance gone).
    assert swapping.wait_for(lambda: f"v{champion}" not in swapping.runtime.adapters)


def refused_count(swapping: Swapping, reason: str) -> float:
    for line in httpx.get(f"{swapping.url}/metrics").text.splitlines():
        if line.startswith(f'evolora_adapter_refused_total{{reason="{reason}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_a_refused_version_is_retried_with_backoff(swapping: Swapping) -> None:
    """One transient failure (the artifact store copy missing for a while) refuses the
    version for RETRY_S, the next for twice that; once the copy is back it loads."""
    version = register_adapter(swapping.client, save_tiny_adapter(
        swapping.model_dir, swapping.root / "adapter-flaky",
        seed=21), "flaky")
    number, artifacts = str(version.version), store_path(version)
    away = artifacts.with_name(artifacts.name + ".away")
    before = swapping.loader.serving[1]
    artifacts.rename(away)
    try:
        first = swapping.set_champion(number)
        assert not first["changed"] and first["version"] == before
        assert "1 failed attempt;" in first["refused"][number], first
        assert refused_count(swapping, "download") == 1
        # Within the backoff: refused without another try, by the poller and by name.
        again = swapping.set_champion(number)
        assert "was refused" in again["error"] and "next try in" in again["error"]
        by_name = httpx.post(f"{swapping.url}/v1/chat/completions", timeout=60, json={
            "model": f"v{number}", "evolora_raw": True, "messages": STORY, "max_tokens": 2})
        assert by_name.status_code == 404 and "was refused" in by_name.json()["detail"]
        assert refused_count(swapping, "download") == 1
        time.sleep(RETRY_S + 0.1)
        second = swapping.set_champion(number)  # tried again, fails again: twice the wait
        assert not second["changed"] and "2 failed attempts; next try in 2 s" \
            in second["refused"][number], second
        assert refused_count(swapping, "download") == 2
    finally:
        away.rename(artifacts)
    time.sleep(2 * RETRY_S + 0.1)
    loaded = swapping.set_champion(number)
    assert loaded["changed"] and loaded["version"] == number and loaded["error"] is None
    assert number not in loaded["refused"]  # success forgets the failures
    reply = httpx.post(f"{swapping.url}/v1/chat/completions", timeout=60, json={
        "model": "champion", "evolora_raw": True, "messages": STORY, "max_tokens": 2})
    assert reply.status_code == 200 and reply.headers["x-evolora-adapter"] == f"v{number}"
