"""Journal: every finished trace, committed to sqlite as soon as it exists.

The journal is both the cache and the audit trail (as in simonw/llm's log). Traces are keyed by
a fingerprint of everything that determines them, so a rerun asks only for what is missing and
a changed recipe can never mix old traces with new ones. WAL mode plus one transaction per
batch of traces means a ``kill -9`` loses only the requests in flight and the last
fraction of a second of finished ones (the runner commits every 0.1 s).

Storage: the token arrays (logprobs, top-k logprobs, token ids) go into one binary column as
float64/int64 arrays, so writing and reading them costs no JSON and loses no precision; the
small fields (text, finish reason, seed, ...) stay JSON in `payload`. Journals written before
the `arrays` column existed keep everything in `payload` and still load.

Reading for scoring is streamed (``Journal.read_chunks``): whole questions at a time (one
question is its reference plus its K samples), as numpy buffers (``TraceChunk``), never a Python
float per token. Within a chunk rows are fetched in rowid order, which is the order they were
written in, so a journal written question by question reads sequentially. ``Journal.load``
(whole ``Trace`` objects) stays for small reads: tests, the critic's judgements, one question.

API, for the stages after generation (stable names)::

    grid = fingerprint_grid(requests, question_ids, samples)   # [n][K+1] fingerprints, None = not planned
    with Journal(path) as journal:
        for chunk in journal.read_chunks(grid, chunk_questions=128):
            chunk.start, chunk.n_questions      # which questions of the run (grid rows start..start+n)
            chunk.slots                         # [q, K+1] row of each (question, sample index), -1 = none
            chunk.planned                       # [q, K+1] bool: the recipe asked for this trace
            chunk.text, chunk.finish_reason     # per trace row (lists of str)
            chunk.token_offsets, chunk.token_logprobs          # flat float64 tokens, row r owns offsets[r]:offsets[r+1]
            chunk.top_trace_offsets, chunk.top_row_offsets, chunk.top_values   # ragged top-k rows
            chunk.token_arrays(rows)            # score.TokenArrays of some rows (-1 = an empty trace)
"""

from __future__ import annotations

import json
import sqlite3
import struct
import sys
import time
from array import array
from dataclasses import dataclass
from itertools import chain, islice
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import msgspec
import numpy as np

from curation.score import TokenArrays
from curation.types import Trace, TraceRequest

# The journal outlives the code that wrote it: every run resumes from it. Its schema therefore changes
# only through named, ordered migrations (as simonw/llm's `migrations.py` does), each applied once
# and recorded in `_migrations`. A journal written before migrations existed (curate 0.1.0) already
# holds what m001 and m002 create; their IF NOT EXISTS / column checks make them no-ops there.
# Add a migration at the end; never edit or reorder one that has shipped.
MIGRATIONS: list = []


def migration(function):
    MIGRATIONS.append(function)
    return function


def _columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}


@migration
def m001_traces_and_meta(db: sqlite3.Connection) -> None:
    # one statement at a time: executescript() would commit the migration's transaction half-way
    db.execute(
        """CREATE TABLE IF NOT EXISTS traces (
            fingerprint  TEXT PRIMARY KEY,
            prompt_id    TEXT NOT NULL,
            sample_index INTEGER NOT NULL,
            status       TEXT NOT NULL CHECK (status IN ('ok', 'failed')),
            error        TEXT,
            attempts     INTEGER NOT NULL DEFAULT 1,
            payload      TEXT,
            created_at   REAL NOT NULL
        )"""
    )
    db.execute("CREATE INDEX IF NOT EXISTS traces_prompt ON traces (prompt_id)")
    db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")


@migration
def m002_binary_arrays(db: sqlite3.Connection) -> None:
    # token arrays as one little-endian blob instead of JSON lists in `payload`
    if "arrays" not in _columns(db, "traces"):
        db.execute("ALTER TABLE traces ADD COLUMN arrays BLOB")


@migration
def m003_reasoning_tokens(db: sqlite3.Connection) -> None:
    # reasoning teachers: the output tokens' strings (a JSON list, 1:1 with the logprobs) in their
    # own column, read only where token boundaries are shown or published; the thinking, the
    # answer start and the alignment are small and go into `payload` (absent there = a trace
    # written before: no thinking, every token an answer token)
    if "tokens" not in _columns(db, "traces"):
        db.execute("ALTER TABLE traces ADD COLUMN tokens BLOB")


