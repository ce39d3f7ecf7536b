"""The names that several layers must spell alike: merge types, registry aliases, MLflow tags.

Each is defined here once and imported wherever it is used, so a settings file, a breeding
plan, a merge and the registry can never disagree about what a name means. Only the ground
floor's own standard library is imported: every layer may import this module.
"""

from __future__ import annotations

from typing import Literal, get_args

# --- how parents are combined -------------------------------------------------------------------

# PEFT's `add_weighted_adapter` combination types (checked in PEFT 0.21).
CombinationType = Literal["linear", "cat", "svd", "ties", "ties_svd", "dare_ties", "dare_linear",
                          "magnitude_prune"]
COMBINATION_TYPES: tuple[CombinationType, ...] = get_args(CombinationType)
# PEFT merges parents of unequal LoRA ranks only with these; every other type needs all
# parents at the same rank.
UNEQUAL_RANK_TYPES: frozenset[CombinationType] = frozenset({"cat", "svd", "ties_svd"})
# The types that prune by `density` (the fraction of weights kept); the others ignore it.
DENSITY_TYPES: frozenset[CombinationType] = frozenset(
    {"ties", "ties_svd", "dare_ties", "dare_linear", "magnitude_prune"})

# --- the model registry ------------------------------------------------------------------------

# The registered model that holds every adapter version, unless a config names another.
REGISTERED_MODEL_NAME = "evolora-adapter"
# The alias the service loads, and the champion before it (kept for a rollback).
CHAMPION = "champion"
PREVIOUS = "previous"

# --- MLflow tags read or written in more than one place ----------------------------------------

# The candidate (member, or "base") a run trained or evaluated, or a registered version holds.
CANDIDATE_TAG = "evolora.candidate"
# The pipeline step a run belongs to: data, train, evaluate, harvest, cycle, flow.
STEP_TAG = "evolora.step"
# The mutation that made a candidate.
MUTATION_TAG = "evolora.mutation"
# The inference engine an evaluation ran on (llamacpp or transformers).
ENGINE_TAG = "evolora.engine"
# The cycle a cycle's parent run belongs to (its journal folder's name under data/cycles).
CYCLE_TAG = "evolora.cycle"
# The artifact of a cycle's parent run that holds its CycleSummary (the web console reads it).
CYCLE_SUMMARY_ARTIFACT = "cycle-summary.json"
