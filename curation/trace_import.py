"""Trace import: read traces made elsewhere into the journal, as the generate stage would have written them.

A recipe with ``source.traces`` names a file (JSONL or parquet, a glob for shards) or a Hub dataset
and split, and which of its columns hold the question id, the prompt, the trace text, the sample
index, the reference flag and, optionally, the token logprobs and top-k. Rows are streamed (a
parquet batch or a few thousand JSONL lines at a time) and every good trace is committed to the
run's journal in the same binary format generated traces have, so parse, score, select and
publish read them unchanged (``pipeline.run_imported``). Held in memory for the whole file: one
``Question`` and one row of fingerprints per question, as a generated run holds them.

Keys: a trace's fingerprint is a hash of (where it came from, question id, sample index, a hash of
its content). A rerun therefore finds every trace already in the journal and writes nothing
again; a row whose content changed is a new trace; and a file that grew only adds its new rows.

Bad rows are refused one by one, counted by reason with their row numbers (1-based: the line of a
JSONL file, the row of a parquet file or split), and the run goes on with the good ones. A source
that is not a table at all, or lacks a mapped column, is refused before anything is written.
"""

from __future__ import annotations

import glob
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import msgspec
import numpy as np

from curation.journal import Journal, pack_token_arrays
from curation.recipe.load import LoadedRecipe
from curation.recipe.traces import TracesConfig
from curation.score import METRICS, needs_tokens
from curation.types import CurateError, Problem, Question, StageStats

BATCH_ROWS = 1024  # rows per streamed batch and per journal transaction
# Parquet is opened with pre_buffer=False: with pre-buffering (pyarrow's default) iter_batches kept
# the file's buffers and Arrow's allocated memory grew with the file (47 -> 128 MB over a 111 MB file,
# bench/import_scale.py); without it, it stays at one row group's.
MAX_REPORTED = 100  # refused rows listed one by one in stats.json (all are counted)
SCALAR_TYPES = (str, int, float, bool)


class TraceImportError(CurateError):
    """The traces cannot be read at all (not a table, a mapped column missing): nothing was written."""


def metrics_without_tokens() -> list[str]:
    """The metrics traces without token logprobs support: an import's default list when it maps none."""
    return [name for name in METRICS if not needs_tokens(name) and name != "critic" and METRICS[name].default]


def tokens_missing_message(metric: str) -> str:
    return (
        f"metric {metric!r} needs token logprobs, and source.traces maps no token_logprobs column: choose a consistency metric "
        "(self_consistency, or semantic_consistency with a reference), map the column if the file has one, or add a `scorer:` "
        "section, which computes them by teacher forcing through an open model"
    )


# --------------------------------------------------------------------------- reading the source
@dataclass
class Refusal:
    row: int
    reason: str
    detail: str

    def to_json(self) -> dict:
        return {"row": self.row, "reason": self.reason, "detail": self.detail}