@migration
def m004_scorer_tokens(db: sqlite3.Connection) -> None:
    # teacher-forced token logprobs of a trace under a scorer model (curation.scorer), beside the trace and
    # keyed by (trace, scorer identity): a changed scorer re-scores without regenerating, and a scorer's
    # work is never paid twice. `arrays` is packed as the traces' are.
    db.execute(
        """CREATE TABLE IF NOT EXISTS scorer_tokens (
            fingerprint  TEXT NOT NULL,
            scorer       TEXT NOT NULL,
            prompt_id    TEXT NOT NULL,
            sample_index INTEGER NOT NULL,
            status       TEXT NOT NULL CHECK (status IN ('ok', 'failed')),
            error        TEXT,
            attempts     INTEGER NOT NULL DEFAULT 1,
            payload      TEXT,
            arrays       BLOB,
            created_at   REAL NOT NULL,
            PRIMARY KEY (fingerprint, scorer)
        )"""
    )


def migrate(db: sqlite3.Connection) -> list[str]:
    """Apply the migrations this journal has not had, in order; returns the names applied now."""
    db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
    done = {row[0] for row in db.execute("SELECT name FROM _migrations")}
    applied = []
    for function in MIGRATIONS:
        if function.__name__ in done:
            continue
        with db:
            db.execute("BEGIN")
            function(db)
            db.execute("INSERT INTO _migrations (name, applied_at) VALUES (?, ?)", (function.__name__, time.time()))
        applied.append(function.__name__)
    return applied


def applied_migrations(db: sqlite3.Connection) -> list[str]:
    return [row[0] for row in db.execute("SELECT name FROM _migrations ORDER BY rowid")]


# version, logprobs, top-k rows, top-k values, token ids
_HEADER = struct.Struct("<BIIII")
_ARRAYS_VERSION = 1
_SWAP = sys.byteorder != "little"  # the blob is little-endian everywhere
_LITTLE_F8 = np.dtype("<f8")
_LITTLE_U2 = np.dtype("<u2")
_LITTLE_I8 = np.dtype("<i8")


def _little(values: array) -> bytes:
    if _SWAP:  # pragma: no cover - big-endian machines
        values = array(values.typecode, values)
        values.byteswap()
    return values.tobytes()


def pack_arrays(trace: Trace) -> bytes:
    logprobs = array("d", trace.token_logprobs)
    rows = trace.top_logprobs
    lengths = array("H", map(len, rows))
    top = array("d", chain.from_iterable(rows))
    ids = array("q", trace.token_ids)
    header = _HEADER.pack(_ARRAYS_VERSION, len(logprobs), len(lengths), len(top), len(ids))
    return b"".join((header, _little(logprobs), _little(lengths), _little(top), _little(ids)))


def pack_token_arrays(logprobs: np.ndarray, top_lengths: np.ndarray, top_values: np.ndarray, token_ids: Sequence[int] = ()) -> bytes:
    """The same blob as ``pack_arrays`` from numpy buffers (imported traces: no Python float per token)."""
    ids = np.asarray(token_ids, _LITTLE_I8)
    header = _HEADER.pack(_ARRAYS_VERSION, len(logprobs), len(top_lengths), len(top_values), len(ids))
    parts = (np.asarray(logprobs, _LITTLE_F8).tobytes(), np.asarray(top_lengths, _LITTLE_U2).tobytes(), np.asarray(top_values, _LITTLE_F8).tobytes(), ids.tobytes())
    return header + b"".join(parts)


def _read(typecode: str, blob: memoryview, offset: int, count: int) -> tuple[array, int]:
    values = array(typecode)
    end = offset + count * values.itemsize
    values.frombytes(blob[offset:end])
    if _SWAP:  # pragma: no cover
        values.byteswap()
    return values, end


def unpack_arrays(blob: bytes) -> tuple[list[float], list[list[float]], list[int]]:
    view = memoryview(blob)
    version, n_logprobs, n_rows, n_top, n_ids = _HEADER.unpack_from(view)
    if version != _ARRAYS_VERSION:
        raise ValueError(f"journal arrays version {version} is newer than this curate understands")
    offset = _HEADER.size
    logprobs, offset = _read("d", view, offset, n_logprobs)
    lengths, offset = _read("H", view, offset, n_rows)
    top, offset = _read("d", view, offset, n_top)
    ids, offset = _read("q", view, offset, n_ids)
    values = iter(top.tolist())
    rows = [list(islice(values, length)) for length in lengths]
    return logprobs.tolist(), rows, ids.tolist()


_encode = msgspec.json.Encoder().encode


def _meta_json(trace: Trace) -> str:
    meta = {"text": trace.text, "finish_reason": trace.finish_reason, "logprob_kind": trace.logprob_kind, "seed": trace.seed, "model": trace.model, "usage": trace.usage}
    if trace.reasoning is not None or trace.answer_start is not None or trace.alignment != "ok":
        meta.update(reasoning=trace.reasoning, answer_start=trace.answer_start, alignment=trace.alignment)
    return _encode(meta).decode()


