"""Source: read the question rows and render each one into chat messages.

Templates are rendered by a sandboxed jinja2 environment: a shared recipe can format strings,
never reach Python internals. Each row gets a stable ``id`` so the journal, the parquet output
and later evaluations all refer to the same question.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import pyarrow as pa
from jinja2 import meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

from curation.recipe import LoadedRecipe, Problem, RecipeError, SourceConfig

# Columns curate itself writes to the scored split; a source column may not shadow them.
RESERVED_COLUMNS = {
    "id", "prompt", "completion", "answer", "label", "uncertainty", "kept", "drop_reason",
    "kept_trace", "finish_reason", "n_samples", "n_unparsed", "majority_answer", "agreement",
}


@lru_cache(maxsize=1)
def template_environment() -> ImmutableSandboxedEnvironment:
    # StrictUndefined: a typo in a column name must fail loudly, not render an empty string.
    return ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True)


def template_variables(template: str) -> set[str]:
    env = template_environment()
    return meta.find_undeclared_variables(env.parse(template))


@dataclass
class Question:
    id: str
    messages: list[dict[str, str]]
    columns: dict[str, Any]
    label: str | None = None


@dataclass
class SourceRows:
    questions: list[Question]
    column_names: list[str]
    stats: dict[str, int] = field(default_factory=dict)


def _format_of(path: Path, declared: str) -> str:
    if declared != "auto":
        return declared
    suffixes = "".join(path.suffixes).lower()
    for fmt, endings in (("csv", (".csv", ".csv.gz", ".tsv")), ("jsonl", (".jsonl", ".json", ".jsonl.gz")), ("parquet", (".parquet",))):
        if suffixes.endswith(endings):
            return fmt
    raise ValueError(f"cannot tell the format of {path.name}; set source.format")


def read_table(config: SourceConfig, loaded: LoadedRecipe | None = None) -> pa.Table:
    """Read the whole source as an Arrow table."""
    if config.path is not None:
        path = loaded.resolve_path(config.path) if loaded else Path(config.path)
        if not path.exists():
            raise FileNotFoundError(f"source file not found: {path}")
        fmt = _format_of(path, config.format)
        if fmt == "csv":
            import pyarrow.csv as pcsv

            delimiter = "\t" if str(path).endswith(".tsv") else ","
            return pcsv.read_csv(path, parse_options=pcsv.ParseOptions(delimiter=delimiter))
        if fmt == "jsonl":
            import pyarrow.json as pjson

            return pjson.read_json(path)
        import pyarrow.parquet as pq

        return pq.read_table(path)
    import datasets

    ds = datasets.load_dataset(config.dataset, config.config, split=config.split)
    return ds.data.table


def _stable_id(columns: dict[str, Any]) -> str:
    blob = json.dumps(columns, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _apply_filter(table: pa.Table, wanted: dict[str, Any]) -> pa.Table:
    import pyarrow.compute as pc

    mask = None
    for column, value in wanted.items():
        values = value if isinstance(value, list) else [value]
        col = table.column(column)
        # Compare as strings so `label: 1` in YAML matches a CSV integer column and vice versa.
        cond = pc.is_in(pc.cast(col, pa.string()), value_set=pa.array([str(v) for v in values]))
        mask = cond if mask is None else pc.and_(mask, cond)
    return table.filter(mask) if mask is not None else table


def load_questions(loaded: LoadedRecipe) -> SourceRows:
    """Read, filter, shuffle, limit and render the recipe's source into questions."""
    import numpy as np

    recipe = loaded.recipe
    config = recipe.source
    table = read_table(config, loaded)
    total = table.num_rows
    if config.filter:
        table = _apply_filter(table, config.filter)
    order = np.arange(table.num_rows)
    if config.shuffle_seed is not None:
        order = np.random.default_rng(config.shuffle_seed).permutation(table.num_rows)
    if config.limit is not None:
        order = order[: config.limit]
    table = table.take(pa.array(order, type=pa.int64()))

    env = template_environment()
    system = env.from_string(recipe.prompt.system) if recipe.prompt.system else None
    user = env.from_string(recipe.prompt.user)
    id_template = env.from_string(config.id_template) if config.id_template else None

    questions: list[Question] = []
    seen_ids: set[str] = set()
    for columns in table.to_pylist():
        if config.id_column:
            row_id = str(columns[config.id_column])
        elif id_template:
            row_id = id_template.render(**columns)
        else:
            row_id = _stable_id(columns)
        if row_id in seen_ids:
            raise ValueError(f"duplicate row id {row_id!r}: make source.id_column/id_template unique")
        seen_ids.add(row_id)
        messages = []
        if system is not None:
            messages.append({"role": "system", "content": system.render(**columns)})
        messages.append({"role": "user", "content": user.render(**columns)})
        label = None
        if config.label_column:
            raw = columns[config.label_column]
            label = None if raw is None else str(raw)
            if config.label_map and label is not None:
                label = config.label_map.get(label, label)
        source_columns = {k: v for k, v in columns.items() if k != config.label_column}
        questions.append(Question(id=row_id, messages=messages, columns=source_columns, label=label))
    return SourceRows(questions=questions, column_names=table.column_names, stats={"source_rows": total, "questions": len(questions)})


