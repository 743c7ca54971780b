"""Shards: one run's questions split over N independent processes, merged once, selected once.

    curate run RECIPE --shard 0/4 -o runs/x      # questions whose id hashes to shard 0, into
    curate run RECIPE --shard 1/4 -o runs/x      #   runs/x/shards/0-of-4/journal.sqlite, ...
    ...                                          # (any order, any machines, each resumes by itself)
    curate merge RECIPE -o runs/x                # every shard journal -> one journal -> score, select, write

A question belongs to shard ``int(blake2b(id)[:8]) % N``: a pure function of the question's id,
the same in every process, machine and Python version (``hash()`` is salted per process), and
independent of the source's order or of which other questions exist. Selection is global (a
budget per class over the whole run), so shards only generate; the merge copies every shard's
traces into the run's own journal and then runs exactly the stages an unsharded run runs after
generation. With the same recipe and seeds the run folder is the one an unsharded run writes:
each trace's seed and fingerprint depend only on its question, never on the shard.

A sharded run folder holds ``shards/manifest.json``: the number of shards, the question count
and a digest of their ids, and a fingerprint of the settings that decide the traces. A shard
started with another N, another source or other generation settings is refused before it
generates anything, and the merge refuses unless every question has all its traces in its own
shard's journal, so a missing shard or a changed N is an error, never a silent partial dataset.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from curation import dataset_card, run_folder
from curation.generate import GenerationStats, RecordedIdentity, make_backend, plan_requests, run_generation
from curation.journal import Journal
from curation.recipe.load import LoadedRecipe
from curation.run_folder import SHARDS_DIR
from curation.source import load_questions
from curation.types import CurateError, Question, StageStats

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
GENERATE_STAGE_KEY = "generate_stage"  # a shard journal's meta: its generate stage, for the merged stats.json
MANIFEST_VERSION = 1
# Generator fields that change how traces are fetched but never what they are: a shard may
# run against other endpoints, with another concurrency or timeout, and still merge.
OPERATIONAL_FIELDS = {"url", "api_key", "concurrency", "timeout", "max_retries", "retry_backoff", "stream", "device"}


class ShardError(CurateError, ValueError):
    """A shard set that cannot be merged or a shard that does not belong to the run (a user error)."""


def shard_of(question_id: str, count: int) -> int:
    """The shard (0..count-1) a question belongs to; stable across processes and machines."""
    digest = hashlib.blake2b(question_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> "Shard":
        """``I/N`` with 0 <= I < N, as Slurm's ``$SLURM_ARRAY_TASK_ID/N`` with ``--array=0-(N-1)``."""
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
        if not match:
            raise ShardError(f"--shard {text!r}: expected I/N, e.g. 0/4 (shards are numbered 0 to N-1)")
        index, count = int(match[1]), int(match[2])
        if count < 1 or not 0 <= index < count:
            raise ShardError(f"--shard {text}: I must be between 0 and N-1 (shards are numbered from 0), and N at least 1")
        return cls(index, count)

    @property
    def name(self) -> str:
        return f"{self.index}-of-{self.count}"

    def folder(self, run_dir: Path) -> Path:
        return Path(run_dir) / SHARDS_DIR / self.name

    def journal_path(self, run_dir: Path) -> Path:
        return self.folder(run_dir) / run_folder.JOURNAL_FILE

    def select(self, questions: Sequence[Question]) -> list[Question]:
        return [q for q in questions if shard_of(q.id, self.count) == self.index]


def generation_fingerprint(loaded: LoadedRecipe) -> str:
    """What decides the traces: source, prompt and generator settings, minus the operational ones."""
    recipe = loaded.recipe
    generator = recipe.generator.model_dump(mode="json", exclude=OPERATIONAL_FIELDS)
    data = {"source": recipe.source.model_dump(mode="json"), "prompt": recipe.prompt.model_dump(mode="json"), "generator": generator}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _questions_digest(questions: Sequence[Question]) -> str:
    digest = hashlib.sha256()
    for question in questions:
        digest.update(question.id.encode("utf-8") + b"\0")
    return digest.hexdigest()[:16]


def manifest_for(loaded: LoadedRecipe, questions: Sequence[Question], count: int) -> dict:
    return {
        "version": MANIFEST_VERSION,
        "shards": count,
        "questions": len(questions),
        "questions_digest": _questions_digest(questions),
        "generation_fingerprint": generation_fingerprint(loaded),
        "recipe": loaded.recipe.name,
    }


