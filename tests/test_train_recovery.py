"""Training out of GPU memory goes on with a lighter plan; the schedule never runs at lr 0.

The out-of-memory errors are injected (`train.fault_oom_steps`): on this CPU-only machine
`torch.cuda.OutOfMemoryError` is raised inside the training step, after the forward pass,
and everything after it (freeing, re-planning, the resume checkpoint, the Trainer resuming,
the MLflow records, the adapter files) is the real path. Tiny model, seconds per test.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from evolora.settings import Settings
from evolora.tracking import setup_mlflow
from tasks.train.callbacks import warmup_factor
from tasks.train.trainer import (
    read_adapter_manifest,
    train_adapter,
    verify_adapter_files,
)
from tests.support.training import with_train


def history(run_id: str, metric: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in MlflowClient().get_metric_history(run_id, metric)]


def test_out_of_memory_at_step_3_finishes_with_half_the_micro_batch(
    tiny_settings: Settings, tiny_train_rows: Any
) -> None:
    settings = with_train(tiny_settings, max_steps=4, batch_size=4, logging_steps=1,
                          fault_oom_steps=[3])
    setup_mlflow(settings)
    adapters = settings.paths.data_dir / "adapters"
    result = train_adapter(settings, settings.model.base, tiny_train_rows, adapters, "oom")

    assert (result.plan.micro_batch, result.plan.grad_accum) == (2, 2)  # effective batch kept
    assert [(f["step"], f["change"], f["resumed_from_step"]) for f in result.oom_fallbacks] == [
        (3, "micro_batch 4 -> 2, grad_accum 1 -> 2", 2)]
    # The adapter is whole, and nothing half-written is left beside it.
    assert verify_adapter_files(result.adapter_dir) == []
    assert [p.name for p in adapters.iterdir()] == ["oom"]
    manifest = read_adapter_manifest(result.adapter_dir)
    assert manifest["plan"]["micro_batch"] == 2
    assert manifest["oom_fallbacks"][0]["error"].startswith("CUDA out of memory (injected")

    run = MlflowClient().get_run(result.run_id)
    assert run.data.tags["evolora.oom_fallback.1"] == (
        "out of memory at step 3: micro_batch 4 -> 2, grad_accum 1 -> 2; resumed from step 2")
    assert run.data.params["run.plan.micro_batch"] == "4"  # what it started with
    assert run.data.params["final_plan.micro_batch"] == "2"  # what it finished with
    assert run.data.metrics["oom_fallbacks"] == 1
    # Resumed, not restarted: each step ran once, and the schedule went on where it was.
    assert [step for step, _ in history(result.run_id, "loss")] == [1, 2, 3, 4]
    lr = settings.train.learning_rate
    lrs = history(result.run_id, "learning_rate")
    assert [step for step, _ in lrs] == [1, 2, 3, 4]
    assert [value for _, value in lrs] == pytest.approx(
        [lr * warmup_factor(s, warmup=1, total=4, kind="cosine") for s in range(4)])
    # No step at lr 0: transformers' own warm-up ran step 1 at 0 (it changed nothing).
    assert lrs[0][1] == pytest.approx(lr / 2) and lrs[1][1] == pytest.approx(lr)
    assert lrs[-1][1] == pytest.approx(lr * 0.5 * (1 + math.cos(math.pi * 2 / 3)))
    assert all(value > 0 for _, value in lrs)


def test_repeated_out_of_memory_walks_the_whole_ladder_to_a_lighter_base(
    tiny_settings: Settings, tiny_train_rows: Any, tiny_model_dir: Path, tmp_path: Path
) -> None:
    lighter = tmp_path / "lighter-base"
    shutil.copytree(tiny_model_dir, lighter)
    settings = with_train(tiny_settings, max_steps=6, batch_size=2, logging_steps=1,
                          max_length=256, oom_min_max_length=64, fallback_bases=[str(lighter)],
                          fault_oom_steps=[2, 3, 4, 5])
    setup_mlflow(settings)
    result = train_adapter(settings, settings.model.base, tiny_train_rows,
                           settings.paths.data_dir / "adapters", "ladder")

    changes = [f["change"] for f in result.oom_fallbacks]
    assert changes == ["micro_batch 2 -> 1, grad_accum 1 -> 2", "gradient_checkpointing on",
                       # Not 128: the longest prompt (117 tokens) and 32 tokens of reply.
                       "max_length 256 -> 149",
                       f"base model {settings.model.base} -> {lighter}"]
    # The same base resumes its last completed step; another base starts again at step 0.
    assert [f["resumed_from_step"] for f in result.oom_fallbacks] == [1, 2, 3, 0]
    assert result.base_model == str(lighter)
    assert read_adapter_manifest(result.adapter_dir)["base_model"] == str(lighter)
    assert verify_adapter_files(result.adapter_dir) == []
    steps = [step for step, _ in history(result.run_id, "loss")]
    assert steps == [1, 2, 3, 4, 1, 2, 3, 4, 5, 6]  # 4 on the first base, 6 on the lighter
    assert MlflowClient().get_run(result.run_id).data.tags["evolora.oom_fallbacks"] == "4"
    # tokens/s is the last attempt's, timed over its 4 steps after 2 warm-up steps.
    assert result.metrics["train_timed_steps"] == 4
    assert result.metrics["train_timing_includes_warmup"] == 0
    assert result.metrics["train_tokens_per_s"] > 0


def test_out_of_memory_with_no_fallback_left_fails_and_leaves_no_adapter(
    tiny_settings: Settings, tiny_train_rows: Any
) -> None:
    from tasks.train import TrainingOutOfMemory

    settings = with_train(tiny_settings, batch_size=1, gradient_checkpointing=True,
                          max_length=149, fault_oom_steps=[1])
    setup_mlflow(settings)
    adapters = settings.paths.data_dir / "adapters"
    with pytest.raises(TrainingOutOfMemory, match="lightest plan left"):
        train_adapter(settings, settings.model.base, tiny_train_rows, adapters, "doomed")
    assert list(adapters.iterdir()) == []
    runs = MlflowClient().search_runs(
        [MlflowClient().get_experiment_by_name("evolora").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]


@pytest.mark.gpu
def test_a_real_cuda_out_of_memory_is_recovered_within_the_cap(
    tiny_settings: Settings, tiny_train_rows: Any
) -> None:
    """On a CUDA machine: the allocator capped at 256 MiB, micro-batch 8 of the 49k-vocabulary
    logits (~0.6 GB) runs out of memory for real, and the run finishes on a smaller plan."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    settings = with_train(tiny_settings, quantization="nf4", batch_size=8, max_steps=3,
                          logging_steps=1)
    setup_mlflow(settings)
    cap = 256 * 2**20
    torch.cuda.set_per_process_memory_fraction(
        cap / torch.cuda.get_device_properties(0).total_memory)
    try:
        result = train_adapter(settings, settings.model.base, tiny_train_rows,
                               settings.paths.data_dir / "adapters", "cuda-oom")
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    assert result.plan.device == "cuda" and result.plan.micro_batch < 8
    assert result.oom_fallbacks and result.oom_fallbacks[0]["change"].startswith("micro_batch")
    assert result.metrics["peak_vram_reserved_mb"] <= 256
    assert verify_adapter_files(result.adapter_dir) == []


