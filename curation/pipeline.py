"""The run, end to end: source -> generate -> parse -> score -> select -> publish.

Each stage lives in its own module; this file only passes data from one to the next, so that
``curate run`` and ``curate score`` (which restarts from the journal) share every step after
generation.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa

from curation import publish
from curation.generate import REFERENCE_INDEX, GenerationStats, Trace, TraceRequest, make_backend, plan_requests, run_generation
from curation.journal import Journal
from curation.parse import AnswerParser
from curation.recipe import LoadedRecipe, Recipe, fingerprint_recipe, resolved_recipe_yaml
from curation.score import METRICS, SIMILARITIES, ScoringInputs, TokenArrays, compute_scores, majority, selection_keys, sequence_perplexity
from curation.select import select
from curation.source import Question, load_questions

log = logging.getLogger(__name__)

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])


def default_run_dir(loaded: LoadedRecipe) -> Path:
    return Path(loaded.recipe.output_dir) if loaded.recipe.output_dir else Path("runs") / loaded.recipe.name


@dataclass
class RunResult:
    run_dir: Path
    summary: publish.RunSummary
    generation: GenerationStats | None


def run(loaded: LoadedRecipe, run_dir: Path, *, show_progress: bool = True) -> RunResult:
    """Generate what the journal lacks, then score, select and write the run folder."""
    recipe = loaded.recipe
    source = load_questions(loaded)
    if not source.questions:
        raise ValueError("the source produced no questions (check source.filter and source.limit)")
    run_dir.mkdir(parents=True, exist_ok=True)
    backend = make_backend(recipe.generator)
    try:
        requests = plan_requests(source.questions, recipe.generator, backend)
        with Journal(run_dir / publish.JOURNAL_FILE) as journal:
            adaptive_outcome = None
            if recipe.generator.adaptive is not None:  # budget-aware: only the samples selection can need
                from curation import adaptive

                adaptive_outcome = adaptive.sample(
                    recipe, source.questions, requests, journal, backend.fingerprint_params(recipe.generator),
                    lambda batch: run_generation(batch, backend, journal, show_progress=show_progress),
                )
                requests, stats = adaptive_outcome.requests, adaptive_outcome.stats
            else:
                stats = run_generation(requests, backend, journal, show_progress=show_progress)
            # identity and fingerprint settings let `curate score` find these traces again without a backend
            provenance = {**backend.provenance(), "identity": backend.model_identity(), "fingerprint_params": backend.fingerprint_params(recipe.generator)}
            journal.set_meta("provenance", provenance)
            traces = journal.load(r.fingerprint for r in requests)
            failures = journal.failures(r.fingerprint for r in requests)
    finally:
        import asyncio

        asyncio.run(backend.aclose())
    result = curate(
        recipe, source.questions, requests, traces, failures, provenance, run_dir, recipe_yaml=_recipe_yaml_for(loaded, run_dir), show_progress=show_progress,
        adaptive=adaptive_outcome,
    )
    return RunResult(run_dir, result, stats)


def _recipe_yaml_for(loaded: LoadedRecipe, run_dir: Path) -> str:
    """The recipe as written into the run folder: local source paths re-anchored to that folder."""
    recipe = loaded.recipe
    if recipe.source.path is not None:
        absolute = loaded.resolve_path(recipe.source.path).resolve()
        relative = os.path.relpath(absolute, run_dir.resolve())
        recipe = recipe.model_copy(update={"source": recipe.source.model_copy(update={"path": relative})})
    return resolved_recipe_yaml(recipe)


def curate(
    recipe: Recipe,
    questions: Sequence[Question],
    requests: Sequence[TraceRequest],
    traces: dict[str, Trace],
    failures: dict[str, str],
    provenance: dict,
    run_dir: Path,
    *,
    recipe_yaml: str,
    critic_mode: str = "generate",
    show_progress: bool = True,
    adaptive=None,
) -> publish.RunSummary:
    """Parse, score, select and publish from traces already in hand (no generation).

    ``adaptive`` (an ``adaptive.AdaptiveOutcome``): questions may have fewer than K samples
    (``requests`` holds only those granted), and questions that stopped early are ranked by the
    key adaptive sampling proved for them.

    ``critic_mode``: "generate" asks the judge for what the journal lacks; "journal" only reads
    judgements already there (rescoring never calls a backend).
    """
    parser = AnswerParser(recipe.answer)
    k = recipe.generator.samples
    by_question: dict[str, dict[int, TraceRequest]] = {}
    for request in requests:
        by_question.setdefault(request.prompt_id, {})[request.sample_index] = request

    n = len(questions)
    reference_traces: list[Trace | None] = []
    sample_traces: list[list[Trace | None]] = []
    failed = np.zeros(n, dtype=bool)
    for i, question in enumerate(questions):
        wanted = by_question[question.id]
        got = {index: traces.get(req.fingerprint) for index, req in wanted.items()}
        failed[i] = any(t is None for t in got.values())
        reference_traces.append(got.get(REFERENCE_INDEX))
        sample_traces.append([got.get(index) for index in range(1, k + 1)])

    # ---- parse
    parse = lambda t: parser(t.text) if t is not None else None  # noqa: E731
    reference_answers = [parse(t) for t in reference_traces]
    sample_answers = [[parse(t) for t in row] for row in sample_traces]
    classes = recipe.answer.classes or sorted({a for a in reference_answers + [a for row in sample_answers for a in row] if a is not None})
    code_of = {label: code for code, label in enumerate(classes)}
    encode = np.vectorize(lambda a: code_of.get(a, -1) if a is not None else -1, otypes=[np.int64])
    reference_codes = encode(np.array(reference_answers, dtype=object)) if n else np.zeros(0, dtype=np.int64)
    sample_codes = encode(np.array(sample_answers, dtype=object).reshape(n, k)) if n and k else np.zeros((n, k), dtype=np.int64)
    # variable K (adaptive sampling): which samples were drawn; a sample never asked for is no answer
    sampled = np.array([[t is not None for t in row] for row in sample_traces], dtype=bool).reshape(n, k) if adaptive is not None else None

    # ---- choose the trace per question and its predicted answer
    majority_codes, majority_counts = majority(sample_codes, reference_codes) if k else (np.full(n, -1), np.zeros(n, dtype=np.int64))
    chosen: list[Trace | None] = list(reference_traces)
    predicted = list(reference_answers)
    if recipe.select.keep == "best_agreeing" and k:
        sample_arrays = TokenArrays.from_lists([t.token_logprobs if t else [] for row in sample_traces for t in row])
        sample_ppl = sequence_perplexity(sample_arrays).reshape(n, k)
        agreeing = (sample_codes == majority_codes[:, None]) & (majority_codes[:, None] >= 0)
        best = np.argmin(np.where(agreeing & np.isfinite(sample_ppl), sample_ppl, np.inf), axis=1)
        for i in range(n):
            has = bool(agreeing[i].any())
            chosen[i] = sample_traces[i][best[i]] if has else None
            predicted[i] = classes[majority_codes[i]] if has else None
    truncated = np.array([t is not None and t.finish_reason == "length" for t in chosen], dtype=bool)

    # ---- critic: grade the kept trace of every row that could still be kept
    critic_grades = None
    critic_stats: dict = {}
    if recipe.critic is not None:
        from curation import critic

        candidate = ~failed & np.array([a is not None and t is not None for a, t in zip(predicted, chosen)], dtype=bool)
        if recipe.select.drop_truncated:
            candidate &= ~truncated
        judgements = [
            critic.Judgement(q.id, _judge_variables(q, chosen[i], predicted[i], recipe.critic.show_label)) if candidate[i] else None
            for i, q in enumerate(questions)
        ]
        result = critic.grade(recipe.critic, judgements, run_dir / publish.JOURNAL_FILE, generate=critic_mode == "generate", show_progress=show_progress)
        critic_grades, critic_stats = result.grades, result.stats

    # ---- score
    reference_arrays = TokenArrays.from_lists(
        [t.token_logprobs if t else [] for t in reference_traces], [t.top_logprobs if t else [] for t in reference_traces]
    )
    names = list(dict.fromkeys([recipe.score.metric, *(recipe.score.metrics or [m for m in METRICS if m != "critic"])]))
    if critic_grades is not None and "critic" not in names:
        names.append("critic")
    similarity = None
    if k and any("similarity" in METRICS[name].requires for name in names):
        similarity = SIMILARITIES[recipe.score.similarity].fn(
            [t.text if t else "" for t in reference_traces],
            [[t.text if t else "" for t in row] for row in sample_traces],
            reference_codes,
            sample_codes,
            model=recipe.score.similarity_model,
        )
    inputs = ScoringInputs(
        reference=reference_arrays,
        reference_answers=reference_codes,
        sample_answers=sample_codes,
        similarity=similarity,
        critic_grades=critic_grades,
        has_reference=recipe.generator.reference,
        sampled=sampled,
    )
    scores = compute_scores(inputs, names)
    if recipe.score.metric not in scores.values:
        raise ValueError(f"metric {recipe.score.metric!r} cannot be computed: {scores.skipped.get(recipe.score.metric)}")
    # ranked by (uncertainty, tie-break): CoCoA ties (all samples agree) are ordered by the confidence metric
    uncertainty, tiebreak = selection_keys(recipe.score.metric, scores.values)
    if adaptive is not None and adaptive.selection_keys:
        uncertainty, tiebreak = _adaptive_keys(questions, uncertainty, tiebreak, adaptive.selection_keys)
    eligible = critic.eligible(critic_grades, recipe.critic.min_grade) if recipe.critic is not None else None  # noqa: F821 - imported above

    ids = np.array([q.id for q in questions], dtype=object)
    # select.require_correct (SynthPert): label-using, so the card marks the dataset as not label-free
    incorrect = np.array([p is not None and p != q.label for p, q in zip(predicted, questions)], dtype=bool) if recipe.select.require_correct else None
    selection = select(ids, np.array(predicted, dtype=object), uncertainty, tiebreak, recipe.select, truncated=truncated, failed=failed, eligible=eligible, incorrect=incorrect)

    # ---- tables
    agreement = np.where(reference_codes[:, None] >= 0, sample_codes == reference_codes[:, None], False).mean(axis=1) if k else np.full(n, np.nan)
    if sampled is not None and k:
        with np.errstate(invalid="ignore", divide="ignore"):
            agreement = np.where(reference_codes[:, None] >= 0, sample_codes == reference_codes[:, None], False).sum(axis=1) / sampled.sum(axis=1)
    columns: dict[str, pa.Array | list] = {"id": [q.id for q in questions]}
    source_names = list(dict.fromkeys(name for q in questions for name in q.columns))
    for name in source_names:
        columns[name] = [q.columns.get(name) for q in questions]
    if recipe.source.label_column:
        columns["label"] = [q.label for q in questions]
    columns["prompt"] = pa.array([q.messages for q in questions], type=pa.list_(MESSAGE))
    if any(q.teacher_messages for q in questions):  # prompt.teacher_hint: what the teacher saw, for provenance and rescoring
        columns["teacher_prompt"] = pa.array([q.teacher_messages for q in questions], type=pa.list_(MESSAGE))
    columns["completion"] = pa.array(
        [[{"role": "assistant", "content": t.text}] if t is not None else [] for t in chosen], type=pa.list_(MESSAGE)
    )
    columns["answer"] = pa.array(predicted, type=pa.string())
    columns["majority_answer"] = pa.array([classes[c] if c >= 0 else None for c in majority_codes], type=pa.string())
    columns["agreement"] = pa.array(agreement, type=pa.float64())
    columns["n_samples"] = pa.array([sum(t is not None for t in row) for row in sample_traces], type=pa.int32())
    columns["n_unparsed"] = pa.array(
        [sum(t is not None and a is None for t, a in zip([r, *row], [ra, *sa])) for r, row, ra, sa in zip(reference_traces, sample_traces, reference_answers, sample_answers)],
        type=pa.int32(),
    )
    columns["kept_trace"] = pa.array([t.sample_index if t is not None else None for t in chosen], type=pa.int32())
    columns["finish_reason"] = pa.array([t.finish_reason if t is not None else None for t in chosen], type=pa.string())
    columns["uncertainty"] = pa.array(uncertainty, type=pa.float64())
    for name, values in scores.values.items():
        columns[name] = pa.array(values, type=pa.float64())
    columns["kept"] = pa.array(selection.kept, type=pa.bool_())
    columns["drop_reason"] = pa.array(list(selection.drop_reason), type=pa.string())
    scored = pa.table(columns)

    traces_table = _traces_table(questions, reference_traces, sample_traces, reference_answers, sample_answers)

    all_traces = [t for t in reference_traces if t] + [t for row in sample_traces for t in row if t]
    all_answers = [a for t, a in zip(reference_traces, reference_answers) if t] + [a for row, arow in zip(sample_traces, sample_answers) for t, a in zip(row, arow) if t]
    summary = publish.RunSummary(
        name=recipe.name,
        questions=n,
        traces=len(all_traces),
        unparsed_traces=sum(a is None for a in all_answers),
        failed_traces=len(failures),
        truncated_traces=sum(t.finish_reason == "length" for t in all_traces),
        kept=int(selection.kept.sum()),
        metric=recipe.score.metric,
        similarity=recipe.score.similarity,
        per_class_before=dict(sorted(Counter(a if a is not None else "(unparsed)" for a in predicted).items())),
        per_class_after=dict(sorted(Counter(predicted[i] for i in np.flatnonzero(selection.kept)).items())),
        drop_reasons=dict(sorted(Counter(r for r in selection.drop_reason if r is not None).items())),
        budget=selection.budget,
        generation={
            "samples": k,
            "reference": recipe.generator.reference,
            "temperature": recipe.generator.temperature,
            "top_p": recipe.generator.top_p,
            "max_new_tokens": recipe.generator.max_new_tokens,
            **({"critic": critic_stats} if recipe.critic is not None else {}),
            **({"adaptive": adaptive.summary()} if adaptive is not None else {}),
        },
        provenance={
            **provenance,
            "curate_version": __import__("curation").__version__,
            "recipe_fingerprint": fingerprint_recipe(recipe),
            "created": publish.today(),
        },
        metrics_computed=list(scores.values),
        metrics_skipped=scores.skipped,
    )
    publish.write_run_folder(run_dir, scored, traces_table, summary, recipe, recipe_yaml)
    return summary


def _adaptive_keys(questions, uncertainty: np.ndarray, tiebreak: np.ndarray | None, keys: dict[str, tuple[float, float]]):
    """Selection keys with the stopped questions' proven bounds in place of their partial scores."""
    uncertainty = uncertainty.copy()
    tiebreak = np.zeros(len(questions)) if tiebreak is None else tiebreak.copy()
    for i, question in enumerate(questions):
        if question.id in keys:
            uncertainty[i], tiebreak[i] = keys[question.id]
    return uncertainty, tiebreak


