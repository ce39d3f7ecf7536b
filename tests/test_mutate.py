"""Mutations of real PEFT adapters over the tiny model: noise, rank change, fine-tune."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from support.adapters import (
    adapter_distance,
    assert_close_deltas,
    delta_weights,
    leftovers,
    logits_with,
    tiny_adapters,
)

from tasks.evolve.adapter_files import MergeError
from tasks.evolve.mutate import mutate_finetune, mutate_noise, mutate_rank
from tasks.train.trainer import read_adapter_manifest, verify_adapter_files


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return tiny_adapters(tiny_model_dir, tmp_path_factory.mktemp("adapters"))


@pytest.fixture(scope="module")
def base_logits(tiny_model_dir: Path) -> torch.Tensor:
    return logits_with(tiny_model_dir, None)


def test_mutate_noise_perturbs_by_the_requested_relative_std_deterministically(
    adapters: dict[str, Path], tmp_path: Path
) -> None:
    parent = load_file(str(adapters["a"] / "adapter_model.safetensors"))
    first = mutate_noise(adapters["a"], tmp_path / "n1", strength=0.2, seed=7)
    again = mutate_noise(adapters["a"], tmp_path / "n2", strength=0.2, seed=7)
    other = mutate_noise(adapters["a"], tmp_path / "n3", strength=0.2, seed=8)
    noisy = load_file(str(first / "adapter_model.safetensors"))
    assert noisy.keys() == parent.keys()
    ratios = torch.tensor([float((noisy[k] - parent[k]).std() / parent[k].std())
                           for k in parent])
    assert float(ratios.mean()) == pytest.approx(0.2, rel=0.1)
    assert (first / "adapter_model.safetensors").read_bytes() == (
        again / "adapter_model.safetensors").read_bytes()
    assert (first / "adapter_model.safetensors").read_bytes() != (
        other / "adapter_model.safetensors").read_bytes()
    recipe = read_adapter_manifest(first)["recipe"]
    assert recipe == {"kind": "mutation", "mutation": "noise", "parents": [str(adapters["a"])],
                      "strength": 0.2, "seed": 7, "rank": 4}
    assert verify_adapter_files(first) == []


@pytest.mark.parametrize("new_rank", [2, 8])
def test_mutate_rank_changes_r_and_keeps_the_delta_close(
    new_rank: int, adapters: dict[str, Path], tiny_model_dir: Path,
    base_logits: torch.Tensor, tmp_path: Path,
) -> None:
    out = mutate_rank(str(tiny_model_dir), adapters["a"], tmp_path / "child", new_rank=new_rank)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == new_rank
    assert config["lora_alpha"] / new_rank == 2.0  # the parent's alpha/r is kept
    before, after = delta_weights(adapters["a"]), delta_weights(out)
    recipe = read_adapter_manifest(out)["recipe"]
    assert recipe["old_rank"] == 4 and recipe["new_rank"] == new_rank
    if new_rank > 4:
        assert_close_deltas(after, before)
        assert recipe["relative_error"] == pytest.approx(0.0, abs=1e-5)
    else:
        for name in before:
            dropped = torch.linalg.svdvals(before[name])[new_rank:]
            error = torch.linalg.norm(after[name] - before[name])
            assert float(error) == pytest.approx(float(dropped.norm()), rel=1e-3)
        assert 0.0 < recipe["relative_error"] < 1.0
    assert adapter_distance(out, adapters["a"]) < 0.5
    # PEFT loads it at the new rank and the model is adapted.
    assert not torch.allclose(logits_with(tiny_model_dir, out), base_logits, atol=1e-4)


def test_mutate_finetune_continues_training_the_parent(
    tiny_settings, adapters: dict[str, Path], tiny_model_dir: Path, tmp_path: Path
) -> None:
    from datasets import Dataset

    from evolora.tracking import setup_mlflow

    setup_mlflow(tiny_settings)
    rows = Dataset.from_list([{"messages": [
        {"role": "system", "content": "Answer with the tool."},
        {"role": "user", "content": f"What is {i} plus {i}?"},
        {"role": "assistant", "content": f"Thought: add.\nFinal Answer: {2 * i}"},
    ]} for i in range(4)])
    out = mutate_finetune(tiny_settings, str(tiny_model_dir), adapters["a"],
                          tmp_path / "tuned" / "child", rows, steps=2, seed=3,
                          manifest_extra={"generation": 1})
    assert out == tmp_path / "tuned" / "child"
    assert leftovers(out.parent) == ["child"]
    manifest = read_adapter_manifest(out)
    assert manifest["recipe"] == {"kind": "mutation", "mutation": "finetune",
                                  "parents": [str(adapters["a"])], "steps": 2, "seed": 3,
                                  "rank": 4}
    assert manifest["init_adapter"] == str(adapters["a"]) and manifest["generation"] == 1
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 4
    parent, child = delta_weights(adapters["a"]), delta_weights(out)
    assert set(child) == set(parent)
    assert any(not torch.allclose(child[n], parent[n]) for n in parent)
    assert adapter_distance(out, adapters["a"]) < 0.5  # a nudge, not a new adapter


def test_mutate_finetune_refuses_a_single_warm_up_step(
    tiny_settings, adapters: dict[str, Path], tiny_model_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(MergeError, match="warm-up"):
        mutate_finetune(tiny_settings, str(tiny_model_dir), adapters["a"], tmp_path / "child",
                        rows=[], steps=1, seed=0)
    assert leftovers(tmp_path) == []
