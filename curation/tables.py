"""Tables: the run folder's parquet schemas, built chunk by chunk, and the sharded writer.

A run is written as it is computed, one chunk of whole questions at a time, so memory does not
grow with the run. Each split is sharded the way ``datasets`` and the Hub name shards
(``data/scored-00000-of-00008.parquet``): a shard is closed once it holds about
``MAX_SHARD_BYTES`` of data, and the shard count is written into the names when the split is
complete (until then the files end in ``.partial`` and no glob of the run folder sees them).

- ``traces`` (config ``traces``): one row per generated trace, ``TRACES_SCHEMA``.
- ``scored`` (split of the default config): one row per question; ``scored_table`` builds a chunk
  of it without ``kept`` and ``drop_reason``, which only the global selection can decide, so the
  scored split is written in a second pass (``write_selected``) that also writes ``filtered``.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curation.types import Question


def lean_pyarrow() -> None:
    """Spare ``curate run`` what pyarrow costs it beyond the tables it writes (issue 25's footprint).

    - pandas (45 MB, 0.26 s of CPU): the first time pyarrow converts any Python object
      (``pa.array([0])``), its pandas shim imports pandas to ask whether the object is a pandas one,
      and remembers the answer. curate's stages never hand pyarrow a pandas object, so this first
      probe finds no pandas. The shim still imports pandas for real when something asks for it
      (``to_pandas``, ``from_pandas``, the datasets library): those ask with ``raise_=True``, and it
      tries again then.
    - the allocator: pyarrow's default pool (mimalloc) keeps what a stage freed; the process is
      streamed, and the system allocator, which hands freed memory back, lowers the peak of the
      footprint workload by ~12 MB (bench/cli_footprint.py; bench/scale.py for large runs).
    """
    import sys

    pa.set_memory_pool(pa.system_memory_pool())

    class NoPandas:  # a meta path finder that answers "not installed" for pandas, during the probe only
        def find_spec(self, name, path=None, target=None):
            if name == "pandas":
                raise ModuleNotFoundError("pandas is not imported for pyarrow's first probe", name="pandas")

    if "pandas" in sys.modules:
        return
    finder = NoPandas()
    sys.meta_path.insert(0, finder)
    try:
        pa.array([0])
    finally:
        sys.meta_path.remove(finder)


MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
MESSAGES = pa.list_(MESSAGE)
THINK_OPEN, THINK_CLOSE = "<think>\n", "\n</think>\n\n"  # inline thinking, as DeepSeek-R1 and Qwen3 write it


def completion_type(thinking_format: str) -> pa.DataType:
    """The completion column's type: the assistant message with a thinking slot (null without thinking), or plain."""
    if thinking_format == "inline":
        return MESSAGES
    return pa.list_(pa.struct([("role", pa.string()), ("content", pa.string()), (thinking_format, pa.string())]))


def assistant_message(text: str, reasoning: str | None, thinking_format: str) -> dict:
    """The completion's assistant message carrying the thinking the way chat templates and TRL read it."""
    if thinking_format == "inline":
        return {"role": "assistant", "content": f"{THINK_OPEN}{reasoning}{THINK_CLOSE}{text}" if reasoning is not None else text}
    return {"role": "assistant", "content": text, thinking_format: reasoning}


TRACES_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("sample_index", pa.int32()),
        ("is_reference", pa.bool_()),
        ("text", pa.string()),  # the answer text (what parsing read)
        ("thinking", pa.string()),  # the thinking, markers stripped; null without
        ("answer", pa.string()),
        ("token_logprobs", pa.list_(pa.float32())),
        ("top_logprobs", pa.list_(pa.list_(pa.float32()))),
        ("finish_reason", pa.string()),
        ("n_tokens", pa.int32()),
        ("seed", pa.int64()),
        ("logprob_kind", pa.string()),
        ("model", pa.string()),
        ("answer_start", pa.int32()),  # index of the first answer token; tokens before it are thinking and markers
        ("alignment", pa.string()),  # ok | unaligned (answer tokens do not give the text) | unfinished (thinking never closed)
        ("tokens", pa.list_(pa.string())),  # each token's string, as the server gave it (empty where none)
        ("token_ids", pa.list_(pa.int32())),  # the ids the logprobs are of (empty where none): a scorer forces exactly these
    ]
)

