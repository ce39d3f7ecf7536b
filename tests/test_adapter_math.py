"""LoRA adapter maths on small tensors: scaling, rank changes, TIES, noise, distances."""

from __future__ import annotations

import pytest
import torch

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

Q = "model.layers.0.self_attn.q_proj"
V = "model.layers.0.self_attn.v_proj"


def random_module(rank: int, out: int = 12, inp: int = 10, seed: int = 0,
                  scaling: float = 2.0) -> LoraModule:
    generator = torch.Generator().manual_seed(seed)
    return LoraModule(torch.randn(rank, inp, generator=generator),
                      torch.randn(out, rank, generator=generator), scaling)


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
