"""The platform's components, as the settings describe them: what runs, how, and where its
health is read.

    components = platform_components(settings, config="demo")
    [c.name for c in components]   # prefect-server, prefect-worker, mlflow, service[, chroma]

Every component is a foreground process supervisord can watch (Prefect's and MLflow's own
server commands, `evolora serve`, `chroma run`); none daemonises itself.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from evolora.paths import PROJECT_ROOT
from evolora.platform import logs_dir, prefect_home
from evolora.settings import Settings

WORKER_NAME = "evolora-worker"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
# The switches the README asks for, set for every component (and the flow runs it starts).
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1", "ANONYMIZED_TELEMETRY": "False", "DO_NOT_TRACK": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "TOKENIZERS_PARALLELISM": "false",
}


@dataclass(frozen=True)
class Component:
    """One supervised process: its command, where it says it is healthy, how long it may
    take to stop."""

    name: str
    command: list[str]
    health_url: str
    ui_url: str
    stop_wait_s: int = 10
    env: dict[str, str] = field(default_factory=dict)

    def log_path(self, settings: Settings) -> Path:
        return logs_dir(settings) / f"{self.name}.log"


def executable(name: str) -> str:
    """A console script of this environment (beside its python), else the one on PATH."""
    beside = Path(sys.executable).with_name(name)
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} is not installed in this environment; run "
                                "`make install` (or pip install -e .)")
    return found


def prefect_api_url(settings: Settings) -> str:
    platform = settings.platform
    return f"http://{_url_host(platform.host)}:{platform.prefect_port}/api"


def mlflow_url(settings: Settings) -> str:
    platform = settings.platform
    return f"http://{_url_host(platform.host)}:{platform.mlflow_port}"


def service_url(settings: Settings) -> str:
    host = settings.serving.host
    host = "127.0.0.1" if host in {"0.0.0.0", "::"} else host
    return f"http://{_url_host(host)}:{settings.serving.port}"


def chroma_address(settings: Settings) -> tuple[str, int] | None:
    """(host, port) of a Chroma server the platform should run: memory.chroma_url on this
    machine; None when memory is embedded or the server is elsewhere."""
    url = settings.memory.chroma_url
    if not url:
        return None
    parts = urlsplit(url if "//" in url else f"http://{url}")
    if parts.hostname not in LOOPBACK:
        return None
    return parts.hostname, parts.port or 8000


def platform_env(settings: Settings) -> dict[str, str]:
    """What every component's environment adds to the caller's (whose EVOLORA_* variables
    it inherits): the offline switches, one Prefect API, and the config's data paths, so a
    cycle the worker runs writes where the service reads, whatever config it is given."""
    paths = settings.paths
    return {
        **OFFLINE_ENV,
        "PYTHONPATH": str(PROJECT_ROOT),
        "PREFECT_HOME": str(prefect_home(settings)),
        "PREFECT_API_URL": prefect_api_url(settings),
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "EVOLORA_PATHS__DATA_DIR": str(Path(paths.data_dir).resolve()),
        "EVOLORA_PATHS__MLRUNS_DIR": str(Path(paths.mlruns_dir).resolve()),
        "EVOLORA_PATHS__TRACKING_URI": paths.resolved_tracking_uri,
    }


def platform_components(settings: Settings, config: str | None) -> list[Component]:
    """The components `settings.platform.components` names, plus Chroma when configured."""
    platform = settings.platform
    config_args = ["--config", config] if config else []
    prefect_ui = f"http://{_url_host(platform.host)}:{platform.prefect_port}"
    available = {
        "prefect-server": Component(
            "prefect-server",
            [executable("prefect"), "server", "start", "--host", platform.host,
             "--port", str(platform.prefect_port)],
            health_url=f"{prefect_api_url(settings)}/health", ui_url=prefect_ui),
        "prefect-worker": Component(
            "prefect-worker",
            [executable("prefect"), "worker", "start", "--pool", platform.work_pool,
             "--type", "process", "--name", WORKER_NAME],
            health_url=f"{prefect_api_url(settings)}/work_pools/{platform.work_pool}",
            ui_url=f"{prefect_ui}/work-pools/work-pool/{platform.work_pool}"),
        "mlflow": Component(
            "mlflow",
            # The wrapper first stops a web server a killed launcher left on the port.
            [sys.executable, "-m", "ops.mlflow_server", "--port", str(platform.mlflow_port),
             "--", executable("mlflow"), "server", "--host", platform.host,
             "--port", str(platform.mlflow_port), "--workers", "1",
             "--backend-store-uri", settings.paths.resolved_tracking_uri,
             "--default-artifact-root", str(settings.paths.artifact_root)],
            health_url=f"{mlflow_url(settings)}/health", ui_url=mlflow_url(settings)),
        "service": Component(
            "service",
            [sys.executable, "-m", "cli", "serve", *config_args],
            health_url=f"{service_url(settings)}/readyz", ui_url=f"{service_url(settings)}/docs",
            # uvicorn's grace, then the engine's stop: settings.serving.shutdown_grace_s.
            stop_wait_s=int(settings.serving.shutdown_grace_s) + 15),
    }
    components = [available[name] for name in platform.components]
    chroma = chroma_address(settings)
    if chroma is not None:
        host, port = chroma
        chroma_dir = (Path(settings.paths.data_dir) / "chroma-server").resolve()
        components.insert(0, Component(
            "chroma", [executable("chroma"), "run", "--path", str(chroma_dir),
                       "--host", host, "--port", str(port)],
            health_url=f"http://{_url_host(host)}:{port}/api/v2/heartbeat",
            ui_url=f"http://{_url_host(host)}:{port}"))
    return components


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
