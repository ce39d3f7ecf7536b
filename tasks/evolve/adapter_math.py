"""LoRA adapter maths as plain functions over tensors and state dicts (no model, no files).

A LoRA module adds `scaling * B @ A` to a frozen weight (A: r x in, B: out x r). Everything
here works on those factors: the dense delta, seeded noise, rank change through the SVD of
the delta, and a rank-independent cosine distance computed from the factors alone (so
comparing adapters never builds an out x in matrix). `tasks.evolve.merge` and
`tasks.evolve.mutate` do the file and PEFT side and call these.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

# PEFT saves keys as "<module>.lora_A.weight" (the adapter name stripped); embedding LoRAs
# save "<module>.lora_embedding_A" with no ".weight".
_KEY = re.compile(r"^(?P<module>.+)\.lora_(?:embedding_)?(?P<factor>[AB])(?:\.weight)?$")
_PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True)
class LoraModule:
    """One adapted module's factors and the scale PEFT applies to `b @ a`."""

    a: torch.Tensor  # r x in
    b: torch.Tensor  # out x r
    scaling: float

    @property
    def rank(self) -> int:
        return self.a.shape[0]

    def delta(self) -> torch.Tensor:
        """The dense update `scaling * b @ a` (out x in; the transposed weight for embedding
        and fan_in_fan_out layers, where PEFT transposes when merging)."""
        return lora_delta(self.a, self.b, self.scaling)


def lora_scaling(alpha: float, rank: int, use_rslora: bool = False) -> float:
    """PEFT's multiplier for `B @ A`: alpha / r, or alpha / sqrt(r) with rsLoRA."""
    return alpha / math.sqrt(rank) if use_rslora else alpha / rank


def lora_delta(a: torch.Tensor, b: torch.Tensor, scaling: float) -> torch.Tensor:
    """`scaling * b @ a` in float32 (adapters saved in bf16 would lose precision otherwise)."""
    return scaling * (b.float() @ a.float())


def is_lora_factor(key: str) -> bool:
    """Whether a state-dict key holds a LoRA A or B factor (not a saved base module)."""
    return _KEY.match(key) is not None


def module_name(key: str) -> str:
    """The model's module path for a factor key, without PEFT's `base_model.model.` prefix."""
    match = _KEY.match(key)
    if match is None:
        raise KeyError(f"{key!r} is not a LoRA factor key")
    name = match["module"]
    return name[len(_PEFT_PREFIX):] if name.startswith(_PEFT_PREFIX) else name


def _pattern_value(patterns: Mapping[str, Any], name: str, default: Any) -> Any:
    # The same rule as peft.utils.other.get_pattern_key: a key matches a dotted suffix.
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default


def lora_modules(state: Mapping[str, torch.Tensor], config: Mapping[str, Any]
                 ) -> dict[str, LoraModule]:
    """The adapter's modules keyed by module path, each with its own scaling.

    `config` is the adapter_config.json dict; `rank_pattern`/`alpha_pattern` give some
    modules their own r and alpha, so the scaling is resolved per module.
    """
    factors: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        match = _KEY.match(key)
        if match:
            factors.setdefault(module_name(key), {})[match["factor"]] = tensor
    modules = {}
    for name, pair in sorted(factors.items()):
        if set(pair) != {"A", "B"}:
            raise ValueError(f"module {name} has only lora_{''.join(pair)}; the file is damaged")
        a, b = pair["A"], pair["B"]
        if a.dim() != 2:  # conv LoRAs are 4-D
            raise ValueError(f"module {name}: only linear/embedding LoRA factors are supported")
        rank = _pattern_value(config.get("rank_pattern") or {}, name, config["r"])
        alpha = _pattern_value(config.get("alpha_pattern") or {}, name, config["lora_alpha"])
        if rank != a.shape[0]:
            raise ValueError(f"module {name}: factor rank {a.shape[0]} but config says r={rank}")
        modules[name] = LoraModule(a, b, lora_scaling(alpha, rank, config.get("use_rslora",
                                                                              False)))
    return modules


def add_noise(state: Mapping[str, torch.Tensor], strength: float, seed: int
              ) -> dict[str, torch.Tensor]:
    """A copy of `state` with N(0, (strength * std(t))^2) added to every LoRA factor `t`.

    Noise relative to each tensor's own spread keeps A (large, from Kaiming init) and B
    (small, learned from zero) equally perturbed. Keys are visited in sorted order with one
    generator, so the same seed always gives the same mutant. Non-LoRA tensors (saved
    `modules_to_save`) are copied unchanged. An all-zero tensor (an untrained B) stays zero.
    """
    if strength < 0:
        raise ValueError(f"strength must be >= 0, got {strength}")
    generator = torch.Generator().manual_seed(seed)
    noisy = {}
    for key in sorted(state):
        tensor = state[key]
        if not is_lora_factor(key) or strength == 0:
            noisy[key] = tensor.clone()
            continue
        values = tensor.float()
        spread = values.std() if values.numel() > 1 else values.abs().mean()
        noise = torch.randn(values.shape, generator=generator) * (strength * spread)
        noisy[key] = (values + noise).to(tensor.dtype)
    return noisy


