"""MLflow set-up: the tracking URI and experiment that every run of a config goes to."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from evolora.settings import Settings

EXPERIMENT_NAME = "evolora"


def setup_mlflow(settings: Settings, experiment: str = EXPERIMENT_NAME) -> MlflowClient:
    """Point MLflow at the config's store and experiment (created with a local artifact root)."""
    paths = settings.paths
    if paths.resolved_tracking_uri.startswith("sqlite:///"):
        paths.mlruns_dir.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(paths.resolved_tracking_uri)
    client = MlflowClient()
    if client.get_experiment_by_name(experiment) is None:
        artifact_location = None
        if paths.tracking_uri is None:
            paths.artifact_root.mkdir(parents=True, exist_ok=True)
            artifact_location = paths.artifact_root.as_uri()
        client.create_experiment(experiment, artifact_location=artifact_location)
    mlflow.set_experiment(experiment)
    return client


def start_step_run(run_name: str, parent_run_id: str | None = None,
                   tags: dict[str, str] | None = None) -> mlflow.ActiveRun:
    """A run for one pipeline step, nested under `parent_run_id` or the active run."""
    active = mlflow.active_run()
    all_tags = dict(tags or {})
    if parent_run_id and (active is None or active.info.run_id != parent_run_id):
        # Prefect may run a task in another thread than its flow, where MLflow's active-run
        # stack is empty; the parent tag links the run to the cycle all the same.
        all_tags["mlflow.parentRunId"] = parent_run_id
        return mlflow.start_run(run_name=run_name, tags=all_tags, nested=active is not None)
    return mlflow.start_run(run_name=run_name, tags=all_tags, nested=active is not None)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested settings as `section.key` -> value strings, the shape MLflow params take."""
    flat: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, list) else str(value)
    return flat


def log_resolved_config(settings: Settings, extra: dict[str, Any] | None = None) -> None:
    """Log the resolved settings as params and as `config.json` in the active run."""
    resolved = settings.resolved_dict()
    if extra:
        resolved = {**resolved, "run": extra}
    # MLflow caps a param value at 6000 characters; every value here is far shorter.
    mlflow.log_params(flatten(resolved))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "config.json"
        path.write_text(json.dumps(resolved, indent=2))
        mlflow.log_artifact(str(path))
