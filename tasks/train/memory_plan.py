"""Pick micro-batch, gradient accumulation, checkpointing and quantisation from a memory budget.

On CUDA the estimate is what the card must hold at the peak of one optimisation step: the
memory PyTorch's caching allocator *reserves* (allocated plus its reserve) and the CUDA
context on top. Each part is modelled from how the training path stores it:

- the frozen base: NF4 weights of the decoder's linear layers (0.59 bytes per parameter,
  measured), and everything bitsandbytes leaves unquantised (embeddings, an untied head,
  norms, biases) in fp32, because PEFT's k-bit preparation casts it to fp32;
- the LoRA weights, their gradients and two Adam moments (16 bytes per parameter), and the
  optimizer's temporaries;
- activations: ~52 bytes per hidden unit and 8 per intermediate unit per token per layer
  (16-bit compute, fp32 residual stream); with gradient checkpointing each layer's input
  (the fp32 residual) plus one layer recomputed;
- the logits at max_length: 12 bytes per vocabulary entry per token (bf16 logits, the
  loss's fp32 copy and log-softmax, their gradients), which dominate for a 150k vocabulary;
- the allocator's reserve (35% on top of the per-step tensors, 5% on the resident ones) and
  a fixed workspace (cuBLAS, a dequantised 4-bit weight), then the CUDA context (0.5 GiB).

The constants are checked against peaks measured on CUDA (`tests/test_memory_plan.py`: the
estimate without the context is at or above each measured peak reserved). A plan is taken
only if its estimate is at most (1 - `train.vram_safety_margin`) of the budget; a run that
cannot fit even at micro-batch 1 with checkpointing is refused before it starts.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

from evolora.settings import TrainSettings
from tasks.train.model_size import ParamCounts

GIB = 2**30
BYTES_PER_QUANTIZED_PARAM = {"nf4": 0.59, "int8": 1.1}
KBIT_UNQUANTIZED_BYTES = 4  # PEFT's prepare_model_for_kbit_training casts them to fp32
LORA_BYTES_PER_PARAM = 16  # fp32 weight, gradient, Adam m and v
OPTIMIZER_TEMP_BYTES_PER_PARAM = 8  # AdamW's foreach temporaries
LAYER_BYTES_PER_HIDDEN = 52  # saved for backward per token per layer, 16-bit compute
LAYER_BYTES_PER_INTERMEDIATE = 8
CHECKPOINT_BYTES_PER_HIDDEN = 4  # a checkpointed layer keeps its input: the fp32 residual
HEAD_BYTES_PER_HIDDEN = 14  # final norm, the head's input, the hidden state's gradients
LOGIT_BYTES_16BIT = 12  # bf16 logits, fp32 copy and log-softmax, their gradients
LOGIT_BYTES_FP32 = 16
CUDA_WORKSPACE_BYTES = 0.125 * GIB
ALLOCATOR_RESERVE_TRANSIENT = 0.35  # measured reserved/allocated on the per-step tensors
ALLOCATOR_RESERVE_RESIDENT = 0.05
CUDA_CONTEXT_BYTES = 0.5 * GIB
DEFAULT_EFFECTIVE_BATCH = 8

Quantization = Literal["none", "nf4", "int8"]
Precision = Literal["bf16", "fp16", "fp32"]


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
    kv_size: int | None = None  # k/v projection width (GQA); None: hidden_size
    quantizable_params: int | None = None  # decoder linear weights; None: all but a tied embedding

    @classmethod
    def from_config(cls, config: Any, n_params: int | ParamCounts | None = None) -> ModelShape:
        """The shape of `config`; `n_params` as counted from the checkpoint (None: the
        config's own count)."""
        from tasks.train.model_size import count_config_params

        counts = n_params if isinstance(n_params, ParamCounts) else count_config_params(config)
        total = n_params if isinstance(n_params, int) and n_params > 0 else counts.total
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        return cls(total, config.hidden_size, config.num_hidden_layers, config.vocab_size,
                   getattr(config, "intermediate_size", None) or 4 * config.hidden_size,
                   kv_size=kv_heads * head_dim,
                   quantizable_params=min(counts.quantizable, total))

    @property
    def quantizable(self) -> int:
        if self.quantizable_params is not None:
            return self.quantizable_params
        return max(0, self.n_params - self.vocab_size * self.hidden_size)


@dataclass(frozen=True)
class TrainPlan:
    """How a training run will use memory, and why."""

    device: str
    quantization: Quantization
    micro_batch: int
    grad_accum: int
    gradient_checkpointing: bool
    estimated_peak_gib: float
    budget_gib: float
    mixed_precision: Precision
    max_length: int = 0  # 0: train.max_length
    usable_gib: float = 0.0  # the budget less the safety margin: what the estimate must fit

    @property
    def effective_batch(self) -> int:
        return self.micro_batch * self.grad_accum

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "effective_batch": self.effective_batch}