def manifest_path(run_dir: Path) -> Path:
    return Path(run_dir) / SHARDS_DIR / MANIFEST_FILE


def read_manifest(run_dir: Path) -> dict | None:
    path = manifest_path(run_dir)
    if not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def _mismatch(found: dict, wanted: dict, run_dir: Path) -> str | None:
    where = manifest_path(run_dir)
    if found.get("shards") != wanted["shards"]:
        return (
            f"{run_dir} is sharded into {found.get('shards')} (see {where}), not {wanted['shards']}: "
            f"run the shards as I/{found.get('shards')}, or use a new run folder to shard it another way"
        )
    if (found.get("questions"), found.get("questions_digest")) != (wanted["questions"], wanted["questions_digest"]):
        return (
            f"the recipe's source gives other questions ({wanted['questions']}) than the ones {run_dir} was sharded over "
            f"({found.get('questions')}); did source.limit, filter or shuffle_seed change? Use a new run folder"
        )
    if found.get("generation_fingerprint") != wanted["generation_fingerprint"]:
        return f"the recipe's source, prompt or generator settings changed since {run_dir} was sharded ({where}); use a new run folder"
    return None


def claim_manifest(run_dir: Path, manifest: dict) -> None:
    """Write the manifest if this is the first shard, else check that this shard belongs to it.

    The manifest is created with O_EXCL so that shards starting at the same moment on a shared
    file system agree on one; the losers compare against the winner's.
    """
    path = manifest_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(manifest, indent=2) + "\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        problem = _mismatch(read_manifest(run_dir) or {}, manifest, run_dir)
        if problem:
            raise ShardError(problem) from None
        return
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


def run_shard(
    loaded: LoadedRecipe,
    run_dir: Path,
    shard: Shard,
    *,
    show_progress: bool = True,
    endpoints: Sequence[int] | None = None,
    concurrency: int | None = None,
) -> GenerationStats:
    """Generate what shard ``shard`` of the run lacks into its own journal; nothing is scored.

    ``endpoints``: indices into the recipe's endpoint list that this shard may use (its share
    when several shards split the endpoints); ``concurrency``: requests in flight per endpoint
    for this shard. Neither changes a trace, so neither is part of any fingerprint.
    """
    recipe = loaded.recipe
    source = load_questions(loaded)
    if not source.questions:
        raise ValueError("the source produced no questions (check source.filter and source.limit)")
    if recipe.generator.adaptive is not None:
        # adaptive sampling decides from every question's reference and each class's whole budget
        raise ShardError("generator.adaptive cannot run sharded: its stopping decisions need the references of every shard; remove it or run without --shard")
    claim_manifest(run_dir, manifest_for(loaded, source.questions, shard.count))
    mine = shard.select(source.questions)
    backend = make_backend(recipe.generator)
    try:
        # Provenance first, over all the recipe's endpoints: it checks that they serve one model,
        # and it then reads the same as an unsharded run's, whatever share this shard gets.
        provenance = {**backend.provenance(), "identity": backend.model_identity(), "fingerprint_params": backend.fingerprint_params(recipe.generator)}
        if endpoints is not None:
            backend.endpoints = [backend.endpoints[i] for i in endpoints]
        if concurrency is not None:
            backend.concurrency = concurrency
        requests = plan_requests(mine, recipe.generator, backend)
        with Journal(shard.journal_path(run_dir)) as journal:
            stats = run_generation(requests, backend, journal, show_progress=show_progress)
            journal.set_meta("provenance", provenance)
            journal.set_meta("shard", {"index": shard.index, "count": shard.count, "questions": len(mine), "traces": len(requests)})
            journal.set_meta(GENERATE_STAGE_KEY, stats.stage().to_json())  # the merge adds the shards' up
    finally:
        import asyncio

        asyncio.run(backend.aclose())
    return stats


def planned_traces(loaded: LoadedRecipe, questions: int) -> int:
    generator = loaded.recipe.generator
    return questions * (generator.samples + (1 if generator.reference else 0))


def shard_trace_count(run_dir: Path, shard: Shard) -> int:
    """Finished traces in a shard's journal, read without disturbing the shard writing it."""
    path = shard.journal_path(run_dir)
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
            return db.execute("SELECT COUNT(*) FROM traces WHERE status='ok'").fetchone()[0]
    except sqlite3.OperationalError:  # the shard has not created its tables yet
        return 0


@dataclass
class MergeReport:
    shards: int
    questions: int
    traces: int  # copied from the shard journals into the run's journal