class _Refused(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def _files(loaded: LoadedRecipe, pattern: str) -> list[Path]:
    path = loaded.resolve_path(pattern)
    if any(ch in pattern for ch in "*?["):
        return [Path(p) for p in sorted(glob.glob(str(path)))]
    return [path] if path.exists() else []


def _format_of(path: Path, declared: str) -> str:
    if declared in ("jsonl", "parquet"):
        return declared
    name = path.name.lower()
    if name.endswith((".jsonl", ".json", ".jsonl.gz", ".ndjson")):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    raise TraceImportError(f"cannot tell the format of {path.name}; set source.format to jsonl or parquet")


def _open_text(path: Path):
    if path.name.endswith(".gz"):
        import gzip

        return gzip.open(path, "rb")
    return open(path, "rb")


def _jsonl_rows(path: Path, first_row: int) -> Iterator[tuple[int, dict | Refusal]]:
    decode = msgspec.json.Decoder().decode
    with _open_text(path) as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                value = decode(line)
            except msgspec.DecodeError as exc:
                try:  # Python's json writes NaN and Infinity, which strict JSON (msgspec) refuses
                    value = json.loads(line)
                except ValueError:
                    yield first_row + line_number, Refusal(first_row + line_number, "invalid_json", str(exc))
                    continue
            if not isinstance(value, dict):
                yield first_row + line_number, Refusal(first_row + line_number, "not_an_object", f"a JSON {type(value).__name__}, not an object")
                continue
            yield first_row + line_number, value


def _parquet_file(path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path, pre_buffer=False)
    except (pa.ArrowInvalid, OSError) as exc:
        raise TraceImportError(f"{path.name} is not a parquet table: {str(exc).splitlines()[0]}") from None


def _list_slices(column, nested: bool):
    """Row i's values of a list<float> (or list<list<float>>) arrow column as numpy, without a Python float per token."""
    import pyarrow as pa

    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if not pa.types.is_list(array.type) and not pa.types.is_large_list(array.type):
        return None
    offsets = np.asarray(array.offsets)
    valid = np.asarray(array.is_valid())
    inner = array.values
    if not nested:
        if not (pa.types.is_floating(inner.type) or pa.types.is_integer(inner.type)):
            return None
        values = inner.to_numpy(zero_copy_only=False).astype(np.float64)
        return lambda i: values[offsets[i] : offsets[i + 1]] if valid[i] else None
    if not pa.types.is_list(inner.type) and not pa.types.is_large_list(inner.type):
        return None
    inner_offsets = np.asarray(inner.offsets)
    if not (pa.types.is_floating(inner.values.type) or pa.types.is_integer(inner.values.type)):
        return None
    values = inner.values.to_numpy(zero_copy_only=False).astype(np.float64)

    def rows(i: int):
        if not valid[i]:
            return None
        a, b = offsets[i], offsets[i + 1]
        return _TopRows(np.diff(inner_offsets[a : b + 1]), values[inner_offsets[a] : inner_offsets[b]])

    return rows


@dataclass
class _TopRows:
    """Top-k rows of one trace as (row lengths, flat values): what the journal stores."""

    lengths: np.ndarray
    values: np.ndarray


def _arrow_rows(batches, fast_columns: dict[str, bool], first_row: int) -> Iterator[tuple[int, dict]]:
    row = first_row
    for batch in batches:
        names = batch.schema.names
        getters = {}
        for name, nested in fast_columns.items():
            if name in names:
                getter = _list_slices(batch.column(name), nested)
                if getter is not None:
                    getters[name] = getter
        plain = batch.select([n for n in names if n not in getters])
        for i, values in enumerate(plain.to_pylist()):
            for name, getter in getters.items():
                values[name] = getter(i)
            row += 1
            yield row, values


@dataclass
class TraceSource:
    """Where the traces are and how to stream them; opened (and checked) before anything is written."""

    loaded: LoadedRecipe
    config: TracesConfig
    files: list[Path]
    formats: list[str]
    columns: list[str]  # of the first file (or the dataset's features)
    key: str  # where the traces came from, for fingerprints and the card

    @classmethod
    def open(cls, loaded: LoadedRecipe) -> "TraceSource":
        source = loaded.recipe.source
        config = source.traces
        if source.path is not None:
            files = _files(loaded, source.path)
            if not files:
                raise TraceImportError(f"traces file not found: {loaded.resolve_path(source.path)}")
            formats = [_format_of(f, source.format) for f in files]
            columns = _peek_columns(files[0], formats[0])
            key = f"file:{source.path}"
        else:
            files, formats = [], []
            columns = _dataset_columns(source)
            key = f"dataset:{source.dataset}:{source.config or ''}:{source.split}"
        return cls(loaded, config, files, formats, columns, key)

    def rows(self, fast_columns: dict[str, bool]) -> Iterator[tuple[int, dict | Refusal]]:
        source = self.loaded.recipe.source
        if not self.files:
            yield from _dataset_rows(source)
            return
        offset = 0
        for path, fmt in zip(self.files, self.formats):
            last = offset
            if fmt == "jsonl":
                for last, value in _jsonl_rows(path, offset):
                    yield last, value
            else:
                file = _parquet_file(path)
                for last, value in _arrow_rows(file.iter_batches(batch_size=BATCH_ROWS), fast_columns, offset):
                    yield last, value
            offset = last  # rows are numbered across the shards of a glob

    def describe(self) -> dict:
        source = self.loaded.recipe.source
        if source.dataset is not None:
            from curation.dataset_card import is_hub_id

            return {"kind": "dataset", "name": source.dataset, "hub": is_hub_id(source.dataset), "config": source.config, "split": source.split}
        return {"kind": "file", "name": Path(source.path).name, "files": [f.name for f in self.files]}


def _peek_columns(path: Path, fmt: str) -> list[str]:
    if fmt == "parquet":
        return list(_parquet_file(path).schema_arrow.names)
    decode = msgspec.json.Decoder().decode
    with _open_text(path) as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                value = decode(line)
            except msgspec.DecodeError as exc:
                raise TraceImportError(f"{path.name} is not a JSONL table: its first line is not JSON ({exc})") from None
            if not isinstance(value, dict):
                raise TraceImportError(f"{path.name} is not a JSONL table: its first line is a JSON {type(value).__name__}, not an object")
            return list(value)
    raise TraceImportError(f"{path.name} is empty")


def _load_dataset(source, streaming: bool = True):
    import datasets

    return datasets.load_dataset(source.dataset, source.config, split=source.split, revision=source.revision, streaming=streaming)


def _dataset_columns(source) -> list[str]:
    try:
        stream = _load_dataset(source)
        if stream.features:
            return list(stream.features)
        first = next(iter(stream), None)
    except Exception as exc:  # noqa: BLE001 - unreachable Hub, unknown split, not a dataset...
        raise TraceImportError(f"cannot read the traces dataset {source.dataset} (split {source.split}): {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if first is None:
        raise TraceImportError(f"the traces dataset {source.dataset} (split {source.split}) has no rows")
    return list(first)


def _dataset_rows(source) -> Iterator[tuple[int, dict]]:
    row = 0
    for batch in _load_dataset(source).iter(batch_size=BATCH_ROWS):
        names = list(batch)
        count = len(batch[names[0]]) if names else 0
        for i in range(count):
            row += 1
            yield row, {name: batch[name][i] for name in names}


# --------------------------------------------------------------------------- checks before writing
def check(loaded: LoadedRecipe) -> list[Problem]:
    """Problems with an import that need the data (the source opens, the mapped columns exist), each at its recipe key."""
    recipe = loaded.recipe
    config = recipe.source.traces
    problems: list[Problem] = []
    no_tokens = config.token_logprobs is None and recipe.scorer is None  # a scorer computes them by teacher forcing
    if needs_tokens(recipe.score.metric) and no_tokens:
        problems.append(loaded.problem(("score", "metric"), tokens_missing_message(recipe.score.metric)))
    listed = [name for name in recipe.score.metrics or [] if needs_tokens(name)]
    if listed and no_tokens:
        problems.append(loaded.problem(("score", "metrics"), f"{', '.join(listed)} need token logprobs, and source.traces maps no token_logprobs column"))
    where = ("source", "path") if recipe.source.path is not None else ("source", "dataset")
    try:
        source = TraceSource.open(loaded)
    except TraceImportError as exc:
        return problems + [loaded.problem(where, str(exc))]
    columns = set(source.columns)
    question_columns: set[str] = set()
    if config.questions is not None:
        try:
            question_columns = set(_questions_file_columns(loaded, config))
        except TraceImportError as exc:
            problems.append(loaded.problem(("source", "traces", "questions"), str(exc)))
    for key, column in config.mapped_columns().items():
        if key == "token_ids" and column not in columns and config.preset == "curate" and column == "token_ids":
            continue  # traces published before the column: read from their text (and counted as retokenized)
        in_questions = config.questions is not None and key == "prompt"
        have = question_columns if in_questions else columns
        if in_questions and not question_columns:
            continue
        if column not in have:
            problems.append(loaded.problem(("source", "traces", key), f"column {column!r} not in the {'questions file' if in_questions else 'traces'}; it has: {', '.join(sorted(have))}"))
    if config.questions is not None and question_columns and config.id is not None and config.id not in question_columns:
        problems.append(loaded.problem(("source", "traces", "questions"), f"the questions file has no {config.id!r} column (traces.id); it has: {', '.join(sorted(question_columns))}"))
    label = recipe.source.label_column
    if label and label not in columns | question_columns:
        problems.append(loaded.problem(("source", "label_column"), f"column {label!r} not in the traces{' or the questions file' if config.questions else ''}"))
    if config.prompt is None and config.questions is None and recipe.prompt is not None:
        from curation.templating import template_variables

        for key in ("system", "user"):
            template = getattr(recipe.prompt, key)
            missing = sorted(template_variables(template) - columns) if template else []
            if missing:
                problems.append(loaded.problem(("prompt", key), f"template references missing column(s): {', '.join(missing)}; the traces have: {', '.join(sorted(columns))}"))
    return problems


def _questions_file_columns(loaded: LoadedRecipe, config: TracesConfig) -> list[str]:
    files = _files(loaded, config.questions)
    if not files:
        raise TraceImportError(f"questions file not found: {loaded.resolve_path(config.questions)}")
    return _peek_columns(files[0], _format_of(files[0], "auto"))


# --------------------------------------------------------------------------- questions
class _Questions:
    """The questions met so far, in order: from a questions file, or from the traces' own rows."""

    def __init__(self, loaded: LoadedRecipe):
        from curation.score import METRICS
        from curation.source import RESERVED_COLUMNS

        recipe = loaded.recipe
        self.recipe = recipe
        self.config = recipe.source.traces
        self.order: list[Question] = []
        self.index: dict[str, int] = {}
        self.fixed = False  # from a questions file: traces of other ids are refused
        self.skip = set(self.config.mapped_columns().values()) | RESERVED_COLUMNS | set(METRICS) | {recipe.source.label_column}
        self.templates = None
        if self.config.prompt is None and recipe.prompt is not None:
            from curation.templating import template_environment

            env = template_environment()
            self.templates = (env.from_string(recipe.prompt.system) if recipe.prompt.system else None, env.from_string(recipe.prompt.user))
        if self.config.questions is not None:
            self._read_file(loaded)

    def _read_file(self, loaded: LoadedRecipe) -> None:
        files = _files(loaded, self.config.questions)
        for path in files:
            fmt = _format_of(path, "auto")
            rows = _jsonl_rows(path, 0) if fmt == "jsonl" else _arrow_rows(_parquet_file(path).iter_batches(batch_size=BATCH_ROWS), {}, 0)
            for row, values in rows:
                if isinstance(values, Refusal):
                    raise TraceImportError(f"questions file {path.name}, row {row}: {values.detail}")
                try:
                    question_id = self._id(values)
                    if question_id in self.index:
                        raise _Refused("duplicate_question", f"question id {question_id!r} appears twice")
                    self._add(question_id, values)
                except _Refused as exc:
                    raise TraceImportError(f"questions file {path.name}, row {row}: {exc.detail}") from None
        self.fixed = True

    def _id(self, values: dict) -> str:
        if self.config.id is None:
            return hashlib.sha256(json.dumps(self._messages(values), sort_keys=True).encode()).hexdigest()[:16]
        value = values.get(self.config.id)
        if value is None:
            raise _Refused("missing_column", f"no question id (column {self.config.id!r})")
        return str(value)

    def _messages(self, values: dict) -> list[dict[str, str]]:
        if self.templates is not None:
            system, user = self.templates
            columns = {k: v for k, v in values.items()}
            messages = [{"role": "system", "content": system.render(**columns)}] if system is not None else []
            return messages + [{"role": "user", "content": user.render(**columns)}]
        column = self.config.prompt
        value = values.get(column)
        if value is None:
            raise _Refused("missing_column", f"no prompt (column {column!r})")
        if isinstance(value, str):
            if not value.strip():
                raise _Refused("empty_prompt", f"column {column!r} is empty")
            return [{"role": "user", "content": value}]
        if isinstance(value, list) and value and all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value):
            return [{"role": m["role"], "content": m["content"]} for m in value]
        raise _Refused("bad_type", f"column {column!r} is neither a string nor a list of {{role, content}} messages")

    def _add(self, question_id: str, values: dict) -> int:
        label_column = self.recipe.source.label_column
        label = None
        if label_column:
            raw = values.get(label_column)
            label = None if raw is None else str(raw)
            if label is not None and self.recipe.source.label_map:
                label = self.recipe.source.label_map.get(label, label)
        columns = {k: v for k, v in values.items() if k not in self.skip and (v is None or isinstance(v, SCALAR_TYPES))}
        self.index[question_id] = len(self.order)
        self.order.append(Question(id=question_id, messages=self._messages(values), columns=columns, label=label))
        return self.index[question_id]

    def of_row(self, values: dict) -> tuple[str, int]:
        """(question id, position) of a traces row, adding the question when the rows carry the questions."""
        if self.fixed:
            if self.config.id is None:
                raise _Refused("missing_column", "with a questions file, name the traces.id column")
            question_id = self._id(values)
            if question_id not in self.index:
                raise _Refused("unknown_question", f"question id {question_id!r} is not in the questions file")
            return question_id, self.index[question_id]
        question_id = self._id(values)
        position = self.index.get(question_id)
        if position is None:
            return question_id, self._add(question_id, values)
        if self.config.prompt is not None and self._messages(values) != self.order[position].messages:
            raise _Refused("prompt_conflict", f"question {question_id!r} has another prompt in an earlier row")
        return question_id, position


# --------------------------------------------------------------------------- one trace
@dataclass
class _Trace:
    sample_index: int | None  # None: the next free sample of its question
    text: str
    reasoning: str | None
    logprobs: np.ndarray
    top: _TopRows | None
    finish_reason: str
    model: str | None
    seed: int | None
    logprob_kind: str
    tokens: list[str] | None = None  # each token's string, when the file maps them (1:1 with the logprobs)
    token_ids: list[int] | None = None  # the generator's token ids, when the file maps them


def _floats(value: Any, what: str) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if not isinstance(value, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise _Refused("bad_type", f"{what} is not a list of numbers")
    return np.asarray(value, dtype=np.float64)


def _top_rows(value: Any, what: str) -> _TopRows:
    if isinstance(value, _TopRows):
        return value
    if not isinstance(value, list) or not all(isinstance(row, list) for row in value):
        raise _Refused("bad_type", f"{what} is not a list of lists of numbers")
    lengths = np.fromiter(map(len, value), dtype=np.int64, count=len(value))
    try:
        flat = np.asarray([v for row in value for v in row], dtype=np.float64)
    except (TypeError, ValueError):
        raise _Refused("bad_type", f"{what} is not a list of lists of numbers") from None
    return _TopRows(lengths, flat)


def _check_logprobs(values: np.ndarray, what: str, *, top: bool = False) -> None:
    if np.isnan(values).any():
        raise _Refused("logprobs_nan", f"{what} has NaN at token {int(np.flatnonzero(np.isnan(values))[0])}")
    if (values > 0).any():
        where = int(np.flatnonzero(values > 0)[0])
        raise _Refused("logprobs_positive", f"{what} has a positive logprob ({values[where]:.4g}) at {'value' if top else 'token'} {where}")
    if not top and np.isinf(values).any():  # a sampled token had probability > 0; -inf would make every mean infinite
        raise _Refused("logprobs_nan", f"{what} has -inf at token {int(np.flatnonzero(np.isinf(values))[0])}")


def _token_columns(config: TracesConfig, tokens: Any, ids: Any, n_logprobs: int | None, where: str) -> tuple[list[str] | None, list[int] | None]:
    """The trace's token strings and ids as the file gives them ([] or a missing column: none), checked against each other and the logprobs."""
    if config.tokens is not None:
        if tokens is None:
            raise _Refused("missing_column", f"no tokens (column {config.tokens!r}){where}")
        if not isinstance(tokens, list) or not all(isinstance(token, str) for token in tokens):
            raise _Refused("bad_type", f"tokens{where} is not a list of strings")
        if tokens and n_logprobs is not None and len(tokens) != n_logprobs:  # [] : this trace has no token strings (its server gave none)
            raise _Refused("logprobs_length", f"{n_logprobs} logprobs for {len(tokens)} tokens{where}")
    if ids is not None:  # a file written before the column (an old curate traces config) has none: the text is read instead
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
            raise _Refused("bad_type", f"token_ids{where} is not a list of token ids")
        for what, count in (("logprobs", n_logprobs), ("tokens", len(tokens) if config.tokens is not None and tokens else None)):
            if ids and count is not None and count != len(ids):
                raise _Refused("logprobs_length", f"{len(ids)} token ids for {count} {what}{where}")
    return (list(tokens) if config.tokens is not None and tokens else None), (list(ids) if ids else None)


def _one_trace(config: TracesConfig, text: Any, logprobs: Any, top: Any, tokens: Any, extra: dict, where: str, ids: Any = None) -> _Trace:
    if text is None:
        raise _Refused("missing_column", f"no completion (column {config.completion!r}){where}")
    if not isinstance(text, str):
        raise _Refused("bad_type", f"completion{where} is a {type(text).__name__}, not a string")
    reasoning = extra.get("reasoning")
    if reasoning is not None and not isinstance(reasoning, str):
        raise _Refused("bad_type", f"reasoning{where} is not a string")
    if not text.strip() and not (reasoning or "").strip():
        raise _Refused("empty_completion", f"the completion{where} is empty")
    token_logprobs, top_rows = np.zeros(0), None
    if config.token_logprobs is not None:
        if logprobs is None:
            raise _Refused("missing_column", f"no token logprobs (column {config.token_logprobs!r}){where}")
        token_logprobs = _floats(logprobs, f"token_logprobs{where}")
        if len(token_logprobs) == 0:
            raise _Refused("logprobs_length", f"no token logprobs for a non-empty completion{where}")
        _check_logprobs(token_logprobs, f"token_logprobs{where}")
        if config.top_logprobs is not None:
            if top is None:
                raise _Refused("missing_column", f"no top logprobs (column {config.top_logprobs!r}){where}")
            top_rows = _top_rows(top, f"top_logprobs{where}")
            if len(top_rows.lengths) != len(token_logprobs):
                raise _Refused("logprobs_length", f"{len(top_rows.lengths)} top-k rows for {len(token_logprobs)} tokens{where}")
            if (top_rows.lengths > 0xFFFF).any():
                raise _Refused("logprobs_length", f"a top-k row longer than 65535{where}")
            _check_logprobs(top_rows.values, f"top_logprobs{where}", top=True)
    strings, token_ids = _token_columns(config, tokens, ids, len(token_logprobs) if config.token_logprobs is not None else None, where)
    finish = extra.get("finish_reason") or "stop"
    if not isinstance(finish, str):
        raise _Refused("bad_type", f"finish_reason{where} is not a string")
    seed = extra.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise _Refused("bad_type", f"seed{where} is not an integer")
    kind = extra.get("logprob_kind") or ("unknown" if config.token_logprobs is not None else "none")
    model = extra.get("model")
    return _Trace(None, text, reasoning, token_logprobs, top_rows, finish, None if model is None else str(model), seed, str(kind), strings, token_ids)


def _traces_of_row(config: TracesConfig, values: dict) -> list[_Trace]:
    """The traces of one row (one, or a question row's K), or _Refused for the whole row."""
    extra = {key: values.get(getattr(config, key)) for key in ("reasoning", "finish_reason", "model", "seed", "logprob_kind") if getattr(config, key) is not None}
    for key in ("completion", "token_logprobs", "top_logprobs", "tokens", "reasoning"):
        column = getattr(config, key)
        if column is not None and column not in values:
            raise _Refused("missing_column", f"the row has no {column!r} column")
    get = lambda key: values.get(getattr(config, key)) if getattr(config, key) is not None else None  # noqa: E731
    if config.shape == "trace":
        trace = _one_trace(config, get("completion"), get("token_logprobs"), get("top_logprobs"), get("tokens"), extra, "", get("token_ids"))
        index = None
        if config.sample_index is not None:
            raw = values.get(config.sample_index)
            if raw is None or isinstance(raw, bool) or not isinstance(raw, (int, float)) or raw != int(raw) or raw < 0:
                raise _Refused("bad_sample_index", f"sample index {raw!r} is not an integer >= 0")
            index = int(raw)
        if config.reference is not None:
            flag = values.get(config.reference)
            if not isinstance(flag, bool):
                raise _Refused("bad_type", f"reference flag {flag!r} is not a boolean")
            if flag and index not in (None, 0):
                raise _Refused("reference_conflict", f"marked as the reference but its sample index is {index}")
            if not flag and index == 0:
                raise _Refused("reference_conflict", "sample index 0 is the reference's, but the row is not marked as the reference")
            if flag:
                index = 0
        trace.sample_index = index
        return [trace]
    texts = get("completion")
    if texts is None:
        raise _Refused("missing_column", f"no completions (column {config.completion!r})")
    if not isinstance(texts, list) or not texts:
        raise _Refused("bad_type", f"column {config.completion!r} is not a non-empty list of completions")
    lists = {}
    for key in ("token_logprobs", "top_logprobs", "tokens", "reasoning", "finish_reason", "seed"):
        column = getattr(config, key)
        if column is None:
            continue
        value = values.get(column)
        if value is None:
            raise _Refused("missing_column", f"no {key} (column {column!r})")
        if not isinstance(value, list):
            raise _Refused("bad_type", f"column {column!r} is not a list, one item per completion")
        if len(value) != len(texts):
            raise _Refused("logprobs_length" if key in ("token_logprobs", "top_logprobs", "tokens") else "bad_type", f"column {column!r} has {len(value)} items for {len(texts)} completions")
        lists[key] = value
    ids = get("token_ids")  # optional even when mapped: traces published before the column have none
    if ids is not None and (not isinstance(ids, list) or len(ids) != len(texts)):
        raise _Refused("logprobs_length", f"column {config.token_ids!r} has {len(ids) if isinstance(ids, list) else 'no list of'} items for {len(texts)} completions")
    traces = []
    for i, text in enumerate(texts):
        item = {**extra, **{key: lists[key][i] for key in ("reasoning", "finish_reason", "seed") if key in lists}}
        pick = lambda key: lists[key][i] if key in lists else None  # noqa: E731
        trace = _one_trace(config, text, pick("token_logprobs"), pick("top_logprobs"), pick("tokens"), item, f" (completion {i + 1})", ids[i] if ids is not None else None)
        trace.sample_index = i if config.first_is_reference else i + 1
        traces.append(trace)
    return traces


def _content_hash(trace: _Trace) -> str:
    digest = hashlib.sha256()
    digest.update(trace.text.encode())
    digest.update(b"\0" + (trace.reasoning or "").encode() + b"\0")
    digest.update(np.ascontiguousarray(trace.logprobs, dtype="<f8").tobytes())
    if trace.top is not None:
        digest.update(np.ascontiguousarray(trace.top.lengths, dtype="<i8").tobytes())
        digest.update(np.ascontiguousarray(trace.top.values, dtype="<f8").tobytes())
    if trace.token_ids:  # only when given, so that a trace imported before the column keeps its fingerprint
        digest.update(b"ids\0" + np.asarray(trace.token_ids, dtype="<i8").tobytes())
    return digest.hexdigest()


def fingerprint(source_key: str, question_id: str, sample_index: int, content: str) -> str:
    return hashlib.sha256(f"import\0{source_key}\0{question_id}\0{sample_index}\0{content}".encode()).hexdigest()


def trace_payload(trace: _Trace) -> str:
    """The journal payload of an imported trace: what generated traces store, the reasoning included."""
    meta = {"text": trace.text, "finish_reason": trace.finish_reason, "logprob_kind": trace.logprob_kind, "seed": trace.seed, "model": trace.model, "usage": {}}
    return msgspec.json.encode(with_reasoning(meta, trace.reasoning, has_logprobs=len(trace.logprobs) > 0, tokens=trace.tokens, text=trace.text)).decode()


def with_reasoning(meta: dict, reasoning: str | None, *, has_logprobs: bool, tokens: list[str] | None = None, text: str = "") -> dict:
    """An imported trace's separated reasoning, in the payload keys the journal reads as ``Trace.reasoning``.

    Its span: with the token strings mapped, the answer start is found in them (reasoning.capture), as
    for a generated trace. Without them a file says nothing of where its logprobs switch from thinking
    to answer, so a trace with both is recorded ``unaligned`` and its answer-span token metrics are
    left out rather than guessed. Without logprobs there is nothing to align: a
    scorer reads the thinking and the answer as written.
    """
    if reasoning is not None and tokens:  # the token strings show where the answer starts, as for a generated trace
        from curation.reasoning import capture

        span = capture(text, reasoning, tokens)
        meta.update(reasoning=reasoning, answer_start=span.answer_start, alignment=span.alignment)
    elif reasoning is not None:
        meta.update(reasoning=reasoning, answer_start=None, alignment="unaligned" if has_logprobs else "ok")
    return meta


# --------------------------------------------------------------------------- the stage
@dataclass
class ImportResult:
    questions: list[Question]
    grid: list[list[str | None]]  # [n][K+1] fingerprints by sample index, None where the file has none
    samples: int  # K: the most samples any question has
    has_reference: bool
    has_logprobs: bool
    has_top: bool
    stats: StageStats  # rows_in: rows read; rows_out: traces accepted; dropped: refused rows by reason
    traces: int
    cached: int  # traces already in the journal (a rerun)
    refused: list[Refusal] = field(default_factory=list)  # the first MAX_REPORTED
    source: dict = field(default_factory=dict)
    models: list[str] = field(default_factory=list)
    logprob_kinds: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        """What stats.json and the card say about the import."""
        return {
            "source": self.source,
            "rows": self.stats.rows_in,
            "traces": self.traces,
            "already_in_journal": self.cached,
            "rows_accepted": self.stats.rows_out,
            "refused_rows": sum(self.stats.dropped.values()),
            "refused_by_reason": dict(sorted(self.stats.dropped.items())),
            "refused_examples": [r.to_json() for r in self.refused],
            "samples": self.samples,
            "reference": self.has_reference,
            "token_logprobs": self.has_logprobs,
            "top_logprobs": self.has_top,
            "models": self.models,
        }


    @classmethod
    def from_stored(cls, stored: dict, questions: list[Question]) -> "ImportResult":
        """The result of an earlier import of the same, unchanged files (``source_identity``), without reading them again."""
        summary = stored["summary"]
        stats = StageStats(rows_in=summary["rows"], rows_out=summary.get("rows_accepted", summary["rows"] - summary["refused_rows"]), dropped=dict(summary["refused_by_reason"]))
        return cls(
            questions=questions, grid=stored["grid"], samples=stored["samples"], has_reference=stored["reference"], has_logprobs=summary["token_logprobs"],
            has_top=summary["top_logprobs"], stats=stats, traces=summary["traces"], cached=summary["traces"],
            refused=[Refusal(**r) for r in summary["refused_examples"]], source=summary["source"], models=summary["models"],
            logprob_kinds=stored.get("logprob_kinds", []),
        )


def source_identity(loaded: LoadedRecipe, source: TraceSource) -> dict | None:
    """What an import read, as it was: each file's name, size and modification time, and the recipe keys that
    shape its questions and traces. An unchanged identity means the journal already holds exactly that import.
    None for a Hub dataset (its revision is not resolved here): it is read again on every run."""
    if not source.files:
        return None
    recipe = loaded.recipe

    def stat(paths: list[Path]) -> list:
        return [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in paths]

    config = recipe.source.traces
    return {
        "files": stat(source.files),
        "questions": stat(_files(loaded, config.questions)) if config.questions else None,
        "source": recipe.source.model_dump(mode="json"),
        "prompt": recipe.prompt.model_dump(mode="json") if recipe.prompt else None,
    }


def import_traces(loaded: LoadedRecipe, journal_path: Path, *, source: TraceSource | None = None) -> ImportResult:
    """Stream the recipe's traces into the journal (skipping those already there) and return the run's questions and grid."""
    started = time.monotonic()
    config = loaded.recipe.source.traces
    source = source or TraceSource.open(loaded)
    questions = _Questions(loaded)
    slots: list[dict[int, str]] = []  # per question: sample index -> fingerprint
    first_row_of: dict[tuple[int, int], int] = {}
    stats = StageStats()
    refused: list[Refusal] = []
    models: dict[str, None] = {}
    kinds: dict[str, None] = {}
    has_top = False
    traces = cached = 0
    pending: list[tuple[str, str, int, str, bytes, bytes | None]] = []
    fast = {c: nested for c, nested in ((config.token_logprobs, False), (config.top_logprobs, True)) if c} if config.shape == "trace" else {}

    def refuse(row: int, reason: str, detail: str) -> None:
        stats.drop(reason)
        if len(refused) < MAX_REPORTED:
            refused.append(Refusal(row, reason, detail))

    def flush(journal: Journal) -> int:
        done = journal.done(fp for fp, *_ in pending)
        journal.commit_packed(row for row in pending if row[0] not in done)
        pending.clear()
        return len(done)

    with Journal(journal_path) as journal:
        for row, values in source.rows(fast):
            stats.rows_in += 1
            if isinstance(values, Refusal):
                refuse(row, values.reason, values.detail)
                continue
            try:
                row_traces = _traces_of_row(config, values)
                question_id, position = questions.of_row(values)
            except _Refused as exc:
                refuse(row, exc.reason, exc.detail)
                continue
            while len(slots) <= position:
                slots.append({})
            taken = slots[position]
            duplicates = [t.sample_index for t in row_traces if t.sample_index is not None and t.sample_index in taken]
            if duplicates:
                index = duplicates[0]
                refuse(row, "duplicate_sample", f"question {question_id!r} sample {index} is already in row {first_row_of.get((position, index), '?')}")
                continue
            for trace in row_traces:
                if trace.sample_index is None:  # file order: the next sample after those already met
                    trace.sample_index = max([i for i in taken if i > 0], default=0) + 1
                fp = fingerprint(source.key, question_id, trace.sample_index, _content_hash(trace))
                taken[trace.sample_index] = fp
                first_row_of[(position, trace.sample_index)] = row
                top_lengths = trace.top.lengths if trace.top is not None else np.zeros(0, dtype=np.int64)
                top_values = trace.top.values if trace.top is not None else np.zeros(0)
                has_top = has_top or len(top_values) > 0
                strings = msgspec.json.encode(trace.tokens) if trace.tokens else None  # the journal's `tokens` column, as commit writes it
                pending.append((fp, question_id, trace.sample_index, trace_payload(trace), pack_token_arrays(trace.logprobs, top_lengths, top_values, trace.token_ids or ()), strings))
                if trace.model:
                    models.setdefault(trace.model)
                kinds.setdefault(trace.logprob_kind)
                traces += 1
            stats.rows_out += 1
            if len(pending) >= BATCH_ROWS:
                cached += flush(journal)
        cached += flush(journal)
        meta = {"source": source.describe(), "key": source.key}
        journal.set_meta("import", meta)

    while len(slots) < len(questions.order):
        slots.append({})
    samples = max((i for taken in slots for i in taken), default=0)
    has_reference = any(0 in taken for taken in slots)
    grid = [[taken.get(j) for j in range(samples + 1)] for taken in slots]
    stats.seconds = time.monotonic() - started
    return ImportResult(
        questions=questions.order, grid=grid, samples=samples, has_reference=has_reference, has_logprobs=config.token_logprobs is not None,
        has_top=has_top, stats=stats, traces=traces, cached=cached, refused=refused, source=source.describe(), models=list(models), logprob_kinds=list(kinds),
    )


def import_problems(loaded: LoadedRecipe, result: ImportResult) -> str | None:
    """Why the imported traces cannot be scored as the recipe asks (checked after reading, before scoring), or None."""
    recipe = loaded.recipe
    config = recipe.source.traces
    from curation.score import METRICS

    read = result.stats.rows_in
    refused = sum(result.stats.dropped.values())
    if result.traces == 0:
        reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(result.stats.dropped.items()))
        first = f"; first: row {result.refused[0].row}: {result.refused[0].detail}" if result.refused else ""
        return f"no trace could be imported from {read} rows (refused: {reasons or 'none'}{first}); check source.traces' column mapping"
    if read and refused / read > config.max_refused:
        first = result.refused[0]
        return (f"{refused} of {read} rows refused ({', '.join(f'{r} {c}' for r, c in sorted(result.stats.dropped.items()))}), more than "
                f"source.traces.max_refused ({config.max_refused}); first: row {first.row}: {first.detail}. The good rows are in the journal.")
    metric = METRICS[recipe.score.metric]
    if "reference" in metric.requires and not result.has_reference:
        return (f"metric {recipe.score.metric!r} scores the greedy reference, and the imported traces have none: map source.traces.reference "
                "(shape trace) or set first_is_reference (shape question), or choose self_consistency")
    if not result.has_reference and recipe.select.completion == "reference":
        return "the imported traces have no greedy reference to keep: set select.completion: best_agreeing (the sample agreeing with the majority)"
    if "samples" in metric.requires and result.samples == 0:
        return f"metric {recipe.score.metric!r} needs sampled traces, and the imported traces are references only"
    return None


def describe_plan(loaded: LoadedRecipe) -> str:
    """`curate run --dry-run` of an import: where the traces are, what is read from which column, and that nothing is generated."""
    source = TraceSource.open(loaded)
    config = loaded.recipe.source.traces
    where = source.describe()
    rows = None
    if source.files and all(fmt == "parquet" for fmt in source.formats):
        rows = sum(_parquet_file(f).metadata.num_rows for f in source.files)
    lines = [
        f"traces: imported from {where['name']}" + (f" ({len(source.files)} files)" if len(source.files) > 1 else "") + (f", {rows} rows" if rows is not None else ""),
        f"shape: one row per {config.shape}; columns: " + ", ".join(f"{key}={column}" for key, column in config.mapped_columns().items()),
        "token logprobs: " + ("read from the file" if config.token_logprobs else f"none (only consistency metrics; the recipe's metric is {loaded.recipe.score.metric})"),
        "nothing is generated: no endpoint is called and no tokens are paid for",
    ]
    return "\n".join(lines)


def format_refusals(result: ImportResult, limit: int = 5) -> list[str]:
    """A few lines for the terminal: the counts by reason, then the first refused rows."""
    if not result.stats.dropped:
        return []
    total = sum(result.stats.dropped.values())
    lines = [f"refused {total} of {result.stats.rows_in} rows: " + ", ".join(f"{reason} {count}" for reason, count in sorted(result.stats.dropped.items()))]
    lines += [f"  row {r.row}: {r.reason}: {r.detail}" for r in result.refused[:limit]]
    if total > limit:
        lines.append(f"  ... every refused row's reason is counted in stats.json (the first {MAX_REPORTED} listed)")
    return lines


__all__ = ["ImportResult", "Refusal", "TraceSource", "TraceImportError", "check", "import_traces", "import_problems", "with_reasoning"]