def test_a_run_that_continues_an_adapter_peaks_at_the_continuation_rate(
    tiny_settings: Settings, tiny_train_rows: Any
) -> None:
    # A night's warm start continues the champion: at the full rate it would move as far as
    # the champion's whole training did (and, measured, unlearn skills the champion had).
    settings = with_train(tiny_settings, max_steps=4, batch_size=2, logging_steps=1,
                          continue_lr_scale=0.25)
    setup_mlflow(settings)
    adapters = settings.paths.data_dir / "adapters"
    fresh = train_adapter(settings, settings.model.base, tiny_train_rows, adapters, "fresh")
    continued = train_adapter(settings, settings.model.base, tiny_train_rows, adapters, "continued",
                              init_adapter=fresh.adapter_dir)

    lr = settings.train.learning_rate
    assert max(v for _, v in history(fresh.run_id, "learning_rate")) == pytest.approx(lr)
    assert [v for _, v in history(continued.run_id, "learning_rate")] == pytest.approx(
        [0.25 * lr * warmup_factor(s, warmup=1, total=4, kind="cosine") for s in range(4)])
    params = MlflowClient().get_run(continued.run_id).data.params
    assert float(params["run.peak_learning_rate"]) == pytest.approx(0.25 * lr)
    assert params["run.continues"] == str(fresh.adapter_dir)
    assert MlflowClient().get_run(fresh.run_id).data.params["run.continues"] == "None"
