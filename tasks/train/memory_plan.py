"""Pick micro-batch, gradient accumulation, checkpointing and quantisation from a memory budget.

The estimate is deliberately simple and conservative (bytes per parameter for the frozen
base, 16 bytes per trainable LoRA parameter for weight + gradient + two Adam moments,
activations per token per layer, and the fp32 logits, which dominate for a 49k vocabulary).
A run that cannot fit even at micro-batch 1 with checkpointing is refused before it starts.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

from evolora.settings import TrainSettings

GIB = 2**30
BYTES_PER_BASE_PARAM = {"nf4": 0.56, "int8": 1.05, "none": 2.0}  # bf16 when not quantised
LORA_BYTES_PER_PARAM = 16  # fp32 weight, gradient, Adam m and v
CUDA_CONTEXT_BYTES = 0.5 * GIB
DEFAULT_EFFECTIVE_BATCH = 8


class DoesNotFit(RuntimeError):
    """The training cannot fit the memory budget; the message says what would."""


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs to know about the base model."""

    n_params: int
    hidden_size: int
    n_layers: int
    vocab_size: int
    intermediate_size: int

    @classmethod
    def from_config(cls, config: Any, n_params: int) -> ModelShape:
        return cls(n_params, config.hidden_size, config.num_hidden_layers, config.vocab_size,
                   getattr(config, "intermediate_size", 4 * config.hidden_size))


@dataclass(frozen=True)
class TrainPlan:
    """How a training run will use memory, and why."""

    device: str
    quantization: Literal["none", "nf4", "int8"]
    micro_batch: int
    grad_accum: int
    gradient_checkpointing: bool
    estimated_peak_gib: float
    budget_gib: float
    mixed_precision: Literal["bf16", "fp16", "fp32"]

    @property
    def effective_batch(self) -> int:
        return self.micro_batch * self.grad_accum

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "effective_batch": self.effective_batch}


def lora_param_count(shape: ModelShape, rank: int, targets: list[str]) -> int:
    """Trainable parameters of a LoRA of `rank` on the named projections of every layer."""
    h, i = shape.hidden_size, shape.intermediate_size
    # (in, out) per projection; k/v may be narrower with GQA, so this over-counts slightly.
    dims = {"q_proj": (h, h), "k_proj": (h, h), "v_proj": (h, h), "o_proj": (h, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}
    per_layer = sum(rank * sum(dims.get(t, (h, h))) for t in targets)
    return per_layer * shape.n_layers


def estimate_peak_bytes(shape: ModelShape, train: TrainSettings, quantization: str,
                        micro_batch: int, checkpointing: bool, device: str) -> float:
    """A conservative peak-memory estimate for one optimisation step."""
    tokens = micro_batch * train.max_length
    base = shape.n_params * BYTES_PER_BASE_PARAM[quantization]
    lora = lora_param_count(shape, train.rank, train.target_modules) * LORA_BYTES_PER_PARAM
    # ~34 bytes per hidden unit per token per layer in 16-bit (attention + MLP saved
    # tensors); checkpointing keeps one layer's worth plus each layer's input.
    per_layer = 34 * shape.hidden_size * tokens
    activations = (per_layer + 2 * shape.hidden_size * tokens * shape.n_layers
                   if checkpointing else per_layer * shape.n_layers)
    logits = tokens * shape.vocab_size * 4 * 2  # fp32 logits and their gradient
    overhead = CUDA_CONTEXT_BYTES if device == "cuda" else 0.0
    return base + lora + activations + logits + overhead


def resolve_quantization(train: TrainSettings, device: str) -> Literal["none", "nf4", "int8"]:
    """`auto` is NF4 QLoRA on CUDA and plain LoRA elsewhere."""
    if train.quantization == "auto":
        return "nf4" if device == "cuda" else "none"
    return train.quantization


def plan_training(train: TrainSettings, shape: ModelShape, device: str,
                  available_bytes: float | None = None) -> TrainPlan:
    """The largest micro-batch (checkpointing only if needed) that fits the budget.

    On CUDA the budget is `train.vram_budget_gb`; on CPU it is the RAM available now.
    """
    quantization = resolve_quantization(train, device)
    if device == "cuda":
        budget = train.vram_budget_gb * GIB
    else:
        budget = available_bytes if available_bytes is not None else _available_ram()
    effective = train.batch_size or DEFAULT_EFFECTIVE_BATCH
    if train.grad_accum:
        candidates = [max(1, effective // train.grad_accum)]
    else:
        candidates = sorted({max(1, effective // 2**k) for k in range(8)}, reverse=True)
    checkpoint_options = ([train.gradient_checkpointing]
                          if train.gradient_checkpointing is not None else [False, True])
    for micro in candidates:
        for checkpointing in checkpoint_options:
            peak = estimate_peak_bytes(shape, train, quantization, micro, checkpointing, device)
            if peak <= budget:
                return TrainPlan(
                    device=device,
                    quantization=quantization,
                    micro_batch=micro,
                    grad_accum=train.grad_accum or math.ceil(effective / micro),
                    gradient_checkpointing=checkpointing,
                    estimated_peak_gib=round(peak / GIB, 2),
                    budget_gib=round(budget / GIB, 2),
                    mixed_precision=_mixed_precision(device),
                )
    smallest = estimate_peak_bytes(shape, train, quantization, 1, True, device)
    raise DoesNotFit(
        f"training needs ~{smallest / GIB:.1f} GiB even at micro-batch 1 with gradient "
        f"checkpointing, over the {budget / GIB:.1f} GiB budget; lower train.max_length "
        f"(now {train.max_length}) or train.rank (now {train.rank}), use "
        f"train.quantization: nf4, or raise train.vram_budget_gb"
    )


def _available_ram() -> float:
    import psutil

    return float(psutil.virtual_memory().available) * 0.8


def _mixed_precision(device: str) -> Literal["bf16", "fp16", "fp32"]:
    """bf16 where the device computes it natively; else fp16 on a GPU, fp32 on a CPU (a
    CPU without AVX-512 BF16 emulates bf16 many times slower than it runs float32)."""
    from engines.transformers_runtime import native_bf16

    if native_bf16(device):
        return "bf16"
    return "fp16" if device == "cuda" else "fp32"
