"""Adapter folders as the breeding operations use them: check, read, write a child atomically.

`tasks.evolve.merge` (cross-over) and `tasks.evolve.mutate` (mutations) share these: every
problem with their inputs is collected and raised at once as a MergeError, and every child is
built in a hidden sibling folder and renamed into place only when complete.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from evolora.models import base_model_checksum
from tasks.evolve.adapter_math import LoraModule, is_lora_factor, lora_modules, module_name
from tasks.train.trainer import ADAPTER_FILES, read_adapter_manifest

CONFIG_FILE, WEIGHTS_FILE = ADAPTER_FILES


class MergeError(ValueError):
    """An adapter operation that cannot run as asked; the message lists every problem and
    its fix."""


def raise_if_any(problems: list[str], what: str) -> None:
    """Raise one MergeError listing every problem, if there is any."""
    if problems:
        raise MergeError(f"cannot {what}: " + "; ".join(problems))


# ---------------------------------------------------------------------------- checking

def adapter_rank(config: dict[str, Any]) -> int:
    """The largest rank in an adapter config (PEFT sizes merges by it, as here)."""
    return max([config["r"], *(config.get("rank_pattern") or {}).values()])


def adapter_problems(adapter_dir: Path, role: str) -> list[str]:
    """Why `adapter_dir` cannot be bred (empty: a plain LoRA adapter folder)."""
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


def same_base(base_model_path: str | None, adapters: list[Path]) -> tuple[str | None, list[str]]:
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


def out_dir_problems(out_dir: Path, inputs: list[Path]) -> list[str]:
    """Why the child cannot be written to `out_dir` (empty: it can)."""
    resolved = out_dir.resolve()
    if any(resolved == p.resolve() for p in inputs):
        return [f"out_dir {out_dir} is one of the inputs; write the child to a new folder"]
    return []


# ---------------------------------------------------------------------------- reading

def read_adapter(adapter_dir: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """An adapter folder's config and state dict (MergeError if it is not a LoRA adapter)."""
    raise_if_any(adapter_problems(adapter_dir, "adapter"), "read the adapter")
    config = json.loads((adapter_dir / CONFIG_FILE).read_text())
    return config, load_file(str(adapter_dir / WEIGHTS_FILE))


def read_lora_modules(adapter_dir: Path) -> dict[str, LoraModule]:
    """An adapter folder's LoRA modules (factors and per-module scaling) by module path."""
    config, state = read_adapter(Path(adapter_dir))
    return lora_modules(state, config)


# ---------------------------------------------------------------------------- writing

@contextmanager
def staged(out_dir: Path) -> Iterator[Path]:
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


def write_adapter(folder: Path, config: dict[str, Any] | None,
                  state: dict[str, torch.Tensor]) -> None:
    """Save `state` and `config` as PEFT's two adapter files (`config` None: the caller
    copies the parent's config file unchanged)."""
    save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    if config is not None:
        (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))


def child_manifest(out_dir: Path, base_model_path: str | None, base_sha: str | None,
                   recipe: dict[str, Any], extra: dict[str, Any] | None) -> dict[str, Any]:
    """The `evolora-adapter.json` manifest of a bred child: its base and how it was made."""
    return {"name": out_dir.name, "base_model": base_model_path, "base_model_sha256": base_sha,
            "recipe": recipe, **(extra or {})}


def replace_factors(state: dict[str, torch.Tensor], modules: dict[str, LoraModule]
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
