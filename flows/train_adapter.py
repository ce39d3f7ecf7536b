"""The `train-adapter` Prefect flow: data -> train one adapter -> evaluate base and adapter.

Reads like the pipeline it runs. Every step is a Prefect task (retried where a failure can
be transient) and an MLflow run nested under one parent run for the flow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
from prefect import flow, task

from evolora.logs import get_logger
from evolora.models import PACKAGED_MODELS, prepare_model, resolve_base_model
from evolora.settings import Settings, load_settings
from evolora.tracking import log_resolved_config, setup_mlflow, start_step_run

log = get_logger(__name__)


@task(name="prepare-base-model", retries=1, retry_delay_seconds=2)
def prepare_base_model(settings: Settings) -> str:
    """The base model's folder, preparing the packaged GGUF first where needed."""
    if settings.model.base in PACKAGED_MODELS:
        prepare_model(settings.model.base, settings.paths.models_dir, settings.model.dtype)
    return resolve_base_model(settings.model.base, settings.paths.models_dir)


@task(name="generate-data")
def generate_data(settings: Settings, parent_run_id: str | None = None) -> dict[str, Any]:
    """Verified train/eval splits and the frozen test set, logged as MLflow dataset inputs."""
    from tasks.data.pipeline import build_and_log_splits

    return build_and_log_splits(settings, parent_run_id=parent_run_id)


@task(name="train-adapter", retries=1, retry_delay_seconds=5)
def train_one(settings: Settings, model_path: str, data: dict[str, Any], name: str,
              seed: int | None = None, parent_run_id: str | None = None) -> dict[str, Any]:
    """Train one adapter on the train split; returns its folder, run id and metrics."""
    from tasks.data.examples import load_split
    from tasks.train.trainer import train_adapter

    result = train_adapter(settings, model_path, load_split(Path(data["train_path"])),
                           settings.paths.data_dir / "adapters", name, seed=seed,
                           dataset_hashes=data["hashes"], parent_run_id=parent_run_id)
    return {"name": name, "adapter_dir": str(result.adapter_dir), "run_id": result.run_id,
            "metrics": result.metrics, "plan": result.plan.to_dict()}


@task(name="evaluate-candidates")
def evaluate_candidates(settings: Settings, model_path: str, data: dict[str, Any],
                        adapters: dict[str, str], include_base: bool = True,
                        parent_run_id: str | None = None) -> dict[str, dict[str, float]]:
    """Test-set metrics of the base model (as `base`) and of each named adapter folder."""
    from engines.transformers_runtime import ModelRuntime
    from tasks.data.examples import load_split
    from tasks.evaluate.scoring import evaluate_candidate

    test_rows = list(load_split(Path(data["test_path"])))
    runtime = ModelRuntime.load(model_path, settings.model.dtype)
    results: dict[str, dict[str, float]] = {}
    tags = {"evolora.test_set_hash": data["hashes"]["test"]}
    if include_base:
        results["base"] = evaluate_candidate(
            runtime, test_rows, candidate="base", tags=tags, parent_run_id=parent_run_id,
            max_new_tokens=settings.model.max_new_tokens).metrics
    for name, adapter_dir in adapters.items():
        runtime.attach(name, adapter_dir)
        results[name] = evaluate_candidate(
            runtime, test_rows, candidate=name, adapter=name, tags=tags,
            parent_run_id=parent_run_id, max_new_tokens=settings.model.max_new_tokens).metrics
        runtime.detach(name)
    return results


@flow(name="train-adapter")
def train_adapter_flow(config: str = "demo", adapter_name: str = "adapter-0",
                       evaluate_base: bool = True) -> dict[str, Any]:
    """Generate data, train one adapter and compare it with the base model on the test set."""
    settings = load_settings(config)
    setup_mlflow(settings)
    with start_step_run(f"train-adapter-{adapter_name}",
                        tags={"evolora.step": "flow"}) as parent:
        log_resolved_config(settings)
        parent_id = parent.info.run_id
        model_path = prepare_base_model(settings)
        data = generate_data(settings, parent_run_id=parent_id)
        trained = train_one(settings, model_path, data, adapter_name, parent_run_id=parent_id)
        scores = evaluate_candidates(settings, model_path, data,
                                     {adapter_name: trained["adapter_dir"]},
                                     include_base=evaluate_base, parent_run_id=parent_id)
        summary = {
            "config": settings.name,
            "adapter": trained,
            "test": {name: _headline(metrics) for name, metrics in scores.items()},
            "mlflow_run_id": parent_id,
        }
        mlflow.log_dict(summary, "summary.json")
    return summary


def _headline(metrics: dict[str, float]) -> dict[str, float]:
    """The test metrics a person reads first: accuracy overall, per level and per skill."""
    return {k: round(v, 4) for k, v in metrics.items() if k.startswith("test_accuracy")}
