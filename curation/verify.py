"""`curate verify`: recompute a published dataset's scored and filtered splits from its traces and recipe, and compare.

A dataset curate published holds every trace with its logprobs (config ``traces``) and the recipe as
run (``recipe.yaml``). From those two the scores, the selection and every row of ``scored`` and
``filtered`` follow, with no generator: the traces are read into a scratch journal and go through
``pipeline.finish``, the code path of ``curate score``, so whatever selection strategies and metrics
the pipeline has, verify recomputes with them. Memory is one chunk of questions plus per-question
scalars, as in ``curate score``: the traces are copied batch by batch and the splits compared batch by batch.

What must match:
- ``kept``, ``drop_reason`` and every other non-float column: exactly;
- float columns (the metrics, ``uncertainty``, ``agreement``): within ``SCORE_RTOL`` / ``SCORE_ATOL``.
  The published logprobs are float32 and the run's journal held float64. Rounding a logprob to float32
  changes it by at most 2**-24 of itself (6e-8); the token metrics are sums and means of terms of one
  sign, so they move by about as much, and CoCoA multiplies that by a consistency factor computed
  exactly. The tolerance is 1e-5 relative (plus 1e-6 absolute, for values near 0): over 100 times that
  bound, and a thousand times smaller than a change that could reorder two questions by accident.

What verify refuses to judge, saying why (exit 2): no traces config, a ``scorer:`` (its teacher-forced
logprobs are a model's output, not recomputed here), a ``critic:`` (the judge's replies are not
published), adaptive sampling (its stopping bounds were proved from the journal as it sampled), and a
similarity model that is not available on this machine.
"""

from __future__ import annotations

import math
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curation.journal import Journal
from curation.recipe.sections import Recipe
from curation.run_folder import RECIPE_FILE, STATS_FILE, RunFolder, shard_glob
from curation.types import CurateError

SCORE_RTOL = 1e-5
SCORE_ATOL = 1e-6
BATCH_ROWS = 4096  # rows per compared batch, and traces per batch copied into the scratch journal
SHOWN_PER_COLUMN = 5  # differing rows listed per (split, column); the rest are counted


class CannotVerify(CurateError):
    """The dataset cannot be verified here; the message says why."""


@dataclass
class Difference:
    split: str
    row: int
    id: str | None
    column: str
    published: object
    recomputed: object

    def describe(self) -> str:
        where = f"{self.split} row {self.row}" + (f" (id {self.id})" if self.id is not None else "")
        return f"{where}: {self.column}: published {_show(self.published)}, recomputed {_show(self.recomputed)}"


@dataclass
class Verification:
    location: str
    rows: dict[str, int] = field(default_factory=dict)  # split -> rows compared
    counts: Counter = field(default_factory=Counter)  # (split, column) -> rows that differ
    shown: list[Difference] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # whole-split differences: row counts, columns

    @property
    def ok(self) -> bool:
        return not self.counts and not self.problems

    def add(self, difference: Difference) -> None:
        key = (difference.split, difference.column)
        if self.counts[key] < SHOWN_PER_COLUMN:
            self.shown.append(difference)
        self.counts[key] += 1

    def report(self) -> list[str]:
        tolerance = f"scores within rtol {SCORE_RTOL:g}, atol {SCORE_ATOL:g}; kept, drop_reason and the other columns exactly"
        compared = ", ".join(f"{split} {n} rows" for split, n in self.rows.items())
        if self.ok:
            return [f"verified {self.location}: every row follows from the published traces and recipe.yaml ({compared}; {tolerance})"]
        lines = [f"NOT verified {self.location}: {sum(self.counts.values())} differing values in {len(self.counts)} column(s) ({compared}; {tolerance})"]
        lines += [f"  {problem}" for problem in self.problems]
        lines += [f"  {difference.describe()}" for difference in self.shown]
        for (split, column), count in sorted(self.counts.items()):
            if count > SHOWN_PER_COLUMN:
                lines.append(f"  {split}: {column}: {count - SHOWN_PER_COLUMN} more rows differ")
        return lines


