"""The memory planner: micro-batch, accumulation, checkpointing and refusal, on known shapes,
checked against peaks measured on CUDA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evolora.settings import TrainSettings
from tasks.train.memory_plan import (
    GIB,
    DoesNotFit,
    ModelShape,
    estimate_parts,
    estimate_peak_bytes,
    estimate_serving_bytes,
    plan_training,
    resolve_quantization,
)
from tasks.train.model_size import (
    count_checkpoint_params,
    count_config_params,
    model_param_counts,
)
from tasks.train.reference_shapes import REFERENCE_CONFIGS, reference_config

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
    tight = plan_training(TrainSettings(batch_size=16, vram_budget_gb=5.0), QWEN_1_5B, "cuda")
    assert tight.micro_batch < roomy.micro_batch
    assert tight.effective_batch >= 16
    assert tight.estimated_peak_gib <= tight.usable_gib == 4.5


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


# --- the measured table (issue 14): build_splits + train_adapter on an H200, nf4, rank 16 on
# all 7 projections, max_length 320; torch.cuda.max_memory_reserved, without the CUDA context.
# (model, budget GiB, micro-batch, accumulation, checkpointing, peak allocated, peak reserved,
#  rows at max_length)
MEASURED = [
    ("qwen2-1.5b", 6, 8, 1, True, 5.59, 6.49, False),  # real rows, padded to ~230 tokens
    ("qwen2-1.5b", 6, 8, 1, True, 6.89, 8.16, True),
    ("qwen2-1.5b", 4, 4, 2, True, 4.53, 5.11, True),
    ("smollm2-135m", 4, 8, 1, False, 4.46, 5.31, True),
    ("qwen2.5-3b", 6, 4, 2, True, 5.91, 6.54, True),
    ("qwen2.5-3b", 4, 2, 4, True, 4.64, 5.04, True),
]
# After loading, before training: memory allocated by the 4-bit base (fp32 embedding inside).
MEASURED_BASE_GIB = {"qwen2-1.5b": 1.58, "qwen2.5-3b": 2.62}
TABLE_TRAIN = TrainSettings(rank=16, max_length=320, batch_size=8, quantization="nf4")


def shape(name: str) -> ModelShape:
    return ModelShape.from_config(reference_config(name))


@pytest.mark.parametrize("measured", MEASURED, ids=lambda m: f"{m[0]}-{m[2]}x{m[3]}")
def test_the_estimate_covers_every_measured_peak_reserved(measured: tuple) -> None:
    name, _budget, micro, _accum, checkpointing, allocated, reserved, full_rows = measured
    parts = estimate_parts(shape(name), TABLE_TRAIN, "nf4", micro, checkpointing, "cuda",
                           precision="bf16")
    without_context = sum(parts.values()) - parts["cuda_context"]
    assert without_context / GIB >= reserved, parts
    assert reserved > allocated
    if full_rows:  # rows at max_length, what the planner plans for
        # Not by padding everything: at most a quarter above what the card held.
        assert without_context / GIB <= 1.25 * reserved, parts


@pytest.mark.parametrize("name", sorted(MEASURED_BASE_GIB))
def test_the_base_is_charged_its_fp32_embedding(name: str) -> None:
    base = estimate_parts(shape(name), TABLE_TRAIN, "nf4", 1, True, "cuda")["base"] / GIB
    assert MEASURED_BASE_GIB[name] <= base <= MEASURED_BASE_GIB[name] * 1.05


@pytest.mark.parametrize("budget", [4.0, 6.0])
@pytest.mark.parametrize("name", sorted(REFERENCE_CONFIGS))
def test_no_plan_is_one_the_table_measured_over_its_budget(name: str, budget: float) -> None:
    train = TABLE_TRAIN.model_copy(update={"vram_budget_gb": budget})
    try:
        plan = plan_training(train, shape(name), "cuda")
    except DoesNotFit:
        return  # refused before it starts: never over budget
    assert plan.estimated_peak_gib <= plan.usable_gib < budget
    for model, _b, micro, _accum, checkpointing, _alloc, reserved, _full in MEASURED:
        if model == name and reserved + 0.5 > budget:  # the context comes on top
            assert (plan.micro_batch, plan.gradient_checkpointing) != (micro, checkpointing)
            # A plan at least as heavy as one measured over budget is never taken.
            assert not (plan.micro_batch >= micro and checkpointing >= plan.gradient_checkpointing)


def test_the_laptop_shapes_plan_as_expected() -> None:
    """What a 6 GiB budget trains at max_length 320, rank 16 on all 7 projections."""
    train = TABLE_TRAIN.model_copy(update={"vram_budget_gb": 6.0})
    plans = {name: plan_training(train, shape(name), "cuda")
             for name in ("smollm2-135m", "qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-3b")}
    assert {n: (p.micro_batch, p.grad_accum) for n, p in plans.items()} == {
        "smollm2-135m": (8, 1), "qwen2.5-0.5b": (4, 2), "qwen2.5-1.5b": (2, 4),
        "qwen2.5-3b": (1, 8)}
    assert all(p.gradient_checkpointing for p in plans.values())
    with pytest.raises(DoesNotFit, match=r"frozen base alone ~7\.\d GiB"):
        plan_training(train, shape("qwen2.5-7b"), "cuda")


def test_serving_in_4bit_is_lighter_than_training_and_bf16() -> None:
    qwen3b = shape("qwen2.5-3b")
    four_bit = estimate_serving_bytes(qwen3b, "nf4")
    assert four_bit < estimate_serving_bytes(qwen3b, "none")
    assert four_bit / GIB < 6 * 0.9  # a 3B base evaluates and serves on a 6 GB card in 4-bit
    assert estimate_serving_bytes(qwen3b, "none") / GIB > 6  # in bf16 it does not


# --- parameter counts -----------------------------------------------------------------------


@pytest.mark.parametrize("name,expected", [("smollm2-135m", 134_515_008),
                                           ("qwen2-1.5b", 1_543_714_304),
                                           ("qwen2.5-7b", 7_615_616_512)])
def test_config_arithmetic_gives_the_published_parameter_counts(name: str,
                                                                expected: int) -> None:
    assert count_config_params(reference_config(name)).total == expected


def test_config_arithmetic_matches_a_real_model_of_each_family() -> None:
    import torch
    from transformers import AutoModelForCausalLM

    for name in ("smollm2-135m", "qwen2.5-7b"):  # tied llama; untied qwen2 with biases
        config = reference_config(name)
        small = {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
                 "vocab_size": 500, "head_dim": 16, "num_attention_heads": 4,
                 "num_key_value_heads": 2}
        for key, value in small.items():
            setattr(config, key, value)
        model = AutoModelForCausalLM.from_config(config)
        head = model.get_output_embeddings()
        linear = sum(m.weight.numel() for m in model.modules()
                     if isinstance(m, torch.nn.Linear) and m is not head)
        counts = count_config_params(config)
        assert (counts.total, counts.quantizable) == (
            sum(p.numel() for p in model.parameters()), linear)


def test_a_sharded_checkpoint_is_counted_from_its_index(tmp_path: Path,
                                                        tiny_model_dir: Path) -> None:
    """Every real 1.5B+ checkpoint is sharded: the count must not be 0."""
    from transformers import AutoConfig, AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    expected = sum(p.numel() for p in model.parameters())
    model.save_pretrained(tmp_path / "sharded", max_shard_size="1MB")
    assert json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert not (tmp_path / "sharded" / "model.safetensors").exists()
    assert count_checkpoint_params(tmp_path / "sharded") == expected
    assert count_checkpoint_params(tiny_model_dir) == expected  # one file

    # Weights absent (a config written out to plan for a model not downloaded): the config.
    config = AutoConfig.from_pretrained(tiny_model_dir)
    (tmp_path / "config-only").mkdir()
    config.save_pretrained(tmp_path / "config-only")
    assert count_checkpoint_params(tmp_path / "config-only") is None
    assert model_param_counts(tmp_path / "config-only", config).total == expected
    # A shard missing: not counted as a smaller model.
    next((tmp_path / "sharded").glob("model-00001-*.safetensors")).unlink()
    assert count_checkpoint_params(tmp_path / "sharded") is None


def test_bench_plan_only_lists_every_shape_and_budget_within_budget() -> None:
    """What `bench/vram.py --plan-only` prints (its own function, on the laptop profile)."""
    import importlib.util

    from evolora.paths import PROJECT_ROOT

    spec = importlib.util.spec_from_file_location("bench_vram", PROJECT_ROOT / "bench/vram.py")
    assert spec and spec.loader
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    entries = [bench.plan_entry(name, budget, "laptop-6gb")
               for name in bench.MODELS for budget in (4.0, 6.0)]
    assert [(e["model"], e["budget_gib"]) for e in entries] == [
        (name, budget) for name in ("smollm2-135m", "qwen2.5-0.5b", "qwen2.5-1.5b",
                                    "qwen2.5-3b", "qwen2.5-7b") for budget in (4.0, 6.0)]
    assert {(e["max_length"], e["rank"], e["targets"]) for e in entries} == {(320, 16, 7)}
    measured_over = {(m[0].replace("qwen2-", "qwen2.5-"), float(m[1]), m[2], m[4])
                     for m in MEASURED if m[6] + 0.5 > m[1]}
    for entry in entries:
        key = (entry["model"], entry["budget_gib"], entry["micro_batch"],
               entry["checkpointing"])
        if entry["fits"]:
            assert entry["estimate_gib"] <= entry["usable_gib"] < entry["budget_gib"]
            assert key not in measured_over
        else:  # refused, and it says how far off it is
            assert entry["estimate_gib"] is None and "GiB budget" in entry["reason"]
    fitting = {(e["model"], e["budget_gib"]) for e in entries if e["fits"]}
    assert fitting == {("smollm2-135m", 4.0), ("smollm2-135m", 6.0), ("qwen2.5-0.5b", 4.0),
                       ("qwen2.5-0.5b", 6.0), ("qwen2.5-1.5b", 6.0), ("qwen2.5-3b", 6.0)}
