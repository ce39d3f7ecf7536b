"""Cross-over and mutation of adapters: the tensor maths on small tensors, then the real
operations on real PEFT adapters over the tiny model (no training except one fine-tune).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from support.adapters import adapter_distance, delta_weights

from evolora.settings import Settings
from evolora.vocabulary import COMBINATION_TYPES
from tasks.evolve.adapter_files import MergeError
from tasks.evolve.adapter_math import (
    LoraModule,
    add_noise,
    change_rank,
    delta_cosine_distance,
    lora_delta,
    lora_inner,
    lora_modules,
    lora_scaling,
    mean_module_distance,
    ties_combine,
)
from tasks.evolve.merge import (
    crossover,
    merge_from_start,
    population_diversity,
    valid_combination_types,
)
from tasks.evolve.mutate import mutate_finetune, mutate_noise, mutate_rank
from tasks.train.trainer import ADAPTER_MANIFEST, read_adapter_manifest, verify_adapter_files

Q = "model.layers.0.self_attn.q_proj"
V = "model.layers.0.self_attn.v_proj"


def random_module(rank: int, out: int = 12, inp: int = 10, seed: int = 0,
                  scaling: float = 2.0) -> LoraModule:
    generator = torch.Generator().manual_seed(seed)
    return LoraModule(torch.randn(rank, inp, generator=generator),
                      torch.randn(out, rank, generator=generator), scaling)


# ---------------------------------------------------------------------- pure tensor maths

def test_scaling_follows_peft() -> None:
    assert lora_scaling(8, 4) == 2.0
    assert lora_scaling(8, 4, use_rslora=True) == 4.0


def test_change_rank_to_full_rank_reproduces_the_delta() -> None:
    module = random_module(4)
    same = change_rank(module, 4, new_scaling=0.5)
    assert same.rank == 4 and same.scaling == 0.5
    torch.testing.assert_close(same.delta(), module.delta(), atol=1e-4, rtol=1e-4)


def test_change_rank_down_is_the_best_low_rank_approximation() -> None:
    module = random_module(6)
    singular = torch.linalg.svdvals(module.delta().double())
    low = change_rank(module, 2, new_scaling=module.scaling)
    error = torch.linalg.norm((low.delta() - module.delta()).double())
    # Eckart-Young: the error is exactly the norm of the dropped singular values.
    expected = torch.sqrt((singular[2:] ** 2).sum())
    assert float(error) == pytest.approx(float(expected), rel=1e-4)


def test_change_rank_up_keeps_the_delta_and_leaves_new_capacity_trainable() -> None:
    module = random_module(2)
    grown = change_rank(module, 5, module.scaling, torch.Generator().manual_seed(0))
    torch.testing.assert_close(grown.delta(), module.delta(), atol=1e-4, rtol=1e-4)
    assert grown.b[:, 2:].abs().sum() == 0  # the delta does not move...
    assert grown.a[2:].abs().sum() > 0  # ...but B's new columns get gradients through A


def test_ties_averages_what_agrees_keeps_what_is_alone_and_drops_the_outvoted() -> None:
    first = torch.tensor([1.0, 2.0, 3.0, 0.0, -1.0])
    second = torch.tensor([3.0, 0.0, -1.0, -4.0, -1.0])
    merged = ties_combine([first, second], [1.0, 1.0], density=1.0)
    # agree: mean; alone: kept whole; 3 vs -1: + wins, -1 is dropped; both -1: mean.
    torch.testing.assert_close(merged, torch.tensor([2.0, 2.0, 3.0, -4.0, -1.0]))


def test_ties_trims_each_vector_to_its_largest_values_before_voting() -> None:
    first = torch.tensor([10.0, 0.1, 0.2, 5.0])
    second = torch.tensor([0.3, -8.0, 0.1, 6.0])
    merged = ties_combine([first, second], [1.0, 0.5], density=0.5)
    # first keeps 10 and 5; second (weighted 0.5) keeps -4 and 3.
    torch.testing.assert_close(merged, torch.tensor([10.0, -4.0, 0.0, 4.0]))
    with pytest.raises(ValueError, match="density"):
        ties_combine([first, second], [1.0, 1.0], density=0.0)
    with pytest.raises(ValueError, match="2 weights for 1"):
        ties_combine([first], [1.0, 1.0], density=0.5)


def test_noise_of_strength_zero_is_identity_and_seeded_noise_is_reproducible() -> None:
    generator = torch.Generator().manual_seed(1)
    state = {"m.lora_A.weight": torch.randn(64, 256, generator=generator),
             "m.lora_B.weight": torch.randn(256, 64, generator=generator) * 0.01,
             "m.modules_to_save.weight": torch.randn(3, 3, generator=generator)}
    same = add_noise(state, 0.0, seed=3)
    assert all(torch.equal(same[k], state[k]) for k in state)
    first, again, other = (add_noise(state, 0.1, seed=s) for s in (3, 3, 4))
    assert all(torch.equal(first[k], again[k]) for k in state)
    assert not torch.equal(first["m.lora_A.weight"], other["m.lora_A.weight"])
    assert torch.equal(first["m.modules_to_save.weight"], state["m.modules_to_save.weight"])
    for key in ("m.lora_A.weight", "m.lora_B.weight"):  # noise relative to each tensor
        ratio = (first[key] - state[key]).std() / state[key].std()
        assert float(ratio) == pytest.approx(0.1, rel=0.05)


def test_low_rank_cosine_distance_matches_the_dense_one() -> None:
    first, second = random_module(3, seed=1), random_module(5, seed=2, scaling=0.5)
    inner = float((first.delta().double() * second.delta().double()).sum())
    assert lora_inner(first, second) == pytest.approx(inner, rel=1e-6)
    dense = 1 - torch.nn.functional.cosine_similarity(
        first.delta().flatten(), second.delta().flatten(), dim=0)
    distance = delta_cosine_distance(first, second)
    assert distance == pytest.approx(float(dense), abs=1e-5)
    assert distance == pytest.approx(delta_cosine_distance(second, first))
    assert delta_cosine_distance(first, first) == pytest.approx(0.0, abs=1e-9)
    negated = LoraModule(first.a, -first.b, first.scaling)
    assert delta_cosine_distance(first, negated) == pytest.approx(2.0)
    # Rank-independent: the same delta at another rank is at distance 0.
    grown = change_rank(first, 6, 1.0, torch.Generator().manual_seed(0))
    assert delta_cosine_distance(first, grown) == pytest.approx(0.0, abs=1e-6)


def test_zero_deltas_and_disjoint_modules_have_defined_distances() -> None:
    zero = LoraModule(torch.randn(2, 10), torch.zeros(12, 2), 1.0)
    assert delta_cosine_distance(zero, zero) == 0.0
    assert delta_cosine_distance(zero, random_module(2)) == 1.0
    assert mean_module_distance({"q": random_module(2)}, {"v": random_module(2)}) == 1.0


def test_lora_modules_resolves_per_module_rank_and_alpha() -> None:
    state = {"base_model.model.layers.0.q_proj.lora_A.weight": torch.ones(2, 4),
             "base_model.model.layers.0.q_proj.lora_B.weight": torch.ones(3, 2),
             "base_model.model.layers.0.v_proj.lora_A.weight": torch.ones(4, 4),
             "base_model.model.layers.0.v_proj.lora_B.weight": torch.ones(3, 4)}
    config = {"r": 2, "lora_alpha": 4, "rank_pattern": {"v_proj": 4},
              "alpha_pattern": {"v_proj": 2}}
    modules = lora_modules(state, config)
    assert modules["layers.0.q_proj"].scaling == 2.0
    assert modules["layers.0.v_proj"].scaling == 0.5
    torch.testing.assert_close(modules["layers.0.q_proj"].delta(),
                               lora_delta(torch.ones(2, 4), torch.ones(3, 2), 2.0))


def test_valid_combination_types_follow_the_rank_rule() -> None:
    assert valid_combination_types([4, 4], list(COMBINATION_TYPES)) == list(COMBINATION_TYPES)
    assert valid_combination_types([4, 8], list(COMBINATION_TYPES)) == ["cat", "svd", "ties_svd"]
    assert valid_combination_types([4, 8], ["linear", "svd", "nope"]) == ["svd"]
    assert valid_combination_types([4], ["nope", "ties"]) == ["ties"]


# ---------------------------------------------------------------------- real adapters

def make_adapter(base_dir: Path, out: Path, *, rank: int, targets: list[str], seed: int,
                 use_rslora: bool = False) -> Path:
    """A real PEFT adapter with random (non-zero) B, written by save_pretrained."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets,
                        use_rslora=use_rslora, task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.05)
    peft_model.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    qv = ["q_proj", "v_proj"]
    return {
        "a": make_adapter(tiny_model_dir, root / "a", rank=4, targets=qv, seed=1),
        "b": make_adapter(tiny_model_dir, root / "b", rank=4, targets=qv, seed=2),
        "r8": make_adapter(tiny_model_dir, root / "r8", rank=8, targets=qv, seed=3),
        "q_only": make_adapter(tiny_model_dir, root / "q_only", rank=4, targets=["q_proj"],
                               seed=4),
        "v_only": make_adapter(tiny_model_dir, root / "v_only", rank=4, targets=["v_proj"],
                               seed=5),
    }


