"""Breed adapters: cross-over through PEFT's weighted merges, three mutations, distances.

Every operation reads ordinary PEFT adapter folders and writes one, atomically (built in a
hidden sibling folder and renamed at the end, so a crash leaves nothing at `out_dir`), with
an `evolora-adapter.json` manifest whose `recipe` records how the child was made. The tensor
maths lives in `tasks.evolve.adapter_math`; this module does validation, files and PEFT.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import combinations
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from evolora.logs import get_logger
from evolora.models import base_model_checksum
from evolora.settings import Settings
from tasks.evolve.adapter_math import (
    LoraModule,
    change_rank,
    factorize,
    is_lora_factor,
    lora_modules,
    lora_scaling,
    mean_module_distance,
    module_name,
    ties_combine,
)
from tasks.evolve.adapter_math import (
    add_noise as add_noise_to_state,
)
from tasks.train.trainer import ADAPTER_FILES, read_adapter_manifest, write_adapter_manifest

log = get_logger(__name__)

COMBINATION_TYPES = ("linear", "cat", "svd", "ties", "dare_ties", "dare_linear",
                     "magnitude_prune", "ties_svd")
# PEFT's add_weighted_adapter only allows these for parents of unequal ranks.
UNEQUAL_RANK_TYPES = ("cat", "svd", "ties_svd")
# The types that prune by `density` (the others ignore it).
DENSITY_TYPES = ("ties", "dare_ties", "dare_linear", "magnitude_prune", "ties_svd")
CONFIG_FILE, WEIGHTS_FILE = ADAPTER_FILES
_CHILD = "child"


class MergeError(ValueError):
    """An adapter operation that cannot run as asked; the message lists every problem and
    its fix."""


# ---------------------------------------------------------------------------- validation

def valid_combination_types(ranks: list[int], allowed: list[str]) -> list[str]:
    """The types of `allowed` (in its order) that PEFT can merge parents of these ranks with."""
    known = [t for t in allowed if t in COMBINATION_TYPES]
    if len(set(ranks)) <= 1:
        return known
    return [t for t in known if t in UNEQUAL_RANK_TYPES]


def adapter_rank(config: dict[str, Any]) -> int:
    """The largest rank in an adapter config (PEFT sizes merges by it, as here)."""
    return max([config["r"], *(config.get("rank_pattern") or {}).values()])


def _adapter_problems(adapter_dir: Path, role: str) -> list[str]:
    if not adapter_dir.is_dir():
        return [f"{role} {adapter_dir} does not exist; pass an adapter folder"]
    missing = [f for f in ADAPTER_FILES if not (adapter_dir / f).is_file()]
    if missing:
        return [f"{role} {adapter_dir} is not a PEFT adapter folder (no {', '.join(missing)}); "
                "pass a folder written by save_pretrained or train_adapter"]
    config = json.loads((adapter_dir / CONFIG_FILE).read_text())
    if config.get("peft_type") != "LORA":
        return [f"{role} {adapter_dir} is a {config.get('peft_type')} adapter; only LoRA "
                "adapters can be bred"]
    if config.get("use_dora"):
        return [f"{role} {adapter_dir} is a DoRA adapter; merges and mutations here handle "
                "plain LoRA only: train it with use_dora=false"]
    return []


def _check_same_base(base_model_path: str | None, adapters: list[Path]) -> tuple[str | None,
                                                                                  list[str]]:
    """The base checksum the adapters share, and problems where their manifests disagree."""
    recorded = {str(p): m["base_model_sha256"] for p in adapters
                if (m := read_adapter_manifest(p)).get("base_model_sha256")}
    expected = base_model_checksum(base_model_path) if base_model_path else None
    if expected is None and recorded:
        expected = next(iter(recorded.values()))
    wrong = {path: sha for path, sha in recorded.items() if sha != expected}
    if not wrong:
        return expected, []
    listing = ", ".join(f"{path} ({sha[:12]})" for path, sha in wrong.items())
    return expected, [f"adapters trained on another base model than {expected and expected[:12]}:"
                      f" {listing}; breed only adapters of the same base model"]


def _validate_out_dir(out_dir: Path, inputs: list[Path]) -> list[str]:
    resolved = out_dir.resolve()
    if any(resolved == p.resolve() for p in inputs):
        return [f"out_dir {out_dir} is one of the inputs; write the child to a new folder"]
    return []


def _count_problems(what: str, parents: list[Path], weights: list[float]) -> list[str]:
    """Problems with how many parents and weights a merge was given."""
    problems = []
    if len(parents) < 2:
        problems.append(f"{what} needs at least 2 parents, got {len(parents)}")
    if len(weights) != len(parents):
        problems.append(f"{len(weights)} weights for {len(parents)} parents; "
                        "pass one weight per parent")
    return problems


def _raise_if(problems: list[str], what: str) -> None:
    if problems:
        raise MergeError(f"cannot {what}: " + "; ".join(problems))


def _read_adapter(adapter_dir: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    _raise_if(_adapter_problems(adapter_dir, "adapter"), "read the adapter")
    config = json.loads((adapter_dir / CONFIG_FILE).read_text())
    return config, load_file(str(adapter_dir / WEIGHTS_FILE))


# ---------------------------------------------------------------------------- writing

@contextmanager
def _staged(out_dir: Path) -> Iterator[Path]:
    """A hidden sibling folder to build in; renamed to `out_dir` only if the body succeeds."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        yield staging
        if out_dir.exists():  # the same replace-on-rewrite rule as train_adapter
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _manifest(out_dir: Path, base_model_path: str | None, base_sha: str | None,
              recipe: dict[str, Any], extra: dict[str, Any] | None) -> dict[str, Any]:
    return {"name": out_dir.name, "base_model": base_model_path, "base_model_sha256": base_sha,
            "recipe": recipe, **(extra or {})}


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
        problems += _adapter_problems(parent, f"parent {index}")
    problems += _validate_out_dir(out_dir, parents)
    _raise_if(problems, "cross over")  # the rest reads the parents' files

    ranks = [adapter_rank(json.loads((p / CONFIG_FILE).read_text())) for p in parents]
    if combination_type not in valid_combination_types(ranks, [combination_type]):
        problems.append(f"parents have ranks {' and '.join(map(str, ranks))}; "
                        f"{combination_type} needs equal ranks: use "
                        f"{', '.join(UNEQUAL_RANK_TYPES[:-1])} or {UNEQUAL_RANK_TYPES[-1]}")
    base_sha, base_problems = _check_same_base(base_model_path, parents)
    _raise_if(problems + base_problems, "cross over")

    recipe = {"kind": "crossover", "parents": [str(p) for p in parents],
              "weights": list(weights), "combination_type": combination_type,
              "density": density if combination_type in DENSITY_TYPES else None,
              "svd_rank": svd_rank}
    with _staged(out_dir) as staging:
        _merge_with_peft(base_model_path, parents, weights, combination_type, staging,
                         density=density, svd_rank=svd_rank)
        child_config = json.loads((staging / CONFIG_FILE).read_text())
        write_adapter_manifest(staging, _manifest(
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
    problems = _adapter_problems(start, "start")
    for index, parent in enumerate(parents):
        problems += _adapter_problems(parent, f"parent {index}")
    problems += _count_problems("a merge", parents, weights)
    if method not in START_MERGE_METHODS:
        problems.append(f"unknown method {method!r}; use {' or '.join(START_MERGE_METHODS)}")
    if method == "ties" and not 0.0 < density <= 1.0:
        problems.append(f"density {density} is outside (0, 1]; it is the fraction kept")
    if rank is not None and rank < 1:
        problems.append(f"rank {rank} must be >= 1 (or None for the default)")
    problems += _validate_out_dir(out_dir, [start, *parents])
    _raise_if(problems, "merge from a start")

    config, state = _read_adapter(start)
    base_modules = lora_modules(state, config)
    parent_modules = [read_lora_modules(p) for p in parents]
    for parent, modules in zip(parents, parent_modules, strict=True):
        if set(modules) != set(base_modules):
            problems.append(f"{parent} adapts other modules than the start {start}; merge "
                            "only adapters that continued the start's training")
    base_sha, base_problems = _check_same_base(base_model_path, [start, *parents])
    _raise_if(problems + base_problems, "merge from a start")

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
    with _staged(out_dir) as staging:
        save_file(_replace_factors(state, merged), str(staging / WEIGHTS_FILE),
                  metadata={"format": "pt"})
        (staging / CONFIG_FILE).write_text(json.dumps(new_config, indent=2, sort_keys=True))
        write_adapter_manifest(staging, _manifest(out_dir, base_model_path, base_sha, recipe,
                                                  manifest_extra))
    log.info("merge.from_start", out=str(out_dir), method=method, rank=rank,
             relative_error=error)
    return out_dir


# ---------------------------------------------------------------------------- mutations

def _check_mutation(adapter_dir: Path, out_dir: Path, extra: list[str], what: str,
                    base_model_path: str | None = None) -> str | None:
    """Raise MergeError with every problem of a mutation's inputs; the base checksum, if any.

    The base is checked (after the rest) only when `base_model_path` is given.
    """
    problems = _adapter_problems(adapter_dir, "adapter") + _validate_out_dir(out_dir,
                                                                               [adapter_dir])
    _raise_if(problems + extra, what)
    if base_model_path is None:
        return None
    base_sha, base_problems = _check_same_base(base_model_path, [adapter_dir])
    _raise_if(base_problems, what)
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
    config, state = _read_adapter(adapter_dir)
    parent = read_adapter_manifest(adapter_dir)
    recipe = {"kind": "mutation", "mutation": "noise", "parents": [str(adapter_dir)],
              "strength": strength, "seed": seed, "rank": adapter_rank(config)}
    with _staged(out_dir) as staging:
        save_file(add_noise_to_state(state, strength, seed), str(staging / WEIGHTS_FILE),
                  metadata={"format": "pt"})
        shutil.copyfile(adapter_dir / CONFIG_FILE, staging / CONFIG_FILE)
        write_adapter_manifest(staging, _manifest(
            out_dir, parent.get("base_model"), parent.get("base_model_sha256"), recipe,
            manifest_extra))
    log.info("merge.mutate_noise", out=str(out_dir), strength=strength, seed=seed)
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

    config, state = _read_adapter(adapter_dir)
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
    new_state = _replace_factors(state, changed)
    error = _relative_error(modules, changed)

    new_config = {**config, "r": new_rank, "lora_alpha": new_alpha, "rank_pattern": {},
                  "alpha_pattern": {}}
    recipe = {"kind": "mutation", "mutation": "rank", "parents": [str(adapter_dir)],
              "old_rank": adapter_rank(config), "new_rank": new_rank, "seed": seed,
              "relative_error": error, "rank": new_rank}
    with _staged(out_dir) as staging:
        save_file(new_state, str(staging / WEIGHTS_FILE), metadata={"format": "pt"})
        (staging / CONFIG_FILE).write_text(json.dumps(new_config, indent=2, sort_keys=True))
        write_adapter_manifest(staging, _manifest(out_dir, base_model_path, base_sha, recipe,
                                                  manifest_extra))
    log.info("merge.mutate_rank", out=str(out_dir), old_rank=config["r"], new_rank=new_rank,
             relative_error=error)
    return out_dir


def _replace_factors(state: dict[str, torch.Tensor], modules: dict[str, LoraModule]
                     ) -> dict[str, torch.Tensor]:
    """`state` with each module's A and B swapped for the new ones (other keys unchanged)."""
    new_state = {}
    for key, tensor in state.items():
        if not is_lora_factor(key):
            new_state[key] = tensor
            continue
        module = modules[module_name(key)]
        is_a = ".lora_A" in key or ".lora_embedding_A" in key
        new_state[key] = (module.a if is_a else module.b).to(tensor.dtype).contiguous()
    return new_state


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
                           tags={"evolora.mutation": "finetune"},
                           manifest_extra={"recipe": recipe, **(manifest_extra or {})})
    return result.adapter_dir


# ---------------------------------------------------------------------------- comparison

def read_lora_modules(adapter_dir: Path) -> dict[str, LoraModule]:
    """An adapter folder's LoRA modules (factors and per-module scaling) by module path."""
    config, state = _read_adapter(Path(adapter_dir))
    return lora_modules(state, config)


def delta_weights(adapter_dir: Path) -> dict[str, torch.Tensor]:
    """Each adapted module's dense update `scaling * B @ A` (float32), by module path."""
    return {name: module.delta() for name, module in read_lora_modules(adapter_dir).items()}


def adapter_distance(a: Path, b: Path) -> float:
    """Mean (1 - cosine similarity) of the two adapters' deltas over shared modules, in [0, 2].

    Rank-independent (computed from the factors); 0 for identical adapters.
    """
    return mean_module_distance(read_lora_modules(a), read_lora_modules(b))


def population_diversity(adapters: list[Path]) -> float:
    """Mean pairwise `adapter_distance` of the population (0 for fewer than 2 adapters)."""
    if len(adapters) < 2:
        return 0.0
    modules = [read_lora_modules(p) for p in adapters]  # each file read once
    pairs = list(combinations(modules, 2))
    return sum(mean_module_distance(x, y) for x, y in pairs) / len(pairs)
