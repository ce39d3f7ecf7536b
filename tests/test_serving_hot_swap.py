"""Hot-swapping adapters under load, on a real MLflow registry with real tiny-model adapters."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from mlflow.tracking import MlflowClient
from support.serving import (
    make_empty_db,
    prepare_registry,
    register_adapter,
    save_tiny_adapter,
    serving_settings,
    store_path,
)

from evolora.vocabulary import CHAMPION, REGISTERED_MODEL_NAME
from serving.app import create_app
from serving.local_server import running_server

pytestmark = pytest.mark.server

VERSIONS = 4
SWAPS = 10
CLIENTS = 4


def test_champion_swaps_under_load_and_a_tampered_version_is_refused(
        tmp_path: Path, tiny_model_dir: Path) -> None:
    # One local user without auth: limits high enough for four clients in a loop (a
    # client's next request may arrive before its last one is counted out).
    settings = serving_settings(tmp_path, tiny_model_dir, poll_interval_s=3600,
                                rate_limit_per_minute=1_000_000,
                                token_limit_per_minute=1_000_000_000, max_concurrent_per_key=64)
    client: MlflowClient = prepare_registry(settings, make_empty_db(tmp_path))
    versions = [str(register_adapter(client, save_tiny_adapter(tiny_model_dir,
                                                           tmp_path / f"adapter-{i}", seed=i),
                                 f"member-{i}").version) for i in range(VERSIONS)]
    client.set_registered_model_alias(REGISTERED_MODEL_NAME, CHAMPION, versions[0])

    app = create_app(settings)
    with running_server(app) as url:
        assert httpx.get(f"{url}/readyz").json()["version"] == versions[0]
        # The default engine: every swap below is a blue/green llama.cpp instance change.
        assert app.state.services.runtime.engine_name == "llamacpp"
        results: list[tuple[int, str]] = []
        failures: list[str] = []
        stop = threading.Event()

        def load() -> None:
            with httpx.Client(base_url=url, timeout=60) as http:
                while not stop.is_set():
                    try:
                        reply = http.post("/v1/chat/completions", json={
                            "messages": [{"role": "user", "content": "Count to three."}],
                            "max_tokens": 6})
                    except httpx.HTTPError as exc:
                        failures.append(repr(exc))
                        continue
                    results.append((reply.status_code, reply.headers.get("x-evolora-adapter",
                                                                          "")))

        threads = [threading.Thread(target=load, daemon=True) for _ in range(CLIENTS)]
        for thread in threads:
            thread.start()
        reloads: list[dict[str, Any]] = []
        try:
            with httpx.Client(base_url=url, timeout=60) as admin:
                for swap in range(SWAPS):
                    target = versions[(swap + 1) % VERSIONS]
                    client.set_registered_model_alias(REGISTERED_MODEL_NAME, CHAMPION, target)
                    reload = admin.post("/admin/reload").json()
                    assert reload["version"] == target and reload["changed"], reload
                    reloads.append(reload)
                    time.sleep(0.2)  # let requests start on the new adapter
        finally:
            stop.set()
        for thread in threads:
            thread.join(60)

        codes = Counter(code for code, _ in results)
        assert not failures and set(codes) == {200}, (codes, failures[:3])
        served = Counter(adapter for _, adapter in results)
        assert set(served) <= {f"v{v}" for v in versions}
        assert len(served) >= 2  # requests really ran on several champions
        blocking_ms = [r["swap_blocking_ms"] for r in reloads]
        print(json.dumps({"swaps": SWAPS, "requests": len(results), "failed": 0,
                          "served_by": dict(served), "swap_blocking_ms": blocking_ms,
                          "swap_blocking_ms_max": max(blocking_ms)}))
        # Retired adapters are detached once idle: at most the champion and stragglers stay.
        metrics = httpx.get(f"{url}/metrics").text
        # The first load at start-up (base -> champion) counts as a swap too.
        assert f"evolora_adapter_swaps_total {float(SWAPS + 1)}" in metrics

        # A tampered version is refused; the current champion keeps serving.
        current = reloads[-1]["version"]
        tampered = register_adapter(client, save_tiny_adapter(
            tiny_model_dir, tmp_path / "adapter-evil", seed=99), "evil")
        tampered_version = str(tampered.version)
        weights = store_path(tampered) / "adapter_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-4] + b"\x00\x00\x00\x00")
        client.set_registered_model_alias(REGISTERED_MODEL_NAME, CHAMPION, tampered_version)
        with httpx.Client(base_url=url, timeout=60) as http:
            refused = http.post("/admin/reload").json()
            assert refused["version"] == current and not refused["changed"]
            assert tampered_version in refused["refused"] and "refused" in refused["error"]
            reply = http.post("/v1/chat/completions", json={
                "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
            assert reply.status_code == 200
            assert reply.headers["x-evolora-adapter"] == f"v{current}"
            # Asking for the tampered version by name is refused too, not served.
            by_name = http.post("/v1/chat/completions", json={
                "model": f"v{tampered_version}",
                "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
            assert by_name.status_code == 404
            # An older good version loads on demand beside the champion; base stays reachable.
            old = http.post("/v1/chat/completions", json={
                "model": f"v{versions[0]}" if current != versions[0] else f"v{versions[1]}",
                "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
            assert old.status_code == 200 and old.json()["evolora_adapter"].startswith("v")
            base = http.post("/v1/chat/completions", json={
                "model": "base", "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 3})
            assert base.headers["x-evolora-adapter"] == "base"
        metrics = httpx.get(f"{url}/metrics").text
        assert 'evolora_adapter_refused_total{reason="checksum"} 1.0' in metrics
        assert f'evolora_serving_adapter_version {float(current)}' in metrics