@pytest.fixture(scope="module")
def base_logits(tiny_model_dir: Path) -> torch.Tensor:
    return logits_with(tiny_model_dir, None)


def logits_with(base_dir: Path, adapter_dir: Path | None) -> torch.Tensor:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, str(adapter_dir))
    with torch.no_grad():
        return model.eval()(torch.arange(1, 17)[None]).logits


def assert_close_deltas(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]
                        ) -> None:
    assert set(actual) == set(expected)
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], atol=1e-5, rtol=1e-4)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("combination_type", COMBINATION_TYPES)
def test_every_combination_type_writes_a_loadable_adapter_that_changes_the_model(
    combination_type: str, adapters: dict[str, Path], tiny_model_dir: Path,
    base_logits: torch.Tensor, tmp_path: Path,
) -> None:
    out = crossover(str(tiny_model_dir), [adapters["a"], adapters["b"]], [0.6, 0.4],
                    combination_type, tmp_path / "child", manifest_extra={"generation": 3})

    assert out == tmp_path / "child"
    assert leftovers(tmp_path) == ["child"]  # no staging folder left beside it
    assert leftovers(out) == sorted(["adapter_config.json", "adapter_model.safetensors",
                                     ADAPTER_MANIFEST])
    assert verify_adapter_files(out) == []
    manifest = read_adapter_manifest(out)
    assert manifest["recipe"]["kind"] == "crossover"
    assert manifest["recipe"]["parents"] == [str(adapters["a"]), str(adapters["b"])]
    assert manifest["recipe"]["weights"] == [0.6, 0.4]
    assert manifest["recipe"]["combination_type"] == combination_type
    assert manifest["base_model_sha256"] and manifest["generation"] == 3
    assert not torch.allclose(logits_with(tiny_model_dir, out), base_logits, atol=1e-4)


