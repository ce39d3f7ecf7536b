"""Prometheus rules, scrape config and the Grafana dashboard: promtool checks and unit-tests
the rules (a case per alert), every expression parses, and every metric they read is one the
service really exports; the last-cycle exporter reads a real MLflow store."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest

from evolora.paths import PROJECT_ROOT

DEPLOY = PROJECT_ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "alerts.yml"
RULE_TESTS = DEPLOY / "prometheus" / "alerts_test.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "evolora.json"
PROMQL_FUNCTIONS = {"sum", "rate", "increase", "histogram_quantile", "time", "by", "le"}

promtool = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    promtool is None, reason="promtool missing: apt-get install -y prometheus (.ci/run does)")


def run_promtool(*args: str) -> str:
    assert promtool is not None
    result = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def alert_rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"]
            for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"]
            for t in p["targets"]]


@needs_promtool
def test_promtool_checks_the_rules_and_the_scrape_config() -> None:
    assert "SUCCESS: 10 rules found" in run_promtool("check", "rules", str(RULES))
    run_promtool("check", "config", str(DEPLOY / "prometheus" / "prometheus.yml"))


@needs_promtool
def test_promtool_unit_tests_pass_with_a_firing_case_for_every_alert() -> None:
    tested = {case["alertname"] for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
              for case in test["alert_rule_test"] if case["exp_alerts"]}
    assert tested == {rule["alert"] for rule in alert_rules()}
    assert "SUCCESS" in run_promtool("test", "rules", str(RULE_TESTS))


@needs_promtool
def test_every_dashboard_expression_is_valid_promql(tmp_path: Path) -> None:
    # promtool parses a recording rule's expression: the dashboard's queries, as rules.
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:expr{i}", "expr": expr}
        for i, expr in enumerate(dashboard_exprs())]}]}
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    run_promtool("check", "rules", str(path))
    provisioned = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/datasources/evolora.yml").read_text())
    uid = provisioned["datasources"][0]["uid"]
    assert all(p["datasource"]["uid"] == uid for p in json.loads(DASHBOARD.read_text())
               ["panels"])


@pytest.fixture(scope="module")
def mlflow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One MLflow store for the module (creating one costs ~10 s): empty until the exporter
    test records its cycles; the metric-names test, after it, reads those."""
    from mlflow.tracking import MlflowClient

    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


def exported_names(tmp_path: Path, db: Path) -> set[str]:
    """Sample names the service's registry exposes (with a cycle in MLflow and a recovery)."""
    from evolora.platform import write_recoveries
    from serving.metrics import ScrapeTimeCollector, ServingMetrics
    from serving.ops_metrics import OperationsCollector

    recoveries = tmp_path / "recoveries.json"
    write_recoveries(recoveries, {"service": {"crashes": 1, "recoveries": 1, "fatal": 0}})
    metrics = ServingMetrics()
    metrics.add_scrape_collector(ScrapeTimeCollector(lambda: 3))
    metrics.add_scrape_collector(OperationsCollector(
        f"sqlite:///{db}", "evolora-adapter", recoveries))
    metrics.requests.labels("POST", "/v1/chat/completions", "200").inc()
    metrics.latency.labels("POST", "/v1/chat/completions").observe(1)
    metrics.refused.labels("checksum").inc()
    metrics.record_generation("base", 5, 1.0)
    text = generate_latest(metrics.registry).decode()
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines()
             if line and not line.startswith("#")}
    # No NVIDIA driver here: the GPU families are defined in serving/metrics.py.
    source = (PROJECT_ROOT / "serving" / "metrics.py").read_text()
    return names | set(re.findall(r'"(evolora_gpu_[a-z_]+)"', source)) | {"up"}


def test_the_exporter_reports_the_last_cycle_and_the_last_success(tmp_path: Path,
                                                                   mlflow_db: Path) -> None:
    from serving.ops_metrics import OperationsCollector

    db = mlflow_db
    collector = OperationsCollector(f"sqlite:///{db}", "evolora-adapter",
                                    tmp_path / "none.json")
    first = {m.name: m for m in collector.collect()}
    assert first["evolora_last_successful_cycle_timestamp_seconds"].samples[0].value == 0
    assert first["evolora_cycle_resumes"].samples[0].value == 0
    record_cycle(db, "FINISHED", 0.42, resumes=2)
    record_cycle(db, "FAILED", 0.0)
    collector._cached = None  # the 30 s cache, skipped
    values = {m.name: m.samples for m in collector.collect()}
    assert values["evolora_last_cycle_failed"][0].value == 1.0
    assert values["evolora_last_cycle_info"][0].labels == {"cycle": "FAILED",
                                                          "status": "FAILED"}
    assert values["evolora_champion_test_accuracy"][0].value == pytest.approx(0.42)
    assert values["evolora_last_successful_cycle_timestamp_seconds"][0].value > 1.7e9
    assert values["evolora_champion_version"][0].value == 0.0  # nothing registered
    assert values["evolora_cycle_resumes"][0].name == "evolora_cycle_resumes_total"
    assert values["evolora_cycle_resumes"][0].value == 2.0


def test_rules_and_dashboard_read_only_metrics_the_service_exports(
        tmp_path: Path, mlflow_db: Path) -> None:
    names = exported_names(tmp_path, mlflow_db)
    assert "evolora_last_cycle_failed" in names  # the exporter test's cycles are there
    used = set()
    for expr in [rule["expr"] for rule in alert_rules()] + dashboard_exprs():
        expr = re.sub(r"\{[^}]*\}|\"[^\"]*\"", "", expr)  # drop selectors and strings
        used |= set(re.findall(r"\b(evolora_[a-z_]+|up)\b", expr)) - PROMQL_FUNCTIONS
    assert used - names == set()


def record_cycle(db: Path, status: str, accuracy: float, resumes: int = 0) -> None:
    from mlflow.tracking import MlflowClient

    from evolora.vocabulary import STEP_TAG

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    experiment = client.get_experiment_by_name("evolora")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(
        "evolora", artifact_location=str(db.parent / "artifacts"))
    run = client.create_run(experiment_id, tags={STEP_TAG: "cycle", "evolora.cycle": status})
    client.log_metric(run.info.run_id, "summary_champion", accuracy)
    if resumes:
        client.log_metric(run.info.run_id, "cycle_resumes", resumes)
    client.set_terminated(run.info.run_id, status)