def lora_param_count(shape: ModelShape, rank: int, targets: list[str]) -> int:
    """Trainable parameters of a LoRA of `rank` on the named projections of every layer."""
    h, i = shape.hidden_size, shape.intermediate_size
    kv = shape.kv_size or h
    dims = {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}
    per_layer = sum(rank * sum(dims.get(t, (h, h))) for t in targets)
    return per_layer * shape.n_layers


def estimate_parts(shape: ModelShape, train: TrainSettings, quantization: str, micro_batch: int,
                   checkpointing: bool, device: str, *, max_length: int | None = None,
                   precision: Precision | None = None) -> dict[str, float]:
    """The estimate's parts in bytes (`estimate_peak_bytes` is their sum)."""
    precision = precision or _mixed_precision(device)
    compute_bytes = 4 if precision == "fp32" else 2
    tokens = micro_batch * (max_length or train.max_length)
    h, i, layers = shape.hidden_size, shape.intermediate_size, shape.n_layers
    unquantized = shape.n_params - shape.quantizable
    if quantization in BYTES_PER_QUANTIZED_PARAM:
        base = (shape.quantizable * BYTES_PER_QUANTIZED_PARAM[quantization]
                + unquantized * KBIT_UNQUANTIZED_BYTES)
    else:
        base = shape.n_params * compute_bytes
    lora_params = lora_param_count(shape, train.rank, train.target_modules)
    one_layer = (LAYER_BYTES_PER_HIDDEN * h + LAYER_BYTES_PER_INTERMEDIATE * i) * compute_bytes / 2
    if checkpointing:
        activations = tokens * (layers * CHECKPOINT_BYTES_PER_HIDDEN * h + one_layer)
    else:
        activations = tokens * layers * one_layer
    logit_bytes = LOGIT_BYTES_FP32 if precision == "fp32" else LOGIT_BYTES_16BIT
    parts = {
        "base": base,
        "lora_and_adam": lora_params * LORA_BYTES_PER_PARAM,
        "optimizer_temporaries": lora_params * OPTIMIZER_TEMP_BYTES_PER_PARAM,
        "activations": activations,
        "head": tokens * HEAD_BYTES_PER_HIDDEN * h,
        "logits": tokens * shape.vocab_size * logit_bytes,
    }
    if device == "cuda":
        resident = parts["base"] + parts["lora_and_adam"] + parts["optimizer_temporaries"]
        transient = parts["activations"] + parts["head"] + parts["logits"]
        # A dequantised weight of the largest projection and its gradient: 4 bytes a unit.
        parts["workspace"] = CUDA_WORKSPACE_BYTES + 4 * h * i
        parts["allocator_reserve"] = (ALLOCATOR_RESERVE_RESIDENT * resident
                                      + ALLOCATOR_RESERVE_TRANSIENT * transient)
        parts["cuda_context"] = CUDA_CONTEXT_BYTES
    return parts


def estimate_peak_bytes(shape: ModelShape, train: TrainSettings, quantization: str,
                        micro_batch: int, checkpointing: bool, device: str, *,
                        max_length: int | None = None, precision: Precision | None = None
                        ) -> float:
    """The peak memory of one optimisation step: on CUDA, peak reserved plus the context."""
    return sum(estimate_parts(shape, train, quantization, micro_batch, checkpointing, device,
                              max_length=max_length, precision=precision).values())


def estimate_serving_bytes(shape: ModelShape, quantization: str, *, slots: int = 1,
                           context_tokens: int = 2048) -> float:
    """What serving (or evaluating) the base on CUDA with the transformers engine holds:
    the weights (4-bit linear layers, the rest in bf16: no fp32 cast outside training), a
    bf16 KV cache of `slots` x `context_tokens`, the prompt pass's activations and logits,
    the allocator's reserve and the CUDA context."""
    if quantization in BYTES_PER_QUANTIZED_PARAM:
        weights = (shape.quantizable * BYTES_PER_QUANTIZED_PARAM[quantization]
                   + (shape.n_params - shape.quantizable) * 2)
    else:
        weights = shape.n_params * 2
    kv = shape.kv_size or shape.hidden_size
    tokens = slots * context_tokens
    kv_cache = 2 * shape.n_layers * kv * 2 * tokens
    # One prompt pass: a layer's hidden and MLP tensors, and the last position's logits.
    prompt_pass = tokens * (8 * shape.hidden_size + 6 * shape.intermediate_size)
    logits = slots * shape.vocab_size * 4 * 2
    transient = kv_cache + prompt_pass + logits
    reserve = ALLOCATOR_RESERVE_RESIDENT * weights + ALLOCATOR_RESERVE_TRANSIENT * transient
    return weights + transient + reserve + CUDA_WORKSPACE_BYTES + CUDA_CONTEXT_BYTES


