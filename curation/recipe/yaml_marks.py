"""Recipe YAML: safe parsing that keeps every node's line and column, for ``file:line:col`` errors.

``yaml.safe_load`` semantics (no Python object tags), plus: duplicate keys are refused (YAML
allows them silently) and alias bombs are refused before anything walks the tree.
"""

from __future__ import annotations

from typing import Any

import yaml

from curation.types import Problem, RecipeError


class MarkIndex:
    """Maps dotted paths of the loaded data to (line, col) of their YAML nodes."""

    def __init__(self, root: yaml.Node | None):
        self.value_marks: dict[tuple, tuple[int, int]] = {}
        self.key_marks: dict[tuple, tuple[int, int]] = {}
        if root is not None:
            self._walk(root, ())

    def _walk(self, node: yaml.Node, path: tuple) -> None:
        self.value_marks[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = key_node.value
                self.key_marks[path + (key,)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
                self._walk(value_node, path + (key,))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self._walk(item, path + (index,))

    def locate(self, path: tuple, prefer_key: bool = False) -> tuple[int, int]:
        # Walk up until a node exists: a missing field is reported at its parent mapping.
        for depth in range(len(path), -1, -1):
            sub = path[:depth]
            if prefer_key and sub in self.key_marks:
                return self.key_marks[sub]
            if sub in self.value_marks:
                return self.value_marks[sub]
            if sub in self.key_marks:
                return self.key_marks[sub]
        return (1, 1)


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader (no Python object tags) that also rejects duplicate keys, which YAML allows silently."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def parse_yaml(text: str, file: str) -> tuple[Any, yaml.Node | None]:
    """Parse YAML safely, returning data and the node tree (for error positions)."""
    try:
        loader = _UniqueKeyLoader(text)
        try:
            node = loader.get_single_node()
            _check_expansion(node, file)
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        message = " ".join(str(part) for part in (exc.context, exc.problem) if part)
        raise RecipeError([Problem(file, line, col, "", f"invalid YAML: {message}")]) from None
    except yaml.YAMLError as exc:
        raise RecipeError([Problem(file, 1, 1, "", f"invalid YAML: {exc}")]) from None
    except RecursionError:
        raise RecipeError([Problem(file, 1, 1, "", "invalid YAML: nested too deeply (a recipe is a few levels of mappings and lists)")]) from None
    return data, node


MAX_YAML_NODES = 100_000


def _check_expansion(root: yaml.Node | None, file: str) -> None:
    """Refuse alias bombs ("billion laughs") and recursive aliases before anything walks the tree.

    Aliases share nodes, so a few lines can stand for billions of values; every later step (error
    positions, validation, fingerprints) walks the expanded tree. A recipe has hundreds of nodes.
    """
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            if sizes[key] < 0:
                raise RecipeError([Problem(file, node.start_mark.line + 1, node.start_mark.column + 1, "", "invalid YAML: recursive alias")])
            return sizes[key]
        sizes[key] = -1
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(item) for item in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        if total > MAX_YAML_NODES:
            raise RecipeError([Problem(file, node.start_mark.line + 1, node.start_mark.column + 1, "", f"invalid YAML: expands to more than {MAX_YAML_NODES} values (alias bomb?)")])
        sizes[key] = total
        return total

    if root is not None:
        size(root)
