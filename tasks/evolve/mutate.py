"""Mutations of an adapter: seeded noise, a change of rank, a few more training steps.

Each reads a PEFT adapter folder and writes a child folder atomically, with an
`evolora-adapter.json` manifest whose `recipe` records the mutation (as the cross-overs of
`tasks.evolve.merge` do); the tensor maths lives in `tasks.evolve.adapter_math`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from evolora.logs import get_logger
from evolora.settings import Settings
from evolora.vocabulary import MUTATION_TAG
from tasks.evolve.adapter_files import (
    CONFIG_FILE,
    adapter_problems,
    adapter_rank,
    child_manifest,
    out_dir_problems,
    raise_if_any,
    read_adapter,
    replace_factors,
    same_base,
    staged,
    write_adapter,
)
from tasks.evolve.adapter_math import (
    LoraModule,
    add_noise,
    change_rank,
    lora_modules,
    lora_scaling,
)
from tasks.train.trainer import read_adapter_manifest, write_adapter_manifest

log = get_logger(__name__)


def _check_mutation(adapter_dir: Path, out_dir: Path, extra: list[str], what: str,
                    base_model_path: str | None = None) -> str | None:
    """Raise MergeError with every problem of a mutation's inputs; the base checksum, if any.

    The base is checked (after the rest) only when `base_model_path` is given.
    """
    problems = adapter_problems(adapter_dir, "adapter") + out_dir_problems(out_dir, [adapter_dir])
    raise_if_any(problems + extra, what)
    if base_model_path is None:
        return None
    base_sha, base_problems = same_base(base_model_path, [adapter_dir])
    raise_if_any(base_problems, what)
    return base_sha


def mutate_noise(adapter_dir: Path, out_dir: Path, *, strength: float, seed: int,
                 manifest_extra: dict[str, Any] | None = None) -> Path:
    """The folder `out_dir` holding `adapter_dir` with seeded relative Gaussian noise.

    Each LoRA factor t gets N(0, (strength * std(t))^2); no model is loaded.
    """
    adapter_dir = Path(adapter_dir)
    extra = ([f"strength {strength} must be >= 0 (a multiple of each tensor's std)"]
             if strength < 0 else [])
    _check_mutation(adapter_dir, out_dir, extra, "mutate with noise")
    config, state = read_adapter(adapter_dir)
    parent = read_adapter_manifest(adapter_dir)
    recipe = {"kind": "mutation", "mutation": "noise", "parents": [str(adapter_dir)],
              "strength": strength, "seed": seed, "rank": adapter_rank(config)}
    with staged(out_dir) as staging:
        write_adapter(staging, None, add_noise(state, strength, seed))
        shutil.copyfile(adapter_dir / CONFIG_FILE, staging / CONFIG_FILE)
        write_adapter_manifest(staging, child_manifest(
            out_dir, parent.get("base_model"), parent.get("base_model_sha256"), recipe,
            manifest_extra))
    log.info("mutate.noise", out=str(out_dir), strength=strength, seed=seed)
    return out_dir


def mutate_rank(base_model_path: str, adapter_dir: Path, out_dir: Path, *, new_rank: int,
                seed: int = 0, manifest_extra: dict[str, Any] | None = None) -> Path:
    """The folder `out_dir` holding `adapter_dir` re-factored at rank `new_rank`.

    Each module's delta is replaced by its best rank-`new_rank` approximation (truncated
    SVD; exact when the rank does not shrink). The scaling alpha/r is kept, so lora_alpha
    moves with r and later training sees the same effective learning rate.
    """
    adapter_dir = Path(adapter_dir)
    extra = [f"new_rank {new_rank} must be >= 1"] if new_rank < 1 else []
    base_sha = _check_mutation(adapter_dir, out_dir, extra, "change the rank",
                               base_model_path)

    config, state = read_adapter(adapter_dir)
    rslora = bool(config.get("use_rslora"))
    scaling = lora_scaling(config["lora_alpha"], config["r"], rslora)
    new_alpha = scaling * (new_rank ** 0.5 if rslora else new_rank)
    if float(new_alpha).is_integer():
        new_alpha = int(new_alpha)
    new_scaling = lora_scaling(new_alpha, new_rank, rslora)
    modules = lora_modules(state, config)
    generator = torch.Generator().manual_seed(seed)
    changed = {name: change_rank(m, new_rank, new_scaling, generator)
               for name, m in modules.items()}
    new_state = replace_factors(state, changed)
    error = _relative_error(modules, changed)

    new_config = {**config, "r": new_rank, "lora_alpha": new_alpha, "rank_pattern": {},
                  "alpha_pattern": {}}
    recipe = {"kind": "mutation", "mutation": "rank", "parents": [str(adapter_dir)],
              "old_rank": adapter_rank(config), "new_rank": new_rank, "seed": seed,
              "relative_error": error, "rank": new_rank}
    with staged(out_dir) as staging:
        write_adapter(staging, new_config, new_state)
        write_adapter_manifest(staging, child_manifest(out_dir, base_model_path, base_sha,
                                                       recipe, manifest_extra))
    log.info("mutate.rank", out=str(out_dir), old_rank=config["r"], new_rank=new_rank,
             relative_error=error)
    return out_dir


def _relative_error(before: dict[str, LoraModule], after: dict[str, LoraModule]) -> float:
    """||delta' - delta|| / ||delta|| over all modules together (0 when nothing was lost)."""
    lost = total = 0.0
    for name, module in before.items():
        delta = module.delta()
        lost += float((after[name].delta() - delta).pow(2).sum())
        total += float(delta.pow(2).sum())
    return (lost / total) ** 0.5 if total else 0.0


def mutate_finetune(settings: Settings, base_model_path: str, adapter_dir: Path, out_dir: Path,
                    rows: Any, *, steps: int, seed: int, parent_run_id: str | None = None,
                    manifest_extra: dict[str, Any] | None = None) -> Path:
    """The folder `out_dir` holding `adapter_dir` trained `steps` more steps on `rows`.

    A tracked MLflow training run (set up MLflow first); the adapter keeps its rank and
    targets (settings.train.rank/target_modules do not apply to continued training).
    """
    from tasks.train.trainer import train_adapter

    adapter_dir = Path(adapter_dir)
    # train_adapter warms up for at least one step from a learning rate of 0, so a 1-step
    # run returns the parent unchanged.
    extra = ([f"steps {steps} must be >= 2 (the first step is warm-up at lr 0)"]
             if steps < 2 else [])
    _check_mutation(adapter_dir, out_dir, extra, "fine-tune", base_model_path)
    config = json.loads((adapter_dir / CONFIG_FILE).read_text())
    recipe = {"kind": "mutation", "mutation": "finetune", "parents": [str(adapter_dir)],
              "steps": steps, "seed": seed, "rank": adapter_rank(config)}
    result = train_adapter(settings, base_model_path, rows, out_dir.parent, out_dir.name,
                           init_adapter=adapter_dir, max_steps=steps, seed=seed,
                           parent_run_id=parent_run_id,
                           tags={MUTATION_TAG: "finetune"},
                           manifest_extra={"recipe": recipe, **(manifest_extra or {})})
    return result.adapter_dir
