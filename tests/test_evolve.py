"""Breeding plans: schema and validation, the GA fallback, elitism, and a real AutoGen GroupChat
talking to loopback servers (a scripted OpenAI server, and the embedded llama.cpp model)."""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs
from support.scripted_openai import Delay, Fail, ScriptedOpenAI, system_prompt

from engines.llama_server import EmbeddedLlamaServer, default_gguf_path
from evolora.settings import EvolutionSettings
from evolora.vocabulary import UNEQUAL_RANK_TYPES
from tasks.evolve.agents import decide_plan, llm_config_for, propose_with_agents
from tasks.evolve.plan import (
    PlanError,
    ga_plan,
    plan_json_schema,
    population_table,
    select_survivors,
    validate_plan,
    weight_shares,
)
from tasks.records import BreedingPlan, ChildRecipe, InitialRecipe, Member, Mutation, Scores

ALL_TYPES = ["linear", "cat", "ties", "dare_ties"]


def make_members(
    ranks: list[int] | None = None, fitness: list[float] | None = None
) -> list[Member]:
    ranks = ranks or [8, 8, 8, 16]
    fitness = fitness or [0.1 + 0.2 * i for i in range(len(ranks))]
    return [
        member(f"m{i}", fit, rank=rank,
               recipe=InitialRecipe(role="generalist", skills=["arithmetic"], seed=i, steps=10))
        for i, (rank, fit) in enumerate(zip(ranks, fitness, strict=True))
    ]


def member(member_id: str, fitness: float, *, rank: int = 8, generation: int = 0,
           parents: list[str] | None = None,
           recipe: InitialRecipe | ChildRecipe | None = None) -> Member:
    """A population member whose eval accuracy (its fitness) is `fitness`."""
    return Member(
        id=member_id, adapter_dir=f"/adapters/{member_id}", rank=rank, generation=generation,
        parents=parents or [],
        recipe=recipe or InitialRecipe(role="generalist", skills=["units"], seed=0, steps=1),
        eval=Scores(split="eval", metrics={"eval_accuracy": fitness}))


def plan_dict(*children: dict[str, Any]) -> dict[str, Any]:
    return {"children": list(children), "rationale": "test"}


def child(parents: list[str], kind: str = "linear", weights: list[float] | None = None) -> dict:
    return {
        "parents": parents,
        "combination_type": kind,
        "weights": weights if weights is not None else [1.0 / len(parents)] * len(parents),
        "mutation": {"kind": "none"},
    }


GOOD_PLAN = plan_dict(child(["m1", "m2"], weights=[0.4, 0.6]), child(["m2", "m3"], "cat"))


def is_critic(body: dict[str, Any]) -> bool:
    return system_prompt(body).startswith("You are the critic")


def settings(timeout_s: float = 10.0) -> EvolutionSettings:
    return EvolutionSettings(llm_timeout_s=timeout_s, combination_types=ALL_TYPES)


# -- validate_plan -------------------------------------------------------------------------


def test_validate_plan_accepts_json_in_prose_and_fences() -> None:
    members = make_members()
    fenced = "Sure! Here is my plan:\n```json\n" + json.dumps(GOOD_PLAN) + "\n```\nThanks."
    prose = "I propose " + json.dumps(GOOD_PLAN) + " because m3 is best."
    for raw in (fenced, prose, json.dumps(GOOD_PLAN), GOOD_PLAN):
        plan = validate_plan(raw, members, n_children=2, allowed_types=ALL_TYPES)
        assert [c.parents for c in plan.children] == [["m1", "m2"], ["m2", "m3"]]


def test_validate_plan_lists_every_problem_at_once() -> None:
    members = make_members()
    bad = plan_dict(
        child(["m1", "m9"]),  # unknown id
        child(["m1", "m3"], "linear"),  # ranks 8 and 16 under linear
        child(["m0", "m1"], "svd", weights=[1.0]),  # type not allowed, one weight missing
    )
    with pytest.raises(PlanError) as caught:
        validate_plan(bad, members, n_children=2, allowed_types=ALL_TYPES)
    problems = caught.value.problems
    text = "\n".join(problems)
    assert "children: 3 given, exactly 2 wanted" in text
    assert "unknown member id 'm9'" in text and "known: m0, m1, m2, m3" in text
    assert "'linear' needs parents of equal rank" in text and "[8, 16]" in text
    assert "'svd' is not allowed" in text
    assert "1 weight(s) for 2 parent(s)" in text
    assert len(problems) == 5


