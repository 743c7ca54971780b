"""The recipe as it ran, written out: the run folder's recipe.yaml, and the fingerprint that names it.

${ENV} references stay unresolved in both; the fingerprint leaves out what does not change the
data (where it is pushed, how a model is trained on it, its description and folder).
"""

from __future__ import annotations

import hashlib
import json

import yaml

from curation.recipe.sections import Recipe
from curation.recipe.versions import FORMAT_KEY, format_1_names


def resolved_recipe_yaml(recipe: Recipe) -> str:
    """The recipe as it ran, for the run folder and the card. ${ENV} references stay unresolved.

    `extends` is left out: the dump is already merged, and a base named by a relative path or on
    one machine would not be found from the run folder or by another lab.
    """
    return yaml.safe_dump(recipe_data(recipe, exclude={"extends"}), sort_keys=False, allow_unicode=True, width=100)


def recipe_data(recipe: Recipe, exclude: set[str] | frozenset[str] = frozenset()) -> dict:
    """The recipe as data for a saved recipe.yaml. An imported run's has no `generator:` (it
    generated nothing, and the section would make the saved recipe fail its own validation)."""
    skip = set(exclude) | ({"generator"} if recipe.source.traces is not None else set())
    return recipe.model_dump(mode="json", exclude_none=True, exclude=skip)


def fingerprint_recipe(recipe: Recipe) -> str:
    """16 hex digits naming the recipe (its hub, train, description and output_dir left out: they do not change the data)."""
    # over format-1 names, without the format version: migrating a recipe does not rename its data
    data = format_1_names(recipe.model_dump(mode="json", exclude={"hub", "train", "description", "output_dir", FORMAT_KEY}))
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

