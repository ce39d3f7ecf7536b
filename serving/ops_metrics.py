"""Metrics for operations, read at scrape time: the last cycle's outcome from MLflow (so a
missed or failed night can alert) and the platform's crash/recovery counts.

    evolora_last_cycle_info{cycle,status}          1 for the latest cycle run
    evolora_last_cycle_failed                      1 when it ended FAILED or KILLED
    evolora_last_cycle_end_timestamp_seconds       when it ended (start time while running)
    evolora_last_successful_cycle_timestamp_seconds  0 when no cycle ever finished
    evolora_champion_test_accuracy, evolora_champion_version
    evolora_cycle_resumes_total                    resumes of the latest 50 cycles
    evolora_component_crashes_total / _recoveries_total{component}
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from evolora.logs import get_logger
from evolora.platform import read_recoveries
from evolora.vocabulary import CHAMPION, STEP_TAG

log = get_logger(__name__)

EXPERIMENT = "evolora"
CACHE_S = 30.0  # MLflow is read at most this often, however often Prometheus scrapes
FAILED = {"FAILED", "KILLED"}


def last_cycle_outcome(tracking_uri: str, model_name: str) -> dict[str, Any]:
    """The latest cycle run (status, times, id) and the latest successful one, from MLflow."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    outcome: dict[str, Any] = {"last": None, "last_success": None, "champion_version": None,
                               "resumes": 0}
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is not None:
        cycles = client.search_runs([experiment.experiment_id], f"tags.`{STEP_TAG}` = 'cycle'",
                                    order_by=["attributes.start_time DESC"], max_results=50)
        if cycles:
            outcome["last"] = cycles[0]
        outcome["last_success"] = next((r for r in cycles if r.info.status == "FINISHED"),
                                       None)
        # A killed cycle that a later run finished (flows/cycle.py logs cycle_resumes).
        outcome["resumes"] = int(sum(r.data.metrics.get("cycle_resumes", 0) for r in cycles))
    try:
        outcome["champion_version"] = client.get_model_version_by_alias(model_name,
                                                                        CHAMPION).version
    except Exception:  # no registered model or no champion yet
        outcome["champion_version"] = None
    return outcome


class OperationsCollector(Collector):
    """The scrape-time operations metrics of one service."""

    def __init__(self, tracking_uri: str, model_name: str, recoveries: Path) -> None:
        self.tracking_uri = tracking_uri
        self.model_name = model_name
        self.recoveries = recoveries
        self._lock = threading.Lock()
        self._cached: tuple[float, dict[str, Any]] | None = None

    def _outcome(self) -> dict[str, Any] | None:
        with self._lock:
            if self._cached is None or time.monotonic() - self._cached[0] > CACHE_S:
                try:
                    self._cached = (time.monotonic(),
                                    last_cycle_outcome(self.tracking_uri, self.model_name))
                except Exception as exc:  # a scrape must not fail because MLflow hiccups
                    log.warning("metrics.mlflow_unreadable", error=str(exc))
                    return None
            return self._cached[1]

    def collect(self) -> Iterator[Metric]:
        yield from self._cycle_metrics()
        record = read_recoveries(self.recoveries)
        crashes = CounterMetricFamily("evolora_component_crashes", "Unexpected exits of a "
                                      "platform component (supervisor events).",
                                      labels=["component"])
        recoveries = CounterMetricFamily("evolora_component_recoveries", "A crashed component "
                                         "running again, restarted by the supervisor.",
                                         labels=["component"])
        for name, counts in sorted(record.items()):
            crashes.add_metric([name], float(counts.get("crashes", 0)))
            recoveries.add_metric([name], float(counts.get("recoveries", 0)))
        yield crashes
        yield recoveries

    def _cycle_metrics(self) -> Iterator[Metric]:
        outcome = self._outcome()
        if outcome is None:
            return
        last, success = outcome["last"], outcome["last_success"]
        if last is not None:
            info = GaugeMetricFamily("evolora_last_cycle_info", "The latest cycle run.",
                                     labels=["cycle", "status"])
            info.add_metric([last.data.tags.get("evolora.cycle", ""), last.info.status], 1)
            yield info
            yield GaugeMetricFamily("evolora_last_cycle_failed", "1 when the latest cycle "
                                    "ended FAILED or KILLED.",
                                    value=float(last.info.status in FAILED))
            ended = (last.info.end_time or last.info.start_time) / 1000
            yield GaugeMetricFamily("evolora_last_cycle_end_timestamp_seconds",
                                    "When the latest cycle run ended (its start while it "
                                    "runs).", value=ended)
        yield CounterMetricFamily("evolora_cycle_resumes", "Runs that picked up a cycle an "
                                  "earlier run left unfinished (over the latest 50 cycles).",
                                  value=float(outcome["resumes"]))
        yield GaugeMetricFamily("evolora_last_successful_cycle_timestamp_seconds",
                                "When the latest finished cycle ended; 0: none yet.",
                                value=(success.info.end_time / 1000) if success else 0.0)
        if success is not None and "summary_champion" in success.data.metrics:
            yield GaugeMetricFamily("evolora_champion_test_accuracy", "The champion's "
                                    "frozen-test accuracy, from the latest finished cycle.",
                                    value=success.data.metrics["summary_champion"])
        version = outcome["champion_version"]
        yield GaugeMetricFamily("evolora_champion_version", "The registry's champion "
                                "version (0: none).",
                                value=float(version) if version else 0.0)
