"""Reading adapter folders in tests: each module's dense delta, and the distance of two."""

from __future__ import annotations

from pathlib import Path

import torch

from tasks.evolve.adapter_files import read_lora_modules
from tasks.evolve.adapter_math import mean_module_distance


def delta_weights(adapter_dir: Path) -> dict[str, torch.Tensor]:
    """Each adapted module's dense update `scaling * B @ A` (float32), by module path."""
    return {name: module.delta() for name, module in read_lora_modules(adapter_dir).items()}


def adapter_distance(a: Path, b: Path) -> float:
    """Mean (1 - cosine similarity) of the two adapters' deltas over shared modules, in [0, 2].

    Rank-independent (computed from the factors); 0 for identical adapters.
    """
    return mean_module_distance(read_lora_modules(a), read_lora_modules(b))