# Bytes of arrow data per shard. The Hub's viewer and datasets handle shards of a few hundred MB
# best; a chunk is never split, so a shard may exceed this by one chunk. CURATE_SHARD_BYTES overrides.
MAX_SHARD_BYTES = int(os.environ.get("CURATE_SHARD_BYTES", 256 * 1024**2))


# --------------------------------------------------------------------------- building chunks
@dataclass
class QuestionColumns:
    """The source's columns and their arrow types, fixed once for the run so every chunk has one schema."""

    types: dict[str, pa.DataType]
    label_type: pa.DataType | None  # None: the recipe has no label_column
    teacher_prompt: bool  # prompt.teacher_hint: what the teacher saw is kept
    calibration: bool = False  # recipe calibrate: a `calibration` column marks the labelled held-out questions

    @classmethod
    def of(cls, questions: Sequence[Question], with_label: bool, with_calibration: bool = False) -> "QuestionColumns":
        names = list(dict.fromkeys(name for q in questions for name in q.columns))
        types = {name: pa.array([q.columns.get(name) for q in questions]).type for name in names}
        label_type = pa.array([q.label for q in questions]).type if with_label else None
        if with_calibration and label_type is not None and pa.types.is_null(label_type):
            label_type = pa.string()
        return cls(types, label_type, any(q.teacher_messages for q in questions), with_calibration)


def scored_table(
    questions: Sequence[Question], layout: QuestionColumns, chunk, parsed, codes, samples: int, uncertainty: np.ndarray, metrics: dict[str, np.ndarray],
    thinking_format: str = "reasoning_content",
) -> pa.Table:
    """The scored rows of one chunk, every column but ``kept`` and ``drop_reason``."""
    k = samples
    columns: dict[str, pa.Array] = {"id": pa.array([q.id for q in questions], pa.string())}
    for name, type_ in layout.types.items():
        columns[name] = pa.array([q.columns.get(name) for q in questions], type_)
    if layout.label_type is not None:
        columns["label"] = pa.array([q.label for q in questions], layout.label_type)
    if layout.calibration:
        columns["calibration"] = pa.array([q.calibration for q in questions], pa.bool_())
    columns["prompt"] = pa.array([q.messages for q in questions], MESSAGES)
    if layout.teacher_prompt:
        columns["teacher_prompt"] = pa.array([q.teacher_messages for q in questions], MESSAGES)
    chosen = parsed.chosen
    columns["completion"] = pa.array(
        [[assistant_message(chunk.text[row], chunk.reasoning[row], thinking_format)] if row >= 0 else [] for row in chosen], completion_type(thinking_format)
    )
    columns["answer"] = pa.array(parsed.predicted, pa.string())
    columns["majority_answer"] = pa.array([codes.label(int(c)) for c in parsed.majority_codes], pa.string())
    reference = parsed.reference_codes[:, None]
    agreement = np.where(reference >= 0, parsed.sample_codes == reference, False).mean(axis=1) if k else np.full(len(questions), np.nan)
    present = chunk.slots >= 0
    if k and not chunk.planned[:, 1 : k + 1].all():  # adaptive sampling: the mean over the samples drawn
        with np.errstate(invalid="ignore", divide="ignore"):
            agreement = np.where(reference >= 0, parsed.sample_codes == reference, False).sum(axis=1) / present[:, 1 : k + 1].sum(axis=1)
    columns["agreement"] = pa.array(agreement, pa.float64())
    columns["n_samples"] = pa.array(present[:, 1 : k + 1].sum(axis=1), pa.int32())
    unparsed = np.array([a is None for a in parsed.trace_answers] + [False], dtype=bool)
    columns["n_unparsed"] = pa.array((present & unparsed[chunk.slots]).sum(axis=1), pa.int32())
    columns["kept_trace"] = pa.array([int(chunk.sample_index[row]) if row >= 0 else None for row in chosen], pa.int32())
    columns["finish_reason"] = pa.array([chunk.finish_reason[row] if row >= 0 else None for row in chosen], pa.string())
    columns["uncertainty"] = pa.array(uncertainty, pa.float64())
    for name, values in metrics.items():
        columns[name] = pa.array(values, pa.float64())
    return pa.table(columns)


