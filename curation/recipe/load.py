"""Loading a recipe: read the file (or hf://), merge its `extends:` base, apply --set, validate.

Every problem is reported as ``file:line:col: dotted.path: message``: the YAML node tree is kept
next to the data (``yaml_marks.MarkIndex``) so that a pydantic error location can be turned back
into a position in the file, or into the ``--set`` that put the value there.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from curation.recipe.env import check_env_references
from curation.recipe.overrides import apply_overrides, blame_overrides, deep_merge
from curation.recipe.remote import SHARED_ENDPOINTS, fetch_recipe, join_location, shared_endpoint_problems, shared_recipe_problems
from curation.recipe.sections import Recipe
from curation.recipe.versions import migrate
from curation.recipe.yaml_marks import MarkIndex, parse_yaml
from curation.run_folder import RECIPE_FILE
from curation.types import Problem, RecipeError


@dataclass
class LoadedRecipe:
    recipe: Recipe
    file: str
    marks: MarkIndex
    raw: dict
    base_dir: Path
    # Endpoint fields (("generator", "url"), ...) whose value came from a recipe on the Hub (see curation.recipe.remote).
    shared: frozenset = frozenset()

    def problem(self, path: tuple, message: str) -> Problem:
        line, col = self.marks.locate(path)
        return Problem(self.file, line, col, ".".join(str(p) for p in path), message)

    def resolve_path(self, relative: str) -> Path:
        """Resolve a file named in the recipe relative to the recipe's own folder."""
        path = Path(os.path.expanduser(relative))
        return path if path.is_absolute() else (self.base_dir / path)


def read_recipe_text(location: str) -> tuple[str, str, Path]:
    """Return (text, display name, base folder) for a local path. hf:// locations are fetched by curation.recipe.remote."""
    if location.startswith("hf://"):
        return fetch_recipe(location)
    path = Path(location)
    if path.is_dir():
        path = path / RECIPE_FILE
    if not path.exists():
        raise RecipeError([Problem(location, 1, 1, "", "file not found")])
    name = str(location if not Path(location).is_dir() else path)
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise RecipeError([Problem(name, line, col, "", f"not UTF-8 text: byte 0x{data[exc.start]:02x} cannot be decoded (save the recipe as UTF-8)")]) from None
    return text, name, path.resolve().parent


def load_recipe(location: str, _seen: tuple = (), overrides: list[str] | tuple[str, ...] = ()) -> LoadedRecipe:
    """Load, merge (`extends:`) and validate a recipe; raise RecipeError with every problem found.

    ``overrides`` are command-line ``dotted.path=YAML_VALUE`` settings (``--set``), applied last,
    over the merged recipe, and validated with it: a problem inside one is reported as ``--set PATH``.
    """
    text, file, base_dir = read_recipe_text(location)
    data, marks = _parse_mapping(text, file)
    data = migrate(data, file, marks)  # an older recipe format in the current one, with a warning per renamed key
    remote = location.startswith("hf://")
    problems = check_env_references(data, (), marks, file)
    if remote:
        # A recipe from the Hub is someone else's: it may not reach outside its repo (see curation.recipe.remote).
        problems += shared_recipe_problems(data, file, marks)
    if problems:
        raise RecipeError(problems)

    shared = set()
    if remote:
        shared = {p for p in SHARED_ENDPOINTS if isinstance(data.get(p[0]), dict) and data[p[0]].get(p[1]) is not None}
    merged = data
    if isinstance(data.get("extends"), str):
        merged, inherited = _merged_with_base(location, data, marks, file, base_dir, _seen)
        shared |= inherited

    override_paths: list[tuple] = []
    if overrides:
        merged, override_paths = apply_overrides(merged, overrides)
    loaded = _validated(merged, marks, file, base_dir, frozenset(shared), override_paths)
    if shared and not _seen:
        problems = shared_endpoint_problems(loaded)
        if problems:
            raise RecipeError(problems)
    return loaded


def _parse_mapping(text: str, file: str) -> tuple[dict, MarkIndex]:
    """The recipe's data (a mapping) and the positions of its nodes."""
    data, node = parse_yaml(text, file)
    marks = MarkIndex(node)
    if data is None:
        raise RecipeError([Problem(file, 1, 1, "", "recipe is empty")])
    if not isinstance(data, dict):
        raise RecipeError([Problem(file, 1, 1, "", f"a recipe must be a mapping, not {type(data).__name__}")])
    return data, marks


