"""Prefect tasks both flows run: the base model and the data splits."""

from __future__ import annotations

from prefect import task

from evolora.models import PACKAGED_MODELS, prepare_model, resolve_base_model
from evolora.settings import Settings
from tasks.records import DataSplits


@task(name="prepare-base-model", retries=1, retry_delay_seconds=2)
def prepare_base_model(settings: Settings) -> str:
    """The base model's folder, preparing the packaged GGUF first where needed."""
    if settings.model.base in PACKAGED_MODELS:
        prepare_model(settings.model.base, settings.paths.models_dir, settings.model.dtype)
    return resolve_base_model(settings.model.base, settings.paths.models_dir)


@task(name="generate-data")
def generate_data(settings: Settings, parent_run_id: str | None = None,
                  train_seed: int | None = None) -> DataSplits:
    """Verified train/eval splits and the frozen test set, logged as MLflow dataset inputs
    (`train_seed`: the training problems' seed, default `data.seed`)."""
    from tasks.data import build_and_log_splits

    return build_and_log_splits(settings, parent_run_id=parent_run_id, train_seed=train_seed)
