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
"""

from __future__ import annotations

import json
import sqlite3
import struct
import sys
import time
from array import array
from itertools import chain, islice
from pathlib import Path
from typing import Iterable, Iterator

import msgspec

from curation.generate import Trace

SCHEMA = """
CREATE TABLE IF NOT EXISTS traces (
    fingerprint  TEXT PRIMARY KEY,
    prompt_id    TEXT NOT NULL,
    sample_index INTEGER NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('ok', 'failed')),
    error        TEXT,
    attempts     INTEGER NOT NULL DEFAULT 1,
    payload      TEXT,
    created_at   REAL NOT NULL,
    arrays       BLOB
);
CREATE INDEX IF NOT EXISTS traces_prompt ON traces (prompt_id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

# version, logprobs, top-k rows, top-k values, token ids
_HEADER = struct.Struct("<BIIII")
_ARRAYS_VERSION = 1
_SWAP = sys.byteorder != "little"  # the blob is little-endian everywhere


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
    return _encode(meta).decode()


class Journal:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # check_same_thread=False: the async runner commits from the event loop thread while the
        # local backend computes in a worker thread; all writes still go through this object.
        self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL is durable against process kills
        self.db.executescript(SCHEMA)
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(traces)")}
        if "arrays" not in columns:  # a journal from before binary arrays
            self.db.execute("ALTER TABLE traces ADD COLUMN arrays BLOB")

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
        rows = [(t.fingerprint, t.prompt_id, t.sample_index, _meta_json(t), pack_arrays(t), now) for t in traces]
        if not rows:
            return
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany(
                "INSERT INTO traces (fingerprint, prompt_id, sample_index, status, payload, arrays, created_at) "
                "VALUES (?, ?, ?, 'ok', ?, ?, ?) "
                "ON CONFLICT (fingerprint) DO UPDATE SET status='ok', error=NULL, payload=excluded.payload, "
                "arrays=excluded.arrays, attempts=traces.attempts + 1, created_at=excluded.created_at",
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
        for start in range(0, len(wanted), 900):  # stay under sqlite's bound-parameter limit
            chunk = wanted[start : start + 900]
            marks = ",".join("?" * len(chunk))
            found.update(r[0] for r in self.db.execute(f"SELECT fingerprint FROM traces WHERE status='ok' AND fingerprint IN ({marks})", chunk))
        return found

    @staticmethod
    def _trace(fp: str, prompt_id: str, sample_index: int, payload: str, blob: bytes | None) -> Trace:
        meta = json.loads(payload)
        if blob is None:  # written before the arrays column
            return Trace.from_payload(fp, prompt_id, sample_index, meta)
        logprobs, top, ids = unpack_arrays(blob)
        return Trace(fp, prompt_id, sample_index, meta["text"], logprobs, top, meta["finish_reason"], meta["logprob_kind"], meta.get("seed"), ids, meta.get("model"), meta.get("usage") or {})

    def load(self, fingerprints: Iterable[str]) -> dict[str, Trace]:
        wanted = list(fingerprints)
        traces: dict[str, Trace] = {}
        for start in range(0, len(wanted), 900):
            chunk = wanted[start : start + 900]
            marks = ",".join("?" * len(chunk))
            query = f"SELECT fingerprint, prompt_id, sample_index, payload, arrays FROM traces WHERE status='ok' AND fingerprint IN ({marks})"
            for row in self.db.execute(query, chunk):
                traces[row[0]] = self._trace(*row)
        return traces

    def failures(self, fingerprints: Iterable[str] | None = None) -> dict[str, str]:
        rows = self.db.execute("SELECT fingerprint, error FROM traces WHERE status='failed'").fetchall()
        if fingerprints is None:
            return dict(rows)
        wanted = set(fingerprints)
        return {fp: err for fp, err in rows if fp in wanted}

    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM traces WHERE status='ok'").fetchone()[0]

    def iter_all(self) -> Iterator[Trace]:
        for row in self.db.execute("SELECT fingerprint, prompt_id, sample_index, payload, arrays FROM traces WHERE status='ok'"):
            yield self._trace(*row)
