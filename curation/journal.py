"""Journal: every finished trace, committed to sqlite as soon as it exists.

The journal is both the cache and the audit trail (as in simonw/llm's log). Traces are keyed by
a fingerprint of everything that determines them, so a rerun asks only for what is missing and
a changed recipe can never mix old traces with new ones. WAL mode plus one transaction per
group of traces means a ``kill -9`` loses only the requests in flight.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Iterable, Iterator

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
    created_at   REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS traces_prompt ON traces (prompt_id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


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

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ writes
    def commit(self, traces: Iterable[Trace]) -> None:
        """Store finished traces in one transaction (a group is all-or-nothing)."""
        now = time.time()
        rows = [(t.fingerprint, t.prompt_id, t.sample_index, json.dumps(t.to_payload()), now) for t in traces]
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany(
                "INSERT INTO traces (fingerprint, prompt_id, sample_index, status, payload, created_at) "
                "VALUES (?, ?, ?, 'ok', ?, ?) "
                "ON CONFLICT (fingerprint) DO UPDATE SET status='ok', error=NULL, payload=excluded.payload, "
                "attempts=traces.attempts + 1, created_at=excluded.created_at",
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

    def load(self, fingerprints: Iterable[str]) -> dict[str, Trace]:
        wanted = list(fingerprints)
        traces: dict[str, Trace] = {}
        for start in range(0, len(wanted), 900):
            chunk = wanted[start : start + 900]
            marks = ",".join("?" * len(chunk))
            query = f"SELECT fingerprint, prompt_id, sample_index, payload FROM traces WHERE status='ok' AND fingerprint IN ({marks})"
            for fp, prompt_id, sample_index, payload in self.db.execute(query, chunk):
                traces[fp] = Trace.from_payload(fp, prompt_id, sample_index, json.loads(payload))
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
        for fp, prompt_id, sample_index, payload in self.db.execute(
            "SELECT fingerprint, prompt_id, sample_index, payload FROM traces WHERE status='ok'"
        ):
            yield Trace.from_payload(fp, prompt_id, sample_index, json.loads(payload))