def _judge_variables(question: Question, trace: Trace | None, answer: str | None, show_label: bool) -> dict:
    """Template variables of the judge prompt: the question, the kept trace, its answer, the source columns."""
    user = [m["content"] for m in question.messages if m.get("role") == "user"]
    variables = {**question.columns, "question": user[-1] if user else "", "trace": trace.text if trace else "", "answer": answer}
    if show_label:
        variables["label"] = question.label
    return variables


def _traces_table(questions, reference_traces, sample_traces, reference_answers, sample_answers) -> pa.Table:
    rows = []
    for question, ref, samples, ref_answer, answers in zip(questions, reference_traces, sample_traces, reference_answers, sample_answers):
        for trace, answer in zip([ref, *samples], [ref_answer, *answers]):
            if trace is None:
                continue
            rows.append(
                {
                    "id": question.id,
                    "sample_index": trace.sample_index,
                    "is_reference": trace.is_reference,
                    "text": trace.text,
                    "answer": answer,
                    "token_logprobs": trace.token_logprobs,
                    "top_logprobs": trace.top_logprobs,
                    "finish_reason": trace.finish_reason,
                    "n_tokens": len(trace.token_logprobs),
                    "seed": trace.seed,
                    "logprob_kind": trace.logprob_kind,
                    "model": trace.model,
                }
            )
    schema = pa.schema(
        [
            ("id", pa.string()),
            ("sample_index", pa.int32()),
            ("is_reference", pa.bool_()),
            ("text", pa.string()),
            ("answer", pa.string()),
            ("token_logprobs", pa.list_(pa.float32())),
            ("top_logprobs", pa.list_(pa.list_(pa.float32()))),
            ("finish_reason", pa.string()),
            ("n_tokens", pa.int32()),
            ("seed", pa.int64()),
            ("logprob_kind", pa.string()),
            ("model", pa.string()),
        ]
    )
    return pa.Table.from_pylist(rows, schema=schema)