def traces_table(questions: Sequence[Question], chunk, parsed, tokens: Sequence[Sequence[str]] | None = None) -> pa.Table:
    """One row per trace of the chunk, in question then sample order; token data straight from the buffers."""
    rows = np.arange(chunk.n_traces)
    arrays = chunk.token_arrays(rows)
    logprobs = pa.ListArray.from_arrays(pa.array(arrays.offsets.astype(np.int32)), pa.array(arrays.logprobs.astype(np.float32)))
    if arrays.top_values is None:
        top = pa.array([[] for _ in rows], TRACES_SCHEMA.field("top_logprobs").type)
    else:
        inner = pa.ListArray.from_arrays(pa.array(arrays.top_row_offsets.astype(np.int32)), pa.array(arrays.top_values.astype(np.float32)))
        top = pa.ListArray.from_arrays(pa.array(arrays.top_trace_offsets.astype(np.int32)), inner)
    ids = [questions[i].id for i in chunk.question]
    return pa.table(
        [
            pa.array(ids, pa.string()),
            pa.array(chunk.sample_index, pa.int32()),
            pa.array(chunk.sample_index == 0, pa.bool_()),
            pa.array(chunk.text, pa.string()),
            pa.array(chunk.reasoning, pa.string()),
            pa.array(parsed.trace_answers, pa.string()),
            logprobs,
            top,
            pa.array(chunk.finish_reason, pa.string()),
            pa.array(chunk.n_tokens, pa.int32()),
            pa.array(chunk.seed, pa.int64()),
            pa.array(chunk.logprob_kind, pa.string()),
            pa.array(chunk.model, pa.string()),
            pa.array(np.where(chunk.answer_start >= 0, chunk.answer_start, 0), pa.int32(), mask=chunk.answer_start < 0),
            pa.array(chunk.alignment, pa.string()),
            pa.array(tokens if tokens is not None else [[] for _ in rows], pa.list_(pa.string())),
            _id_lists(chunk.token_ids),
        ],
        schema=TRACES_SCHEMA,
    )


def _id_lists(ids: Sequence[np.ndarray]) -> pa.Array:
    offsets = np.zeros(len(ids) + 1, dtype=np.int32)
    np.cumsum([len(row) for row in ids], out=offsets[1:])
    flat = np.concatenate(ids).astype(np.int32) if ids else np.zeros(0, dtype=np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, pa.int32()))


# --------------------------------------------------------------------------- writing shards
def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.parquet"


def shard_pattern(folder: str, split: str) -> str:
    """The glob of a split's shards, as the card's ``configs:`` block names them."""
    return f"{folder}/{split}-*.parquet"


def split_files(run_dir: Path, folder: str, split: str) -> list[Path]:
    """The shards of a split in order (``scored-00000-of-00003.parquet``, ...)."""
    return sorted((run_dir / folder).glob(f"{split}-*-of-*.parquet"))