def _show(value) -> str:
    if isinstance(value, float):
        return repr(round(value, 9)) if math.isfinite(value) else repr(value)
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# --------------------------------------------------------------------------- what verification needs
def cannot_verify(recipe: Recipe, folder: RunFolder) -> str | None:
    """Why this dataset cannot be verified here, or None."""
    if not folder.has_split("traces"):
        return f"no traces config was published ({shard_glob('traces')}): the scores cannot be recomputed without the traces"
    if not folder.has_split("scored"):
        return f"no scored split was published ({shard_glob('scored')})"
    if recipe.scorer is not None:
        return "the recipe's scores read a scorer model's teacher-forced logprobs (scorer: section); verify does not run that model"
    if recipe.critic is not None:
        return "the recipe filters on a critic's grades, and the critic's replies are not published: they cannot be recomputed"
    if recipe.source.traces is None and recipe.generator.adaptive is not None:
        return "adaptive sampling ranked stopped questions by bounds proved from the journal while sampling, which is not published"
    return similarity_unavailable(recipe)


def similarity_unavailable(recipe: Recipe) -> str | None:
    """Why the recipe's similarity model cannot be loaded here (None: it can, or none is needed)."""
    from curation.score import SIMILARITIES, default_embedding_model

    similarity = recipe.score.similarity
    if not SIMILARITIES[similarity].needs_model:
        return None
    model = recipe.score.similarity_model
    if model is None:
        if similarity != "embedding":
            return f"similarity {similarity!r} names no model (score.similarity_model)"
        try:
            default_embedding_model()
        except RuntimeError as exc:
            return f"the similarity model is not available: {exc}"
        return None
    if Path(model).expanduser().exists():
        return None
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(model, local_files_only=True)
    except Exception:  # noqa: BLE001 - not in the local Hub cache, whatever the exception's type
        return f"the similarity model {model!r} is not available here (neither a folder nor in the Hub cache)"
    return None


# --------------------------------------------------------------------------- the published folder
def published_folder(location: str, scratch: Path) -> tuple[RunFolder, str]:
    """A run folder for LOCATION (a folder, or hf://[datasets/]ORG/NAME[@REVISION] downloaded into ``scratch``) and its name for the report."""
    if not location.startswith("hf://"):
        folder = RunFolder(Path(location))
        if not folder.recipe_file.exists():
            raise CannotVerify(f"{location} has no {RECIPE_FILE}: not a run folder or published dataset")
        return folder, location
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import parse_hf_uri

    rest = location[len("hf://") :]
    uri = parse_hf_uri("hf://" + (rest if rest.startswith("datasets/") else f"datasets/{rest}"))
    local = scratch / "published"
    commit_dir = snapshot_download(
        uri.id, repo_type="dataset", revision=uri.revision, local_dir=local,
        allow_patterns=[RECIPE_FILE, STATS_FILE, shard_glob("scored"), shard_glob("filtered"), shard_glob("traces")],
    )
    folder = RunFolder(Path(commit_dir))
    if not folder.recipe_file.exists():
        raise CannotVerify(f"{location} has no {RECIPE_FILE}: it was not published by curate")
    return folder, f"hf://datasets/{uri.id}" + (f"@{uri.revision}" if uri.revision else "")


# --------------------------------------------------------------------------- recompute
def scoring_recipe(recipe: Recipe, folder: RunFolder) -> Recipe:
    """The recipe the stages after generation read; an imported run's K and reference come from its traces."""
    if recipe.source.traces is None:
        return recipe
    from curation.pipeline import scoring_recipe as imported_scoring_recipe

    samples, reference = 0, False
    for path in folder.split_files("traces"):
        table = pq.read_table(path, columns=["sample_index"])
        index = table.column("sample_index").to_numpy()
        samples, reference = max(samples, int(index.max(initial=0))), reference or bool((index == 0).any())
    return imported_scoring_recipe(recipe, samples, reference)


def trace_key(question_id: str, sample_index: int) -> str:
    """The scratch journal's key of a published trace (the run's fingerprints are not published, nor needed)."""
    return f"{question_id}\x1f{sample_index}"


