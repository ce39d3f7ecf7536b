"""Names shared across layers, defined once (placeholder until the vocabulary lands)."""

from typing import Literal

CombinationType = Literal["linear", "cat", "svd", "ties", "ties_svd", "dare_ties", "dare_linear",
                          "magnitude_prune"]
# PEFT's add_weighted_adapter merges unequal LoRA ranks only with these (checked in PEFT 0.21).
UNEQUAL_RANK_TYPES = frozenset({"cat", "svd", "ties_svd"})
# Types whose `density` (fraction of weights kept) matters.
DENSITY_TYPES = frozenset({"ties", "ties_svd", "dare_ties", "dare_linear", "magnitude_prune"})
# The registry aliases: the version served, and the one a rollback returns to.
CHAMPION = "champion"
PREVIOUS = "previous"
