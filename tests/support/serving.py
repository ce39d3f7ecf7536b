"""Helpers for the serving tests: settings on the tiny model, real adapters in a real registry."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import mlflow
import pytest
from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient

from evolora.settings import ServingSettings, Settings, load_settings
from evolora.tracking import setup_mlflow
from tasks.registry import Candidate, register_candidate


def serving_settings(root: Path, model_dir: Path, **serving: Any) -> Settings:
    """configs/tiny.yaml on the tiny model with data and MLflow under `root`."""
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith("EVOLORA_"):
                mp.delenv(name)
        mp.setenv("EVOLORA_MODEL__BASE", str(model_dir))
        mp.setenv("EVOLORA_PATHS__DATA_DIR", str(root / "data"))
        mp.setenv("EVOLORA_PATHS__MLRUNS_DIR", str(root / "mlruns"))
        settings = load_settings("tiny")
    merged = ServingSettings(**{**settings.serving.model_dump(), **serving})
    return settings.model_copy(update={"serving": merged})


def prepare_registry(settings: Settings, empty_db: Path) -> MlflowClient:
    """A ready MLflow store for `settings` (a copied empty database: table creation is slow)."""
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    settings.paths.mlruns_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(empty_db, settings.paths.mlruns_dir / "mlflow.db")
    return setup_mlflow(settings)


def make_empty_db(folder: Path) -> Path:
    path = folder / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


def save_tiny_adapter(model_dir: Path, out_dir: Path, seed: int, **lora_options: Any) -> Path:
    """A real LoRA adapter of the tiny model (random B, so each seed changes the output).

    `lora_options` go to LoraConfig as they are (`use_dora=True`, `modules_to_save=[...]`).
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tasks.train.trainer import write_adapter_manifest

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8,
                                                  target_modules=["q_proj", "v_proj"],
                                                  **lora_options))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    peft_model.save_pretrained(str(out_dir))
    write_adapter_manifest(out_dir, {"name": out_dir.name, "seed": seed})
    return out_dir


def register_adapter(client: MlflowClient, adapter_dir: Path, name: str) -> ModelVersion:
    """Log the adapter as a run's artifact and register it as a new version."""
    with mlflow.start_run(run_name=f"train-{name}") as run:
        mlflow.log_artifacts(str(adapter_dir), artifact_path="adapter")
    return register_candidate(client, Candidate(name, adapter_dir, run.info.run_id,
                                                {"test_accuracy": 0.5},
                                                {"member": name, "generation": 0}))


def store_path(version: ModelVersion) -> Path:
    """The version's artifact folder on disk (the local store's file:// source)."""
    return Path(unquote(urlparse(version.source).path))