def _tokens_blob(trace: Trace) -> bytes | None:
    return _encode(trace.tokens) if trace.tokens else None


_decode_tokens = msgspec.json.Decoder(list[str]).decode


def span_fields(meta: dict) -> tuple[str | None, int | None, str]:
    """(reasoning, answer_start, alignment) of a stored trace; a trace stored before m003 has no thinking."""
    return meta.get("reasoning"), meta.get("answer_start"), meta.get("alignment", "ok")


def answer_offset(reasoning: str | None, answer_start: int | None, alignment: str) -> int:
    """The chunk's answer start: a trace without thinking is all answer (0) even where the start was not recorded; -1 = not known."""
    if answer_start is not None:
        return answer_start
    return 0 if reasoning is None and alignment == "ok" else -1


# sqlite refuses more than 999 bound parameters in one statement
_BOUND_LIMIT = 900


def _in_batches(values: Sequence) -> Iterator[tuple[Sequence, str]]:
    """``values`` in parts small enough for one ``IN (...)``, each with its placeholders."""
    for begin in range(0, len(values), _BOUND_LIMIT):
        part = values[begin : begin + _BOUND_LIMIT]
        yield part, ",".join("?" * len(part))


class Journal:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # check_same_thread=False: the async runner commits from the event loop thread while the
        # local backend computes in a worker thread; all writes still go through this object.
        self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL is durable against process kills
        migrate(self.db)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ writes
    def commit(self, traces: Iterable[Trace]) -> None:
        """Store finished traces in one transaction (a batch is all-or-nothing)."""
        now = time.time()
        rows = [(t.fingerprint, t.prompt_id, t.sample_index, _meta_json(t), pack_arrays(t), _tokens_blob(t), now) for t in traces]
        if not rows:
            return
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany(
                "INSERT INTO traces (fingerprint, prompt_id, sample_index, status, payload, arrays, tokens, created_at) "
                "VALUES (?, ?, ?, 'ok', ?, ?, ?, ?) "
                "ON CONFLICT (fingerprint) DO UPDATE SET status='ok', error=NULL, payload=excluded.payload, "
                "arrays=excluded.arrays, tokens=excluded.tokens, attempts=traces.attempts + 1, created_at=excluded.created_at",
                rows,
            )

    def commit_packed(self, rows: Iterable[tuple[str, str, int, str, bytes, bytes | None]]) -> None:
        """Store (fingerprint, prompt_id, sample_index, payload JSON, arrays blob, token strings JSON or None) rows in one transaction.

        For traces that were not generated here (``curation.trace_import``): their payload and blob are
        built from numpy buffers, in the same format ``commit`` writes, so every reader reads them unchanged.
        """
        now = time.time()
        rows = [(fp, pid, idx, payload, blob, tokens, now) for fp, pid, idx, payload, blob, tokens in rows]
        if not rows:
            return
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany(
                "INSERT INTO traces (fingerprint, prompt_id, sample_index, status, payload, arrays, tokens, created_at) "
                "VALUES (?, ?, ?, 'ok', ?, ?, ?, ?) ON CONFLICT (fingerprint) DO NOTHING",
                rows,
            )

    def record_failure(self, fingerprints: Iterable[tuple[str, str, int]], error: str) -> None:
        """Remember that (fingerprint, prompt_id, sample_index) failed, and why; a rerun retries them."""
        now = time.time()
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany(
                "INSERT INTO traces (fingerprint, prompt_id, sample_index, status, error, created_at) "
                "VALUES (?, ?, ?, 'failed', ?, ?) "
                "ON CONFLICT (fingerprint) DO UPDATE SET error=excluded.error, attempts=traces.attempts + 1 "
                "WHERE traces.status = 'failed'",
                [(fp, pid, idx, error, now) for fp, pid, idx in fingerprints],
            )

    def set_meta(self, key: str, value) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value)))

    # ------------------------------------------------------------------ reads
    def get_meta(self, key: str, default=None):
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def done(self, fingerprints: Iterable[str]) -> set[str]:
        """The subset of fingerprints that already have a successful trace."""
        wanted = list(fingerprints)
        found: set[str] = set()
        for chunk, marks in _in_batches(wanted):
            found.update(r[0] for r in self.db.execute(f"SELECT fingerprint FROM traces WHERE status='ok' AND fingerprint IN ({marks})", chunk))
        return found

    @staticmethod
    def _trace(fp: str, prompt_id: str, sample_index: int, payload: str, blob: bytes | None, tokens: bytes | None = None) -> Trace:
        meta = json.loads(payload)
        reasoning, start, alignment = span_fields(meta)
        strings = _decode_tokens(tokens) if tokens else []
        if blob is None:  # written before the arrays column
            meta.pop("reasoning", None), meta.pop("answer_start", None), meta.pop("alignment", None)
            return Trace.from_payload(fp, prompt_id, sample_index, {**meta, "reasoning": reasoning, "answer_start": start, "alignment": alignment, "tokens": strings})
        logprobs, top, ids = unpack_arrays(blob)
        return Trace(
            fp, prompt_id, sample_index, meta["text"], logprobs, top, meta["finish_reason"], meta["logprob_kind"], meta.get("seed"), ids, meta.get("model"),
            meta.get("usage") or {}, reasoning=reasoning, tokens=strings, answer_start=start, alignment=alignment,
        )

    def load(self, fingerprints: Iterable[str]) -> dict[str, Trace]:
        wanted = list(fingerprints)
        traces: dict[str, Trace] = {}
        for chunk, marks in _in_batches(wanted):
            query = f"SELECT fingerprint, prompt_id, sample_index, payload, arrays, tokens FROM traces WHERE status='ok' AND fingerprint IN ({marks})"
            for row in self.db.execute(query, chunk):
                traces[row[0]] = self._trace(*row)
        return traces

    def failures(self, fingerprints: Iterable[str] | None = None) -> dict[str, str]:
        rows = self.db.execute("SELECT fingerprint, error FROM traces WHERE status='failed'").fetchall()
        if fingerprints is None:
            return dict(rows)
        wanted = set(fingerprints)
        return {fp: err for fp, err in rows if fp in wanted}

    def read_chunks(self, grid: Sequence[Sequence[str | None]], chunk_questions: int = 128, scorer: str | None = None) -> Iterator[TraceChunk]:
        """The run's traces, ``chunk_questions`` whole questions at a time, in the grid's (question) order.

        ``grid`` is ``fingerprint_grid(...)``: row i lists question i's fingerprints by sample
        index. Memory is one chunk's buffers, whatever the size of the journal. ``scorer``: the
        token data are that scorer's teacher-forced logprobs (``scorer_tokens``) instead of the
        generator's; a trace it has not scored has none (its token metrics are undefined).
        """
        if chunk_questions < 1:
            raise ValueError("chunk_questions must be at least 1")
        for start in range(0, len(grid), chunk_questions):
            yield _read_chunk(self.db, grid[start : start + chunk_questions], start, scorer)

    def scorer_view(self, scorer: str) -> "ScorerJournal":
        """The journal as the generation runner sees it, for one scorer's token logprobs."""
        return ScorerJournal(self, scorer)

    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM traces WHERE status='ok'").fetchone()[0]

    def iter_all(self) -> Iterator[Trace]:
        for row in self.db.execute("SELECT fingerprint, prompt_id, sample_index, payload, arrays, tokens FROM traces WHERE status='ok'"):
            yield self._trace(*row)


