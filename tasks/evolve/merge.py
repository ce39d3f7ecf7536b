"""Cross-over of adapters: PEFT's weighted merges, merges of what each parent learnt since a
shared start, and how diverse a population is.

Every cross-over reads ordinary PEFT adapter folders and writes one, atomically (built in a
hidden sibling folder and renamed at the end, so a crash leaves nothing at `out_dir`), with
an `evolora-adapter.json` manifest whose `recipe` records how the child was made. The tensor
maths lives in `tasks.evolve.adapter_math`, the folder checks and writes in
`tasks.evolve.adapter_files`; mutations are in `tasks.evolve.mutate`.
"""

from __future__ import annotations

import json
import shutil
from itertools import combinations
from pathlib import Path
from typing import Any

import torch

from evolora.logs import get_logger
from evolora.vocabulary import COMBINATION_TYPES, DENSITY_TYPES, UNEQUAL_RANK_TYPES
from tasks.evolve.adapter_files import (
    CONFIG_FILE,
    adapter_problems,
    adapter_rank,
    child_manifest,
    out_dir_problems,
    raise_if_any,
    read_adapter,
    read_lora_modules,
    replace_factors,
    same_base,
    staged,
    write_adapter,
)
from tasks.evolve.adapter_math import (
    LoraModule,
    factorize,
    lora_modules,
    mean_module_distance,
    ties_combine,
)
from tasks.train.trainer import ADAPTER_FILES, write_adapter_manifest

log = get_logger(__name__)

_CHILD = "child"


def valid_combination_types(ranks: list[int], allowed: list[str]) -> list[str]:
    """The types of `allowed` (in its order) that PEFT can merge parents of these ranks with."""
    known = [t for t in allowed if t in COMBINATION_TYPES]
    if len(set(ranks)) <= 1:
        return known
    return [t for t in known if t in UNEQUAL_RANK_TYPES]


def _count_problems(what: str, parents: list[Path], weights: list[float]) -> list[str]:
    """Problems with how many parents and weights a merge was given."""
    problems = []
    if len(parents) < 2:
        problems.append(f"{what} needs at least 2 parents, got {len(parents)}")
    if len(weights) != len(parents):
        problems.append(f"{len(weights)} weights for {len(parents)} parents; "
                        "pass one weight per parent")
    return problems


# ---------------------------------------------------------------------------- cross-over

def crossover(
    base_model_path: str,
    parents: list[Path],
    weights: list[float],
    combination_type: str,
    out_dir: Path,
    *,
    density: float = 0.5,
    svd_rank: int | None = None,
    manifest_extra: dict[str, Any] | None = None,
) -> Path:
    """The folder `out_dir` holding PEFT's weighted merge of `parents`, with its manifest.

    Ranks of the child: linear/ties/dare/magnitude_prune keep the parents' rank; cat sums
    them; svd and ties_svd use `svd_rank` (default: the largest parent rank). Note that the
    non-svd types combine the A and B factors separately, so on a module both parents adapt
    the child's delta has cross terms (it is not the weighted sum of the deltas); cat and
    svd are exact (svd up to its rank).
    """
    parents = [Path(p) for p in parents]
    problems = _count_problems("a cross-over", parents, weights)
    if combination_type not in COMBINATION_TYPES:
        problems.append(f"unknown combination_type {combination_type!r}; "
                        f"use one of {', '.join(COMBINATION_TYPES)}")
    if combination_type in DENSITY_TYPES and not 0.0 < density <= 1.0:
        problems.append(f"density {density} is outside (0, 1]; it is the fraction kept")
    if svd_rank is not None and svd_rank < 1:
        problems.append(f"svd_rank {svd_rank} must be >= 1 (or None for the largest rank)")
    for index, parent in enumerate(parents):
        problems += adapter_problems(parent, f"parent {index}")
    problems += out_dir_problems(out_dir, parents)
    raise_if_any(problems, "cross over")  # the rest reads the parents' files

    ranks = [adapter_rank(json.loads((p / CONFIG_FILE).read_text())) for p in parents]
    if combination_type not in valid_combination_types(ranks, [combination_type]):
        unequal = [t for t in COMBINATION_TYPES if t in UNEQUAL_RANK_TYPES]
        problems.append(f"parents have ranks {' and '.join(map(str, ranks))}; "
                        f"{combination_type} needs equal ranks: use "
                        f"{', '.join(unequal[:-1])} or {unequal[-1]}")
    base_sha, base_problems = same_base(base_model_path, parents)
    raise_if_any(problems + base_problems, "cross over")

    recipe = {"kind": "crossover", "parents": [str(p) for p in parents],
              "weights": list(weights), "combination_type": combination_type,
              "density": density if combination_type in DENSITY_TYPES else None,
              "svd_rank": svd_rank}
    with staged(out_dir) as staging:
        _merge_with_peft(base_model_path, parents, weights, combination_type, staging,
                         density=density, svd_rank=svd_rank)
        child_config = json.loads((staging / CONFIG_FILE).read_text())
        write_adapter_manifest(staging, child_manifest(
            out_dir, base_model_path, base_sha, {**recipe, "rank": child_config["r"]},
            manifest_extra))
    log.info("merge.crossover", out=str(out_dir), type=combination_type, ranks=ranks,
             child_rank=child_config["r"])
    return out_dir


