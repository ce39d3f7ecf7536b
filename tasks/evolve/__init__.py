"""Evolving the population: the initial members, breeding plans (agents, GA fallback),
merges of parents, mutations, survivor selection."""

from tasks.evolve.adapter_files import MergeError, adapter_rank
from tasks.evolve.agents import decide_plan, llm_config_for
from tasks.evolve.merge import crossover, merge_from_start, population_diversity
from tasks.evolve.mutate import mutate_finetune, mutate_noise, mutate_rank
from tasks.evolve.plan import PlanError, ga_plan, select_survivors, validate_plan
from tasks.evolve.population import rows_for_skills, seed_population, specialist_merge_recipe

__all__ = [
    "MergeError",
    "PlanError",
    "adapter_rank",
    "crossover",
    "decide_plan",
    "ga_plan",
    "llm_config_for",
    "merge_from_start",
    "mutate_finetune",
    "mutate_noise",
    "mutate_rank",
    "population_diversity",
    "rows_for_skills",
    "seed_population",
    "select_survivors",
    "specialist_merge_recipe",
    "validate_plan",
]