def check_source(loaded: LoadedRecipe) -> list[Problem]:
    """Problems that need the data itself: missing files, and columns the recipe references but the source lacks."""
    config = loaded.recipe.source
    if config.path is not None:
        path = loaded.resolve_path(config.path)
        if not path.exists():
            return [loaded.problem(("source", "path"), f"file not found: {path}")]
        try:
            _format_of(path, config.format)
        except ValueError as exc:
            return [loaded.problem(("source", "path"), str(exc))]
    try:
        columns = set(_peek_columns(loaded))
    except Exception as exc:  # unreadable file, dataset not reachable offline...
        where = ("source", "path") if config.path else ("source", "dataset")
        return [loaded.problem(where, f"cannot read source: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")]

    problems = []
    checks: list[tuple[tuple, set[str]]] = [(("prompt", "user"), template_variables(loaded.recipe.prompt.user))]
    if loaded.recipe.prompt.system:
        checks.append((("prompt", "system"), template_variables(loaded.recipe.prompt.system)))
    if config.id_template:
        checks.append((("source", "id_template"), template_variables(config.id_template)))
    for path, variables in checks:
        missing = sorted(variables - columns)
        if missing:
            problems.append(loaded.problem(path, f"template references missing column(s): {', '.join(missing)}; source has: {', '.join(sorted(columns))}"))
    for key in ("id_column", "label_column"):
        column = getattr(config, key)
        if column and column not in columns:
            problems.append(loaded.problem(("source", key), f"column {column!r} not in source; source has: {', '.join(sorted(columns))}"))
    for column in (config.filter or {}):
        if column not in columns:
            problems.append(loaded.problem(("source", "filter", column), f"column {column!r} not in source"))
    clashes = sorted((columns - {config.label_column}) & RESERVED_COLUMNS)
    if clashes:
        hint = " (for ground truth, set source.label_column: label)" if "label" in clashes else ""
        problems.append(loaded.problem(("source",), f"source column(s) {', '.join(clashes)} clash with columns curate writes; rename them{hint}"))
    return problems


def _peek_columns(loaded: LoadedRecipe) -> list[str]:
    config = loaded.recipe.source
    if config.path is not None:
        path = loaded.resolve_path(config.path)
        fmt = _format_of(path, config.format)
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return pq.read_schema(path).names
        if fmt == "csv":
            import csv

            with open(path, newline="", encoding="utf-8") as handle:
                return next(csv.reader(handle, delimiter="\t" if str(path).endswith(".tsv") else ","))
        with open(path, encoding="utf-8") as handle:
            return list(json.loads(handle.readline()))
    import datasets

    # Streaming reads one row, locally or from the Hub, instead of preparing the whole dataset.
    stream = datasets.load_dataset(config.dataset, config.config, split=config.split, streaming=True)
    if stream.features:
        return list(stream.features)
    return list(next(iter(stream)))


def raise_if_problems(problems: list[Problem]) -> None:
    if problems:
        raise RecipeError(problems)