def _merge_with_peft(base_model_path: str, parents: list[Path], weights: list[float],
                     combination_type: str, staging: Path, *, density: float,
                     svd_rank: int | None) -> None:
    """Write the merged adapter's two files into `staging`."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    # fp32 on CPU: the SVD and the sign votes of ties are exact there, and a 135M base fits.
    base = AutoModelForCausalLM.from_pretrained(base_model_path, dtype=torch.float32)
    names = [f"parent{i}" for i in range(len(parents))]
    model = PeftModel.from_pretrained(base, str(parents[0]), adapter_name=names[0])
    for name, parent in zip(names[1:], parents[1:], strict=True):
        model.load_adapter(str(parent), adapter_name=name)
    model.add_weighted_adapter(
        names, [float(w) for w in weights], _CHILD, combination_type=combination_type,
        svd_rank=svd_rank, density=density if combination_type in DENSITY_TYPES else None)
    # PEFT saves a non-default adapter into a subfolder named after it.
    saved = staging / "peft"
    model.save_pretrained(str(saved), selected_adapters=[_CHILD])
    for filename in ADAPTER_FILES:
        (saved / _CHILD / filename).rename(staging / filename)
    shutil.rmtree(saved)
    config_path = staging / CONFIG_FILE
    config = json.loads(config_path.read_text())
    if config.get("use_rslora"):
        # PEFT writes merged factors for a scale of 1 (lora_alpha = r) but copies use_rslora
        # from the first parent, which would scale them by sqrt(r) on load.
        config["use_rslora"] = False
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True))


START_MERGE_METHODS = ("ties", "sum")


def merge_from_start(
    base_model_path: str | None,
    start: Path,
    parents: list[Path],
    out_dir: Path,
    *,
    method: str = "ties",
    weights: list[float] | None = None,
    density: float = 0.5,
    rank: int | None = None,
    manifest_extra: dict[str, Any] | None = None,
) -> Path:
    """The folder `out_dir` holding `start + combine(parent - start)` for each module.

    For parents that continued training one `start` adapter (the cycle's specialists, each
    continued from the generalist), what each learnt is its task vector `parent - start`.
    `sum` adds the weighted task vectors (task arithmetic); `ties` trims, elects signs and
    takes the disjoint mean (`tasks.evolve.adapter_math.ties_combine`), so what every parent learnt
    alike (the ReAct format) is not applied n times while what one parent learnt alone keeps
    its full size. PEFT's own merges cannot do this: they combine whole adapters, measured
    from the base model. The child's delta is factored at `rank` (default: the start's and
    the parents' ranks added up, which keeps all of a `sum` exactly) with the start's
    scaling.
    """
    start, parents = Path(start), [Path(p) for p in parents]
    weights = [1.0] * len(parents) if weights is None else [float(w) for w in weights]
    problems = adapter_problems(start, "start")
    for index, parent in enumerate(parents):
        problems += adapter_problems(parent, f"parent {index}")
    problems += _count_problems("a merge", parents, weights)
    if method not in START_MERGE_METHODS:
        problems.append(f"unknown method {method!r}; use {' or '.join(START_MERGE_METHODS)}")
    if method == "ties" and not 0.0 < density <= 1.0:
        problems.append(f"density {density} is outside (0, 1]; it is the fraction kept")
    if rank is not None and rank < 1:
        problems.append(f"rank {rank} must be >= 1 (or None for the default)")
    problems += out_dir_problems(out_dir, [start, *parents])
    raise_if_any(problems, "merge from a start")

    config, state = read_adapter(start)
    base_modules = lora_modules(state, config)
    parent_modules = [read_lora_modules(p) for p in parents]
    for parent, modules in zip(parents, parent_modules, strict=True):
        if set(modules) != set(base_modules):
            problems.append(f"{parent} adapts other modules than the start {start}; merge "
                            "only adapters that continued the start's training")
    base_sha, base_problems = same_base(base_model_path, [start, *parents])
    raise_if_any(problems + base_problems, "merge from a start")

    # sum(S_i) - (n - 1) G has at most this rank, so a sum is kept exactly.
    rank = rank or adapter_rank(config) + sum(
        adapter_rank(json.loads((p / CONFIG_FILE).read_text())) for p in parents)
    scaling = next(iter(base_modules.values())).scaling
    alpha = scaling * rank
    alpha = int(alpha) if float(alpha).is_integer() else alpha
    merged, lost, total = {}, 0.0, 0.0
    for name, module in base_modules.items():
        start_delta = module.delta()
        task_vectors = [modules[name].delta() - start_delta for modules in parent_modules]
        combined = (ties_combine(task_vectors, weights, density) if method == "ties"
                    else sum(w * t for w, t in zip(weights, task_vectors, strict=True)))
        delta = start_delta + combined
        factors = factorize(delta, rank, scaling)
        merged[name] = LoraModule(factors.a.to(module.a.dtype), factors.b.to(module.b.dtype),
                                  scaling)
        lost += float((factors.delta() - delta).pow(2).sum())
        total += float(delta.pow(2).sum())
    error = (lost / total) ** 0.5 if total else 0.0

    new_config = {**config, "r": rank, "lora_alpha": alpha, "rank_pattern": {},
                  "alpha_pattern": {}, "use_rslora": False}
    recipe = {"kind": "crossover", "combination_type": f"{method}_from_start",
              "start": str(start), "parents": [str(p) for p in parents], "weights": weights,
              "density": density if method == "ties" else None, "rank": rank,
              "relative_error": error}
    with staged(out_dir) as staging:
        write_adapter(staging, new_config, replace_factors(state, merged))
        write_adapter_manifest(staging, child_manifest(out_dir, base_model_path, base_sha,
                                                       recipe, manifest_extra))
    log.info("merge.from_start", out=str(out_dir), method=method, rank=rank,
             relative_error=error)
    return out_dir


# ---------------------------------------------------------------------------- diversity

def population_diversity(adapters: list[Path]) -> float:
    """Mean pairwise distance of the adapters' deltas (`mean_module_distance`: 1 - cosine
    similarity, in [0, 2]); 0 for fewer than 2 adapters."""
    if len(adapters) < 2:
        return 0.0
    modules = [read_lora_modules(p) for p in adapters]  # each file read once
    pairs = list(combinations(modules, 2))
    return sum(mean_module_distance(x, y) for x, y in pairs) / len(pairs)
