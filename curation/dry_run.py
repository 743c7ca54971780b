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

from curation.recipe.env import expand_env
from curation.recipe.load import LoadedRecipe
from curation.recipe.sections import Recipe

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
    prompt_tokens_per_trace: float = 0.0  # journal usage where recorded, else about 4 characters per token
    prompt_tokens_measured: bool = False
    scorer: str | None = None  # "local model embedded", "openai http://…": who reads the traces back
    scorer_traces: int = 0  # traces the scorer still has to read
    scorer_traces_done: int = 0
    cost: object | None = None  # recipe.cost (prices per million tokens)

    @property
    def trace_tokens_estimate(self) -> float:
        """Tokens per trace: the journal's mean where it has traces, else max_new_tokens (an upper bound)."""
        return self.mean_tokens_per_trace if self.mean_tokens_per_trace is not None else float(self.max_new_tokens)

    @property
    def scorer_tokens(self) -> float:
        """Tokens the scorer reads: each trace's prompt, in the scorer's template, and the trace."""
        return self.scorer_traces * (self.prompt_tokens_per_trace + self.trace_tokens_estimate)

    @property
    def traces_to_generate(self) -> int:
        return self.traces_total - self.traces_in_journal

    @property
    def max_tokens(self) -> int:
        return self.traces_to_generate * self.max_new_tokens


def _endpoints(recipe: Recipe) -> list[str]:
    lines = []
    for section in ("generator", "critic", "scorer"):
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
    prompt_measured, scored_done = None, 0
    from curation.run_folder import JOURNAL_FILE

    journal_path = run_dir / JOURNAL_FILE
    if journal_path.exists():
        with _open_read_only(journal_path) as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'provenance'").fetchone()
            provenance = json.loads(row[0]) if row else {}
            if provenance.get("identity") or provenance.get("model_id"):
                from curation.generate import RecordedIdentity, plan_requests

                wanted = [r.fingerprint for r in plan_requests(questions, config, RecordedIdentity(provenance))]
                for start in range(0, len(wanted), 900):
                    chunk = wanted[start : start + 900]
                    marks = ",".join("?" * len(chunk))
                    in_journal += db.execute(f"SELECT COUNT(*) FROM traces WHERE status='ok' AND fingerprint IN ({marks})", chunk).fetchone()[0]
                note = f"matched with the model the journal recorded: {provenance.get('identity') or provenance.get('model_id')}"
            from curation.journal import Journal

            lengths, prompt_lengths = [], []
            query = "SELECT fingerprint, prompt_id, sample_index, payload, arrays FROM traces WHERE status='ok' AND prompt_id NOT LIKE '%#critic' LIMIT ?"  # generated traces, not judgements
            for fp, prompt_id, index, payload, blob in db.execute(query, (ESTIMATE_SAMPLE,)):
                trace = Journal._trace(fp, prompt_id, index, payload, blob)
                # a teacher without logprobs: the server's own count (reasoning tokens included, as they are billed)
                lengths.append(len(trace.token_logprobs) or int(trace.usage.get("completion_tokens") or 0))
                if trace.usage.get("prompt_tokens"):
                    prompt_lengths.append(int(trace.usage["prompt_tokens"]))
            if lengths:
                mean_tokens, sampled = sum(lengths) / len(lengths), len(lengths)
            if prompt_lengths:
                prompt_measured = sum(prompt_lengths) / len(prompt_lengths)
            if recipe.scorer is not None:
                recorded = db.execute("SELECT value FROM meta WHERE key = 'scorer_provenance'").fetchone()
                has_table = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'scorer_tokens'").fetchone()
                if recorded and has_table and in_journal:
                    key = json.loads(recorded[0]).get("key")
                    scored_done = db.execute("SELECT COUNT(*) FROM scorer_tokens WHERE scorer = ? AND status='ok'", (key,)).fetchone()[0]
    critic = recipe.critic
    if prompt_measured is None and questions:
        # no journal yet: about 4 characters per token (English BPE), plus a few template tokens per message
        sample = questions[: min(len(questions), 1000)]
        prompt_chars = [sum(len(m["content"]) for m in (q.teacher_messages or q.messages)) for q in sample]
        prompt_estimate = sum(prompt_chars) / len(prompt_chars) / 4 + 5 * len(sample[0].teacher_messages or sample[0].messages)
    else:
        prompt_estimate = prompt_measured or 0.0
    scorer = recipe.scorer
    scorer_traces = (len(questions) if scorer is not None and scorer.traces == "reference" and config.reference else total) if scorer is not None else 0
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
        prompt_tokens_per_trace=prompt_estimate,
        prompt_tokens_measured=prompt_measured is not None,
        scorer=(f"{scorer.backend} model {scorer.model}" + (f" at {', '.join(expand_env(u, what='scorer.url') for u in scorer.urls)}" if scorer.urls else "")) if scorer is not None else None,
        scorer_traces=max(scorer_traces - scored_done, 0),
        scorer_traces_done=scored_done,
        cost=recipe.cost,
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
    if plan.scorer:
        lines.append(
            f"scorer ({plan.scorer}): {plan.scorer_traces} traces to read by teacher forcing ({plan.scorer_traces_done} already scored), "
            f"about {plan.scorer_tokens:,.0f} tokens read ({plan.prompt_tokens_per_trace:.0f} prompt + {plan.trace_tokens_estimate:.0f} trace tokens each), none generated"
        )
    lines += _cost_lines(plan)
    lines.append("endpoints:")
    lines += [f"  {line}" for line in plan.endpoints]
    if plan.push_to:
        lines.append(f"push: {'skipped (--no-push)' if no_push else 'to the Hub dataset ' + plan.push_to}")
    return "\n".join(lines)


