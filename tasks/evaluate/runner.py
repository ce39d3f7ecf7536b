"""Load the base model once and evaluate it and named adapters on one split.

The one place that turns "these adapters, this split" into scores: the CLI's `eval`, the
train-adapter flow, the cycle and bench/ all call `evaluate_adapters`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engines.transformers_runtime import BASE_ADAPTER, ModelRuntime
from evolora.settings import ModelSettings
from tasks.evaluate.scoring import EvalResult, evaluate_candidate


def evaluate_adapters(
    model: ModelSettings,
    model_path: str,
    rows: list[dict[str, Any]],
    adapters: Mapping[str, Path | None],
    *,
    split: str = "test",
    tags: Mapping[str, str] | None = None,
    parent_run_id: str | None = None,
) -> dict[str, EvalResult]:
    """Each named candidate's scores on `rows`: an adapter folder, or None for the base model.

    The base model is loaded once; each adapter is attached, evaluated and detached in turn,
    and every evaluation is an MLflow run (under `parent_run_id` when given) with `tags`.
    """
    runtime = ModelRuntime.load(model_path, model.dtype)
    results: dict[str, EvalResult] = {}
    for name, adapter_dir in adapters.items():
        active = BASE_ADAPTER
        if adapter_dir is not None:
            runtime.attach(name, adapter_dir)
            active = name
        results[name] = evaluate_candidate(
            runtime, rows, candidate=name, adapter=active, split=split, tags=dict(tags or {}),
            parent_run_id=parent_run_id, max_new_tokens=model.max_new_tokens)
        if adapter_dir is not None:
            runtime.detach(name)
    return results