def merge_shards(loaded: LoadedRecipe, run_dir: Path, *, show_progress: bool = True) -> tuple[dataset_card.RunSummary, MergeReport]:
    """Check that the shards cover the run, copy their traces into the run's journal, then publish.

    Nothing is written to the run folder until every question is known to have all its traces.
    """
    from curation import pipeline

    run_dir = Path(run_dir)
    found = read_manifest(run_dir)
    if found is None:
        raise ShardError(f"{run_dir} has no {SHARDS_DIR}/{MANIFEST_FILE}: it was not run with --shard (or -o names another folder)")
    source = load_questions(loaded)
    count = int(found["shards"])
    problem = _mismatch(found, manifest_for(loaded, source.questions, count), run_dir)
    if problem:
        raise ShardError(problem)
    shards = [Shard(i, count) for i in range(count)]
    present = {p.name for p in (run_dir / SHARDS_DIR).iterdir() if p.is_dir()}
    strays = sorted(present - {s.name for s in shards})
    if strays:
        raise ShardError(f"{run_dir / SHARDS_DIR} holds shards of another split ({', '.join(strays)}) besides the manifest's {count}; remove them or use a new run folder")
    missing = [s for s in shards if not s.journal_path(run_dir).exists()]
    if missing:
        raise ShardError(f"shards not run yet: {', '.join(f'{s.index}/{count}' for s in missing)}; run them with `curate run RECIPE --shard I/{count}`, then merge")

    # Every shard must hold all of its questions' traces, under the same model identity.
    provenance = None
    incomplete = []
    for shard in shards:
        with Journal(shard.journal_path(run_dir)) as journal:
            shard_provenance = journal.get_meta("provenance")
            if shard_provenance is None:
                incomplete.append(f"{shard.index}/{count} (never finished a pass)")
                continue
            if provenance is None:
                provenance = shard_provenance
            elif shard_provenance.get("identity") != provenance.get("identity") or shard_provenance.get("fingerprint_params") != provenance.get("fingerprint_params"):
                raise ShardError(
                    f"shard {shard.index}/{count} was generated by {shard_provenance.get('identity')} and another shard by "
                    f"{provenance.get('identity')}; traces of different models cannot make one dataset"
                )
            requests = plan_requests(shard.select(source.questions), loaded.recipe.generator, RecordedIdentity(shard_provenance))
            done = journal.done(r.fingerprint for r in requests)
            if len(done) < len(requests):
                incomplete.append(f"{shard.index}/{count} ({len(requests) - len(done)} of {len(requests)} traces missing)")
    if incomplete:
        raise ShardError(f"incomplete shards, nothing merged: {'; '.join(incomplete)}. Rerun them with `curate run RECIPE --shard I/{count}` (each resumes), then merge")

    generate_stage = StageStats()
    for shard in shards:
        with Journal(shard.journal_path(run_dir)) as journal:
            generate_stage = generate_stage + StageStats.from_json(journal.get_meta(GENERATE_STAGE_KEY) or {})
    run_journal = run_dir / run_folder.JOURNAL_FILE
    copied = 0
    with Journal(run_journal) as journal:  # creates the schema
        journal.set_meta("provenance", provenance)
    for shard in shards:
        copied += copy_traces(shard.journal_path(run_dir), run_journal)
    summary = pipeline.publish_from_journal(loaded, run_dir, show_progress=show_progress, generate_stage=generate_stage)
    return summary, MergeReport(count, len(source.questions), copied)


def copy_traces(source: Path, target: Path) -> int:
    """Copy the finished traces of one journal into another, in sqlite, without decoding them.

    Rows are copied as stored (same columns, same blobs), so nothing is converted and memory
    stays flat however large the shard. A fingerprint names one trace, so a trace the target
    already has (a merge run twice) is left as it is.
    """
    with sqlite3.connect(target, timeout=60, isolation_level=None) as db:
        db.execute("ATTACH DATABASE ? AS shard", (str(source),))
        columns = [row[1] for row in db.execute("PRAGMA main.table_info(traces)")]
        shard_columns = {row[1] for row in db.execute("PRAGMA shard.table_info(traces)")}
        common = ", ".join(c for c in columns if c in shard_columns)
        before = db.total_changes
        db.execute("BEGIN")
        db.execute(
            f"INSERT INTO main.traces ({common}) SELECT {common} FROM shard.traces WHERE status='ok' ON CONFLICT (fingerprint) DO NOTHING"
        )
        db.execute("COMMIT")
        copied = db.total_changes - before
        db.execute("DETACH DATABASE shard")
    return copied
