"""What the platform asks of the Prefect server: the work pool, the deployments of
prefect.yaml (applied with Prefect's own `prefect deploy --all`), schedules and workers.

Plain REST calls (the API the UI uses), so `evolora status` answers without importing
Prefect (~3 s).
"""

from __future__ import annotations

import os
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from evolora.paths import PROJECT_ROOT
from ops.components import executable

TIMEOUT_S = 10.0


class PrefectSetupError(RuntimeError):
    """The work pool or the deployments could not be applied; the message says the fix."""


def ensure_work_pool(api_url: str, pool: str) -> None:
    """Create the process work pool (a pool that exists is kept as it is)."""
    response = httpx.post(f"{api_url}/work_pools/", json={"name": pool, "type": "process"},
                          timeout=TIMEOUT_S)
    if response.status_code not in (201, 409):
        raise PrefectSetupError(f"Prefect refused the work pool {pool!r}: HTTP "
                                f"{response.status_code} {response.text[:200]}")


def apply_deployments(env: dict[str, str], log_path: Path) -> None:
    """`prefect deploy --all` from the project root (prefect.yaml), output to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a") as log_file:
        result = subprocess.run([executable("prefect"), "--no-prompt", "deploy", "--all"],
                                cwd=PROJECT_ROOT, env={**os.environ, **env}, stdout=log_file,
                                stderr=subprocess.STDOUT, check=False, timeout=300)
    if result.returncode != 0:
        raise PrefectSetupError(f"`prefect deploy --all` failed (exit {result.returncode}); "
                                f"see {log_path}")


def _post(api_url: str, path: str, body: dict[str, Any]) -> Any:
    response = httpx.post(f"{api_url}{path}", json=body, timeout=TIMEOUT_S)
    response.raise_for_status()
    return response.json()


def deployments(api_url: str) -> list[dict[str, Any]]:
    """Each deployment: `flow/name`, its schedules (cron, timezone, active) and its next
    scheduled run's time (None when nothing is scheduled)."""
    flows = {f["id"]: f["name"] for f in _post(api_url, "/flows/filter", {})}
    found = []
    for deployment in _post(api_url, "/deployments/filter", {}):
        upcoming = _post(api_url, "/flow_runs/filter", {
            "deployments": {"id": {"any_": [deployment["id"]]}},
            "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}},
            "sort": "EXPECTED_START_TIME_ASC", "limit": 1})
        found.append({
            "name": f"{flows.get(deployment['flow_id'], '?')}/{deployment['name']}",
            "id": deployment["id"],
            "work_pool": deployment.get("work_pool_name"),
            "schedules": [{"cron": s["schedule"].get("cron"),
                           "timezone": s["schedule"].get("timezone"), "active": s["active"]}
                          for s in deployment.get("schedules", [])],
            "next_run": upcoming[0]["expected_start_time"] if upcoming else None,
        })
    return sorted(found, key=lambda d: d["name"])


def worker_heartbeat(api_url: str, pool: str, worker: str) -> datetime | None:
    """When `worker` last told the server it is alive (None: never)."""
    for record in _post(api_url, f"/work_pools/{pool}/workers/filter", {}):
        if record["name"] == worker and record.get("last_heartbeat_time"):
            return datetime.fromisoformat(record["last_heartbeat_time"].replace("Z", "+00:00"))
    return None
