"""`evolora up` as a user runs it: every component supervised and healthy, the Prefect UI's
Run button (a flow run of the on-demand deployment created through the API) running a real
tiny cycle on the worker, a backup taken while the service answers, and kill -9 healed.

One platform for the module (bringing it up costs ~30 s); the tests run in file order: the
cycle the trigger test runs makes the champion the backup test carries over.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import pytest

from evolora.paths import PROJECT_ROOT
from evolora.settings import Settings, load_settings

pytestmark = pytest.mark.server

TRIGGER_TIMEOUT_S = 600


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Platform:
    env: dict[str, str]
    settings: Settings
    up_report: dict[str, Any]
    root: Path

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cli", *args], env=self.env,
                              cwd=PROJECT_ROOT, capture_output=True, text=True, check=check,
                              timeout=300)

    def status(self) -> dict[str, Any]:
        return json.loads(self.cli("status", "-c", "tiny", "--json", check=False).stdout)

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.settings.platform.prefect_port}/api"

    @property
    def service(self) -> str:
        return f"http://127.0.0.1:{self.settings.serving.port}"


def platform_env(root: Path, model_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVOLORA_")}
    env.update({
        "PYTHONPATH": str(PROJECT_ROOT),
        "EVOLORA_MODEL__BASE": str(model_dir),
        "EVOLORA_PATHS__DATA_DIR": str(root / "data"),
        "EVOLORA_PATHS__MLRUNS_DIR": str(root / "mlruns"),
        "EVOLORA_PLATFORM__PREFECT_PORT": str(free_port()),
        "EVOLORA_PLATFORM__MLFLOW_PORT": str(free_port()),
        "EVOLORA_SERVING__PORT": str(free_port()),
        # The cheapest real cycle: two members, no generation, the GA policy.
        "EVOLORA_EVOLUTION__GENERATIONS": "0",
        "EVOLORA_EVOLUTION__USE_AGENTS": "false",
    })
    return env


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
             ) -> Iterator[Platform]:
    root = tmp_path_factory.mktemp("plat")
    env = platform_env(root, tiny_model_dir)
    with mock.patch.dict(os.environ, env, clear=True):
        settings = load_settings("tiny")
    started = time.monotonic()
    up = subprocess.run([sys.executable, "-m", "cli", "up", "-c", "tiny", "--json"], env=env,
                        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=400)
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        report = json.loads(up.stdout)
        print(f"\nevolora up: healthy in {time.monotonic() - started:.1f} s")
        yield Platform(env, settings, report, root)
    finally:
        subprocess.run([sys.executable, "-m", "cli", "down", "-c", "tiny"], env=env,
                       cwd=PROJECT_ROOT, capture_output=True, timeout=300)


def test_up_reports_every_component_healthy_and_the_nightly_schedule(platform: Platform
                                                                      ) -> None:
    report = platform.up_report
    assert report["healthy"] is True
    by_name = {c["name"]: c for c in report["components"]}
    assert set(by_name) == {"prefect-server", "prefect-worker", "mlflow", "service"}
    assert all(c["state"] == "RUNNING" and c["pid"] for c in by_name.values())
    assert Path(by_name["service"]["log"]).is_file()
    # `status` says the same from a new process, and reads the schedule back from the API.
    status = platform.status()
    assert status["healthy"] is True
    deployments = {d["name"]: d for d in status["deployments"]}
    nightly = deployments["evolora-cycle/nightly"]
    assert nightly["schedules"] == [{"cron": "0 3 * * *", "timezone": "UTC", "active": True}]
    next_run = datetime.fromisoformat(nightly["next_run"].replace("Z", "+00:00"))
    now = datetime.now(timezone.utc)
    assert now < next_run <= now + timedelta(days=1)
    assert (next_run.hour, next_run.minute) == (3, 0)
    assert deployments["evolora-cycle/on-demand"]["work_pool"] == "evolora-local"


def test_the_ui_run_button_runs_a_cycle_on_the_worker(platform: Platform) -> None:
    from mlflow.tracking import MlflowClient

    from evolora.vocabulary import CHAMPION
    from tasks.records import CycleSummary

    deployment = httpx.get(f"{platform.api}/deployments/name/evolora-cycle/on-demand").json()
    # What the UI's "Run" (custom run, the tiny config) sends.
    created = httpx.post(f"{platform.api}/deployments/{deployment['id']}/create_flow_run",
                         json={"parameters": {"config": "tiny", "new": True}}, timeout=30)
    assert created.status_code == 201, created.text
    run_id, started = created.json()["id"], time.monotonic()
    state = None
    while time.monotonic() - started < TRIGGER_TIMEOUT_S:
        state = httpx.get(f"{platform.api}/flow_runs/{run_id}").json()["state"]
        if state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            break
        time.sleep(2)
    print(f"\non-demand flow run: {state and state['type']} in "
          f"{time.monotonic() - started:.0f} s")
    assert state is not None and state["type"] == "COMPLETED", state

    [journal] = (platform.root / "data" / "cycles").glob("*/state.json")
    record = json.loads(journal.read_text())
    assert record["status"] == "done"
    summary = CycleSummary.model_validate(record["summary"])
    client = MlflowClient(tracking_uri=platform.settings.paths.resolved_tracking_uri)
    experiment = client.get_experiment_by_name("evolora")
    runs = client.search_runs([experiment.experiment_id],
                              f"tags.`evolora.cycle` = '{summary.cycle_id}'")
    assert any(r.data.tags.get("evolora.step") == "cycle" for r in runs)
    assert len(runs) >= 4  # the parent, data, trainings, evaluations
    # The MLflow UI's server sees the same runs.
    ui = httpx.post(f"http://127.0.0.1:{platform.settings.platform.mlflow_port}"
                    "/api/2.0/mlflow/runs/search",
                    json={"experiment_ids": [experiment.experiment_id]}, timeout=30).json()
    assert {r.info.run_id for r in runs} <= {r["info"]["run_id"] for r in ui["runs"]}
    # The registry changed as the gate decided: the first cycle's challenger is champion.
    champion = client.get_model_version_by_alias("evolora-adapter", CHAMPION) \
        if summary.promoted else None
    if summary.promoted:
        assert str(champion.version) == summary.registry_version
    else:
        assert summary.gate_reasons
    assert summary.promoted, summary.gate_reasons  # an empty registry admits the first


def test_a_backup_taken_while_serving_restores_the_champion_and_the_memories(
        platform: Platform, tmp_path: Path) -> None:
    import threading

    from serving.app import create_app
    from serving.local_server import running_server
    from storage.store import Store

    platform.cli("keys", "create", "ops-test", "--user", "local", "--add-to-user")
    run = httpx.post(f"{platform.service}/v1/agent/runs", timeout=120,
                     json={"question": "My favourite number is 4117. What is 3 + 4?"})
    assert run.status_code == 200, run.text
    session = run.json()["session_id"]
    memories = httpx.get(f"{platform.service}/v1/memories").json()["data"]
    assert memories
    ready = httpx.get(f"{platform.service}/readyz").json()
    assert ready["version"] is not None  # the champion the trigger test promoted
    keys_before = sorted(k.name for k in Store.from_settings(platform.settings).list_keys())

    # Requests keep coming while the backup is taken.
    answered: list[int] = []
    stop = threading.Event()

    def keep_asking() -> None:
        while not stop.is_set():
            answered.append(httpx.post(f"{platform.service}/v1/agent/runs", timeout=120, json={
                "question": "What is 2 + 2?", "session_id": session}).status_code)

    asking = threading.Thread(target=keep_asking)
    asking.start()
    try:
        time.sleep(1)
        archive = tmp_path / "evolora-backup.tar.gz"
        created = platform.cli("backup", "create", str(archive), "-c", "tiny", "--json")
    finally:
        stop.set()
        asking.join(120)
    assert answered and set(answered) == {200}
    assert json.loads(created.stdout)["files"] > 5

    restored_env = {**platform.env,
                    "EVOLORA_PATHS__DATA_DIR": str(tmp_path / "restored" / "data"),
                    "EVOLORA_PATHS__MLRUNS_DIR": str(tmp_path / "restored" / "mlruns")}
    # A truncated archive is refused, naming where it broke, and restores nothing.
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size * 2 // 3])
    refused = subprocess.run([sys.executable, "-m", "cli", "backup", "restore", str(truncated),
                              "-c", "tiny"], env=restored_env, cwd=PROJECT_ROOT,
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2
    assert "truncated or corrupt: reading " in refused.stderr
    assert not (tmp_path / "restored" / "data").exists()

    restore = subprocess.run([sys.executable, "-m", "cli", "backup", "restore", str(archive),
                              "-c", "tiny"], env=restored_env, cwd=PROJECT_ROOT,
                             capture_output=True, text=True, timeout=300)
    assert restore.returncode == 0, restore.stderr
    with mock.patch.dict(os.environ, restored_env, clear=True):
        restored = load_settings("tiny")
    assert sorted(k.name for k in Store.from_settings(restored).list_keys()) == keys_before
    with running_server(create_app(restored)) as url:
        assert httpx.get(f"{url}/readyz").json()["version"] == ready["version"]
        found = httpx.get(f"{url}/v1/memories/search", params={"q": "favourite number 4117"}
                          ).json()["data"]
        assert memories[0]["id"] in {m["id"] for m in found}
        assert {m["id"] for m in memories} <= {
            m["id"] for m in httpx.get(f"{url}/v1/memories", params={"limit": 500}
                                       ).json()["data"]}
        history = httpx.post(f"{url}/v1/agent/runs", timeout=120, json={
            "question": "And 1 + 1?", "session_id": session})
        assert history.status_code == 200, history.text  # the session came along


def test_kill_9_of_the_service_and_the_worker_heals_without_a_hand(platform: Platform) -> None:
    before = {c["name"]: c for c in platform.status()["components"]}
    killed_at = time.monotonic()
    for name in ("service", "prefect-worker"):
        os.kill(before[name]["pid"], signal.SIGKILL)
    time.sleep(1)
    healed = None
    while time.monotonic() - killed_at < 180:
        status = platform.status()
        if status["healthy"]:
            healed = {c["name"]: c for c in status["components"]}
            break
        time.sleep(1)
    took = time.monotonic() - killed_at
    print(f"\nkill -9 of service + worker: healthy again in {took:.1f} s")
    assert healed is not None, "the platform did not heal within 180 s"
    for name in ("service", "prefect-worker"):
        assert healed[name]["pid"] != before[name]["pid"]
        assert healed[name]["crashes"] == before[name]["crashes"] + 1
        assert healed[name]["recoveries"] == before[name]["recoveries"] + 1
    events = (platform.root / "data" / "logs" / "platform-events.log").read_text()
    assert '"event": "component.recovered", "component": "service"' in events
    metrics = httpx.get(f"{platform.service}/metrics").text
    assert 'evolora_component_recoveries_total{component="service"} 1.0' in metrics
    assert 'evolora_component_crashes_total{component="prefect-worker"} 1.0' in metrics