def journal_from_traces(folder: RunFolder, journal_path: Path, recipe: Recipe, question_ids: Sequence[str]) -> list[list[str | None]]:
    """Copy the published traces into a scratch journal, batch by batch; the grid planned as the run planned it.

    Token data go from the parquet buffers to the journal's blobs as numpy slices (no Python float per
    token), so memory is one batch. A planned trace that is not published (it failed for good) stays
    missing, as it was in the run's journal.
    """
    first = 0 if recipe.generator.reference else 1
    imported = recipe.source.traces is not None  # planned = what the file held, as the import recorded it
    published: set[str] = set()
    with Journal(journal_path) as journal:
        for path in folder.split_files("traces"):
            for batch in pq.ParquetFile(path, pre_buffer=False).iter_batches(batch_size=TRACE_BATCH_ROWS, columns=TRACE_COLUMNS):
                rows = list(packed_traces(batch))
                journal.commit_packed(rows)
                if imported:
                    published.update(row[0] for row in rows)
    grid = []
    for qid in question_ids:
        row = [None] * first + [trace_key(qid, s) for s in range(first, recipe.generator.samples + 1)]
        grid.append([key if key is None or not imported or key in published else None for key in row])
    return grid


TRACE_COLUMNS = ["id", "sample_index", "text", "thinking", "token_logprobs", "top_logprobs", "finish_reason", "seed", "logprob_kind", "model", "answer_start", "alignment", "tokens"]
TRACE_BATCH_ROWS = 256  # traces per journal transaction: ~256k tokens of 1,000-token traces


def packed_traces(batch: pa.RecordBatch) -> Iterator[tuple[str, str, int, str, bytes, bytes | None]]:
    """The journal rows (``Journal.commit_packed``) of a batch of the published traces config."""
    import msgspec

    from curation.journal import pack_token_arrays

    columns = {name: batch.column(name) for name in TRACE_COLUMNS}
    logprobs = columns["token_logprobs"]
    lp_offsets, lp_values = logprobs.offsets.to_numpy(), logprobs.values.to_numpy(zero_copy_only=False).astype(np.float64)
    top = columns["top_logprobs"]
    trace_rows, token_rows = top.offsets.to_numpy(), top.values.offsets.to_numpy()
    top_values = top.values.values.to_numpy(zero_copy_only=False).astype(np.float64)
    scalars = {name: columns[name].to_pylist() for name in TRACE_COLUMNS if name not in ("token_logprobs", "top_logprobs")}
    encode = msgspec.json.encode
    for i in range(batch.num_rows):
        qid, index = scalars["id"][i], scalars["sample_index"][i]
        meta = {"text": scalars["text"][i], "finish_reason": scalars["finish_reason"][i], "logprob_kind": scalars["logprob_kind"][i],
                "seed": scalars["seed"][i], "model": scalars["model"][i], "usage": {}}
        alignment = scalars["alignment"][i] or "ok"
        if scalars["thinking"][i] is not None or scalars["answer_start"][i] is not None or alignment != "ok":
            meta.update(reasoning=scalars["thinking"][i], answer_start=scalars["answer_start"][i], alignment=alignment)
        a, b = trace_rows[i], trace_rows[i + 1]
        blob = pack_token_arrays(lp_values[lp_offsets[i] : lp_offsets[i + 1]], np.diff(token_rows[a : b + 1]), top_values[token_rows[a] : token_rows[b]])
        tokens = scalars["tokens"][i]
        yield trace_key(qid, index), qid, index, encode(meta).decode(), blob, encode(tokens) if tokens else None


def recompute(folder: RunFolder, work: Path, *, chunk_questions: int | None = None) -> RunFolder:
    """The run folder that the published traces and recipe.yaml give, written under ``work`` (pipeline.finish, as curate score)."""
    from curation import pipeline
    from curation.recipe.dump import resolved_recipe_yaml

    recipe = folder.recipe()
    reason = cannot_verify(recipe, folder)
    if reason is not None:
        raise CannotVerify(reason)
    questions = pipeline.questions_from_scored(folder.path, recipe)
    recipe = scoring_recipe(recipe, folder)
    out = RunFolder(work / "recomputed")
    out.path.mkdir(parents=True, exist_ok=True)
    grid = journal_from_traces(folder, out.journal, recipe, [q.id for q in questions])
    inputs = pipeline.inputs_from_journal(
        recipe, questions, grid, out.path, provenance=dict(folder.stats().get("provenance") or {}), recipe_yaml=resolved_recipe_yaml(recipe),
        generate=False, chunk_questions=chunk_questions, show_progress=False,
    )
    pipeline.finish(inputs, out.path, generate=False, show_progress=False)
    return out


