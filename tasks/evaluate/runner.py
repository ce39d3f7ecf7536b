"""Load the base model once and evaluate it and named adapters on one split.

The one place that turns "these adapters, this split" into scores: the CLI's `eval`, the
train-adapter flow, the cycle and bench/ all call `evaluate_adapters`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engines.engine import open_engine
from engines.transformers_runtime import BASE_ADAPTER
from evolora.settings import Settings
from tasks.evaluate.scoring import EvalResult, evaluate_candidate

# A reply of a cycle's batch work (evaluation, the champion's attempts) may queue behind a
# whole batch on a loaded machine: bounded, but far above the service's per-request limit.
BATCH_GENERATION_TIMEOUT_S = 1800.0


def evaluate_adapters(
    settings: Settings,
    model_path: str,
    rows: list[dict[str, Any]],
    adapters: Mapping[str, Path | None],
    *,
    split: str = "test",
    tags: Mapping[str, str] | None = None,
    parent_run_id: str | None = None,
) -> dict[str, EvalResult]:
    """Each named candidate's scores on `rows`: an adapter folder, or None for the base model.

    The engine is `serving.engine`'s, so what is scored is what is served. The base model is
    loaded once; all adapters are attached up front (one llama.cpp instance holds them all)
    and evaluated in turn; every evaluation is an MLflow run (under `parent_run_id` when
    given) with `tags`.
    """
    engine = open_engine(settings, model_path, adapters={
        name: adapter_dir for name, adapter_dir in adapters.items() if adapter_dir is not None},
        generation_timeout_s=BATCH_GENERATION_TIMEOUT_S)
    results: dict[str, EvalResult] = {}
    try:
        for name, adapter_dir in adapters.items():
            results[name] = evaluate_candidate(
                engine, rows, candidate=name,
                adapter=name if adapter_dir is not None else BASE_ADAPTER, split=split,
                tags=dict(tags or {}), parent_run_id=parent_run_id,
                max_new_tokens=settings.model.max_new_tokens)
    finally:
        engine.close()
    return results