def test_weights_are_shares_that_add_up_to_at_most_one() -> None:
    members = make_members()
    # The demo breeder's child: linear [1.2, 1.2] applied the shared format 2.4 times (0.00).
    overshoot = plan_dict(child(["m1", "m2"], weights=[0.7, 0.6]),
                          child(["m2", "m3"], "cat", weights=[1.2, 0.3]))
    with pytest.raises(PlanError) as caught:
        validate_plan(overshoot, members, n_children=2, allowed_types=ALL_TYPES)
    problems = caught.value.problems
    assert "children[0].weights: they add up to 1.3" in problems[0]
    assert any("1.2 is outside 0..1" in p for p in problems)
    assert any("children[1].weights: they add up to 1.5" in p for p in problems)
    shares = plan_dict(child(["m1", "m2"], weights=[0.55, 0.45]),
                       child(["m2", "m3"], "cat", weights=[0.3, 0.3]))
    plan = validate_plan(shares, members, n_children=2, allowed_types=ALL_TYPES)
    assert [c.weights for c in plan.children] == [[0.55, 0.45], [0.3, 0.3]]


def test_validate_plan_reports_schema_and_mutation_problems() -> None:
    members = make_members()
    bad = plan_dict(
        {**child(["m0"]), "mutation": {"kind": "finetune"}},  # steps missing
        {**child(["m1"]), "mutation": {"kind": "none"}},  # a clone
    )
    with pytest.raises(PlanError) as caught:
        validate_plan(bad, members, n_children=2, allowed_types=ALL_TYPES)
    assert any("needs `steps`" in p for p in caught.value.problems)
    assert any("clone" in p for p in caught.value.problems)

    with pytest.raises(PlanError) as caught:
        validate_plan("no json here, sorry", members, n_children=2, allowed_types=ALL_TYPES)
    assert "no JSON object" in str(caught.value)
    wrong_shape = plan_dict({**child(["m0", "m1"]), "combination_type": "blend", "weights": "x"})
    with pytest.raises(PlanError) as caught:
        validate_plan(wrong_shape, members, n_children=1, allowed_types=ALL_TYPES)
    assert {p.split(":")[0] for p in caught.value.problems} >= {
        "children[0].combination_type",
        "children[0].weights",
    }


def test_weight_shares_split_one_on_a_grid() -> None:
    assert weight_shares(1) == [[1.0]]
    pairs = weight_shares(2)
    assert len(pairs) == 19 and pairs[0] == [0.05, 0.95] and pairs[-1] == [0.95, 0.05]
    assert [len(weight_shares(n)) for n in (3, 4)] == [36, 84]
    assert [0.2, 0.3, 0.5] in weight_shares(3) and [0.4, 0.3, 0.2, 0.1] in weight_shares(4)
    for count in (2, 3, 4):
        assert all(min(w) > 0 and round(sum(w), 9) == 1 for w in weight_shares(count))


def test_plan_schema_exports_and_narrows_to_members() -> None:
    schema = BreedingPlan.model_json_schema()
    assert set(schema["properties"]) == {"children", "rationale"}
    members = make_members()  # m0..m2 at rank 8, m3 at rank 16
    narrowed = plan_json_schema(members, n_children=2, allowed_types=["linear", "cat"])
    assert narrowed["properties"]["children"]["minItems"] == 2
    variants = narrowed["properties"]["children"]["items"]["anyOf"]
    ranks = {m.id: m.rank for m in members}
    shapes = []
    for variant in variants:
        props = variant["properties"]
        parents = props["parents"]
        ids = tuple(item["const"] for item in parents["prefixItems"])
        assert parents["minItems"] == parents["maxItems"] == len(ids)
        # Whole weight lists: llama.cpp's grammar keeps to an enum, but cannot add up.
        offered = props["weights"]["enum"]
        assert offered == weight_shares(len(ids))
        assert all(len(w) == len(ids) and abs(sum(w) - 1) < 1e-9 for w in offered)
        assert all(0 < d <= 1 for d in props["density"]["enum"])
        assert len(set(ids)) == len(ids)  # no parent twice, by construction
        if len({ranks[i] for i in ids}) > 1:  # mixed ranks: only types that merge them
            assert props["combination_type"]["enum"] == ["cat"]
        else:
            assert props["combination_type"]["enum"] == ["linear", "cat"]
        shapes.append(ids)
    # Every set of distinct parents, once: 7 within rank 8, m3 alone, 7 that mix ranks.
    assert len(shapes) == len(set(shapes)) == 15
    assert ("m0", "m1", "m2") in shapes and ("m3",) in shapes
    assert ("m0", "m1", "m2", "m3") in shapes
    # The shared model schema is left as it was.
    assert (
        "enum"
        not in BreedingPlan.model_json_schema()["$defs"]["ChildPlan"]["properties"]["parents"][
            "items"
        ]
    )


