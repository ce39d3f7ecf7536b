"""The initial population: who is trained on what, so cross-over has something to combine.

Member 0 is a generalist trained on every skill; the others are specialists, each trained
on one group of skills (as LoraHub composes task adapters). By default a specialist continues
training the generalist rather than a fresh LoRA: specialists that share a start can be
merged by what each learnt since it (`specialist_merge_recipe`); fresh ones trained for a
few dozen steps each did not average well. Seeds differ so the population starts diverse;
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


def specialist_merge_recipe(specialists: list[dict[str, Any]], method: str = "mean",
                            weight: float = 1.0, density: float = 0.5) -> dict[str, Any]:
    """The child plan that composes the specialists (as LoraHub composes task adapters).

    Specialists continued from one generalist G are G + d_i. `ties` and `sum` merge the
    changes d_i from G (`tasks.evolve.merge.merge_from_start`): sum gives G + w(d_1 + ... + d_n),
    ties votes per weight so what the specialists learnt alike is averaged and what one
    learnt alone is kept whole. `mean` (cat with weights 1/n) is G + mean(d_i): each
    specialist's own skills at 1/n strength. The sum of whole adapters is never used: it
    applies what every specialist learnt (the ReAct format) n times over, which broke the
    format on the demo (0.03 vs parents 0.12 and 0.20). Specialists that do not share a
    start have no common G, so they get the mean.
    """
    n = len(specialists)
    parents = [m["id"] for m in specialists]
    shared = {m["recipe"].get("init_from") for m in specialists}
    start = next(iter(shared)) if len(shared) == 1 and None not in shared else None
    if method in ("ties", "sum") and start is not None:
        return {"parents": parents, "combination_type": f"{method}_from_start",
                "start": start, "weights": [weight] * n, "density": density,
                "rule": f"{method} of the changes from {start}"}
    rule = f"mean (all continued {start})" if start else "mean"
    return {"parents": parents, "combination_type": "cat", "weights": [1.0 / n] * n,
            "density": density, "rule": rule}


def rows_for_skills(rows: Any, skills: list[str]) -> Any:
    """The training rows of the given skills (a `datasets.Dataset` filter)."""
    wanted = set(skills)
    return rows.filter(lambda row: row["skill"] in wanted)
