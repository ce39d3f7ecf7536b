"""The initial population: who is trained on what, so cross-over has something to combine.

Member 0 is a generalist trained on every skill; the others are specialists, each trained
on one group of skills (as LoraHub composes task adapters). By default a specialist continues
training the generalist rather than a fresh LoRA: specialists that share a start can be
merged by what each learnt since it (`specialist_merge_recipe`); fresh ones trained for a
few dozen steps each did not average well. Seeds differ so the population starts diverse;
`population_diversity` shows how much.
"""

from __future__ import annotations

from typing import Any

from evolora.settings import EvolutionSettings
from tasks.records import InitialRecipe, Member, PlannedChild


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


def seed_population(evo: EvolutionSettings, skills: list[str], *, seed: int,
                    max_steps: int) -> dict[str, InitialRecipe]:
    """The initial members by id: one generalist, then specialists over skill groups, with
    distinct seeds. `max_steps` (train.max_steps) is the default length of training."""
    member_steps = evo.member_steps or max_steps
    generalist = InitialRecipe(role="generalist", skills=list(skills), seed=seed,
                               steps=member_steps)
    init_from = "g0-m0" if evo.specialists_from_generalist else None
    groups = skill_groups(list(skills), evo.population_size - 1)
    population = {"g0-m0": generalist}
    for index in range(1, evo.population_size):
        population[f"g0-m{index}"] = InitialRecipe(
            role="specialist", skills=groups[(index - 1) % len(groups)], seed=seed + index,
            steps=evo.specialist_steps or member_steps, init_from=init_from)
    return population


def specialist_merge_recipe(specialists: list[Member], method: str = "mean",
                            weight: float = 1.0, density: float = 0.5) -> PlannedChild:
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
    parents = [m.id for m in specialists]
    shared = {getattr(m.recipe, "init_from", None) for m in specialists}
    start = next(iter(shared)) if len(shared) == 1 and None not in shared else None
    if method in ("ties", "sum") and start is not None:
        return PlannedChild(parents=parents, combination_type=f"{method}_from_start",
                            start=start, weights=[weight] * n, density=density,
                            merge_rule=f"{method} of the changes from {start}")
    rule = f"mean (all continued {start})" if start else "mean"
    return PlannedChild(parents=parents, combination_type="cat", weights=[1.0 / n] * n,
                        density=density, merge_rule=rule)


def rows_for_skills(rows: Any, skills: list[str]) -> Any:
    """The training rows of the given skills (a `datasets.Dataset` filter)."""
    wanted = set(skills)
    return rows.filter(lambda row: row["skill"] in wanted)
