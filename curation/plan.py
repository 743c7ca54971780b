"""The dry run: what `curate run` would do, before anything is spent.

    curate run recipes/perturbqa.yaml --dry-run --set source.limit=500

It reads the source and, when the run folder already has one, the journal (read-only, through
see ``_open_read_only``: not a byte is written into the run folder). It calls no endpoint and loads no
model: the traces already in the journal are matched with the model identity that the last run
recorded there, which is the identity a resumed run against the same endpoint would use.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from curation.recipe import LoadedRecipe, Recipe, expand_env

# Enough earlier traces for a stable mean length without reading a large journal whole.
ESTIMATE_SAMPLE = 5000


@dataclass
class Plan:
    questions: int
    traces_per_question: int
    traces_total: int
    traces_in_journal: int
    max_new_tokens: int
    mean_tokens_per_trace: float | None  # from earlier traces in the journal
    estimated_from: int  # how many traces the estimate is from
    critic_calls_max: int
    critic_max_new_tokens: int
    endpoints: list[str] = field(default_factory=list)
    push_to: str | None = None
    journal_note: str | None = None
    adaptive_mode: str | None = None  # generator.adaptive: the traces above are the most it asks for

    @property
    def traces_to_generate(self) -> int:
        return self.traces_total - self.traces_in_journal

    @property
    def max_tokens(self) -> int:
        return self.traces_to_generate * self.max_new_tokens


class _RecordedIdentity:
    """The backend's identity and fingerprint settings as the journal recorded them (no endpoint call)."""

    def __init__(self, provenance: dict):
        self._provenance = provenance

    def model_identity(self) -> str:
        return self._provenance.get("identity") or self._provenance.get("model_id")

    def fingerprint_params(self, config) -> dict:
        return self._provenance.get("fingerprint_params") or {}


def _endpoints(recipe: Recipe) -> list[str]:
    lines = []
    for section in ("generator", "critic"):
        config = getattr(recipe, section, None)
        if config is None:
            continue
        if config.backend == "local":
            lines.append(f"{section}: in-process model {config.model} (no endpoint)")
            continue
        for url in config.urls if section == "generator" else ([config.url] if isinstance(config.url, str) else list(config.url or [])):
            # The URL is resolved for display; api_key never is.
            lines.append(f"{section}: {config.backend} {expand_env(url, what=f'{section}.url')} (model {config.model})")
    return lines


@contextmanager
def _open_read_only(path: Path):
    """The journal, read without writing a byte into the run folder.

    Even sqlite's ``mode=ro`` creates a ``-shm`` file for a WAL database. A journal closed cleanly
    has no ``-wal`` file and is opened ``immutable``; one left by a killed run still has traces in
    its ``-wal``, so both files are copied to a temporary folder and the copy is read.
    """
    wal = path.with_name(path.name + "-wal")
    if not wal.exists():
        db = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
        try:
            yield db
        finally:
            db.close()
        return
    with tempfile.TemporaryDirectory(prefix="curate-dry-run-") as folder:
        copy = Path(folder) / path.name
        shutil.copyfile(path, copy)
        shutil.copyfile(wal, copy.with_name(copy.name + "-wal"))
        db = sqlite3.connect(copy)
        try:
            yield db
        finally:
            db.close()


def make_plan(loaded: LoadedRecipe, run_dir: Path) -> Plan:
    from curation.source import load_questions

    recipe = loaded.recipe
    config = recipe.generator
    questions = load_questions(loaded).questions
    per_question = config.samples + (1 if config.reference else 0)
    total = len(questions) * per_question
    in_journal, mean_tokens, sampled, note = 0, None, 0, None
    from curation.publish import JOURNAL_FILE

    journal_path = run_dir / JOURNAL_FILE
    if journal_path.exists():
        with _open_read_only(journal_path) as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'provenance'").fetchone()
            provenance = json.loads(row[0]) if row else {}
            if provenance.get("identity") or provenance.get("model_id"):
                from curation.generate import plan_requests

                wanted = [r.fingerprint for r in plan_requests(questions, config, _RecordedIdentity(provenance))]
                for start in range(0, len(wanted), 900):
                    chunk = wanted[start : start + 900]
                    marks = ",".join("?" * len(chunk))
                    in_journal += db.execute(f"SELECT COUNT(*) FROM traces WHERE status='ok' AND fingerprint IN ({marks})", chunk).fetchone()[0]
                note = f"matched with the model the journal recorded: {provenance.get('identity') or provenance.get('model_id')}"
            from curation.journal import Journal

            lengths = []
            query = "SELECT fingerprint, prompt_id, sample_index, payload, arrays FROM traces WHERE status='ok' AND prompt_id NOT LIKE '%#critic' LIMIT ?"  # generated traces, not judgements
            for fp, prompt_id, index, payload, blob in db.execute(query, (ESTIMATE_SAMPLE,)):
                lengths.append(len(Journal._trace(fp, prompt_id, index, payload, blob).token_logprobs))
            if lengths:
                mean_tokens, sampled = sum(lengths) / len(lengths), len(lengths)
    critic = recipe.critic
    return Plan(
        questions=len(questions),
        traces_per_question=per_question,
        traces_total=total,
        traces_in_journal=in_journal,
        max_new_tokens=config.max_new_tokens,
        mean_tokens_per_trace=mean_tokens,
        estimated_from=sampled,
        # the judge grades each question's kept trace once (judgements are journaled too, so this is an upper bound)
        critic_calls_max=len(questions) if critic else 0,
        critic_max_new_tokens=critic.max_new_tokens if critic else 0,
        endpoints=_endpoints(recipe),
        push_to=recipe.hub.repo if recipe.hub else None,
        journal_note=note,
        adaptive_mode=config.adaptive.mode if config.adaptive is not None else None,
    )


def describe(plan: Plan, run_dir: Path, *, no_push: bool = False) -> str:
    lines = [
        f"dry run: nothing is generated, written or pushed (run folder would be {run_dir})",
        f"questions: {plan.questions}",
        f"traces: {plan.traces_total} ({plan.traces_per_question} per question), {plan.traces_in_journal} already in the journal, "
        f"{plan.traces_to_generate} to generate",
    ]
    if plan.journal_note:
        lines.append(f"  journal: {plan.journal_note}")
    if plan.adaptive_mode:
        lines.append(f"  adaptive sampling ({plan.adaptive_mode}): at most this many; questions that cannot make their class budget stop early")
    lines.append(f"tokens: at most {plan.max_tokens:,} ({plan.traces_to_generate} traces x max_new_tokens {plan.max_new_tokens})")
    if plan.mean_tokens_per_trace is not None:
        estimate = plan.traces_to_generate * plan.mean_tokens_per_trace
        lines.append(f"  estimate: about {estimate:,.0f} ({plan.mean_tokens_per_trace:.0f} tokens per trace, the mean of {plan.estimated_from} earlier traces in the journal)")
    if plan.critic_calls_max:
        lines.append(f"critic: at most {plan.critic_calls_max} judgements x max_new_tokens {plan.critic_max_new_tokens} = {plan.critic_calls_max * plan.critic_max_new_tokens:,} tokens")
    lines.append("endpoints:")
    lines += [f"  {line}" for line in plan.endpoints]
    if plan.push_to:
        lines.append(f"push: {'skipped (--no-push)' if no_push else 'to the Hub dataset ' + plan.push_to}")
    return "\n".join(lines)


def print_plan(loaded: LoadedRecipe, run_dir: Path, *, no_push: bool = False) -> int:
    print(describe(make_plan(loaded, run_dir), run_dir, no_push=no_push))
    return 0
