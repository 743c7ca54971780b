"""Recipe format versions: a recipe records the format it is written in (``curate: 2``), and older ones keep working.

A recipe shared on the Hub, or the ``recipe.yaml`` of a run folder written a year ago, must load in
every later curate. So a key is never renamed silently: each rename is declared here with the format
that made it, and a recipe of an earlier format is migrated on load, with a ``RecipeFormatWarning``
naming the old key, the new one and where the old one is (as TRL's deprecations keep old configs
running and warn). A recipe of a format newer than this curate knows is refused with the version it
needs. A recipe without ``curate:`` is format 1, the format of every recipe written before versions
were recorded.

The recipe fingerprint (``recipe.dump.fingerprint_recipe``) is taken over format-1 names and without
the version key, so that migrating a recipe never changes the name of its data.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

from curation.types import Problem, RecipeError

FORMAT_KEY = "curate"
FORMAT_VERSION = 2  # the format this curate writes
UNVERSIONED = 1  # a recipe without FORMAT_KEY


class RecipeFormatWarning(FutureWarning):
    """A recipe of an older format was migrated: shown by default, as FutureWarning is, so users see it."""


@dataclass(frozen=True)
class Rename:
    version: int  # the first format in which only `new` is valid
    old: tuple[str, ...]
    new: tuple[str, ...]
    why: str


RENAMES = (
    Rename(
        2, ("select", "keep"), ("select", "completion"),
        "it chooses which trace becomes a kept row's completion (reference or best_agreeing), not which rows are kept",
    ),
)


# Keys added to the recipe after format 1 (path -> default). The fingerprint leaves one out while it holds its
# default, so that adding an optional key does not rename the data of every recipe written before it
# (tests/recipe/test_format_fixtures.py pins the fixture's and quickstart's fingerprints).
ADDED_DEFAULTS: dict[tuple[str, ...], object] = {
    ("calibrate",): None, ("select", "fdr"): None, ("select", "scope"): "per_class", ("score", "confidence_regex"): None,
}


def dotted(path: tuple[str, ...]) -> str:
    return ".".join(path)


def recipe_version(data: dict, file: str, marks=None) -> int:
    """The format a recipe is written in; RecipeError for one this curate cannot read."""
    version = data.get(FORMAT_KEY, UNVERSIONED)
    line, col = marks.locate((FORMAT_KEY,)) if marks is not None else (1, 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise RecipeError([Problem(file, line, col, FORMAT_KEY, f"the recipe format is a whole number from 1 to {FORMAT_VERSION}, not {version!r}")])
    if version > FORMAT_VERSION:
        from curation import __version__

        raise RecipeError([Problem(
            file, line, col, FORMAT_KEY,
            f"this recipe is written in recipe format {version}, and curate {__version__} reads formats 1 to {FORMAT_VERSION}: "
            f"it needs a curate that reads format {version} (upgrade curate)",
        )])
    return version


def migrate(data: dict, file: str, marks=None) -> dict:
    """The recipe in the current format (``curate: FORMAT_VERSION`` first); warns once per renamed key it moved.

    ``marks`` (a ``yaml_marks.MarkIndex`` of the file) places warnings and errors at the old key.
    The input is not modified.
    """
    version = recipe_version(data, file, marks)
    data = copy.deepcopy(data)
    problems = []
    for rename in RENAMES:
        parent = _mapping_at(data, rename.old[:-1])
        if parent is None or rename.old[-1] not in parent:
            continue
        line, col = marks.locate(rename.old, prefer_key=True) if marks is not None else (1, 1)
        if version >= rename.version:  # a current recipe using the old name: say what it is called now
            problems.append(Problem(file, line, col, dotted(rename.old), f"unknown key: renamed {dotted(rename.new)} in recipe format {rename.version}"))
            continue
        if rename.new[-1] in parent:
            problems.append(Problem(file, line, col, dotted(rename.old), f"give {dotted(rename.new)} only ({dotted(rename.old)} is its format-{rename.version - 1} name)"))
            continue
        value = parent.pop(rename.old[-1])
        parent[rename.new[-1]] = value
        message = (
            f"{file}:{line}:{col}: {dotted(rename.old)} is deprecated: renamed {dotted(rename.new)} in recipe format {rename.version} "
            f"({rename.why}); read as {dotted(rename.new)}: {value}. Write `{FORMAT_KEY}: {FORMAT_VERSION}` and {dotted(rename.new)} to silence this."
        )
        warnings.warn(message, RecipeFormatWarning, stacklevel=2)
    if problems:
        raise RecipeError(problems)
    data.pop(FORMAT_KEY, None)
    return {FORMAT_KEY: FORMAT_VERSION, **data}


def format_1_names(data: dict) -> dict:
    """Current-format recipe data under the names of format 1, without the version key and without keys added
    since that still hold their defaults (what the fingerprint hashes)."""
    data = copy.deepcopy(data)
    data.pop(FORMAT_KEY, None)
    for path, default in ADDED_DEFAULTS.items():
        parent = _mapping_at(data, path[:-1])
        if parent is not None and path[-1] in parent and parent[path[-1]] == default:
            del parent[path[-1]]
    for rename in reversed(RENAMES):
        parent = _mapping_at(data, rename.new[:-1])
        if parent is not None and rename.new[-1] in parent:
            parent[rename.old[-1]] = parent.pop(rename.new[-1])
    return data


def _mapping_at(data: dict, path: tuple[str, ...]) -> dict | None:
    for key in path:
        data = data.get(key) if isinstance(data, dict) else None
    return data if isinstance(data, dict) else None
