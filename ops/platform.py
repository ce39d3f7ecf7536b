"""The local platform: `bring_up`, `bring_down`, `platform_status`.

    bring_up(settings, config="demo")      # supervisord, Prefect (+ deployments), MLflow, ...
    platform_status(settings).healthy      # every component answers its health check
    bring_down(settings)

A component is healthy when supervisord has it RUNNING and it answers: the Prefect server's
`/api/health`, the worker's heartbeat to the server since its process started, MLflow's
`/health`, the service's `/readyz`, Chroma's heartbeat.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import httpx

from evolora.logs import get_logger
from evolora.platform import logs_dir, read_recoveries, recoveries_path
from evolora.settings import Settings
from ops.components import (
    WORKER_NAME,
    Component,
    platform_components,
    platform_env,
    prefect_api_url,
)
from ops.prefect_api import apply_deployments, deployments, ensure_work_pool, worker_heartbeat
from ops.supervisor import Supervisor, SupervisorError, start_supervisord, stop_supervisord

log = get_logger(__name__)


@dataclass
class ComponentStatus:
    """One component as `evolora status` reports it."""

    name: str
    state: str  # supervisord's: RUNNING, STARTING, BACKOFF, EXITED, FATAL, STOPPED; or DOWN
    healthy: bool
    detail: str
    pid: int | None
    uptime_s: float | None
    url: str
    log: str
    crashes: int = 0
    recoveries: int = 0
    last_recovery_s: float | None = None


@dataclass
class PlatformStatus:
    supervisor: bool
    components: list[ComponentStatus]
    deployments: list[dict[str, Any]] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return self.supervisor and all(c.healthy for c in self.components)

    def to_json(self) -> dict[str, Any]:
        return {"healthy": self.healthy, "supervisor": self.supervisor,
                "components": [asdict(c) for c in self.components],
                "deployments": self.deployments}


def bring_up(settings: Settings, config: str | None,
             wait: bool = True) -> PlatformStatus:
    """Start supervisord and every component in order; with `wait`, return once all are
    healthy (raises TimeoutError naming the unhealthy ones after platform.start_timeout_s).

    Idempotent: components already running are left running."""
    components = platform_components(settings, config)
    env = platform_env(settings)
    supervisor = start_supervisord(settings, components, env)
    names = [c.name for c in components]
    deadline = time.monotonic() + settings.platform.start_timeout_s
    # What nothing else needs first starts at once; the worker waits for the server and
    # the deployments, which need the server.
    for name in names:
        if name != "prefect-worker":
            supervisor.start(name)
    if "prefect-server" in names:
        _wait_for(settings, supervisor, components, ["prefect-server"], deadline)
        api = prefect_api_url(settings)
        ensure_work_pool(api, settings.platform.work_pool)
        apply_deployments(env, logs_dir(settings) / "prefect-deploy.log")
        log.info("platform.deployments_applied", api=api)
    if "prefect-worker" in names:
        supervisor.start("prefect-worker")
    if not wait:
        return platform_status(settings, config)
    return _wait_for(settings, supervisor, components, names, deadline)


def _wait_for(settings: Settings, supervisor: Supervisor, components: list[Component],
              names: list[str], deadline: float) -> PlatformStatus:
    while True:
        status = _status(settings, supervisor, components)
        pending = [c for c in status.components if c.name in names and not c.healthy]
        if not pending:
            return status
        fatal = [c for c in pending if c.state == "FATAL"]
        if fatal or time.monotonic() > deadline:
            stuck = fatal or pending
            raise TimeoutError("not healthy: " + "; ".join(
                f"{c.name} ({c.state}: {c.detail}; log {c.log})" for c in stuck))
        time.sleep(0.5)


def bring_down(settings: Settings) -> bool:
    """Stop every component and the supervisor; False when nothing was running."""
    return stop_supervisord(settings)


def platform_status(settings: Settings, config: str | None = None) -> PlatformStatus:
    """Every configured component's state and health, and the deployments with their next
    run (read from the Prefect server; empty when it does not answer)."""
    components = platform_components(settings, config)
    supervisor = Supervisor(settings)
    status = _status(settings, supervisor, components)
    server = next((c for c in status.components if c.name == "prefect-server"), None)
    if server is not None and server.healthy:
        try:
            status.deployments = deployments(prefect_api_url(settings))
        except httpx.HTTPError as exc:
            log.warning("platform.deployments_unreadable", error=str(exc))
    return status


def _status(settings: Settings, supervisor: Supervisor,
            components: list[Component]) -> PlatformStatus:
    running = supervisor.running()
    try:
        processes = supervisor.processes() if running else {}
    except (OSError, SupervisorError):
        running, processes = False, {}
    record = read_recoveries(recoveries_path(settings))
    with ThreadPoolExecutor(max_workers=len(components)) as pool:
        return PlatformStatus(running, list(pool.map(
            lambda c: _component_status(settings, c, processes.get(c.name), record), components)))


def _component_status(settings: Settings, component: Component, info: dict[str, Any] | None,
                      record: dict[str, dict[str, Any]]) -> ComponentStatus:
    counts = record.get(component.name, {})
    state = info["statename"] if info else "DOWN"
    pid = info["pid"] if info and info["pid"] else None
    started = float(info["start"]) if info and info["start"] else None
    uptime = round(info["now"] - started, 1) if info and state == "RUNNING" and started \
        else None
    healthy, detail = False, (info or {}).get("spawnerr") or "not running"
    if state == "RUNNING":
        healthy, detail = _answers(settings, component, started)
    return ComponentStatus(
        component.name, state, healthy, detail, pid, uptime, component.ui_url,
        str(component.log_path(settings)), int(counts.get("crashes", 0)),
        int(counts.get("recoveries", 0)), counts.get("last_recovery_s"))


def _answers(settings: Settings, component: Component,
             started: float | None) -> tuple[bool, str]:
    """(healthy, detail) from the component's own health check."""
    try:
        if component.name == "prefect-worker":
            beat = worker_heartbeat(prefect_api_url(settings), settings.platform.work_pool,
                                    WORKER_NAME)
            if beat is None or started is None or beat.timestamp() < started - 1:
                return False, "no heartbeat from this worker process yet"
            age = datetime.now(timezone.utc) - beat
            return True, f"heartbeat {age.total_seconds():.0f} s ago"
        response = httpx.get(component.health_url, timeout=5.0)
    except httpx.HTTPError as exc:
        return False, f"{component.health_url}: {type(exc).__name__}"
    if response.status_code != 200:
        return False, f"{component.health_url}: HTTP {response.status_code}"
    return True, f"{component.health_url}: ok"