def test_linear_with_weights_one_and_zero_reproduces_the_first_parent(
    adapters: dict[str, Path], tiny_model_dir: Path, tmp_path: Path
) -> None:
    out = crossover(str(tiny_model_dir), [adapters["a"], adapters["b"]], [1.0, 0.0], "linear",
                    tmp_path / "child")
    assert_close_deltas(delta_weights(out), delta_weights(adapters["a"]))
    assert adapter_distance(out, adapters["a"]) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(("combination_type", "child_rank"),
                         [("cat", 12), ("svd", 8), ("ties_svd", 8)])
def test_unequal_ranks_merge_with_cat_svd_and_ties_svd(
    combination_type: str, child_rank: int, adapters: dict[str, Path], tiny_model_dir: Path,
    base_logits: torch.Tensor, tmp_path: Path,
) -> None:
    out = crossover(str(tiny_model_dir), [adapters["a"], adapters["r8"]], [0.5, 0.5],
                    combination_type, tmp_path / "child")
    assert json.loads((out / "adapter_config.json").read_text())["r"] == child_rank
    assert read_adapter_manifest(out)["recipe"]["rank"] == child_rank
    assert not torch.allclose(logits_with(tiny_model_dir, out), base_logits, atol=1e-4)
    if combination_type == "cat":  # cat is exact: the weighted sum of the deltas
        first, second = delta_weights(adapters["a"]), delta_weights(adapters["r8"])
        assert_close_deltas(delta_weights(out),
                            {n: 0.5 * first[n] + 0.5 * second[n] for n in first})


def test_svd_with_enough_rank_is_the_exact_weighted_sum(
    adapters: dict[str, Path], tiny_model_dir: Path, tmp_path: Path
) -> None:
    out = crossover(str(tiny_model_dir), [adapters["a"], adapters["r8"]], [0.7, 0.3], "svd",
                    tmp_path / "child", svd_rank=12)
    first, second = delta_weights(adapters["a"]), delta_weights(adapters["r8"])
    assert_close_deltas(delta_weights(out), {n: 0.7 * first[n] + 0.3 * second[n]
                                             for n in first})
    assert read_adapter_manifest(out)["recipe"]["svd_rank"] == 12


