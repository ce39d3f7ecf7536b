"""The machine and the service's figures for the system page: CPU, RAM, GPU and VRAM here
(psutil, NVML where an NVIDIA driver is), tokens/s and latency from the service's /metrics."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import psutil
from prometheus_client.parser import text_string_to_metric_families


@dataclass
class Gpu:
    index: int
    name: str
    utilization_percent: float
    memory_used_bytes: int
    memory_total_bytes: int


@dataclass
class HostStats:
    cpu_percent: float
    cpu_count: int
    ram_used_bytes: int
    ram_total_bytes: int
    gpus: list[Gpu] = field(default_factory=list)
    gpu_note: str = ""


def host_stats() -> HostStats:
    """This machine's CPU and RAM now, and each NVIDIA GPU's load and memory."""
    memory = psutil.virtual_memory()
    gpus, note = _gpus()
    return HostStats(cpu_percent=psutil.cpu_percent(interval=0.2),
                     cpu_count=psutil.cpu_count() or 1, ram_used_bytes=memory.used,
                     ram_total_bytes=memory.total, gpus=gpus, gpu_note=note)


def _gpus() -> tuple[list[Gpu], str]:
    try:
        import pynvml
    except ImportError:
        return [], "nvidia-ml-py is not installed"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return [], "no NVIDIA GPU (the NVIDIA driver is not loaded)"
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(Gpu(index, name.decode() if isinstance(name, bytes) else str(name),
                            float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu),
                            int(memory.used), int(memory.total)))
        return gpus, ""
    except pynvml.NVMLError as exc:
        return [], f"NVML failed: {exc}"
    finally:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()


@dataclass
class ServiceFigures:
    """What the service's metrics say: speed, latency per route, counts, what serves."""

    tokens_per_second: float | None = None
    generated_tokens: float = 0.0
    serving_version: str | None = None
    process_rss_bytes: float | None = None
    memories: float | None = None
    agent_runs: dict[str, float] = field(default_factory=dict)
    # route -> {"requests", "mean_s", "p50_s", "p95_s"} (quantiles from the histogram buckets)
    latency: dict[str, dict[str, float]] = field(default_factory=dict)
    gpu_memory_used_bytes: dict[str, float] = field(default_factory=dict)


def parse_metrics(text: str) -> ServiceFigures:
    """The service's Prometheus text as the figures the system page shows."""
    figures = ServiceFigures()
    buckets: dict[str, list[tuple[float, float]]] = {}
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            route = f"{labels.get('method', '')} {labels.get('route', '')}".strip()
            if name == "evolora_generation_tokens_per_second":
                figures.tokens_per_second = value
            elif name == "evolora_generated_tokens_total":
                figures.generated_tokens += value
            elif name == "evolora_serving_adapter_info":
                figures.serving_version = labels.get("version")
            elif name == "evolora_process_rss_bytes":
                figures.process_rss_bytes = value
            elif name == "evolora_memories":
                figures.memories = value
            elif name == "evolora_agent_runs_total":
                figures.agent_runs[labels.get("outcome", "")] = value
            elif name == "evolora_gpu_memory_used_bytes":
                figures.gpu_memory_used_bytes[labels.get("gpu", "")] = value
            elif name == "evolora_http_request_duration_seconds_bucket":
                buckets.setdefault(route, []).append((float(labels["le"]), value))
            elif name == "evolora_http_request_duration_seconds_sum":
                sums[route] = value
            elif name == "evolora_http_request_duration_seconds_count":
                counts[route] = value
    for route, count in counts.items():
        if count <= 0:
            continue
        ordered = sorted(buckets.get(route, []))
        figures.latency[route] = {"requests": count, "mean_s": sums.get(route, 0.0) / count,
                                  "p50_s": _quantile(ordered, count, 0.5),
                                  "p95_s": _quantile(ordered, count, 0.95)}
    return figures


def _quantile(buckets: list[tuple[float, float]], count: float, q: float) -> float:
    """The upper bound of the first bucket holding the q-th request (as Prometheus's
    histogram_quantile does, without its interpolation): an upper estimate."""
    for upper, cumulative in buckets:
        if cumulative >= q * count:
            return upper
    return float("inf")


def human_bytes(value: float | None) -> str:
    if value is None:
        return "n/a"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(value) < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"


def component_rows(readiness: dict[str, Any] | None, readiness_error: str | None,
                   mlflow_error: str | None, mlflow_uri: str) -> list[dict[str, str]]:
    """One row per component: the service, its model, store and memory, and MLflow."""
    rows = []
    if readiness is None:
        rows.append({"component": "service", "status": "down", "detail": readiness_error or ""})
    else:
        rows.append({"component": "service", "status": str(readiness.get("status")),
                     "detail": f"serving {readiness.get('adapter', '?')}"})
        for name, ok in (readiness.get("checks") or {}).items():
            rows.append({"component": name, "status": "ok" if ok else "failing", "detail": ""})
    rows.append({"component": "MLflow store", "status": "failing" if mlflow_error else "ok",
                 "detail": mlflow_error or mlflow_uri})
    return rows
