"""The breeding plan: its schema, its validation, the table agents read, and the GA policy.

Everything here is plain and deterministic (no LLM, no network), so the AutoGen path in
`tasks.evolve.agents` and the genetic-algorithm fallback share one definition of a valid plan:

    plan = validate_plan(reply_text, members, n_children=2, allowed_types=["linear", "cat"])
    plan = ga_plan(members, n_children=2, allowed_types=[...], rng=random.Random(0),
                   mutation_strength=0.01)
"""

from __future__ import annotations

import copy
import itertools
import json
import random
import re
from typing import Any

from pydantic import ValidationError

from evolora.vocabulary import DENSITY_TYPES, UNEQUAL_RANK_TYPES
from tasks.records import (
    MAX_FINETUNE_STEPS,
    MAX_PARENTS,
    BreedingPlan,
    ChildPlan,
    ChildRecipe,
    InitialRecipe,
    Member,
    Mutation,
)

# A child's weights are shares of at most 1 in all. Members share most of what they learnt
# (the ReAct format; specialists continue the generalist), so weights adding up to s apply
# that shared part about s times: the demo breeder's linear [1.2, 1.2] child scored 0.00.
MAX_WEIGHT = 1.0
MAX_WEIGHT_SUM = 1.0
# Parent sets spelt out in the grammar before it falls back to an enum per parent count.
MAX_SCHEMA_PARENT_SETS = 64