class ScorerJournal:
    """``done`` / ``commit`` / ``record_failure`` over ``scorer_tokens`` for one scorer: what the runner needs.

    The runner then drives a scorer exactly as it drives a generator (limits, retries, group commit,
    Ctrl-C), and a trace's ``fingerprint`` is the generated trace's, with the scorer as the second key.
    """

    def __init__(self, journal: Journal, scorer: str):
        self.journal = journal
        self.db = journal.db
        self.scorer = scorer

    def done(self, fingerprints: Iterable[str]) -> set[str]:
        wanted = list(fingerprints)
        found: set[str] = set()
        for chunk, marks in _in_batches(wanted):
            query = f"SELECT fingerprint FROM scorer_tokens WHERE scorer = ? AND status='ok' AND fingerprint IN ({marks})"
            found.update(r[0] for r in self.db.execute(query, [self.scorer, *chunk]))
        return found

    def commit(self, traces: Iterable[Trace]) -> None:
        now = time.time()
        rows = [
            (t.fingerprint, self.scorer, t.prompt_id, t.sample_index, _encode({"model": t.model, "usage": t.usage, "answer_start": t.answer_start, "alignment": t.alignment}).decode(), pack_arrays(t), now)
            for t in traces
        ]
        if not rows:
            return
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany(
                "INSERT INTO scorer_tokens (fingerprint, scorer, prompt_id, sample_index, status, payload, arrays, created_at) "
                "VALUES (?, ?, ?, ?, 'ok', ?, ?, ?) "
                "ON CONFLICT (fingerprint, scorer) DO UPDATE SET status='ok', error=NULL, payload=excluded.payload, "
                "arrays=excluded.arrays, attempts=scorer_tokens.attempts + 1, created_at=excluded.created_at",
                rows,
            )

    def record_failure(self, fingerprints: Iterable[tuple[str, str, int]], error: str) -> None:
        now = time.time()
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany(
                "INSERT INTO scorer_tokens (fingerprint, scorer, prompt_id, sample_index, status, error, created_at) "
                "VALUES (?, ?, ?, ?, 'failed', ?, ?) "
                "ON CONFLICT (fingerprint, scorer) DO UPDATE SET error=excluded.error, attempts=scorer_tokens.attempts + 1 "
                "WHERE scorer_tokens.status = 'failed'",
                [(fp, self.scorer, pid, idx, error, now) for fp, pid, idx in fingerprints],
            )

    def failures(self) -> dict[str, str]:
        rows = self.db.execute("SELECT fingerprint, error FROM scorer_tokens WHERE scorer = ? AND status='failed'", (self.scorer,))
        return dict(rows.fetchall())

    def load(self, fingerprints: Iterable[str]) -> dict[str, Trace]:
        """The scored token data as Trace objects (text empty): tests and small reads."""
        wanted = list(fingerprints)
        out: dict[str, Trace] = {}
        for chunk, marks in _in_batches(wanted):
            query = f"SELECT fingerprint, prompt_id, sample_index, payload, arrays FROM scorer_tokens WHERE scorer = ? AND status='ok' AND fingerprint IN ({marks})"
            for fp, pid, idx, payload, blob in self.db.execute(query, [self.scorer, *chunk]):
                meta = json.loads(payload)
                logprobs, top, ids = unpack_arrays(blob)
                out[fp] = Trace(fp, pid, idx, "", logprobs, top, "stop", "teacher_forced", None, ids, meta.get("model"), meta.get("usage") or {})
        return out