def test_plan_schema_falls_back_to_an_enum_for_a_large_population() -> None:
    members = make_members(ranks=[8] * 12)  # 12 + 66 + 220 + 495 parent sets
    narrowed = plan_json_schema(members, n_children=1, allowed_types=["linear"])
    parents = [v["properties"]["parents"] for v in narrowed["properties"]["children"]["items"]
               ["anyOf"]]
    # Single parents are spelt out; 2, 3 and 4 parents (66+ sets each) get one enum variant.
    assert [p["prefixItems"][0]["const"] for p in parents if "prefixItems" in p] == [
        m.id for m in members
    ]
    enums = [p for p in parents if "prefixItems" not in p]
    assert [p["maxItems"] for p in enums] == [2, 3, 4]
    assert all(p["items"]["enum"] == [m.id for m in members] for p in enums)


def test_population_table_shows_fitness_rank_and_lineage() -> None:
    members = make_members()
    recipe = ChildRecipe(combination_type="cat", weights=[0.5, 0.5],
                         mutation=Mutation(kind="noise", strength=0.01))
    members.append(member("c1", 0.95, rank=16, generation=1, parents=["m2", "m3"],
                          recipe=recipe))
    table = population_table(members).splitlines()
    assert table[0] == "| id | fitness | rank | gen | parents | recipe |"
    assert table[2].startswith("| c1 | 0.950 | 16 | 1 | m2,m3 | kind=child combination_type=cat")
    assert "weights=0.5/0.5" in table[2]
    assert table[-1].startswith("| m0 | 0.100 |")  # best first


# -- the GA and survivor selection ------------------------------------------------------------


@pytest.mark.parametrize(
    ("ranks", "allowed"),
    [
        ([8, 8, 8, 16], ALL_TYPES),
        ([8, 8, 8, 16], ["linear", "ties"]),  # no unequal-rank type: m3 can only be mutated
        ([8, 16, 32], ["linear", "dare_ties"]),  # no equal-rank partner at all
        ([4], ["linear"]),  # a population of one
        ([8, 16, 8, 16, 32, 8], ["svd", "linear", "magnitude_prune"]),
    ],
)
def test_ga_plan_is_valid_by_construction(ranks: list[int], allowed: list[str]) -> None:
    for seed in range(150):
        rng = random.Random(seed)
        members = make_members(ranks, [rng.random() for _ in ranks])
        plan = ga_plan(
            members, n_children=3, allowed_types=allowed, rng=rng, mutation_strength=0.01
        )
        # Round-trips through the same gate the agents' plans pass.
        validated = validate_plan(
            plan.model_dump_json(), members, n_children=3, allowed_types=allowed
        )
        by_id = {m.id: m for m in members}
        for kid in validated.children:
            if len({by_id[p].rank for p in kid.parents}) > 1:
                assert kid.combination_type in UNEQUAL_RANK_TYPES


def test_ga_plan_favours_fitter_parents() -> None:
    members = make_members([8] * 6, [0.05, 0.1, 0.2, 0.4, 0.6, 0.9])
    counts: Counter[str] = Counter()
    fitter_weight = 0
    rng = random.Random(7)
    for _ in range(400):
        plan = ga_plan(
            members, n_children=2, allowed_types=["linear"], rng=rng, mutation_strength=0.01
        )
        for kid in plan.children:
            counts.update(kid.parents)
            fits = [next(m.fitness for m in members if m.id == p) for p in kid.parents]
            fitter_weight += kid.weights[fits.index(max(fits))] >= 0.5
    assert counts["m5"] > counts["m3"] > counts["m0"]
    assert counts["m5"] > 2 * counts["m1"]
    assert fitter_weight == 800  # the fitter parent always gets the larger weight


def test_select_survivors_keeps_the_elite_and_the_best_never_worsens() -> None:
    rng = random.Random(3)
    population = make_members([8] * 4, [0.5, 0.7, 0.2, 0.4])
    best = [max(m.fitness for m in population)]
    for generation in range(1, 30):
        children = [
            member(f"g{generation}c{i}", rng.random() * 0.8, generation=generation)
            for i in range(3)
        ]
        elite = sorted(population, key=lambda m: -m.fitness)[:2]
        population = select_survivors(population + children, population_size=4, elite=2)
        assert len(population) == 4
        assert all(e in population for e in elite)
        best.append(max(m.fitness for m in population))
    assert best == sorted(best)  # monotone: a generation's best never gets worse
    with pytest.raises(ValueError, match="elite"):
        select_survivors(population, population_size=2, elite=3)