def rescore(run_dir: Path, overrides: dict | None = None, *, show_progress: bool = True) -> publish.RunSummary:
    """Recompute scores and selection from the journal (no generation); `overrides` patch score/select."""
    from curation.recipe import Recipe, _deep_merge

    recipe_path = run_dir / publish.RECIPE_FILE
    if not recipe_path.exists():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no {publish.RECIPE_FILE})")
    import yaml

    raw = yaml.safe_load(recipe_path.read_text(encoding="utf-8"))
    recipe = Recipe.model_validate(_deep_merge(raw, overrides or {}))
    import pyarrow.parquet as pq

    scored = pq.read_table(run_dir / publish.SCORED_FILE)
    reserved = set(scored.column_names) - _question_columns(scored, recipe)
    questions = []
    for row in scored.to_pylist():
        columns = {k: v for k, v in row.items() if k not in reserved}
        questions.append(Question(id=row["id"], messages=row["prompt"], columns=columns, label=row.get("label"), teacher_messages=row.get("teacher_prompt")))
    with Journal(run_dir / publish.JOURNAL_FILE) as journal:
        provenance = journal.get_meta("provenance", {})
        backend = _IdentityOnly(provenance, recipe)
        requests = plan_requests(questions, recipe.generator, backend)
        adaptive_outcome = None
        if recipe.generator.adaptive is not None:  # replay the run's stopping decisions from the journal
            from curation import adaptive

            adaptive_outcome = adaptive.sample(recipe, questions, requests, journal, backend.fingerprint_params(recipe.generator), None)
            requests = adaptive_outcome.requests
        traces = journal.load(r.fingerprint for r in requests)
        failures = journal.failures(r.fingerprint for r in requests)
    missing = sum(r.fingerprint not in traces for r in requests)
    if missing == len(requests):
        raise ValueError(f"the journal in {run_dir} has none of this recipe's traces; did the generator settings change? Run `curate run` instead.")
    recipe_yaml = yaml.safe_dump(recipe.model_dump(mode="json", exclude_none=True), sort_keys=False, allow_unicode=True, width=100)
    return curate(recipe, questions, requests, traces, failures, provenance, run_dir, recipe_yaml=recipe_yaml, critic_mode="journal", show_progress=show_progress, adaptive=adaptive_outcome)