# --------------------------------------------------------------------------- streamed reads
def fingerprint_grid(requests: Iterable[TraceRequest], question_ids: Sequence[str], samples: int) -> list[list[str | None]]:
    """[n][K+1]: the fingerprint of question i's trace with sample index j (0 = reference), None where not planned."""
    row_of = {qid: i for i, qid in enumerate(question_ids)}
    grid: list[list[str | None]] = [[None] * (samples + 1) for _ in question_ids]
    for request in requests:
        grid[row_of[request.prompt_id]][request.sample_index] = request.fingerprint
    return grid




@dataclass
class TraceChunk:
    """The traces of whole questions ``start .. start + n_questions`` of a run, as flat numpy buffers.

    Trace rows are ordered by question, then sample index (the reference first). Token data of
    row r: ``token_logprobs[token_offsets[r]:token_offsets[r + 1]]``; its top-k rows are
    ``top_trace_offsets[r]:top_trace_offsets[r + 1]``, and top-k row t holds
    ``top_values[top_row_offsets[t]:top_row_offsets[t + 1]]`` (best first). Token ids stay in the
    journal: nothing after generation needs them.
    """

    start: int
    slots: np.ndarray  # [q, K+1] int64: trace row, -1 where there is none (not planned, failed or missing)
    planned: np.ndarray  # [q, K+1] bool
    question: np.ndarray  # [T] int64: the row's question, 0-based within the chunk
    sample_index: np.ndarray  # [T] int64
    fingerprint: list[str]
    text: list[str]
    finish_reason: list[str]
    logprob_kind: list[str]
    seed: list[int | None]
    model: list[str | None]
    token_offsets: np.ndarray  # [T+1] int64
    token_logprobs: np.ndarray  # [N] float64
    top_trace_offsets: np.ndarray  # [T+1] int64, into top-k rows
    top_row_offsets: np.ndarray  # [R+1] int64, into top_values
    top_values: np.ndarray  # [M] float64
    # reasoning spans (curation.reasoning); left out, every trace is an answer without thinking
    reasoning: list[str | None] | None = None  # [T] the thinking (None: the trace did not think)
    answer_start: np.ndarray | None = None  # [T] int64: first answer token, -1 = not known (unaligned)
    alignment: list[str] | None = None  # [T] "ok", "unaligned", "unfinished"
    # [T] each trace's token strings as stored (a JSON list; None = none stored): decoded only where
    # token boundaries are written out (the traces config), so scoring never holds the strings
    token_blobs: list[bytes | None] | None = None
    # [T] each trace's token ids (empty where none are stored): the ids its logprobs are of, published
    # in the traces config so that a scorer reading the traces back forces exactly these tokens
    token_ids: list[np.ndarray] | None = None

    def __post_init__(self) -> None:
        if self.reasoning is None:
            self.reasoning = [None] * len(self.text)
        if self.answer_start is None:
            self.answer_start = np.zeros(len(self.text), dtype=np.int64)
        if self.alignment is None:
            self.alignment = ["ok"] * len(self.text)
        if self.token_blobs is None:
            self.token_blobs = [None] * len(self.text)
        if self.token_ids is None:
            self.token_ids = [np.zeros(0, dtype=np.int64)] * len(self.text)

    def token_strings(self) -> list[list[str]]:
        """Every row's token strings ([] where none were stored)."""
        return [_decode_tokens(blob) if blob else [] for blob in self.token_blobs]

    @property
    def n_questions(self) -> int:
        return self.slots.shape[0]

    @property
    def n_traces(self) -> int:
        return len(self.text)

    @property
    def n_tokens(self) -> np.ndarray:
        return np.diff(self.token_offsets)

    def span_bounds(self, rows: np.ndarray, span: str) -> tuple[np.ndarray, np.ndarray]:
        """[lo, hi) token bounds, per row, of the span a metric reads: "whole", "answer" or "thinking".

        An unaligned trace has no known answer or thinking span (empty: its metrics are NaN); an
        unfinished one has no answer tokens. A trace without thinking is all answer.
        """
        rows = np.asarray(rows, dtype=np.int64)
        safe = np.where(rows >= 0, rows, 0)
        n = np.where(rows >= 0, self.token_offsets[safe + 1] - self.token_offsets[safe], 0)
        if span == "whole":
            return np.zeros_like(n), n
        start = self.answer_start[safe] if len(self.answer_start) else np.zeros_like(n)
        known = start >= 0
        start = np.minimum(np.where(known, start, n), n)
        if span == "answer":
            unfinished = np.array([self.alignment[r] == "unfinished" if r >= 0 else False for r in rows], dtype=bool) if "unfinished" in self.alignment else False
            lo = np.where(unfinished, n, start)
            return lo, n
        if span == "thinking":
            return np.zeros_like(n), np.where(known, start, 0)
        raise ValueError(f"unknown token span {span!r} (answer, thinking or whole)")

    def token_arrays(self, rows: np.ndarray, span: str = "whole", top: bool = True) -> TokenArrays:
        """The token data of the given rows as one TokenArrays, in that order; row -1 is an empty trace.

        ``span``: which tokens of each trace ("whole", "answer", "thinking"; see ``span_bounds``).
        ``top``: False leaves the top-k rows out (the samples' likelihoods need only the chosen tokens).
        """
        rows = np.asarray(rows, dtype=np.int64)
        present = rows >= 0
        if not present.any():  # also a chunk with no traces at all (every request failed)
            return TokenArrays(np.zeros(len(rows) + 1, dtype=np.int64), np.zeros(0))
        plain = span == "whole" or (span == "answer" and not self.answer_start.any() and "unfinished" not in self.alignment)
        if plain and len(rows) == self.n_traces and (rows == np.arange(len(rows))).all():  # every row in order: views, no copies
            if self.top_trace_offsets[-1] == 0 or not top:
                return TokenArrays(self.token_offsets, self.token_logprobs)
            return TokenArrays(self.token_offsets, self.token_logprobs, self.top_values, self.top_row_offsets, self.top_trace_offsets)
        safe = np.where(present, rows, 0)
        if plain:
            lo = np.zeros(len(rows), dtype=np.int64)
            lengths = np.where(present, self.token_offsets[safe + 1] - self.token_offsets[safe], 0)
        else:
            lo, hi = self.span_bounds(rows, span)
            lengths = np.where(present, hi - lo, 0)
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        logprobs = self.token_logprobs[_gather(self.token_offsets[safe] + lo, lengths)]
        row_counts = np.where(present, self.top_trace_offsets[safe + 1] - self.top_trace_offsets[safe], 0)
        if not top or not row_counts.any():
            return TokenArrays(offsets, logprobs)
        # a trace has a top-k row for every token, or none at all
        if not plain:
            row_counts = np.where(row_counts > 0, lengths, 0)
        trace_offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(row_counts, out=trace_offsets[1:])
        top_rows = _gather(self.top_trace_offsets[safe] + lo, row_counts)
        widths = self.top_row_offsets[top_rows + 1] - self.top_row_offsets[top_rows]
        row_offsets = np.zeros(len(top_rows) + 1, dtype=np.int64)
        np.cumsum(widths, out=row_offsets[1:])
        values = self.top_values[_gather(self.top_row_offsets[top_rows], widths)]
        return TokenArrays(offsets, logprobs, values, row_offsets, trace_offsets)

    def token_lists(self, rows: np.ndarray):
        """(token_logprobs, top_logprobs) of the given rows as pyarrow list arrays, built from the buffers."""
        import pyarrow as pa

        arrays = self.token_arrays(rows)
        logprobs = pa.LargeListArray.from_arrays(pa.array(arrays.offsets), pa.array(arrays.logprobs))
        if arrays.top_values is None:
            trace_offsets = pa.array(np.zeros(len(rows) + 1, dtype=np.int64))
            top = pa.LargeListArray.from_arrays(trace_offsets, pa.LargeListArray.from_arrays(pa.array(np.zeros(1, dtype=np.int64)), pa.array([], pa.float64())))
        else:
            inner = pa.LargeListArray.from_arrays(pa.array(arrays.top_row_offsets), pa.array(arrays.top_values))
            top = pa.LargeListArray.from_arrays(pa.array(arrays.top_trace_offsets), inner)
        return logprobs, top