def _cost_lines(plan: Plan) -> list[str]:
    """The bill from the recipe's prices per million tokens: generation (prompt per trace, an upper bound with `n`,
    where a prompt is billed once per request), the critic's judgements, the scorer's reading."""
    cost = plan.cost
    if cost is None:
        return []
    prompt = plan.prompt_tokens_per_trace
    parts = []  # (what, input tokens, output tokens, prices)
    if cost.generator is not None:
        parts.append(("generator", plan.traces_to_generate * prompt, plan.traces_to_generate * plan.trace_tokens_estimate, plan.traces_to_generate * plan.max_new_tokens, cost.generator))
    if cost.critic is not None and plan.critic_calls_max:
        judge_input = plan.critic_calls_max * (prompt + plan.trace_tokens_estimate)
        parts.append(("critic", judge_input, plan.critic_calls_max * plan.critic_max_new_tokens, plan.critic_calls_max * plan.critic_max_new_tokens, cost.critic))
    if cost.scorer is not None and plan.scorer:
        parts.append(("scorer", plan.scorer_tokens, 0.0, 0.0, cost.scorer))
    if not parts:
        return []
    how = "measured in the journal" if plan.mean_tokens_per_trace is not None else "max_new_tokens (no journal yet: an upper bound)"
    lines = [f"cost ({cost.currency}, recipe prices per million tokens; trace length from {how}; prompts {'from the journal' if plan.prompt_tokens_measured else 'at ~4 characters per token'}):"]
    total = worst = 0.0
    for what, tokens_in, tokens_out, tokens_out_max, prices in parts:
        amount = (tokens_in * prices.input + tokens_out * prices.output) / 1e6
        ceiling = (tokens_in * prices.input + tokens_out_max * prices.output) / 1e6
        total, worst = total + amount, worst + ceiling
        lines.append(f"  {what}: {tokens_in:,.0f} in x {prices.input:g} + {tokens_out:,.0f} out x {prices.output:g} = {amount:,.2f} (at most {ceiling:,.2f})")
    lines.append(f"  total: about {total:,.2f}, at most {worst:,.2f} (reasoning tokens bill as output: max_completion_tokens caps them)")
    return lines


def print_plan(loaded: LoadedRecipe, run_dir: Path, *, no_push: bool = False) -> int:
    print(describe(make_plan(loaded, run_dir), run_dir, no_push=no_push))
    return 0
