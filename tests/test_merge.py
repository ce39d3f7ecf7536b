"""Cross-over of real PEFT adapters over the tiny model: PEFT's weighted merges, merges of
the changes since a shared start, distances, and the cycle's breeding step.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from support.adapters import (
    adapter_distance,
    assert_close_deltas,
    delta_weights,
    leftovers,
    logits_with,
    make_adapter,
    tiny_adapters,
)

from evolora.settings import Settings
from evolora.vocabulary import COMBINATION_TYPES
from tasks.evolve.adapter_files import MergeError
from tasks.evolve.merge import (
    crossover,
    merge_from_start,
    population_diversity,
    valid_combination_types,
)
from tasks.evolve.mutate import mutate_noise
from tasks.evolve.population import specialist_merge_recipe
from tasks.records import DataSplits, InitialRecipe, Member, PlannedChild
from tasks.train.trainer import ADAPTER_MANIFEST, read_adapter_manifest, verify_adapter_files


def test_valid_combination_types_follow_the_rank_rule() -> None:
    assert valid_combination_types([4, 4], list(COMBINATION_TYPES)) == list(COMBINATION_TYPES)
    assert valid_combination_types([4, 8], list(COMBINATION_TYPES)) == ["cat", "svd", "ties_svd"]
    assert valid_combination_types([4, 8], ["linear", "svd", "nope"]) == ["svd"]
    assert valid_combination_types([4], ["nope", "ties"]) == ["ties"]


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return tiny_adapters(tiny_model_dir, tmp_path_factory.mktemp("adapters"))


@pytest.fixture(scope="module")
def base_logits(tiny_model_dir: Path) -> torch.Tensor:
    return logits_with(tiny_model_dir, None)


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


def specialist(member_id: str, adapter_dir: Path, init_from: str | None) -> Member:
    return Member(id=member_id, adapter_dir=adapter_dir, rank=4, generation=0,
                  recipe=InitialRecipe(role="specialist", skills=["arithmetic"], seed=0,
                                       steps=2, init_from=init_from))


@pytest.mark.parametrize(("method", "init_from", "expected"), [
    ("ties", ["g0-m0", "g0-m0"],
     {"combination_type": "ties_from_start", "start": "g0-m0", "weights": [1.0, 1.0],
      "merge_rule": "ties of the changes from g0-m0"}),
    ("sum", ["g0-m0", "g0-m0"],
     {"combination_type": "sum_from_start", "start": "g0-m0", "weights": [1.0, 1.0],
      "merge_rule": "sum of the changes from g0-m0"}),
    ("mean", ["g0-m0", "g0-m0"],
     {"combination_type": "cat", "weights": [0.5, 0.5],
      "merge_rule": "mean (all continued g0-m0)"}),
    # Fresh specialists share no start, so there are no changes to merge: the mean.
    ("ties", [None, None], {"combination_type": "cat", "weights": [0.5, 0.5],
                            "merge_rule": "mean"}),
    ("ties", ["g0-m0", "g0-m3"],
     {"combination_type": "cat", "weights": [0.5, 0.5], "merge_rule": "mean"}),
])
def test_specialist_merge_recipe_merges_changes_only_from_a_shared_start(
    method: str, init_from: list[str | None], expected: dict, tmp_path: Path
) -> None:
    members = [specialist(f"s{i}", tmp_path / f"s{i}", base) for i, base in enumerate(init_from)]
    plan = specialist_merge_recipe(members, method, weight=1.0, density=0.4)
    assert plan == PlannedChild(parents=["s0", "s1"], density=0.4, **expected)


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
    from flows.cycle_tasks import CycleContext, breed_child

    specialists = [specialist(name, continued[name], "g0-m0") for name in ("s1", "s2")]
    start = Member(id="g0-m0", adapter_dir=continued["start"], rank=4, generation=0,
                   recipe=InitialRecipe(role="generalist", skills=["arithmetic"], seed=0,
                                        steps=2))
    no_data = DataSplits(train_path=tmp_path / "train", eval_path=tmp_path / "eval",
                         test_path=tmp_path / "test", hashes={}, rows={})
    ctx = CycleContext(cycle_id="c1", model_path=str(tiny_model_dir), base_sha="",
                       data=no_data, parent_run_id="no-run", adapters_dir=tmp_path / "children")
    child = breed_child.fn(tiny_settings, ctx, "g1-c1", 1,
                           specialist_merge_recipe(specialists, "sum"), specialists, start)
    assert child.parents == ["s1", "s2"] and child.generation == 1
    assert child.recipe.start == "g0-m0"
    assert child.recipe.combination_type == "sum_from_start"
    g, b, r8 = (delta_weights(adapters[k]) for k in ("a", "b", "r8"))
    assert_close_deltas(delta_weights(child.adapter_dir),
                        {n: g[n] + 0.5 * b[n] + 0.5 * r8[n] for n in g})
    lineage = read_adapter_manifest(child.adapter_dir)["lineage"]
    assert lineage["parents"] == ["s1", "s2"] and lineage["generation"] == 1