def factorize(delta: torch.Tensor, rank: int, scaling: float, *, kept: int | None = None,
              generator: torch.Generator | None = None) -> LoraModule:
    """Rank-`rank` LoRA factors whose `scaling * b @ a` is the best approximation of `delta`.

    By Eckart-Young the truncated SVD is optimal in the Frobenius norm; the error is the norm
    of the dropped singular values. The singular values are split evenly (sqrt) between A
    and B so neither factor dominates later training. Only the first `kept` components
    (default: all that fit) carry signal; beyond them the A rows get a small random init
    (PEFT's Kaiming-uniform bound) and the B columns zeros, so the delta is unchanged but
    the spare capacity can still learn (both zero would give zero gradients to both).
    """
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    # float32: a float64 SVD takes ~4x as long, and adapters are saved in bf16 or fp32.
    u, s, vh = torch.linalg.svd(delta.float(), full_matrices=False)
    out_features, in_features = delta.shape
    kept = min(rank, s.shape[0], s.shape[0] if kept is None else kept)
    root = torch.sqrt(s[:kept] / scaling)
    a = torch.zeros(rank, in_features)
    b = torch.zeros(out_features, rank)
    a[:kept] = root[:, None] * vh[:kept]
    b[:, :kept] = u[:, :kept] * root[None, :]
    if rank > kept:
        bound = 1 / math.sqrt(in_features)
        fresh = torch.rand(rank - kept, in_features, generator=generator)
        a[kept:] = (2 * fresh - 1) * bound
    return LoraModule(a, b, scaling)


def change_rank(module: LoraModule, new_rank: int, new_scaling: float,
                generator: torch.Generator | None = None) -> LoraModule:
    """Factors of rank `new_rank` whose delta is the best rank-k approximation of `module`'s
    (see `factorize`; growing the rank adds capacity, not signal)."""
    if new_rank < 1:
        raise ValueError(f"new_rank must be >= 1, got {new_rank}")
    factors = factorize(module.delta(), new_rank, new_scaling, kept=module.rank,
                        generator=generator)
    return LoraModule(factors.a.to(module.a.dtype), factors.b.to(module.b.dtype), new_scaling)


def ties_combine(task_vectors: Sequence[torch.Tensor], weights: Sequence[float],
                 density: float) -> torch.Tensor:
    """TIES-merging (Yadav et al., 2023) of dense task vectors of one shape.

    Each weighted vector keeps its `density` fraction of largest magnitudes (trim); each
    entry's sign is the sign of the kept values' sum (elect); the result averages only the
    kept values that agree with it (disjoint mean). What the vectors learnt in common is
    averaged, not added n times over, and what only one of them learnt keeps its full size.
    """
    if not task_vectors:
        raise ValueError("ties_combine needs at least one task vector")
    if len(weights) != len(task_vectors):
        raise ValueError(f"{len(weights)} weights for {len(task_vectors)} task vectors")
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density {density} is outside (0, 1]; it is the fraction kept")
    stacked = torch.stack([float(w) * t.float() for w, t in zip(weights, task_vectors,
                                                                   strict=True)])
    flat = stacked.reshape(len(task_vectors), -1)
    n_kept = max(1, round(density * flat.shape[1]))
    if n_kept < flat.shape[1]:
        # The n_kept-th largest magnitude of each vector is its threshold.
        threshold = flat.abs().topk(n_kept, dim=1).values[:, -1:]
        flat = torch.where(flat.abs() >= threshold, flat, torch.zeros_like(flat))
    sign = torch.sign(flat.sum(dim=0))
    agrees = (torch.sign(flat) == sign) & (flat != 0)
    total = torch.where(agrees, flat, torch.zeros_like(flat)).sum(dim=0)
    merged = total / agrees.sum(dim=0).clamp(min=1)
    return merged.reshape(task_vectors[0].shape)


def lora_inner(first: LoraModule, second: LoraModule) -> float:
    """Frobenius inner product <delta1, delta2> from the factors alone.

    <s1 B1 A1, s2 B2 A2> = s1 s2 * sum((B1^T B2) * (A1 A2^T)): two r1 x r2 products instead
    of two out x in matrices, and it works for any pair of ranks.
    """
    a1, b1, a2, b2 = (t.double() for t in (first.a, first.b, second.a, second.b))
    return first.scaling * second.scaling * float(((b1.T @ b2) * (a1 @ a2.T)).sum())


def delta_cosine_distance(first: LoraModule, second: LoraModule) -> float:
    """1 - cosine similarity of two modules' deltas, in [0, 2].

    Two zero deltas are identical (0); a zero and a non-zero delta share no direction (1).
    """
    norm1 = math.sqrt(max(lora_inner(first, first), 0.0))
    norm2 = math.sqrt(max(lora_inner(second, second), 0.0))
    if norm1 == 0.0 or norm2 == 0.0:
        return 0.0 if norm1 == norm2 else 1.0
    cosine = lora_inner(first, second) / (norm1 * norm2)
    return float(min(max(1.0 - cosine, 0.0), 2.0))


def mean_module_distance(first: Mapping[str, LoraModule], second: Mapping[str, LoraModule]
                         ) -> float:
    """Mean delta cosine distance over the modules both adapters change.

    Adapters with no module in common change disjoint parts of the model; they count as
    orthogonal (1.0) rather than identical.
    """
    shared = sorted(set(first) & set(second))
    if not shared:
        return 1.0
    return sum(delta_cosine_distance(first[n], second[n]) for n in shared) / len(shared)