def _question_columns(scored: pa.Table, recipe: Recipe) -> set[str]:
    """Columns of the scored split that came from the source (everything curate did not add)."""
    from curation.source import RESERVED_COLUMNS

    added = RESERVED_COLUMNS | set(METRICS)
    return {name for name in scored.column_names if name not in added}


class _IdentityOnly:
    """Stands in for the backend when only fingerprints are needed (rescoring from the journal)."""

    def __init__(self, provenance: dict, recipe: Recipe):
        self._provenance = provenance
        self._recipe = recipe

    def model_identity(self) -> str:
        return self._provenance.get("identity") or self._provenance.get("model_id")

    def fingerprint_params(self, config) -> dict:
        return self._provenance.get("fingerprint_params") or {}


# ---- sharded runs (curation.shards): the stages after generation, once the shards' traces are in the journal
IdentityOnlyBackend = _IdentityOnly


def publish_from_journal(loaded: LoadedRecipe, run_dir: Path, *, show_progress: bool = True) -> publish.RunSummary:
    """Parse, score, select and write the run folder from the run's journal, as `run` does after generating."""
    recipe = loaded.recipe
    source = load_questions(loaded)
    with Journal(run_dir / publish.JOURNAL_FILE) as journal:
        provenance = journal.get_meta("provenance", {})
        requests = plan_requests(source.questions, recipe.generator, _IdentityOnly(provenance, recipe))
        traces = journal.load(r.fingerprint for r in requests)
        failures = journal.failures(r.fingerprint for r in requests)
    return curate(
        recipe, source.questions, requests, traces, failures, provenance, run_dir, recipe_yaml=_recipe_yaml_for(loaded, run_dir), show_progress=show_progress
    )
