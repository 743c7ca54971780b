"""The recipe as it ran, written out: the run folder's recipe.yaml, and the fingerprint that names it.

${ENV} references stay unresolved in both; the fingerprint leaves out what does not change the
data (where it is pushed, how a model is trained on it, its description and folder).
"""

from __future__ import annotations

import hashlib
import json

import yaml

from curation.recipe.sections import Recipe


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


# Keys added after recipes were first fingerprinted, with the value that means "as before": left out of
# the fingerprint at that value, so an older recipe keeps the fingerprint its published runs carry.
LATER_KEYS = {("calibrate",): None, ("select", "fdr"): None, ("select", "scope"): "per_class"}


def fingerprint_recipe(recipe: Recipe) -> str:
    """16 hex digits naming the recipe (its hub, train, description and output_dir left out: they do not change the data)."""
    data = recipe.model_dump(mode="json", exclude={"hub", "train", "description", "output_dir"})
    for path, unchanged in LATER_KEYS.items():
        parent = data
        for key in path[:-1]:
            parent = parent.get(key) or {}
        if path[-1] in parent and parent[path[-1]] == unchanged:
            del parent[path[-1]]
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