def chunks_from_traces(grid: Sequence[Sequence[str | None]], traces: dict[str, Trace], chunk_questions: int = 128) -> Iterator[TraceChunk]:
    """The same chunks from ``Trace`` objects already in memory (tests, small callers), as read_chunks gives."""
    for start in range(0, len(grid), chunk_questions):
        rows = grid[start : start + chunk_questions]
        found = {}
        for i, row in enumerate(rows):
            for j, fp in enumerate(row):
                trace = traces.get(fp) if fp is not None else None
                if trace is not None:
                    meta = {"text": trace.text, "finish_reason": trace.finish_reason, "logprob_kind": trace.logprob_kind, "seed": trace.seed, "model": trace.model}
                    meta.update(reasoning=trace.reasoning, answer_start=trace.answer_start, alignment=trace.alignment, _tokens=_tokens_blob(trace))
                    found[(i, j)] = (fp, meta, _decode_payload({"token_logprobs": trace.token_logprobs, "top_logprobs": trace.top_logprobs, "token_ids": trace.token_ids}))
        yield _assemble(rows, start, found)


def _gather(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Indices of the concatenated segments [starts[i], starts[i] + lengths[i]), with no Python loop."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    ends = np.cumsum(lengths)
    shift = np.repeat(np.asarray(starts, dtype=np.int64) - (ends - lengths), lengths)
    return np.arange(total, dtype=np.int64) + shift


def _decode_blob(blob: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(logprobs float64, top-k row lengths, top-k values float64, token ids int64) of one packed trace: views, no per-token Python."""
    version, n_logprobs, n_rows, n_top, n_ids = _HEADER.unpack_from(blob)
    if version != _ARRAYS_VERSION:
        raise ValueError(f"journal arrays version {version} is newer than this curate understands")
    offset = _HEADER.size
    logprobs = np.frombuffer(blob, _LITTLE_F8, n_logprobs, offset)
    offset += 8 * n_logprobs
    lengths = np.frombuffer(blob, _LITTLE_U2, n_rows, offset)
    offset += 2 * n_rows
    top = np.frombuffer(blob, _LITTLE_F8, n_top, offset)
    offset += 8 * n_top
    return logprobs, lengths, top, np.frombuffer(blob, _LITTLE_I8, n_ids, offset)


def _decode_payload(meta: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The same from a journal written before the arrays column (lists in the JSON payload)."""
    rows = meta.get("top_logprobs") or []
    return (
        np.asarray(meta.get("token_logprobs") or [], dtype=np.float64),
        np.asarray([len(r) for r in rows], dtype=np.int64),
        np.asarray([v for r in rows for v in r], dtype=np.float64),
        np.asarray(meta.get("token_ids") or [], dtype=np.int64),
    )


def _read_chunk(db: sqlite3.Connection, grid: Sequence[Sequence[str | None]], start: int, scorer: str | None = None) -> TraceChunk:
    where = {fp: (i, j) for i, row in enumerate(grid) for j, fp in enumerate(row) if fp is not None}
    wanted = list(where)
    rowids: list[int] = []
    for part, marks in _in_batches(wanted):
        rowids.extend(r[0] for r in db.execute(f"SELECT rowid FROM traces WHERE status='ok' AND fingerprint IN ({marks})", part))
    rowids.sort()  # the table's own order: sequential reads of the (large) blobs
    found: dict[tuple[int, int], tuple] = {}
    for part, marks in _in_batches(rowids):
        for fp, payload, blob, tokens in db.execute(f"SELECT fingerprint, payload, arrays, tokens FROM traces WHERE rowid IN ({marks})", part):
            meta = json.loads(payload)
            meta["_tokens"] = tokens
            found[where[fp]] = (fp, meta, _decode_blob(blob) if blob is not None else _decode_payload(meta))
    if scorer is not None:
        _overlay_scorer(db, found, scorer)
    return _assemble(grid, start, found)


_NO_TOKENS = (np.zeros(0), np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros(0, dtype=np.int64))


def _overlay_scorer(db: sqlite3.Connection, found: dict, scorer: str) -> None:
    """Replace each trace's token data with the scorer's teacher-forced data (none where it has not scored the trace)."""
    key_of = {entry[0]: key for key, entry in found.items()}
    forced: dict[str, tuple[str, bytes]] = {}
    wanted = list(key_of)
    for part, marks in _in_batches(wanted):
        query = f"SELECT fingerprint, payload, arrays FROM scorer_tokens WHERE scorer = ? AND status='ok' AND fingerprint IN ({marks})"
        forced.update((fp, (payload, blob)) for fp, payload, blob in db.execute(query, [scorer, *part]))
    for fp, key in key_of.items():
        _, meta, _ = found[key]
        payload, blob = forced.get(fp, (None, None))
        # the answer span in the scorer's tokens (its tokenizer's, not the generator's); the generator's
        # token strings no longer match these logprobs, so they are not carried over
        scored = json.loads(payload) if payload else {}
        span = {"answer_start": scored.get("answer_start", 0), "alignment": scored.get("alignment", "ok")} if blob is not None else {}
        if meta.get("alignment") == "unfinished":  # thinking that never closed stays so, whoever scored it
            span = {}
        found[key] = (fp, {**meta, **span, "logprob_kind": "teacher_forced", "_tokens": None}, _decode_blob(blob) if blob is not None else _NO_TOKENS)


def _assemble(grid: Sequence[Sequence[str | None]], start: int, found: dict) -> TraceChunk:
    """One TraceChunk from {(question, sample index): (fingerprint, metadata, (logprobs, row lengths, top values, token ids))}."""
    width = len(grid[0]) if grid else 0
    planned = np.array([[fp is not None for fp in row] for row in grid], dtype=bool).reshape(len(grid), width)
    slots = np.full((len(grid), width), -1, dtype=np.int64)
    order = sorted(found)  # question, then sample index
    fingerprints, texts, finish, kinds, seeds, models = [], [], [], [], [], []
    reasonings, answer_starts, alignments, token_blobs = [], [], [], []
    logprob_parts, length_parts, top_parts, id_parts = [], [], [], []
    for row, key in enumerate(order):
        fp, meta, (logprobs, lengths, top, ids) = found[key]
        slots[key] = row
        fingerprints.append(fp)
        texts.append(meta["text"])
        finish.append(meta["finish_reason"])
        kinds.append(meta["logprob_kind"])
        seeds.append(meta.get("seed"))
        models.append(meta.get("model"))
        reasoning, answer_start, alignment = span_fields(meta)
        reasonings.append(reasoning)
        answer_starts.append(answer_offset(reasoning, answer_start, alignment))
        alignments.append(alignment)
        token_blobs.append(meta.get("_tokens"))
        logprob_parts.append(logprobs)
        length_parts.append(lengths)
        top_parts.append(top)
        id_parts.append(ids)
    token_counts = np.fromiter(map(len, logprob_parts), dtype=np.int64, count=len(order))
    row_counts = np.fromiter(map(len, length_parts), dtype=np.int64, count=len(order))
    token_offsets = np.zeros(len(order) + 1, dtype=np.int64)
    np.cumsum(token_counts, out=token_offsets[1:])
    top_trace_offsets = np.zeros(len(order) + 1, dtype=np.int64)
    np.cumsum(row_counts, out=top_trace_offsets[1:])
    widths = np.concatenate(length_parts).astype(np.int64) if length_parts else np.zeros(0, dtype=np.int64)
    top_row_offsets = np.zeros(len(widths) + 1, dtype=np.int64)
    np.cumsum(widths, out=top_row_offsets[1:])
    return TraceChunk(
        start=start,
        slots=slots,
        planned=planned,
        question=np.array([key[0] for key in order], dtype=np.int64),
        sample_index=np.array([key[1] for key in order], dtype=np.int64),
        fingerprint=fingerprints,
        text=texts,
        finish_reason=finish,
        logprob_kind=kinds,
        seed=seeds,
        model=models,
        reasoning=reasonings,
        answer_start=np.array(answer_starts, dtype=np.int64),
        alignment=alignments,
        token_blobs=token_blobs,
        token_ids=id_parts,
        token_offsets=token_offsets,
        token_logprobs=np.concatenate(logprob_parts) if logprob_parts else np.zeros(0),
        top_trace_offsets=top_trace_offsets,
        top_row_offsets=top_row_offsets,
        top_values=np.concatenate(top_parts) if top_parts else np.zeros(0),
    )