# --------------------------------------------------------------------------- compare
def _batches(files: Sequence[Path], columns: Sequence[str]) -> Iterator[pa.RecordBatch]:
    for path in files:
        yield from pq.ParquetFile(path, pre_buffer=False).iter_batches(batch_size=BATCH_ROWS, columns=list(columns))


def aligned_batches(left: Iterator[pa.RecordBatch], right: Iterator[pa.RecordBatch]) -> Iterator[tuple[pa.RecordBatch, pa.RecordBatch]]:
    """Pairs of equally long slices of two batch streams, in row order, until either ends."""
    a = b = None
    while True:
        if a is None or not a.num_rows:
            a = next(left, None)
        if b is None or not b.num_rows:
            b = next(right, None)
        if a is None or b is None:
            return
        n = min(a.num_rows, b.num_rows)
        if n:
            yield a.slice(0, n), b.slice(0, n)
        a, b = a.slice(n), b.slice(n)


def compare_split(split: str, published: RunFolder, recomputed: RunFolder, result: Verification) -> None:
    """Row by row, column by column: exact, except float columns within the tolerance."""
    pub_files, rec_files = published.split_files(split), recomputed.split_files(split)
    pub_rows = sum(pq.ParquetFile(p).metadata.num_rows for p in pub_files)
    rec_rows = sum(pq.ParquetFile(p).metadata.num_rows for p in rec_files)
    if pub_rows != rec_rows:
        result.problems.append(f"{split}: {pub_rows} rows published, the recipe gives {rec_rows}")
    pub_names = pq.ParquetFile(pub_files[0]).schema_arrow.names if pub_files else []
    rec_schema = pq.ParquetFile(rec_files[0]).schema_arrow if rec_files else pa.schema([])
    for name in sorted(set(pub_names) ^ set(rec_schema.names)):
        where = "published only" if name in pub_names else "missing from the published split"
        result.problems.append(f"{split}: column {name}: {where}")
    columns = [name for name in pub_names if name in rec_schema.names]
    floats = {name for name in columns if pa.types.is_floating(rec_schema.field(name).type)}
    offset = 0
    for pub, rec in aligned_batches(_batches(pub_files, columns), _batches(rec_files, columns)):
        ids = pub.column("id").to_pylist() if "id" in columns else [None] * pub.num_rows
        for name in columns:
            for i, left, right in _differing(pub.column(name), rec.column(name), name in floats):
                result.add(Difference(split, offset + i, ids[i], name, left, right))
        offset += pub.num_rows
    result.rows[split] = min(pub_rows, rec_rows)


def _differing(published: pa.Array, recomputed: pa.Array, is_float: bool) -> Iterator[tuple[int, object, object]]:
    if is_float:
        left = published.to_numpy(zero_copy_only=False).astype(np.float64)
        right = recomputed.to_numpy(zero_copy_only=False).astype(np.float64)
        rows = np.flatnonzero(~np.isclose(left, right, rtol=SCORE_RTOL, atol=SCORE_ATOL, equal_nan=True))
        for i in rows:
            yield int(i), float(left[i]), float(right[i])
        return
    if published.equals(recomputed):
        return
    for i, (left, right) in enumerate(zip(published.to_pylist(), recomputed.to_pylist())):
        if left != right:
            yield i, left, right


def verify(location: str, *, chunk_questions: int | None = None) -> Verification:
    """Recompute LOCATION's scored and filtered splits and compare them with the published ones."""
    with tempfile.TemporaryDirectory(prefix="curate-verify-") as scratch:
        folder, name = published_folder(location, Path(scratch))
        recomputed = recompute(folder, Path(scratch), chunk_questions=chunk_questions)
        result = Verification(name)
        for split in ("scored", "filtered"):
            compare_split(split, folder, recomputed, result)
        return result