def _merged_with_base(location: str, data: dict, marks: MarkIndex, file: str, base_dir: Path, seen: tuple) -> tuple[dict, set]:
    """The recipe merged over the base its `extends:` names; and the base's Hub endpoint fields this recipe leaves as they are."""
    parent_location = data["extends"]
    if location.startswith("hf://") and not parent_location.startswith("hf://"):
        parent_location = join_location(location, parent_location)  # the base lives in the same repo
    elif not parent_location.startswith("hf://") and not Path(parent_location).is_absolute():
        parent_location = str(base_dir / parent_location)
    if parent_location in seen:
        raise RecipeError([Problem(file, *marks.locate(("extends",)), "extends", "circular extends")])
    try:
        parent = load_recipe(parent_location, seen + (parent_location,))
    except RecipeError as exc:
        line, col = marks.locate(("extends",))
        raise RecipeError([Problem(file, line, col, "extends", f"in base recipe: {p}") for p in exc.problems]) from None
    merged = deep_merge(parent.raw, {k: v for k, v in data.items() if k != "extends"})
    inherited = {p for p in parent.shared if not (isinstance(data.get(p[0]), dict) and p[1] in data[p[0]])}
    merged["extends"] = data["extends"]
    # Paths inside the base stay relative to the base file; rewrite them to absolute ones.
    if "path" in parent.raw.get("source", {}) and "path" not in data.get("source", {}):
        merged["source"] = dict(merged["source"], path=str(parent.resolve_path(parent.raw["source"]["path"])))
    return merged, inherited


def _validated(merged: dict, marks: MarkIndex, file: str, base_dir: Path, shared: frozenset, override_paths: list[tuple]) -> LoadedRecipe:
    """The merged data as a Recipe, or every problem with it (those inside a --set value blamed on the --set)."""
    try:
        recipe = Recipe.model_validate(merged)
    except ValidationError as exc:
        raise RecipeError(blame_overrides(_pydantic_problems(exc, marks, file), override_paths)) from None
    loaded = LoadedRecipe(recipe=recipe, file=file, marks=marks, raw=merged, base_dir=base_dir, shared=shared)
    problems = blame_overrides(token_metric_problems(loaded), override_paths)
    if problems:
        raise RecipeError(problems)
    return loaded


def token_metric_problems(loaded: "LoadedRecipe") -> list[Problem]:
    """Metrics that read token logprobs, in a recipe whose traces will have none (generator.logprobs: false, no scorer)."""
    recipe = loaded.recipe
    from curation.score import needs_tokens

    if recipe.scorer is not None and recipe.generator.adaptive is not None and needs_tokens(recipe.score.metric):
        # adaptive sampling bounds each question's metric from the reference's logprobs while it samples;
        # a scorer's logprobs exist only after generation
        return [loaded.problem(("generator", "adaptive"), f"adaptive sampling ranks by the generator's own logprobs while it samples, but "
                               f"with a scorer: section metric {recipe.score.metric!r} reads the scorer's: remove generator.adaptive or the scorer")]
    if recipe.generator.logprobs or recipe.scorer is not None:
        return []

    consistency = ", ".join(sorted(name for name in _metric_names() if not needs_tokens(name) and name not in ("critic", "p_true")))
    why = (
        "generator.logprobs is false, so the traces carry no token logprobs: add a scorer: section (an open model "
        f"reads each trace by teacher forcing) or use a consistency metric ({consistency})"
    )
    problems = []
    if needs_tokens(recipe.score.metric):
        problems.append(loaded.problem(("score", "metric"), f"metric {recipe.score.metric!r} needs token logprobs; {why}"))
    for index, name in enumerate(recipe.score.metrics or []):
        if needs_tokens(name):
            problems.append(loaded.problem(("score", "metrics", index), f"metric {name!r} needs token logprobs; {why}"))
    return problems


def _metric_names() -> list[str]:
    from curation.score import METRICS

    return list(METRICS)


def _pydantic_problems(error: ValidationError, marks: MarkIndex, file: str) -> list[Problem]:
    problems = []
    for item in error.errors():
        loc = tuple(item["loc"])
        message = item["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        message = _BOUND.sub(lambda m: f"must be {_BOUND_SIGNS[m.group(1)]} {m.group(2)}", message)
        if item["type"] == "extra_forbidden":
            message = "unknown key"
            line, col = marks.locate(loc, prefer_key=True)
        elif item["type"] == "missing":
            message = "required field is missing"
            line, col = marks.locate(loc)
        else:
            line, col = marks.locate(loc)
        # Unions report one error per branch with the branch type in the loc; drop those names.
        path = ".".join(str(p) for p in loc if not (isinstance(p, str) and p[:1].islower() and p in _TYPE_NAMES))
        problems.append(Problem(file, line, col, path, message))
    # one line per (position, path, message)
    unique = {(p.line, p.col, p.path, p.message): p for p in problems}
    return list(unique.values())


# pydantic's "Input should be greater than or equal to 1" reads as "must be ≥ 1".
_BOUND = re.compile(r"^Input should be (greater than or equal to|greater than|less than or equal to|less than) (\S+)$")
_BOUND_SIGNS = {"greater than or equal to": "≥", "greater than": ">", "less than or equal to": "≤", "less than": "<"}

_TYPE_NAMES = {"str", "int", "float", "bool", "list[str]", "dict[str,list[str]]", "list", "dict"}