def resolve_quantization(train: TrainSettings, device: str) -> Quantization:
    """`auto` is NF4 QLoRA on CUDA and plain LoRA elsewhere."""
    if train.quantization == "auto":
        return "nf4" if device == "cuda" else "none"
    return train.quantization


def usable_bytes(train: TrainSettings, device: str, available_bytes: float | None = None
                 ) -> tuple[float, float]:
    """(budget, what a plan may use of it): on CUDA `train.vram_budget_gb` less the safety
    margin; on CPU the RAM available now (80% of it, see `_available_ram`)."""
    if device == "cuda":
        budget = train.vram_budget_gb * GIB
        return budget, budget * (1 - train.vram_safety_margin)
    budget = available_bytes if available_bytes is not None else _available_ram()
    return budget, budget


def plan_training(train: TrainSettings, shape: ModelShape, device: str,
                  available_bytes: float | None = None, *, max_length: int | None = None,
                  precision: Precision | None = None) -> TrainPlan:
    """The largest micro-batch (checkpointing only if needed) that fits the budget.

    On CUDA the budget is `train.vram_budget_gb` less `train.vram_safety_margin`; on CPU it
    is the RAM available now. `precision` plans for another machine's (default: this one's).
    """
    quantization = resolve_quantization(train, device)
    precision = precision or _mixed_precision(device)
    max_length = max_length or train.max_length
    budget, usable = usable_bytes(train, device, available_bytes)
    effective = train.batch_size or DEFAULT_EFFECTIVE_BATCH
    if train.grad_accum:
        candidates = [max(1, effective // train.grad_accum)]
    else:
        candidates = sorted({max(1, effective // 2**k) for k in range(8)}, reverse=True)
    checkpoint_options = ([train.gradient_checkpointing]
                          if train.gradient_checkpointing is not None else [False, True])
    for micro in candidates:
        for checkpointing in checkpoint_options:
            peak = estimate_peak_bytes(shape, train, quantization, micro, checkpointing, device,
                                       max_length=max_length, precision=precision)
            if peak <= usable:
                return TrainPlan(
                    device=device,
                    quantization=quantization,
                    micro_batch=micro,
                    grad_accum=train.grad_accum or math.ceil(effective / micro),
                    gradient_checkpointing=checkpointing,
                    estimated_peak_gib=round(peak / GIB, 2),
                    budget_gib=round(budget / GIB, 2),
                    mixed_precision=precision,
                    max_length=max_length,
                    usable_gib=round(usable / GIB, 2),
                )
    parts = estimate_parts(shape, train, quantization, 1, True, device,
                           max_length=max_length, precision=precision)
    smallest = sum(parts.values())
    margin = (f"the usable {usable / GIB:.1f} GiB (margin "
              f"{train.vram_safety_margin:.0%}) of the " if usable < budget else "the ")
    raise DoesNotFit(
        f"training needs ~{smallest / GIB:.1f} GiB even at micro-batch 1 with gradient "
        f"checkpointing (the frozen base alone ~{parts['base'] / GIB:.1f} GiB), over "
        f"{margin}{budget / GIB:.1f} GiB budget; lower train.max_length "
        f"(now {max_length}) or train.rank (now {train.rank}), use "
        f"train.quantization: nf4, pick a smaller model.base, or raise train.vram_budget_gb"
    )


def _available_ram() -> float:
    import psutil

    return float(psutil.virtual_memory().available) * 0.8


def _mixed_precision(device: str) -> Precision:
    """bf16 where the device computes it natively; else fp16 on a GPU, fp32 on a CPU (a
    CPU without AVX-512 BF16 emulates bf16 many times slower than it runs float32)."""
    from engines.transformers_runtime import native_bf16

    if native_bf16(device):
        return "bf16"
    return "fp16" if device == "cuda" else "fp32"
