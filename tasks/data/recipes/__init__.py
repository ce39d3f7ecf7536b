"""Recipes: the programs that draw a problem's numbers and plan the tool calls that solve it.

A recipe takes a seeded `random.Random` and returns a `Problem`: the values for its question
template's placeholders and every planned tool call with the observation the real tool must
return. Question wordings live in the catalogue files (`tasks/data/catalogue/`), which name
their recipe by its key in `RECIPES`; `tasks.data.checks` re-runs every planned call against
the real tools. A recipe's draws happen in a fixed order: changing one changes the data.
"""

from tasks.data.recipes.measures import MEASURE_RECIPES
from tasks.data.recipes.numbers import NUMBER_RECIPES
from tasks.data.recipes.plans import PlannedCall, Problem, Recipe

RECIPES: dict[str, Recipe] = {**NUMBER_RECIPES, **MEASURE_RECIPES}

__all__ = ["RECIPES", "PlannedCall", "Problem", "Recipe"]