def test_llm_config_for_reads_settings() -> None:
    config = llm_config_for(
        EvolutionSettings(llm_model="qwen", llm_api_key=SecretStr("sk-1"), llm_timeout_s=7),
        "http://127.0.0.1:9/v1",
    )
    entry = config["config_list"][0]
    assert entry["api_key"] == "sk-1" and entry["model"] == "qwen"
    assert entry["base_url"] == "http://127.0.0.1:9/v1" and entry["timeout"] == 7
    assert config["cache_seed"] is None
    assert llm_config_for(EvolutionSettings(), "http://x/v1")["config_list"][0]["api_key"] == "none"


# -- the AutoGen GroupChat against a scripted server ----------------------------------------------


def run_decide(script: Any, *, timeout_s: float = 10.0) -> tuple[BreedingPlan, dict, Any, list]:
    members = make_members()
    with ScriptedOpenAI(script) as server, capture_logs() as logs:
        plan, record = decide_plan(
            members,
            settings(timeout_s),
            n_children=2,
            rng=random.Random(0),
            llm_config=llm_config_for(settings(timeout_s), server.base_url),
        )
    # Whatever decided, the plan is usable.
    validate_plan(plan.model_dump(), members, n_children=2, allowed_types=ALL_TYPES)
    return plan, record, server, logs


def test_agents_plan_approved_by_critic_is_used() -> None:
    plan, record, server, logs = run_decide(
        lambda body: "APPROVE" if is_critic(body) else "```json\n" + json.dumps(GOOD_PLAN) + "```"
    )
    assert record.policy == "agents"
    assert "approved by the critic" in record.reason
    assert plan.children[1].combination_type == "cat"
    assert len(server.requests) == 2  # breeder, critic: no LLM call spent on speaker choice
    breeder_request = server.requests[0]
    # The plan's schema went through ag2 as a json_schema response_format (grammar decoding).
    schema = breeder_request["response_format"]["json_schema"]["schema"]
    parent_sets = [v["properties"]["parents"]["prefixItems"]
                   for v in schema["properties"]["children"]["items"]["anyOf"]]
    assert [{"const": "m0"}, {"const": "m2"}] in parent_sets
    assert "| m3 | 0.700 |" in breeder_request["messages"][-1]["content"]
    assert "response_format" not in server.requests[1]
    decided = [e for e in logs if e["event"] == "evolve.plan_decided"]
    assert decided and decided[0]["policy"] == "agents"


def test_critic_asks_for_a_fix_and_the_fixed_plan_wins() -> None:
    broken = plan_dict(child(["m1", "m9"]), child(["m2", "m3"], "cat"))
    script = [
        json.dumps(broken),
        "REVISE: m9 is not in the table",
        "Fixed:\n" + json.dumps(GOOD_PLAN),
        "APPROVE",
    ]
    plan, record, server, _ = run_decide(script)
    assert record.policy == "agents", record
    assert plan.children[0].parents == ["m1", "m2"]
    assert len(server.requests) == 4
    # The breeder's second turn saw the critic's complaint.
    assert any("m9 is not in the table" in str(m) for m in server.requests[2]["messages"])


def test_only_an_opening_approve_counts_as_approval() -> None:
    from tasks.evolve.agents import _is_approval

    assert _is_approval("APPROVE") and _is_approval("**Approved.** Looks fine")
    assert not _is_approval("I do not APPROVE this") and not _is_approval("REVISE: APPROVE later")


def test_malformed_replies_fall_back_to_ga_and_log_why() -> None:
    plan, record, _, logs = run_decide(["I think m3 is nice.", "REVISE: no JSON", "{oops"])
    assert record.policy == "ga"
    assert "no valid plan in 4 turns" in record.reason
    # Each speaker's newest problem (the script repeats its last reply for the 4th turn).
    assert "critic: the reply holds no JSON object (got '{oops')" in record.reason
    assert "breeder: the reply holds no JSON object (got '{oops')" in record.reason
    assert plan.rationale.startswith("GA")
    warned = [e for e in logs if e["event"] == "evolve.agents_failed"]
    assert warned and "no valid plan" in warned[0]["reason"]