@dataclass
class ShardWriter:
    """Write a split as parquet shards, a table at a time; ``close()`` names them ``-of-N``.

    A split with no rows gets one shard with the schema and no row groups (datasets reads a
    0-row row group as batch size 0 and fails). Shards of an earlier write of the same split
    that are not rewritten are removed on close.
    """

    folder: Path
    split: str
    schema: pa.Schema | None = None
    max_shard_bytes: int | None = None  # None: MAX_SHARD_BYTES
    rows: int = 0
    _partials: list[Path] = field(default_factory=list)
    _writer: pq.ParquetWriter | None = None
    _bytes: int = 0

    def write(self, table: pa.Table, *, end_shard: bool = False) -> None:
        if self.schema is None:
            self.schema = table.schema
        elif table.schema != self.schema:
            table = table.cast(self.schema)
        if table.num_rows:
            if self._writer is None:
                self._open()
            self._writer.write_table(table)
            self._bytes += table.nbytes
            self.rows += table.num_rows
        limit = self.max_shard_bytes if self.max_shard_bytes is not None else MAX_SHARD_BYTES
        if self._writer is not None and (end_shard or self._bytes >= limit):
            self._close_shard()

    def _open(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{self.split}-{len(self._partials):05d}.parquet.partial"
        self._partials.append(path)
        self._writer = pq.ParquetWriter(path, self.schema, compression="zstd")
        self._bytes = 0

    def _close_shard(self) -> None:
        self._writer.close()
        self._writer = None

    def close(self) -> list[Path]:
        if self._writer is not None:
            self._close_shard()
        if not self._partials:
            if self.schema is None:
                raise ValueError(f"split {self.split!r} has neither rows nor a schema")
            self._open()
            self._close_shard()
        count = len(self._partials)
        final = [self.folder / shard_name(self.split, i, count) for i in range(count)]
        for partial, path in zip(self._partials, final):
            os.replace(partial, path)
        for stale in set(self.folder.glob(f"{self.split}-*-of-*.parquet")) - set(final):
            stale.unlink()
        self._partials = []
        return final

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        for partial in self._partials:
            partial.unlink(missing_ok=True)
        self._partials = []


@dataclass
class RunWriters:
    """The run folder's splits while they are written: the score pass writes traces and unselected
    scored rows (under the partial folder), the write pass splits those into scored and filtered."""

    partial_dir: Path
    unselected: ShardWriter
    traces: ShardWriter
    scored: ShardWriter
    filtered: ShardWriter

    @classmethod
    def open(cls, run_folder) -> "RunWriters":
        remove_tree(run_folder.partial_dir)
        return cls(
            run_folder.partial_dir,
            ShardWriter(run_folder.partial_dir, "scored"),
            ShardWriter(*run_folder.split_folder("traces"), TRACES_SCHEMA),
            ShardWriter(*run_folder.split_folder("scored")),
            ShardWriter(*run_folder.split_folder("filtered")),
        )

    def write_selected(self, kept: np.ndarray, drop_reason: Sequence[str | None], never_computed: Sequence[str]) -> None:
        """Close the score pass's splits and write scored and filtered from the unselected rows."""
        unselected = self.unselected.close()
        self.traces.close()
        write_selected(unselected, self.scored, self.filtered, kept, drop_reason, never_computed)
        self.scored.close()
        self.filtered.close()

    def abort(self) -> None:
        for writer in (self.unselected, self.traces, self.scored, self.filtered):
            writer.abort()


# Rows of the second pass are read in batches of about this many bytes: a scored row carries its
# prompt and kept trace (kilobytes at 1,000 tokens), so a fixed row count would make memory follow
# the trace length and, up to the batch size, the run.
SELECT_BATCH_BYTES = 2 * 1024**2


def _batch_rows(source: pq.ParquetFile) -> int:
    metadata = source.metadata
    if metadata.num_rows == 0:
        return 1
    row_bytes = sum(metadata.row_group(i).total_byte_size for i in range(metadata.num_row_groups)) / metadata.num_rows
    return max(1, min(8192, int(SELECT_BATCH_BYTES / max(row_bytes, 1))))


def write_selected(unselected: Sequence[Path], scored: ShardWriter, filtered: ShardWriter, kept: np.ndarray, drop_reason: Sequence[str | None], drop_columns: Sequence[str] = ()) -> None:
    """Second pass: add ``kept`` and ``drop_reason`` to the unselected scored shards; write scored and filtered.

    Shard by shard, so memory is one shard's batches. Each input shard becomes one scored shard.
    """
    start = 0
    for path in unselected:
        source = pq.ParquetFile(path)
        for batch in source.iter_batches(batch_size=_batch_rows(source)):
            n = batch.num_rows
            table = pa.Table.from_batches([batch])
            if drop_columns:
                table = table.drop_columns([c for c in drop_columns if c in table.column_names])
            mask = pa.array(kept[start : start + n], pa.bool_())
            table = table.append_column("kept", mask).append_column("drop_reason", pa.array(list(drop_reason[start : start + n]), pa.string()))
            scored.write(table)
            if filtered.schema is None:
                filtered.schema = table.schema
            filtered.write(table.filter(mask))
            start += n
        if scored.schema is None:  # an empty input shard still fixes the schema
            table = source.schema_arrow.empty_table()
            if drop_columns:
                table = table.drop_columns([c for c in drop_columns if c in table.column_names])
            scored.schema = table.append_column("kept", pa.array([], pa.bool_())).append_column("drop_reason", pa.array([], pa.string())).schema
            filtered.schema = scored.schema
        scored.write(scored.schema.empty_table(), end_shard=True)
    if start != len(kept):
        raise RuntimeError(f"scored shards hold {start} rows, selection has {len(kept)}")


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


__all__ = [
    "MESSAGE",
    "MESSAGES",
    "TRACES_SCHEMA",
    "QuestionColumns",
    "ShardWriter",
    "scored_table",
    "traces_table",
    "shard_name",
    "shard_pattern",
    "split_files",
    "write_selected",
]