class PlanError(ValueError):
    """A plan that cannot be used; `problems` lists every one, each with its fix."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(f"{len(problems)} problem(s) in the breeding plan:\n{lines}")


# -- parsing and validation ----------------------------------------------------------------

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.S)


def extract_json(text: str) -> Any:
    """The first JSON object (or array) in `text`: bare, inside ```json fences, or in prose."""
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    decoder = json.JSONDecoder()
    for candidate in candidates:
        for start, char in enumerate(candidate):
            if char not in "{[":
                continue
            try:
                value, _ = decoder.raw_decode(candidate[start:])
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict | list):
                return value
    raise ValueError("no JSON object found in the reply")


def validate_plan(
    raw: str | dict[str, Any],
    members: list[Member],
    *,
    n_children: int,
    allowed_types: list[str],
) -> BreedingPlan:
    """The plan in `raw` if it is usable for these members; else PlanError with every problem."""
    if isinstance(raw, str):
        try:
            data: Any = extract_json(raw)
        except ValueError:
            snippet = raw.strip().replace("\n", " ")[:120]
            raise PlanError(
                [f"the reply holds no JSON object (got {snippet!r}); reply with one JSON object"]
            ) from None
    else:
        data = raw
    if isinstance(data, list):  # a bare list of children is a plan without a rationale
        data = {"children": data}
    try:
        plan = BreedingPlan.model_validate(data)
    except ValidationError as exc:
        raise PlanError(_describe_schema_errors(exc)) from None

    problems: list[str] = []
    if len(plan.children) != n_children:
        problems.append(
            f"children: {len(plan.children)} given, exactly {n_children} wanted "
            f"({'remove' if len(plan.children) > n_children else 'add'} children)"
        )
    by_id = {m.id: m for m in members}
    known = ", ".join(sorted(by_id))
    for index, child in enumerate(plan.children):
        problems.extend(_child_problems(f"children[{index}]", child, by_id, known, allowed_types))
    if problems:
        raise PlanError(problems)
    return plan


def _child_problems(
    where: str, child: ChildPlan, by_id: dict[str, Member], known: str, allowed: list[str]
) -> list[str]:
    problems = []
    unknown = [p for p in child.parents if p not in by_id]
    for parent in unknown:
        problems.append(f"{where}.parents: unknown member id {parent!r} (known: {known})")
    if len(set(child.parents)) != len(child.parents):
        problems.append(f"{where}.parents: a parent is listed twice; name each member once")
    if len(child.weights) != len(child.parents):
        problems.append(
            f"{where}.weights: {len(child.weights)} weight(s) for {len(child.parents)} "
            "parent(s); give exactly one weight per parent"
        )
    for weight in child.weights:
        if not 0.0 <= weight <= MAX_WEIGHT:
            problems.append(f"{where}.weights: {weight} is outside 0..{MAX_WEIGHT:g}")
    total = sum(child.weights)
    if total > MAX_WEIGHT_SUM + 1e-6:
        problems.append(f"{where}.weights: they add up to {total:g}; keep the sum at most "
                        f"{MAX_WEIGHT_SUM:g} (they are the parents' shares)")
    if len(child.parents) > 1:
        if child.combination_type not in allowed:
            problems.append(
                f"{where}.combination_type: {child.combination_type!r} is not allowed "
                f"(allowed: {', '.join(allowed)})"
            )
        ranks = {by_id[p].rank for p in child.parents if p in by_id}
        if len(ranks) > 1 and child.combination_type not in UNEQUAL_RANK_TYPES:
            usable = sorted(UNEQUAL_RANK_TYPES & set(allowed)) or ["none allowed"]
            problems.append(
                f"{where}.combination_type: {child.combination_type!r} needs parents of equal "
                f"rank, these have ranks {sorted(ranks)} (fix: pick parents of one rank or use "
                f"{' / '.join(usable)})"
            )
    elif child.mutation.kind == "none":
        problems.append(f"{where}: a single-parent child is a clone unless it has a mutation")
    mutation = child.mutation
    if mutation.kind == "rank" and mutation.rank is None:
        problems.append(f"{where}.mutation.rank: a rank mutation needs the new `rank`")
    if mutation.kind == "finetune" and mutation.steps is None:
        problems.append(
            f"{where}.mutation.steps: a finetune mutation needs `steps` (1..{MAX_FINETUNE_STEPS})"
        )
    if mutation.kind == "noise" and mutation.strength <= 0:
        problems.append(f"{where}.mutation.strength: noise needs a strength in (0, 1]")
    return problems


def _describe_schema_errors(exc: ValidationError) -> list[str]:
    problems = []
    for error in exc.errors():
        key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"])
        problems.append(f"{key.lstrip('.') or '(plan)'}: {error['msg']} (got {error['input']!r})")
    return problems


def plan_json_schema(
    members: list[Member], *, n_children: int, allowed_types: list[str]
) -> dict[str, Any]:
    """BreedingPlan's JSON schema narrowed to these members and types (for grammar decoding).

    A server that constrains decoding to this schema can only name existing parents, each
    once, allowed types, one weight per parent and equal ranks where the type needs them;
    what the schema does not say (a mutation's own fields, parent sets of a population too
    large to spell out) is still checked by `validate_plan`.
    """
    schema = copy.deepcopy(BreedingPlan.model_json_schema())
    child = schema["$defs"].pop("ChildPlan")
    # Required, so that a small model states its choice instead of leaving a default to chance.
    child["required"] = ["parents", "combination_type", "weights", "mutation"]
    # One variant per parent set: the grammar then keeps one weight per parent, equal ranks for
    # the types that need them, and no parent twice (the embedded 135M breeder, left to an enum,
    # wrote ["g0-m1", "g0-m2", "g0-m1"] in the demo). A large population would make that list
    # explode, so past MAX_SCHEMA_PARENT_SETS it falls back to one variant per parent count.
    groups = [
        [m.id for m in members if m.rank == rank] for rank in sorted({m.rank for m in members})
    ]
    # (member ids, types, whether only sets that mix ranks are wanted)
    shapes = [(ids, list(allowed_types), False) for ids in groups]
    unequal = [t for t in allowed_types if t in UNEQUAL_RANK_TYPES]
    if unequal and len(groups) > 1:
        shapes.append(([m.id for m in members], unequal, True))
    variants = []
    for ids, types, mixed_only in shapes:
        for count in range(1, min(MAX_PARENTS, len(ids)) + 1):
            variant = copy.deepcopy(child)
            props = variant["properties"]
            props["combination_type"] = {"type": "string", "enum": types}
            props["weights"] = {**props["weights"], "enum": weight_shares(count)}
            props["density"] = {**props["density"], **_GRID_DENSITY}
            for parents in _parent_sets(ids, count, groups if mixed_only else []):
                one = copy.deepcopy(variant)
                one["properties"]["parents"].pop("items", None)
                one["properties"]["parents"].update(parents, minItems=count, maxItems=count)
                variants.append(one)
    schema["properties"]["children"].update(
        items={"anyOf": variants}, minItems=n_children, maxItems=n_children
    )
    # A grammar-bound small model can otherwise fill its whole token budget with rationale.
    schema["properties"]["rationale"]["maxLength"] = 400
    return schema


# llama.cpp's grammar ignores minimum/maximum on a JSON number (the demo's breeder wrote a
# weight of -1.1 under "minimum": 0), but it keeps to an enum: densities are offered on a
# grid of twentieths, and weights as whole lists (`weight_shares`).
_GRID_DENSITY = {"type": "number", "enum": [round(0.05 * i, 2) for i in range(1, 21)]}


def weight_shares(count: int) -> list[list[float]]:
    """Every split of 1 into `count` positive shares on a grid (twentieths for two parents,
    tenths for more): the weight lists the grammar offers.

    A grammar cannot add numbers up, so the sum rule of `validate_plan` is spelt out as a
    list of whole weight lists (19, 36 and 84 of them for 2, 3 and 4 parents). Offered each
    weight on its own, the demo's breeder wrote two weights adding up to 2.
    """
    if count == 1:
        return [[1.0]]
    steps = 20 if count == 2 else 10
    return [[round(part / steps, 2) for part in parts]
            for parts in _compositions(steps, count)]


def _compositions(total: int, count: int) -> list[tuple[int, ...]]:
    """Ordered ways to write `total` as `count` positive integers."""
    if count == 1:
        return [(total,)]
    return [(first, *rest) for first in range(1, total - count + 2)
            for rest in _compositions(total - first, count - 1)]


def _parent_sets(ids: list[str], count: int, skip_within: list[list[str]]) -> list[dict[str, Any]]:
    """`parents` array schemas for `count` distinct parents from `ids`, in the order of `ids`.

    Sets that lie inside one of `skip_within` are left out (offered by another variant).
    """
    sets = [
        s for s in itertools.combinations(ids, count)
        if not any(set(s) <= set(group) for group in skip_within)
    ]
    if len(sets) > MAX_SCHEMA_PARENT_SETS:
        return [{"items": {"type": "string", "enum": ids}}]
    # A tuple of consts; maxItems ends it (llama.cpp rejects JSON Schema's `"items": false`).
    return [{"prefixItems": [{"const": member} for member in parent_set]} for parent_set in sets]


# -- the table the agents read ----------------------------------------------------------------


def recipe_summary(recipe: InitialRecipe | ChildRecipe) -> str:
    """A short one-line description of how a member was made."""
    parts = []
    for key, value in recipe.to_json().items():
        if isinstance(value, dict):
            value = value.get("kind", "…")
        elif isinstance(value, list | tuple):
            value = "/".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
        elif isinstance(value, float):
            value = f"{value:g}"
        parts.append(f"{key}={value}")
    text = " ".join(parts)
    return text if len(text) <= 60 else text[:59] + "…"


def population_table(members: list[Member]) -> str:
    """A markdown table of the population, best first: what the breeding agents read."""
    header = ["id", "fitness", "rank", "gen", "parents", "recipe"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for m in sorted(members, key=lambda m: -m.fitness):
        cells = [
            m.id,
            f"{m.fitness:.3f}",
            str(m.rank),
            str(m.generation),
            ",".join(m.parents) or "-",
            recipe_summary(m.recipe).replace("|", "/"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- the genetic-algorithm policy ----------------------------------------------------------------


def _tournament(pool: list[Member], rng: random.Random, k: int) -> Member:
    contenders = rng.sample(pool, min(k, len(pool)))
    return max(contenders, key=lambda m: m.fitness)


def ga_plan(
    members: list[Member],
    *,
    n_children: int,
    allowed_types: list[str],
    rng: random.Random,
    mutation_strength: float,
    tournament_k: int = 2,
) -> BreedingPlan:
    """A plan made by tournament selection; valid for `validate_plan` by construction."""
    if not members:
        raise ValueError("ga_plan needs at least one member")
    if not allowed_types:
        raise ValueError("ga_plan needs at least one allowed combination type")
    strength = min(1.0, max(1e-4, mutation_strength))
    children = []
    for _ in range(n_children):
        first = _tournament(members, rng, tournament_k)
        others = [m for m in members if m.id != first.id]
        # A partner of another rank only if some allowed type merges unequal ranks.
        if not UNEQUAL_RANK_TYPES & set(allowed_types):
            others = [m for m in others if m.rank == first.rank]
        noise = Mutation(kind="noise", strength=round(strength * rng.uniform(0.5, 1.0), 6))
        if not others:
            # Nobody to cross with: a mutated copy keeps the population moving.
            children.append(ChildPlan(parents=[first.id], weights=[1.0], mutation=noise))
            continue
        second = _tournament(others, rng, tournament_k)
        types = list(allowed_types)
        if first.rank != second.rank:
            types = [t for t in types if t in UNEQUAL_RANK_TYPES]
        total = first.fitness + second.fitness
        # Fitter parent, larger share; a pair of zero-fitness parents shares equally.
        weights = (
            [round(first.fitness / total, 4), round(second.fitness / total, 4)]
            if total > 0
            else [0.5, 0.5]
        )
        kind = rng.choice(types)
        density = round(rng.uniform(0.3, 0.8), 3) if kind in DENSITY_TYPES else 0.5
        children.append(
            ChildPlan(
                parents=[first.id, second.id],
                combination_type=kind,  # type: ignore[arg-type]
                weights=weights,
                density=density,
                mutation=noise if rng.random() < 0.5 else Mutation(),
            )
        )
    return BreedingPlan(children=children, rationale=f"GA: tournament k={tournament_k}")


def select_survivors(members: list[Member], *, population_size: int, elite: int) -> list[Member]:
    """The next population: the `elite` best always, then the fittest of the rest.

    Ties go to the older member (lower generation), so a child must beat its parents, not
    merely equal them, to displace one.
    """
    if elite > population_size:
        raise ValueError(f"elite ({elite}) cannot exceed population_size ({population_size})")
    ranked = sorted(members, key=lambda m: (-m.fitness, m.generation, m.id))
    # Truncation by fitness keeps the elite by itself (elite <= population_size), so the
    # best member of a generation can only be replaced by a strictly better one.
    return ranked[:population_size]
