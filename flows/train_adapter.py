"""The `train-adapter` Prefect flow: data -> train one adapter -> evaluate base and adapter.

Reads like the pipeline it runs. Every step is a Prefect task (retried where a failure can
be transient) and an MLflow run nested under one parent run for the flow.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
from prefect import flow, task

from evolora.logs import get_logger
from evolora.progress import Stage, current, stage
from evolora.settings import Settings, load_settings
from evolora.tracking import log_resolved_config, setup_mlflow, start_step_run
from evolora.vocabulary import STEP_TAG
from flows.common import generate_data, prepare_base_model
from tasks.records import DataSplits, Record, Scores

log = get_logger(__name__)


class TrainedAdapter(Record):
    """One trained adapter: its folder, MLflow run, training metrics and memory plan."""

    name: str
    adapter_dir: Path
    run_id: str
    metrics: dict[str, float]
    plan: dict[str, object]


class TrainSummary(Record):
    """What `evolora train` prints: the adapter and each candidate's headline test metrics."""

    config: str
    adapter: TrainedAdapter
    test: dict[str, dict[str, float]]
    mlflow_run_id: str


@task(name="train-adapter", retries=1, retry_delay_seconds=5)
def train_one(settings: Settings, model_path: str, data: DataSplits, name: str,
              seed: int | None = None, parent_run_id: str | None = None) -> TrainedAdapter:
    """Train one adapter on the train split; returns its folder, run id and metrics."""
    from tasks.data import load_split
    from tasks.train import train_adapter

    result = train_adapter(settings, model_path, load_split(data.train_path),
                           settings.paths.data_dir / "adapters", name, seed=seed,
                           dataset_hashes=data.hashes, parent_run_id=parent_run_id)
    return TrainedAdapter(name=name, adapter_dir=result.adapter_dir, run_id=result.run_id,
                          metrics=result.metrics, plan=result.plan.to_dict())


@task(name="evaluate-candidates")
def evaluate_candidates(settings: Settings, model_path: str, data: DataSplits,
                        adapters: dict[str, Path | None],
                        parent_run_id: str | None = None) -> dict[str, Scores]:
    """Test-set scores of each named adapter folder (None: the base model)."""
    from tasks.data import load_split
    from tasks.evaluate import evaluate_adapters

    results = evaluate_adapters(settings, model_path, list(load_split(data.test_path)),
                                adapters, tags={"evolora.test_set_hash": data.hashes["test"]},
                                parent_run_id=parent_run_id)
    return {name: Scores(split="test", metrics=result.metrics, run_id=result.run_id)
            for name, result in results.items()}


@flow(name="train-adapter")
def train_adapter_flow(config: str | None = None, adapter_name: str = "adapter-0",
                       evaluate_base: bool = True, settings: Settings | None = None
                       ) -> TrainSummary:
    """Generate data, train one adapter and compare it with the base model on the test set.

    `settings` (what the CLI loaded) wins over `config` (a name in configs/ or a YAML path,
    as a deployment passes it; None: $EVOLORA_CONFIG or `default`).
    """
    settings = settings or load_settings(config)
    setup_mlflow(settings)
    with start_step_run(f"train-adapter-{adapter_name}",
                        tags={STEP_TAG: "flow"}) as parent:
        log_resolved_config(settings)
        parent_id = parent.info.run_id
        n_test = len(settings.data.skills) * settings.data.test_per_skill
        current().plan([
            Stage("data", "generate data", 1, "data"),
            Stage("train", f"train {adapter_name}", settings.train.max_steps, "train_step"),
            Stage("evaluate", "evaluate on the test set",
                  n_test * (2 if evaluate_base else 1), "eval_problem")])
        model_path = prepare_base_model(settings)
        with stage("data"):
            data = generate_data(settings, parent_run_id=parent_id)
        with stage("train"):
            trained = train_one(settings, model_path, data, adapter_name,
                                parent_run_id=parent_id)
        candidates: dict[str, Path | None] = {"base": None} if evaluate_base else {}
        with stage("evaluate"):
            scores = evaluate_candidates(settings, model_path, data,
                                         {**candidates, adapter_name: trained.adapter_dir},
                                         parent_run_id=parent_id)
        summary = TrainSummary(
            config=settings.name, adapter=trained,
            test={name: _headline(s.metrics) for name, s in scores.items()},
            mlflow_run_id=parent_id)
        mlflow.log_dict(summary.model_dump(mode="json"), "summary.json")
    return summary


def _headline(metrics: dict[str, float]) -> dict[str, float]:
    """The test metrics a person reads first: accuracy overall, per level and per skill."""
    return {k: round(v, 4) for k, v in metrics.items() if k.startswith("test_accuracy")}
