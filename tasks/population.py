"""The initial population: who is trained on what, so cross-over has something to combine.

Member 0 is a generalist trained on every skill; the others are specialists, each trained
on one group of skills (as LoraHub composes task adapters). By default a specialist continues
training the generalist rather than a fresh LoRA: specialists that share a start average
well (the cycle composes them as the mean of their deltas); fresh ones trained for a few
dozen steps each did not. Seeds differ so the population starts diverse;
`population_diversity` shows how much.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from evolora.settings import Settings


@dataclass(frozen=True)
class MemberSpec:
    """How one initial member is trained."""

    id: str
    skills: list[str]
    seed: int
    rank: int
    role: str  # "generalist" or "specialist"
    steps: int
    init_from: str | None = None  # the member whose adapter this one continues training

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def skill_groups(skills: list[str], n_groups: int) -> list[list[str]]:
    """`skills` dealt into `n_groups` contiguous groups of near-equal size."""
    n_groups = max(1, min(n_groups, len(skills)))
    size, extra = divmod(len(skills), n_groups)
    groups, start = [], 0
    for index in range(n_groups):
        end = start + size + (1 if index < extra else 0)
        groups.append(skills[start:end])
        start = end
    return groups


def seed_population(settings: Settings) -> list[MemberSpec]:
    """One generalist, then specialists over skill groups, with distinct seeds."""
    evo = settings.evolution
    skills = list(settings.data.skills)
    rank = settings.train.rank
    member_steps = evo.member_steps or settings.train.max_steps
    generalist = MemberSpec("g0-m0", skills, settings.train.seed, rank, "generalist",
                            member_steps)
    init_from = generalist.id if evo.specialists_from_generalist else None
    groups = skill_groups(skills, evo.population_size - 1)
    specs = [generalist]
    for index in range(1, evo.population_size):
        group = groups[(index - 1) % len(groups)]
        specs.append(MemberSpec(f"g0-m{index}", group, settings.train.seed + index, rank,
                                "specialist", evo.specialist_steps or member_steps, init_from))
    return specs


def specialist_merge_recipe(specialists: list[dict[str, Any]]) -> dict[str, Any]:
    """Parents and `cat` weights that compose the specialists: the mean of their deltas.

    cat with weights 1/n is exactly the mean of the specialists' deltas. Their sum would
    apply what every specialist learned (the ReAct format) n times over: on the demo it
    broke the format (0.03 vs parents 0.12 and 0.20). Specialists continued from one
    generalist G are G + d_i, so their mean is G + mean(d_i), an average of models that
    share a start, which is what paid on the demo (0.47 vs specialists 0.27 and 0.45,
    generalist 0.45), while task arithmetic, sum(S_i) - (n - 1) G, gave 0.35.
    """
    n = len(specialists)
    shared = {m["recipe"].get("init_from") for m in specialists}
    rule = "mean"
    if len(shared) == 1 and None not in shared:
        rule = f"mean (all continued {shared.pop()})"
    return {"parents": [m["id"] for m in specialists], "weights": [1.0 / n] * n, "rule": rule}


def rows_for_skills(rows: Any, skills: list[str]) -> Any:
    """The training rows of the given skills (a `datasets.Dataset` filter)."""
    wanted = set(skills)
    return rows.filter(lambda row: row["skill"] in wanted)