def test_linear_on_unequal_ranks_names_the_fix(
    adapters: dict[str, Path], tiny_model_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(MergeError, match=r"ranks 4 and 8; linear needs equal ranks: "
                                         r"use cat, svd or ties_svd"):
        crossover(str(tiny_model_dir), [adapters["a"], adapters["r8"]], [0.5, 0.5], "linear",
                  tmp_path / "child")
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(("change", "message"), [
    ({"parents": "missing"}, "does not exist"),
    ({"weights": [1.0]}, "1 weights for 2 parents"),
    ({"combination_type": "average"}, "unknown combination_type 'average'"),
    ({"density": 0.0, "combination_type": "ties"}, r"density 0.0 is outside \(0, 1\]"),
])
def test_invalid_requests_raise_before_writing_anything(
    change: dict, message: str, adapters: dict[str, Path], tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    arguments = {"parents": [adapters["a"], adapters["b"]], "weights": [0.5, 0.5],
                 "combination_type": "linear", "density": 0.5}
    if change.pop("parents", None):
        arguments["parents"] = [adapters["a"], tmp_path / "nowhere"]
    arguments.update(change)
    out_root = tmp_path / "children"
    with pytest.raises(MergeError, match=message):
        crossover(str(tiny_model_dir), out_dir=out_root / "child", **arguments)
    assert not out_root.exists()


def test_every_problem_is_reported_at_once(
    adapters: dict[str, Path], tiny_model_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(MergeError) as caught:
        crossover(str(tiny_model_dir), [adapters["a"], tmp_path / "nowhere"], [1.0], "mean",
                  tmp_path / "child")
    for part in ("does not exist", "1 weights for 2 parents", "unknown combination_type"):
        assert part in str(caught.value)


def test_parents_of_another_base_model_are_refused(
    adapters: dict[str, Path], tiny_model_dir: Path, tmp_path: Path
) -> None:
    stranger = Path(shutil.copytree(adapters["b"], tmp_path / "stranger"))
    (stranger / ADAPTER_MANIFEST).write_text(json.dumps({"base_model_sha256": "f" * 64}))
    with pytest.raises(MergeError, match=r"another base model.*same base model"):
        crossover(str(tiny_model_dir), [adapters["a"], stranger], [0.5, 0.5], "linear",
                  tmp_path / "child")
    assert not (tmp_path / "child").exists()


def test_a_failure_mid_merge_leaves_nothing_at_out_dir(
    adapters: dict[str, Path], tiny_model_dir: Path, tmp_path: Path
) -> None:
    # Valid folder and config, damaged weights: validation passes, loading fails.
    broken = Path(shutil.copytree(adapters["b"], tmp_path / "parents" / "broken"))
    (broken / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    out_root = tmp_path / "children"
    out_root.mkdir()
    with pytest.raises(Exception):  # noqa: B017 (whatever the loader raises)
        crossover(str(tiny_model_dir), [adapters["a"], broken], [0.5, 0.5], "linear",
                  out_root / "child")
    assert leftovers(out_root) == []


@pytest.mark.parametrize("combination_type", ["linear", "cat"])
def test_crossover_of_specialists_keeps_what_each_parent_learned(
    combination_type: str, adapters: dict[str, Path], tiny_model_dir: Path, tmp_path: Path
) -> None:
    # One parent adapts only q_proj, the other only v_proj: the child carries both, each
    # scaled by its parent's weight. (Trained specialists would combine skills this way.)
    out = crossover(str(tiny_model_dir), [adapters["q_only"], adapters["v_only"]], [0.5, 0.5],
                    combination_type, tmp_path / "child")
    q_parent, v_parent = delta_weights(adapters["q_only"]), delta_weights(adapters["v_only"])
    expected = {**{n: 0.5 * d for n, d in q_parent.items()},
                **{n: 0.5 * d for n, d in v_parent.items()}}
    assert_close_deltas(delta_weights(out), expected)


def test_rslora_parents_merge_to_the_right_scale(tiny_model_dir: Path, tmp_path: Path) -> None:
    parents = [make_adapter(tiny_model_dir, tmp_path / f"rs{i}", rank=4,
                            targets=["q_proj", "v_proj"], seed=10 + i, use_rslora=True)
               for i in range(2)]
    out = crossover(str(tiny_model_dir), parents, [0.5, 0.5], "cat", tmp_path / "child")
    first, second = delta_weights(parents[0]), delta_weights(parents[1])
    assert_close_deltas(delta_weights(out), {n: 0.5 * first[n] + 0.5 * second[n]
                                             for n in first})


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


def test_distance_is_symmetric_zero_on_self_and_grows_with_noise(
    adapters: dict[str, Path], tmp_path: Path
) -> None:
    a, b = adapters["a"], adapters["b"]
    assert adapter_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    assert adapter_distance(a, b) == pytest.approx(adapter_distance(b, a))
    assert 0.0 < adapter_distance(a, b) <= 2.0
    slight = mutate_noise(a, tmp_path / "slight", strength=0.05, seed=1)
    strong = mutate_noise(a, tmp_path / "strong", strength=0.5, seed=1)
    assert 0.0 < adapter_distance(a, slight) < adapter_distance(a, strong)
    assert population_diversity([a]) == 0.0
    diversity = population_diversity([a, b, strong])
    pairwise = [adapter_distance(a, b), adapter_distance(a, strong), adapter_distance(b, strong)]
    assert diversity == pytest.approx(sum(pairwise) / 3)


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


def test_task_arithmetic_with_a_negative_weight_adds_each_change_once(
    adapters: dict[str, Path], tiny_model_dir: Path, tmp_path: Path
) -> None:
    # Specialists continued from one generalist G (S_i = G + d_i, made here by combining
    # real adapters) compose exactly as S_1 + S_2 - G = G + d_1 + d_2 through cat.
    generalist = adapters["a"]
    first = crossover(str(tiny_model_dir), [generalist, adapters["b"]], [1.0, 0.5], "cat",
                      tmp_path / "s1")
    second = crossover(str(tiny_model_dir), [generalist, adapters["r8"]], [1.0, 0.5], "cat",
                       tmp_path / "s2")
    out = crossover(str(tiny_model_dir), [first, second, generalist], [1.0, 1.0, -1.0], "cat",
                    tmp_path / "merged")
    g, b, r8 = (delta_weights(adapters[k]) for k in ("a", "b", "r8"))
    assert_close_deltas(delta_weights(out), {n: g[n] + 0.5 * b[n] + 0.5 * r8[n] for n in g})


@pytest.mark.parametrize(("method", "init_from", "expected"), [
    ("ties", ["g0-m0", "g0-m0"],
     {"combination_type": "ties_from_start", "start": "g0-m0", "weights": [1.0, 1.0],
      "rule": "ties of the changes from g0-m0"}),
    ("sum", ["g0-m0", "g0-m0"],
     {"combination_type": "sum_from_start", "start": "g0-m0", "weights": [1.0, 1.0],
      "rule": "sum of the changes from g0-m0"}),
    ("mean", ["g0-m0", "g0-m0"],
     {"combination_type": "cat", "weights": [0.5, 0.5], "rule": "mean (all continued g0-m0)"}),
    # Fresh specialists share no start, so there are no changes to merge: the mean.
    ("ties", [None, None], {"combination_type": "cat", "weights": [0.5, 0.5], "rule": "mean"}),
    ("ties", ["g0-m0", "g0-m3"],
     {"combination_type": "cat", "weights": [0.5, 0.5], "rule": "mean"}),
])
def test_specialist_merge_recipe_merges_changes_only_from_a_shared_start(
    method: str, init_from: list, expected: dict
) -> None:
    from tasks.evolve.population import specialist_merge_recipe

    members = [{"id": f"s{i}", "recipe": {"init_from": base}}
               for i, base in enumerate(init_from)]
    recipe = specialist_merge_recipe(members, method, weight=1.0, density=0.4)
    assert recipe == {"parents": ["s0", "s1"], "density": 0.4, **expected}


@pytest.fixture
def continued(adapters: dict[str, Path], tiny_model_dir: Path, tmp_path: Path
              ) -> dict[str, Path]:
    """A start G and two adapters that continued it: S_i = G + d_i (made by exact cat)."""
    start = adapters["a"]
    return {
        "start": start,
        "s1": crossover(str(tiny_model_dir), [start, adapters["b"]], [1.0, 0.5], "cat",
                        tmp_path / "s1"),
        "s2": crossover(str(tiny_model_dir), [start, adapters["r8"]], [1.0, 0.5], "cat",
                        tmp_path / "s2"),
    }


def test_merge_from_start_sum_is_the_start_plus_each_change(
    continued: dict[str, Path], adapters: dict[str, Path], tiny_model_dir: Path,
    tmp_path: Path, base_logits: torch.Tensor,
) -> None:
    out = merge_from_start(str(tiny_model_dir), continued["start"],
                           [continued["s1"], continued["s2"]], tmp_path / "sum", method="sum")
    g, b, r8 = (delta_weights(adapters[k]) for k in ("a", "b", "r8"))
    assert_close_deltas(delta_weights(out), {n: g[n] + 0.5 * b[n] + 0.5 * r8[n] for n in g})
    config = json.loads((out / "adapter_config.json").read_text())
    recipe = read_adapter_manifest(out)["recipe"]
    # The ranks added up (4 + 8 + 12) hold all of S_1 + S_2 - G.
    assert config["r"] == 24 and recipe["combination_type"] == "sum_from_start"
    assert recipe["relative_error"] < 1e-5
    assert not torch.allclose(logits_with(tiny_model_dir, out), base_logits)


def test_merge_from_start_ties_votes_on_the_changes_not_on_the_whole_adapters(
    continued: dict[str, Path], adapters: dict[str, Path], tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    # Full rank and density 1: no trimming and no truncation, so per entry the change is
    # the mean where the two changes agree in sign, else the larger one.
    out = merge_from_start(str(tiny_model_dir), continued["start"],
                           [continued["s1"], continued["s2"]], tmp_path / "ties",
                           method="ties", density=1.0, rank=64)
    g, b, r8 = (delta_weights(adapters[k]) for k in ("a", "b", "r8"))
    expected = {}
    for name in g:
        d1, d2 = 0.5 * b[name], 0.5 * r8[name]
        agree = torch.sign(d1) == torch.sign(d2)
        louder = torch.where(d1.abs() >= d2.abs(), d1, d2)
        expected[name] = g[name] + torch.where(agree, (d1 + d2) / 2, louder)
    assert_close_deltas(delta_weights(out), expected)


def test_merge_from_start_refuses_parents_that_did_not_continue_the_start(
    continued: dict[str, Path], adapters: dict[str, Path], tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    with pytest.raises(MergeError, match="adapts other modules than the start"):
        merge_from_start(str(tiny_model_dir), continued["start"],
                         [continued["s1"], adapters["q_only"]], tmp_path / "child")
    with pytest.raises(MergeError) as raised:
        merge_from_start(str(tiny_model_dir), continued["start"], [continued["s1"]],
                         tmp_path / "child", method="median", density=0.0, rank=0)
    for problem in ("at least 2 parents", "unknown method 'median'", "rank 0"):
        assert problem in str(raised.value)
    assert not (tmp_path / "child").exists()


def test_the_cycle_breeds_a_child_from_a_start_with_its_lineage(
    continued: dict[str, Path], adapters: dict[str, Path], tiny_settings: Settings,
    tiny_model_dir: Path, tmp_path: Path,
) -> None:
    from flows.cycle import breed_child
    from tasks.evolve.population import specialist_merge_recipe

    specialists = [{"id": name, "adapter_dir": str(continued[name]),
                    "recipe": {"init_from": "g0-m0"}} for name in ("s1", "s2")]
    plan = specialist_merge_recipe(specialists, "sum")
    plan.pop("rule")
    start = {"id": "g0-m0", "adapter_dir": str(continued["start"])}
    record = breed_child.fn(tiny_settings, str(tiny_model_dir), {},
                            {**plan, "mutation": {"kind": "none"}}, specialists, "g1-c1", 1,
                            str(tmp_path / "children"), "no-run", start)
    assert record["parents"] == ["s1", "s2"]
    assert record["recipe"]["start"] == "g0-m0"
    assert record["recipe"]["combination_type"] == "sum_from_start"
    g, b, r8 = (delta_weights(adapters[k]) for k in ("a", "b", "r8"))
    assert_close_deltas(delta_weights(Path(record["adapter_dir"])),
                        {n: g[n] + 0.5 * b[n] + 0.5 * r8[n] for n in g})
    lineage = read_adapter_manifest(Path(record["adapter_dir"]))["lineage"]
    assert lineage["parents"] == ["s1", "s2"] and lineage["generation"] == 1