def test_late_reply_times_out_to_ga() -> None:
    started = time.perf_counter()
    _, record, _, _ = run_decide([Delay(8.0, json.dumps(GOOD_PLAN))], timeout_s=1.0)
    assert record.policy == "ga"
    # Our deadline or the client's own 1 s timeout, whichever fires first on a busy machine.
    assert record.reason.startswith("agents failed (")
    assert "timeout" in record.reason.lower() or "timed out" in record.reason
    assert time.perf_counter() - started < 5  # the caller did not wait for the late reply


def test_http_500_falls_back_to_ga() -> None:
    _, record, server, _ = run_decide([Fail(500, "model crashed")])
    assert record.policy == "ga"
    assert "exception" in record.reason and "model crashed" in record.reason
    assert len(server.requests) == 1  # max_retries=0: one deadline, no retries


def test_a_server_that_rejects_the_schema_is_asked_again_without_it() -> None:
    def script(body: dict[str, Any]) -> Any:
        if "response_format" in body:
            return Fail(400, "unsupported JSON schema keyword prefixItems")
        return "APPROVE" if is_critic(body) else json.dumps(GOOD_PLAN)

    plan, record, server, _ = run_decide(script)
    assert record.policy == "agents", record
    assert record.reason.startswith("valid plan from the breeder, approved by the critic")
    assert "asked without the schema after: exception: BadRequestError" in record.reason
    assert "prefixItems" in record.reason
    assert plan.children[1].combination_type == "cat"
    # The refused request, then breeder and critic without a response_format.
    assert len(server.requests) == 3
    assert "response_format" not in server.requests[1]


def test_unknown_parent_and_linear_on_unequal_ranks_are_rejected() -> None:
    bad = plan_dict(child(["m1", "ghost"]), child(["m2", "m3"], "linear"))
    _, record, _, _ = run_decide(lambda body: "APPROVE" if is_critic(body) else json.dumps(bad))
    assert record.policy == "ga"
    assert "unknown member id 'ghost'" in record.reason
    assert "'linear' needs parents of equal rank" in record.reason


def test_no_llm_config_uses_ga() -> None:
    plan, record = decide_plan(
        make_members(), settings(), n_children=3, rng=random.Random(1), llm_config=None
    )
    assert record.policy == "ga" and "no llm_config" in record.reason
    assert len(plan.children) == 3


# -- the real embedded llama.cpp model ------------------------------------------------------


@pytest.fixture(scope="module")
def llama() -> Iterator[EmbeddedLlamaServer]:
    with EmbeddedLlamaServer(default_gguf_path(), n_threads=1, ctx_size=2048) as server:
        yield server


@pytest.mark.server
def test_real_llama_server_yields_a_valid_plan(llama: EmbeddedLlamaServer) -> None:
    members = make_members()
    evolution = settings(timeout_s=40.0)
    config = llm_config_for(evolution, llama.base_url)
    # Whatever the 135M model says, the result is a valid plan and the record is honest.
    # One child and one breeder+critic exchange keep it to ~15 s on one thread.
    plan, record = decide_plan(
        members, evolution, n_children=1, rng=random.Random(0), llm_config=config, max_rounds=2
    )
    validate_plan(plan.model_dump(), members, n_children=1, allowed_types=ALL_TYPES)
    assert record.policy in {"agents", "ga"}
    if record.policy == "agents":
        assert record.reason.startswith("valid plan from the")
    else:
        assert record.reason.startswith("agents failed (")
    print(record.model_dump_json(indent=1))  # visible with -s: what the model actually did


@pytest.mark.server
def test_grammar_constrained_breeder_reply_parses(llama: EmbeddedLlamaServer) -> None:
    """llama.cpp honours the schema ag2 forwards: the breeder's raw reply is schema-valid JSON."""
    members = make_members()
    config = llm_config_for(settings(timeout_s=40.0), llama.base_url)
    plan, reason = propose_with_agents(
        members,
        n_children=1,
        allowed_types=ALL_TYPES,
        llm_config=config,
        timeout_s=40,
        max_rounds=1,  # the breeder only
    )
    # With one turn there is no critic: the reply came straight out of the grammar, so it is
    # JSON of the plan's shape with distinct, existing parents and one weight each.
    assert not reason.startswith(("timeout", "exception")), reason
    assert "no JSON object" not in reason and "Field required" not in reason, reason
    assert "listed twice" not in reason and "unknown member" not in reason, reason
    assert "is outside" not in reason, reason  # weights and density stay on their grids
    assert "add up to" not in reason, reason  # and the weights are shares of 1
    if plan is not None:
        assert {p for c in plan.children for p in c.parents} <= {m.id for m in members}
