"""Prometheus metrics of one app: its own CollectorRegistry, so two apps never share counters.

Request, generation and swap metrics are pushed as they happen; process, GPU and memory-store
figures are read at scrape time by `ScrapeTimeCollector` (psutil, NVML where present).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from evolora.logs import get_logger

log = get_logger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
SWAP_BUCKETS = (0.0001, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class ServingMetrics:
    """Every metric the service exposes, registered in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("evolora_http_requests", "HTTP requests by route and status.",
                                ["method", "route", "status"], registry=r)
        self.latency = Histogram("evolora_http_request_duration_seconds",
                                 "HTTP request latency by route.", ["method", "route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.generated_tokens = Counter("evolora_generated_tokens", "Tokens generated.",
                                        ["adapter"], registry=r)
        self.tokens_per_second = Gauge("evolora_generation_tokens_per_second",
                                       "Tokens/s of the last generation.", registry=r)
        self.serving_adapter = Info("evolora_serving_adapter",
                                    "The adapter that serves `champion` requests.", registry=r)
        self.serving_version = Gauge("evolora_serving_adapter_version",
                                     "Registry version serving `champion` (0: the base model).",
                                     registry=r)
        self.swaps = Counter("evolora_adapter_swaps", "Champion adapter swaps.", registry=r)
        self.swap_seconds = Histogram("evolora_adapter_swap_blocking_seconds",
                                      "Time a swap held the model lock (generation blocked).",
                                      buckets=SWAP_BUCKETS, registry=r)
        self.refused = Counter("evolora_adapter_refused", "Versions refused (download, "
                               "checksum or load failure).", ["reason"], registry=r)
        self.rate_limited = Counter("evolora_rate_limited", "Requests refused with 429.",
                                    registry=r)
        self.generation_timeouts = Counter(
            "evolora_generation_timeouts", "Generations cancelled at "
            "serving.generation_timeout_s (answered 504).", registry=r)
        self.agent_runs = Counter("evolora_agent_runs", "Agent runs by outcome.", ["outcome"],
                                  registry=r)
        self.set_serving(None, "base")

    def set_serving(self, version: str | None, adapter: str) -> None:
        """Record which registry version (None: the base model) now serves."""
        self.serving_adapter.info({"version": version or "base", "adapter": adapter})
        self.serving_version.set(int(version) if version and version.isdigit() else 0)

    def record_generation(self, adapter: str, tokens: int, seconds: float) -> None:
        self.generated_tokens.labels(adapter).inc(tokens)
        if seconds > 0 and tokens > 0:
            self.tokens_per_second.set(tokens / seconds)

    def add_scrape_collector(self, collector: Collector) -> None:
        self.registry.register(collector)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class ScrapeTimeCollector(Collector):
    """Process CPU/RSS, GPU utilisation/memory (NVML) and memory counts, read per scrape."""

    def __init__(self, memory_count: Callable[[], int] | None = None) -> None:
        self._process = psutil.Process()
        self._process.cpu_percent(None)  # the first call primes the counter
        self._memory_count = memory_count
        self._nvml: Any = _init_nvml()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily("evolora_process_cpu_percent", "Process CPU (% of one core).",
                                value=self._process.cpu_percent(None))
        yield GaugeMetricFamily("evolora_process_rss_bytes", "Process resident memory.",
                                value=self._process.memory_info().rss)
        yield GaugeMetricFamily("evolora_memory_limit_bytes", "Memory this process may use: "
                                "its cgroup's limit, else the machine's RAM.",
                                value=memory_limit_bytes())
        if self._memory_count is not None:
            try:
                count = self._memory_count()
            except Exception as exc:  # a scrape must not fail because the store hiccups
                log.warning("metrics.memory_count_failed", error=str(exc))
            else:
                yield GaugeMetricFamily("evolora_memories", "Long-term memories stored.",
                                        value=count)
        yield from self._gpu()

    def _gpu(self) -> Iterator[GaugeMetricFamily]:
        if self._nvml is None:
            return
        util = GaugeMetricFamily("evolora_gpu_utilization_percent", "GPU utilisation.",
                                 labels=["gpu"])
        used = GaugeMetricFamily("evolora_gpu_memory_used_bytes", "GPU memory used.",
                                 labels=["gpu"])
        total = GaugeMetricFamily("evolora_gpu_memory_total_bytes", "GPU memory in all.",
                                  labels=["gpu"])
        try:
            for index in range(self._nvml.nvmlDeviceGetCount()):
                handle = self._nvml.nvmlDeviceGetHandleByIndex(index)
                util.add_metric([str(index)], self._nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
                memory = self._nvml.nvmlDeviceGetMemoryInfo(handle)
                used.add_metric([str(index)], memory.used)
                total.add_metric([str(index)], memory.total)
        except self._nvml.NVMLError as exc:
            log.warning("metrics.nvml_failed", error=str(exc))
            return
        yield util
        yield used
        yield total


def memory_limit_bytes() -> float:
    """The cgroup v2 memory limit where one is set, else the machine's total RAM."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        limit = "max"
    return float(limit) if limit.isdigit() else float(psutil.virtual_memory().total)


def _init_nvml() -> Any:
    """The pynvml module, initialised; None where there is no NVIDIA driver."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None
    return pynvml
