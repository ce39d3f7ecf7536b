"""The memory planner: micro-batch, accumulation, checkpointing and refusal, on known shapes."""

from __future__ import annotations

import pytest

from evolora.settings import TrainSettings
from tasks.train.memory_plan import (
    GIB,
    DoesNotFit,
    ModelShape,
    estimate_peak_bytes,
    plan_training,
    resolve_quantization,
)

SMOLLM2_135M = ModelShape(n_params=134_515_008, hidden_size=576, n_layers=30,
                          vocab_size=49_152, intermediate_size=1536)
QWEN_1_5B = ModelShape(n_params=1_543_714_304, hidden_size=1536, n_layers=28,
                       vocab_size=151_936, intermediate_size=8960)


def test_auto_quantization_is_nf4_on_cuda_and_none_on_cpu() -> None:
    train = TrainSettings()
    assert resolve_quantization(train, "cuda") == "nf4"
    assert resolve_quantization(train, "cpu") == "none"
    assert resolve_quantization(TrainSettings(quantization="int8"), "cpu") == "int8"


def test_small_model_fits_4gb_budget_at_full_batch() -> None:
    plan = plan_training(TrainSettings(batch_size=8, vram_budget_gb=4.0), SMOLLM2_135M, "cuda")
    assert plan.quantization == "nf4"
    assert plan.micro_batch == 8 and plan.grad_accum == 1
    assert plan.estimated_peak_gib <= 4.0


def test_tight_budget_shrinks_micro_batch_and_keeps_effective_batch() -> None:
    roomy = plan_training(TrainSettings(batch_size=16, vram_budget_gb=16.0), QWEN_1_5B, "cuda")
    tight = plan_training(TrainSettings(batch_size=16, vram_budget_gb=4.0), QWEN_1_5B, "cuda")
    assert tight.micro_batch < roomy.micro_batch
    assert tight.effective_batch >= 16
    assert tight.estimated_peak_gib <= 4.0


def test_checkpointing_lowers_the_estimate() -> None:
    train = TrainSettings(max_length=1024)
    without = estimate_peak_bytes(QWEN_1_5B, train, "nf4", 4, False, "cuda")
    with_ckpt = estimate_peak_bytes(QWEN_1_5B, train, "nf4", 4, True, "cuda")
    assert with_ckpt < without


def test_run_that_cannot_fit_is_refused_before_it_starts() -> None:
    train = TrainSettings(max_length=4096, vram_budget_gb=1.0, quantization="none")
    with pytest.raises(DoesNotFit, match=r"train\.max_length") as info:
        plan_training(train, QWEN_1_5B, "cuda")
    assert "1.0 GiB budget" in str(info.value)


def test_cpu_budget_is_available_ram() -> None:
    plan = plan_training(TrainSettings(batch_size=8), SMOLLM2_135M, "cpu",
                         available_bytes=20 * GIB)
    assert plan.device == "cpu" and plan.quantization == "none"
    assert plan.budget_gib == 20.0
    with pytest.raises(DoesNotFit):
        plan_training(TrainSettings(batch_size=8), SMOLLM2_135M, "cpu",
                      available_bytes=0.1 * GIB)


def test_a_cpu_without_native_bf16_computes_in_float32() -> None:
    """bf16 is emulated (47x slower for a LoRA step, measured on an AVX2-only EPYC) where
    the CPU lacks AVX-512 BF16: training and inference then run in float32."""
    from engines.transformers_runtime import native_bf16, runtime_dtype

    native = native_bf16("cpu")
    plan = plan_training(TrainSettings(batch_size=8), SMOLLM2_135M, "cpu",
                         available_bytes=20 * GIB)
    assert plan.mixed_precision == ("bf16" if native else "fp32")
    assert runtime_dtype("bfloat16", "cpu") == ("bfloat16" if native else "float32")
    assert runtime_dtype("float32", "cpu") == "float32"
    assert runtime_dtype("float16", "cpu") == "float16"
