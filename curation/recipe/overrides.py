"""Changing a recipe without editing it: ``--set PATH=VALUE`` on the command line, and the `extends:` merge.

Both replace a base's choice of exclusive keys (``select.count`` replaces ``select.fraction``)
instead of ending up with both; a problem inside a ``--set`` value is reported at that ``--set``.
"""

from __future__ import annotations

import copy
from typing import Any

from curation.recipe.env import check_env_references
from curation.recipe.yaml_marks import MarkIndex, parse_yaml
from curation.types import Problem, RecipeError

# Keys of which a recipe gives exactly one: a child that sets one replaces the base's choice
# instead of ending up with both (e.g. base `fraction: 0.1`, child `count: 50`).
EXCLUSIVE_KEYS = {("select",): {"fraction", "count", "per_class"}, ("source",): {"path", "dataset"}}


def deep_merge(base: dict, override: dict, _path: tuple = ()) -> dict:
    merged = dict(base)
    exclusive = EXCLUSIVE_KEYS.get(_path, set())
    if exclusive & set(override):
        for key in exclusive - set(override):
            merged.pop(key, None)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value, _path + (key,))
        else:
            merged[key] = value
    return merged


def add_override_option(parser) -> None:
    """`--set PATH=VALUE` (repeatable) on an argparse subcommand that loads a recipe; read as ``args.overrides``."""
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
        help="override a recipe setting with a dotted path and a YAML value (repeatable): --set source.limit=100 --set generator.url=http://host:8080",
    )


def _override_problem(path: str, message: str) -> Problem:
    return Problem("--set", 0, 0, path, message)


def parse_override(text: str) -> tuple[tuple, Any]:
    """``source.limit=100`` -> (("source", "limit"), 100); the value is YAML, as in TRL and hydra."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise RecipeError([_override_problem(text, "expected dotted.path=VALUE, e.g. --set source.limit=100")])
    parts = key.split(".")
    if any(not part for part in parts):
        raise RecipeError([_override_problem(key, "empty name in the dotted path")])
    try:
        data, _ = parse_yaml(value, f"--set {key}")
    except RecipeError as exc:
        raise RecipeError([_override_problem(key, p.message) for p in exc.problems]) from None
    path = tuple(int(part) if part.isdigit() else part for part in parts)
    return path, data


def apply_overrides(data: dict, overrides: list[str] | tuple[str, ...]) -> tuple[dict, list[tuple]]:
    """The recipe with each ``dotted.path=VALUE`` set (later ones win); and the paths set, for error messages."""
    result = copy.deepcopy(data)
    paths: list[tuple] = []
    for text in overrides:
        path, value = parse_override(text)
        dotted = ".".join(map(str, path))
        problems = check_env_references(value, path, MarkIndex(None), "--set")
        if problems:
            raise RecipeError([_override_problem(dotted, p.message) for p in problems])
        if path[0] == "extends":
            raise RecipeError([_override_problem(dotted, "extends cannot be set on the command line; write a recipe that extends this one")])
        _set_value(result, path, value)
        paths.append(path)
    return result, paths


def _set_value(data: dict, path: tuple, value: Any) -> None:
    """Set ``data[path[0]][path[1]]... = value``, creating missing mappings on the way."""
    dotted = ".".join(map(str, path))
    node: Any = data
    for depth, part in enumerate(path[:-1]):
        here = ".".join(map(str, path[: depth + 1]))
        if isinstance(node, dict):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            node = child
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            raise RecipeError([_override_problem(dotted, f"{here} is not a mapping, cannot set {path[depth + 1]} in it")])
    last = path[-1]
    if isinstance(node, dict):
        exclusive = EXCLUSIVE_KEYS.get(path[:-1], set())
        if last in exclusive:  # --set select.count=50 replaces the file's fraction instead of clashing with it
            for other in exclusive - {last}:
                node.pop(other, None)
        node[last] = value
    elif isinstance(node, list) and isinstance(last, int) and last < len(node):
        node[last] = value
    else:
        raise RecipeError([_override_problem(dotted, f"{'.'.join(map(str, path[:-1]))} is not a mapping")])


def blame_overrides(problems: list[Problem], override_paths: list[tuple]) -> list[Problem]:
    """Report a problem that lies inside an overridden value at its ``--set``, not at a line of the file."""
    blamed = []
    for problem in problems:
        parts = tuple(int(p) if p.isdigit() else p for p in problem.path.split(".")) if problem.path else ()
        owner = next((o for o in reversed(override_paths) if parts[: len(o)] == o), None)
        if owner is not None:
            blamed.append(_override_problem(problem.path, problem.message))
            continue
        # A section's own check (e.g. generator's api_key rule) is reported at the section: it is the
        # override's when it names the overridden key.
        owner = next((o for o in reversed(override_paths) if o[: len(parts)] == parts and str(o[-1]) in problem.message), None)
        blamed.append(_override_problem(".".join(map(str, owner)), problem.message) if owner is not None else problem)
    return blamed
