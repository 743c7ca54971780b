"""The run, end to end: source -> generate (+ critic) -> parse -> score -> select -> publish.

Each stage lives in its own module; this file only passes data from one to the next, so that
``curate run`` and ``curate score`` (which restarts from the journal) share every step after
generation. Everything after generation is streamed: the journal is read a chunk of whole
questions at a time (``journal.read_chunks``), each chunk is parsed, scored and written
(``tables``), and only per-question scalars (id, predicted class, uncertainty, tie-break and
flags) are kept for the global selection, which a second pass over the written scored shards
applies. Memory is one chunk plus those scalars, whatever the size of the run.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa

from curation import publish, tables
from curation.generate import GenerationStats, make_backend, plan_requests, run_generation
from curation.journal import Journal, TraceChunk, chunks_from_traces, fingerprint_grid
from curation.parse import AnswerCodes, AnswerParser, parse_chunk
from curation.recipe.dump import fingerprint_recipe, resolved_recipe_yaml
from curation.recipe.load import LoadedRecipe
from curation.recipe.sections import Recipe
from curation.score import METRICS, SIMILARITIES, ScoringInputs, compute_scores, selection_keys
from curation.select import select
from curation.source import load_questions
from curation.types import Question, StageStats, Trace, TraceRequest

log = logging.getLogger(__name__)

MESSAGE = tables.MESSAGE
# Questions per chunk of the streamed passes: about 0.5 MB of token data per question of 9 traces
# x 1,000 tokens with top-5, so a chunk holds ~16 MB and its temporaries a few times that.
# CURATE_CHUNK_QUESTIONS overrides (tests set it small).
CHUNK_QUESTIONS = int(os.environ.get("CURATE_CHUNK_QUESTIONS", 32))
PARTIAL_DIR = ".curate-partial"  # unselected scored shards between the two passes

Chunks = Callable[[], Iterator[TraceChunk]]  # a fresh pass over the run's chunks each call


def default_run_dir(loaded: LoadedRecipe) -> Path:
    return Path(loaded.recipe.output_dir) if loaded.recipe.output_dir else Path("runs") / loaded.recipe.name


@dataclass
class RunResult:
    run_dir: Path
    summary: publish.RunSummary
    generation: GenerationStats | None


def journal_chunks(journal_path: Path, grid: Sequence[Sequence[str | None]], chunk_questions: int | None = None, scorer: str | None = None) -> Chunks:
    """Passes over the run's chunks; with ``scorer`` (a scorer key), token data are that scorer's teacher-forced logprobs."""

    def chunks() -> Iterator[TraceChunk]:
        with Journal(journal_path) as journal:
            yield from journal.read_chunks(grid, chunk_questions or CHUNK_QUESTIONS, scorer=scorer)

    return chunks


def run(loaded: LoadedRecipe, run_dir: Path, *, show_progress: bool = True, chunk_questions: int | None = None) -> RunResult:
    """Generate what the journal lacks (and the critic's judgements), then score, select and write the run folder."""
    if loaded.recipe.source.traces is not None:  # traces made elsewhere: read instead of generated
        return run_imported(loaded, run_dir, show_progress=show_progress, chunk_questions=chunk_questions)
    recipe = loaded.recipe
    started = time.monotonic()
    source = load_questions(loaded)
    if not source.questions:
        raise ValueError("the source produced no questions (check source.filter and source.limit)")
    source_stage = source_stage_of(source, time.monotonic() - started)
    run_dir.mkdir(parents=True, exist_ok=True)
    backend = make_backend(recipe.generator)
    journal_path = run_dir / publish.JOURNAL_FILE
    try:
        requests = plan_requests(source.questions, recipe.generator, backend)
        with Journal(journal_path) as journal:
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
            failed_traces = len(journal.failures(r.fingerprint for r in requests))
    finally:
        asyncio.run(backend.aclose())
    generate_stage = stats.stage()
    grid = fingerprint_grid(requests, [q.id for q in source.questions], recipe.generator.samples)
    del requests
    stages = {"source": source_stage, "generate": generate_stage}
    scorer_key, provenance = _run_scorer(recipe, source.questions, grid, journal_path, provenance, stages, generate=True, show_progress=show_progress)
    chunks = journal_chunks(journal_path, grid, chunk_questions, scorer=scorer_key)
    # the critic is generation too (a judge model's replies, journaled), so it runs here and not in curate_chunks
    critic_grades, critic_stage_stats = grade_with_critic(recipe, source.questions, chunks, run_dir, generate=True, show_progress=show_progress)
    summary = curate_chunks(
        recipe,
        source.questions,
        chunks,
        failed_traces=failed_traces,
        provenance=provenance,
        run_dir=run_dir,
        recipe_yaml=_recipe_yaml_for(loaded, run_dir),
        critic=critic_stage_stats,
        critic_grades=critic_grades,
        stages=stages,
        adaptive=adaptive_outcome,
    )
    return RunResult(run_dir, summary, stats)


def source_stage_of(source, seconds: float) -> StageStats:
    """The source stage's section of stats.json: rows read, questions made, the rest filtered or not sampled."""
    stage = StageStats(rows_in=source.stats.get("source_rows", len(source.questions)), rows_out=len(source.questions), seconds=seconds)
    stage.drop("filtered_or_not_sampled", stage.rows_in - stage.rows_out)
    return stage


def _run_scorer(recipe: Recipe, questions: Sequence[Question], grid, journal_path: Path, provenance: dict, stages: dict, *, generate: bool, show_progress: bool = True):
    """The scorer stage (teacher-forced token logprobs, curation.scorer): its journal key, and the provenance with the scorer in it."""
    if recipe.scorer is None:
        return None, provenance
    from curation import scorer

    outcome = scorer.run_scorer(recipe, questions, grid, journal_path, generate=generate, show_progress=show_progress)
    if outcome.key is None:
        return None, provenance
    if generate:
        stage = StageStats(rows_in=outcome.stats["requested"], rows_out=outcome.stats["cached"] + outcome.stats["scored"], seconds=outcome.stats["seconds"])
        stage.drop("failed", outcome.stats["failed"])
        stages["scorer"] = stage
    with Journal(journal_path) as journal:
        recorded = journal.get_meta(scorer.PROVENANCE_KEY) or {}
    return outcome.key, {**provenance, "scorer": {key: recorded.get(key) for key in ("backend", "model_id", "server_version", "top_logprobs")}}


def _recipe_yaml_for(loaded: LoadedRecipe, run_dir: Path) -> str:
    """The recipe as written into the run folder: local source paths re-anchored to that folder."""
    recipe = loaded.recipe

    def anchored(path: str) -> str:
        return os.path.relpath(loaded.resolve_path(path).resolve(), run_dir.resolve())

    if recipe.source.path is not None:
        update = {"path": anchored(recipe.source.path)}
        if recipe.source.traces is not None and recipe.source.traces.questions is not None:
            update["traces"] = recipe.source.traces.model_copy(update={"questions": anchored(recipe.source.traces.questions)})
        recipe = recipe.model_copy(update={"source": recipe.source.model_copy(update=update)})
    return resolved_recipe_yaml(recipe)


# ---- imported traces (curation.trace_import): read instead of generated, then the same stages
IMPORT_META = "imported_grid"  # journal meta: the questions' ids, their fingerprints and the import's counts


def scoring_recipe(recipe: Recipe, samples: int, reference: bool) -> Recipe:
    """The recipe the stages after generation read: K and the reference as the imported traces have them.

    Without token logprobs the default metric list is the metrics that need none, so that no column
    of NaN perplexities is published as if it had been computed.
    """
    from curation.trace_import import metrics_without_tokens

    generator = recipe.generator.model_copy(update={"samples": samples, "reference": reference})
    update: dict = {"generator": generator}
    if recipe.source.traces is not None and recipe.source.traces.token_logprobs is None and recipe.scorer is None and recipe.score.metrics is None:
        update["score"] = recipe.score.model_copy(update={"metrics": metrics_without_tokens()})
    return recipe.model_copy(update=update)


def _import_provenance(result) -> dict:
    models = result.models
    kinds = [k for k in result.logprob_kinds if k not in ("none",)]
    return {
        "backend": "imported",
        "model_id": models[0] if len(models) == 1 else (", ".join(models) if models else "unknown (the traces name no model)"),
        "logprob_kind": kinds[0] if len(kinds) == 1 else ("none" if not kinds else "mixed"),
        "imported_from": result.source,
    }


def run_imported(loaded: LoadedRecipe, run_dir: Path, *, show_progress: bool = True, chunk_questions: int | None = None) -> RunResult:
    """Read the recipe's traces into the journal, then parse, score, select and publish them as a generated run."""
    from curation import trace_import

    recipe = loaded.recipe
    source = trace_import.TraceSource.open(loaded)  # a source that is not a table is refused before anything is written
    run_dir.mkdir(parents=True, exist_ok=True)
    journal_path = run_dir / publish.JOURNAL_FILE
    identity = trace_import.source_identity(loaded, source)
    result = _unchanged_import(run_dir, recipe, identity) if identity is not None else None
    if result is None:
        result = trace_import.import_traces(loaded, journal_path, source=source)
    for line in trace_import.format_refusals(result):
        log.warning(line)
    problem = trace_import.import_problems(loaded, result)
    if problem:
        raise trace_import.TraceImportError(problem)
    provenance = _import_provenance(result)
    imported = result.summary()
    with Journal(journal_path) as journal:
        journal.set_meta("provenance", provenance)
        journal.set_meta(IMPORT_META, {
            "ids": [q.id for q in result.questions], "grid": result.grid, "samples": result.samples, "reference": result.has_reference,
            "summary": imported, "identity": identity, "logprob_kinds": result.logprob_kinds,
        })
    recipe_for_scoring = scoring_recipe(recipe, result.samples, result.has_reference)
    stages = {"read_traces": result.stats}
    # traces without logprobs get them from the recipe's scorer (teacher forcing), journaled beside them
    scorer_key, provenance = _run_scorer(recipe_for_scoring, result.questions, result.grid, journal_path, provenance, stages, generate=True, show_progress=show_progress)
    chunks = journal_chunks(journal_path, result.grid, chunk_questions, scorer=scorer_key)
    grades, critic_stats = grade_with_critic(recipe_for_scoring, result.questions, chunks, run_dir, generate=True, show_progress=show_progress)
    summary = curate_chunks(
        recipe_for_scoring, result.questions, chunks, failed_traces=0, provenance=provenance, run_dir=run_dir,
        recipe_yaml=_recipe_yaml_for(loaded, run_dir), critic=critic_stats, critic_grades=grades,
        stages=stages, imported=imported,
    )
    return RunResult(run_dir, summary, None)


def _unchanged_import(run_dir: Path, recipe: Recipe, identity: dict):
    """A rerun on files that did not change reads none of them again: the questions come back from the
    run's scored split and the traces' fingerprints from the journal. None when anything differs."""
    from curation import trace_import
    from curation.run_folder import RunFolder

    journal_path = run_dir / publish.JOURNAL_FILE
    if not journal_path.exists() or not RunFolder(run_dir).split_files("scored"):
        return None
    with Journal(journal_path) as journal:
        stored = journal.get_meta(IMPORT_META)
    if not stored or stored.get("identity") != identity:
        return None
    questions = _questions_from_scored(run_dir, recipe)
    if [q.id for q in questions] != stored["ids"]:
        return None
    result = trace_import.ImportResult.from_stored(stored, questions)
    result.stats.seconds = 0.0
    return result


def _rescore_imported(run_dir: Path, recipe: Recipe, questions: list[Question], chunk_questions: int | None, show_progress: bool) -> publish.RunSummary:
    """`curate score` of an imported run: the questions from the scored split, the traces by the fingerprints the import recorded."""
    from curation.recipe.dump import resolved_recipe_yaml

    journal_path = run_dir / publish.JOURNAL_FILE
    with Journal(journal_path) as journal:
        provenance = journal.get_meta("provenance", {})
        stored = journal.get_meta(IMPORT_META)
    if not stored:
        raise ValueError(f"the journal in {run_dir} has no imported traces; run `curate run` on the recipe first")
    row_of = {qid: i for i, qid in enumerate(stored["ids"])}
    grid = [stored["grid"][row_of[q.id]] for q in questions]
    recipe_for_scoring = scoring_recipe(recipe, stored["samples"], stored["reference"])
    scorer_key, provenance = _run_scorer(recipe_for_scoring, questions, grid, journal_path, provenance, {}, generate=False)
    chunks = journal_chunks(journal_path, grid, chunk_questions, scorer=scorer_key)
    grades, critic_stats = grade_with_critic(recipe_for_scoring, questions, chunks, run_dir, generate=False, show_progress=show_progress)
    return curate_chunks(
        recipe_for_scoring, questions, chunks, failed_traces=0, provenance=provenance, run_dir=run_dir, recipe_yaml=resolved_recipe_yaml(recipe),
        critic=critic_stats, critic_grades=grades, imported=stored["summary"],
    )


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
    chunk_questions: int | None = None,
    adaptive=None,
) -> publish.RunSummary:
    """Parse, score, select and publish from ``Trace`` objects already in hand (no generation).

    The small-run entry point (tests, scripts); ``run`` and ``rescore`` stream from the journal.
    ``critic_mode``: "generate" asks the judge for what the journal lacks; "journal" only reads
    judgements already there (rescoring never calls a backend).
    """
    grid = fingerprint_grid(requests, [q.id for q in questions], recipe.generator.samples)
    chunks: Chunks = lambda: chunks_from_traces(grid, traces, chunk_questions or CHUNK_QUESTIONS)  # noqa: E731
    grades, critic_stats = grade_with_critic(recipe, questions, chunks, run_dir, generate=critic_mode == "generate", show_progress=show_progress)
    return curate_chunks(
        recipe, questions, chunks, failed_traces=len(failures), provenance=provenance, run_dir=run_dir, recipe_yaml=recipe_yaml, critic=critic_stats, critic_grades=grades,
        adaptive=adaptive,
    )


def grade_with_critic(recipe: Recipe, questions: Sequence[Question], chunks: Chunks, run_dir: Path, *, generate: bool, show_progress: bool = True):
    """The critic stage: the judge's grade of every question's kept trace that could still be kept.

    Returns (grades [n] or None without a critic section, the critic's counters). One pass over
    the chunks to build the judgements; their text is held until the judge has answered.
    """
    if recipe.critic is None:
        return None, {}
    from curation import critic

    parser, codes = AnswerParser(recipe.answer), AnswerCodes(recipe.answer.classes)
    judgements: list = [None] * len(questions)
    for chunk in chunks():
        parsed = parse_chunk(chunk, parser, codes, recipe.generator.samples, recipe.select.keep)
        for i in range(chunk.n_questions):
            row, answer = int(parsed.chosen[i]), parsed.predicted[i]
            if parsed.failed[i] or row < 0 or answer is None or (recipe.select.drop_truncated and parsed.truncated[i]):
                continue
            question = questions[chunk.start + i]
            judgements[chunk.start + i] = critic.Judgement(question.id, _judge_variables(question, judged_trace(chunk, row), answer, recipe.critic.show_label))
    result = critic.grade(recipe.critic, judgements, run_dir / publish.JOURNAL_FILE, generate=generate, show_progress=show_progress)
    return result.grades, result.stats


def without_cut_samples(chunk: TraceChunk, cut: set[str]) -> tuple[TraceChunk, np.ndarray | None]:
    """The chunk with the traces adaptive deepconf cut taken out of their questions' samples, and
    which rows those are (None if none).

    They stay in the chunk's rows, so the traces table records them (``finish_reason:
    early_stop``), but no metric, agreement or ``n_samples`` counts them, and since they are not
    planned they do not make their question failed. This is DeepConf's own vote, and it keeps the
    kept set nearer fixed K's than counting a cut trace as a sample with no answer (measured in
    bench/README.md: Jaccard 0.73-0.77 against 0.33-0.46).
    """
    is_cut = np.fromiter((fp in cut for fp in chunk.fingerprint), dtype=bool, count=chunk.n_traces)
    if not is_cut.any():
        return chunk, None
    slot_cut = np.zeros(chunk.slots.shape, dtype=bool)
    present = chunk.slots >= 0
    slot_cut[present] = is_cut[chunk.slots[present]]
    slot_cut[:, 0] = False  # references are never cut
    return replace(chunk, slots=np.where(slot_cut, -1, chunk.slots), planned=chunk.planned & ~slot_cut), is_cut


def curate_chunks(
    recipe: Recipe,
    questions: Sequence[Question],
    chunks: Chunks,
    *,
    failed_traces: int,
    provenance: dict,
    run_dir: Path,
    recipe_yaml: str,
    critic: dict | None = None,
    critic_grades: np.ndarray | None = None,
    stages: dict[str, StageStats] | None = None,
    adaptive=None,
    imported: dict | None = None,
) -> publish.RunSummary:
    """Parse and score chunk by chunk, writing traces and unselected scored shards; select; write scored and filtered.

    ``chunks()`` must give the questions' chunks in order, each call a fresh pass.
    ``adaptive`` (an ``adaptive.AdaptiveOutcome``): questions may have fewer than K samples (the
    grid plans only those granted), and questions that stopped early are ranked by the key
    adaptive sampling proved for them (docs/adaptive.md).
    ``imported`` (``trace_import.ImportResult.summary()``): the traces were read, not generated;
    questions may have fewer than K samples, and the card says where the traces came from.
    """
    stages = dict(stages or {})
    parse_stage, score_stage, select_stage, publish_stage = StageStats(), StageStats(), StageStats(), StageStats()
    parser, codes = AnswerParser(recipe.answer), AnswerCodes(recipe.answer.classes)
    k = recipe.generator.samples
    n = len(questions)
    names = list(dict.fromkeys([recipe.score.metric, *(recipe.score.metrics or [m for m in METRICS if m != "critic"])]))
    if critic_grades is not None and "critic" not in names:
        names.append("critic")
    needs_similarity = bool(k) and any("similarity" in METRICS[name].requires for name in names)
    layout = tables.QuestionColumns.of(questions, bool(recipe.source.label_column))

    # the global selection's inputs: scalars per question
    predicted = np.full(n, None, dtype=object)
    uncertainty = np.full(n, np.nan)
    tiebreak = np.full(n, np.nan)
    has_tiebreak = False
    truncated = np.zeros(n, dtype=bool)
    failed = np.zeros(n, dtype=bool)
    computed: set[str] = set()
    skipped: dict[str, str] = {}
    traces = unparsed = truncated_traces = cut_traces = unfinished_traces = unaligned_traces = thinking_traces = 0
    unfinished = np.zeros(n, dtype=bool)

    partial_dir = run_dir / PARTIAL_DIR
    tables.remove_tree(partial_dir)
    unselected = tables.ShardWriter(partial_dir, "scored")
    traces_writer = tables.ShardWriter(run_dir / "traces", "train", tables.TRACES_SCHEMA)
    scored_writer = tables.ShardWriter(run_dir / "data", "scored")
    filtered_writer = tables.ShardWriter(run_dir / "data", "filtered")
    try:
        for chunk in chunks():
            cut_mask = None
            if adaptive is not None and adaptive.cut:
                chunk, cut_mask = without_cut_samples(chunk, adaptive.cut)
            a, b = chunk.start, chunk.start + chunk.n_questions
            chunk_questions = questions[a:b]
            t0 = time.monotonic()
            parsed = parse_chunk(chunk, parser, codes, k, recipe.select.keep)
            t1 = time.monotonic()
            similarity = None
            if needs_similarity:
                text_of = chunk.text + [""]  # row -1 reads the empty text at the end
                similarity = SIMILARITIES[recipe.score.similarity].fn(
                    [text_of[row] for row in chunk.slots[:, 0]],
                    [[text_of[row] for row in slots] for slots in chunk.slots[:, 1 : k + 1]],
                    parsed.reference_codes,
                    parsed.sample_codes,
                    model=recipe.score.similarity_model,
                )
            inputs = ScoringInputs(
                # reasoning traces: the token metrics read score.span (the answer by default), DeepConf the whole output
                reference=chunk.token_arrays(chunk.slots[:, 0], span=recipe.score.span),
                reference_whole=chunk.token_arrays(chunk.slots[:, 0]) if recipe.score.span != "whole" else None,
                group_window=recipe.score.group_window,
                tail_tokens=recipe.score.tail_tokens,
                reference_answers=parsed.reference_codes,
                sample_answers=parsed.sample_codes,
                similarity=similarity,
                critic_grades=critic_grades[a:b] if critic_grades is not None else None,
                has_reference=recipe.generator.reference,
                # variable K (adaptive sampling, imported traces): consistency terms average over the samples drawn
                sampled=(chunk.slots[:, 1 : k + 1] >= 0) if adaptive is not None or not chunk.planned[:, 1 : k + 1].all() else None,
                no_token_logprobs=bool(chunk.logprob_kind) and all(kind == "none" for kind in chunk.logprob_kind),
            )
            scores = compute_scores(inputs, names)
            computed.update(scores.values)
            for name, reason in scores.skipped.items():
                skipped.setdefault(name, reason)
            metric_values = {name: scores.values.get(name, np.full(chunk.n_questions, np.nan)) for name in names}
            if recipe.score.metric in scores.values:
                # ranked by (uncertainty, tie-break): CoCoA ties (all samples agree) are ordered by the confidence metric
                chunk_uncertainty, chunk_tiebreak = selection_keys(recipe.score.metric, scores.values)
                uncertainty[a:b] = chunk_uncertainty
                if chunk_tiebreak is not None:
                    tiebreak[a:b], has_tiebreak = chunk_tiebreak, True
                if adaptive is not None and adaptive.selection_keys:
                    for i, question in enumerate(chunk_questions):
                        if question.id in adaptive.selection_keys:  # stopped early: ranked by its proven bound
                            uncertainty[a + i], tiebreak[a + i] = adaptive.selection_keys[question.id]
            predicted[a:b] = parsed.predicted
            truncated[a:b], failed[a:b] = parsed.truncated, parsed.failed
            unfinished[a:b] = parsed.unfinished
            t2 = time.monotonic()
            unselected.write(tables.scored_table(chunk_questions, layout, chunk, parsed, codes, k, uncertainty[a:b], metric_values, recipe.publish.thinking_format))
            traces_writer.write(tables.traces_table(chunk_questions, chunk, parsed, chunk.token_strings()))
            traces += chunk.n_traces
            chunk_unfinished = [row for row, a in enumerate(chunk.alignment) if a == "unfinished" and (cut_mask is None or not cut_mask[row])]
            thinking_traces += sum(r is not None for r in chunk.reasoning)
            chunk_unparsed = sum(answer is None for answer in parsed.trace_answers) - sum(parsed.trace_answers[row] is None for row in chunk_unfinished)
            unfinished_traces += len(chunk_unfinished)
            unaligned_traces += chunk.alignment.count("unaligned")
            chunk_cut = 0
            if cut_mask is not None:  # a cut trace's partial text is no unreadable answer: it counts as early_stop
                chunk_cut = int(cut_mask.sum())
                chunk_unparsed -= sum(parsed.trace_answers[row] is None for row in np.flatnonzero(cut_mask))
            unparsed += chunk_unparsed
            cut_traces += chunk_cut
            truncated_traces += sum(reason == "length" for reason in chunk.finish_reason)
            parse_stage.seconds += t1 - t0
            score_stage.seconds += t2 - t1
            publish_stage.seconds += time.monotonic() - t2
        if recipe.score.metric not in computed:
            raise ValueError(f"metric {recipe.score.metric!r} cannot be computed: {skipped.get(recipe.score.metric)}")
        skipped = {name: reason for name, reason in skipped.items() if name not in computed}

        t0 = time.monotonic()
        eligible = None
        if recipe.critic is not None:
            from curation.critic import eligible as critic_eligible

            eligible = critic_eligible(critic_grades, recipe.critic.min_grade)
        ids = np.array([q.id for q in questions], dtype=object)
        # select.require_correct (SynthPert): label-using, so the card marks the dataset as not label-free
        incorrect = np.array([p is not None and p != q.label for p, q in zip(predicted, questions)], dtype=bool) if recipe.select.require_correct else None
        selection = select(
            ids, predicted, uncertainty, tiebreak if has_tiebreak else None, recipe.select, truncated=truncated, failed=failed, eligible=eligible, incorrect=incorrect,
            unfinished=unfinished,
        )
        select_stage.seconds = time.monotonic() - t0

        t0 = time.monotonic()
        unselected_shards = unselected.close()
        traces_writer.close()
        never_computed = [name for name in names if name not in computed]
        tables.write_selected(unselected_shards, scored_writer, filtered_writer, selection.kept, selection.drop_reason, never_computed)
        scored_writer.close()
        filtered_writer.close()
    except BaseException:
        for writer in (unselected, traces_writer, scored_writer, filtered_writer):
            writer.abort()
        raise
    finally:
        tables.remove_tree(partial_dir)

    kept = int(selection.kept.sum())
    parse_stage.rows_in, parse_stage.rows_out = traces, traces - unparsed - cut_traces - unfinished_traces
    parse_stage.drop("unparsed_answer", unparsed)
    # a trace whose thinking never closed has no answer; it is not an unreadable one
    parse_stage.drop("unfinished_thinking", unfinished_traces)

    parse_stage.drop("early_stop", cut_traces)  # adaptive deepconf: cut while streaming, not a sample
    score_stage.rows_in = n
    score_stage.rows_out = int(np.isfinite(uncertainty).sum())
    score_stage.drop("uncertainty_undefined", n - score_stage.rows_out)
    select_stage.rows_in, select_stage.rows_out = n, kept
    for reason, count in Counter(r for r in selection.drop_reason if r is not None).items():
        select_stage.drop(reason, count)
    summary = publish.RunSummary(
        name=recipe.name,
        questions=n,
        traces=traces,
        unparsed_traces=unparsed,
        failed_traces=failed_traces,
        truncated_traces=truncated_traces,
        kept=kept,
        metric=recipe.score.metric,
        similarity=recipe.score.similarity,
        per_class_before=dict(sorted(Counter(a if a is not None else "(unparsed)" for a in predicted).items())),
        per_class_after=dict(sorted(Counter(predicted[i] for i in np.flatnonzero(selection.kept)).items())),
        drop_reasons=dict(sorted(Counter(r for r in selection.drop_reason if r is not None).items())),
        budget=selection.budget,
        generation={
            "samples": k,
            "reference": recipe.generator.reference,
            # imported traces: nothing here sampled them, so no sampling settings are claimed
            **({"imported": imported} if imported is not None else {
                "temperature": recipe.generator.temperature,
                "top_p": recipe.generator.top_p,
                "max_new_tokens": recipe.generator.max_new_tokens,
            }),
            **({"critic": critic} if recipe.critic is not None else {}),
            **({"adaptive": adaptive.summary()} if adaptive is not None else {}),
        },
        provenance={
            **provenance,
            "curate_version": __import__("curation").__version__,
            "recipe_fingerprint": fingerprint_recipe(recipe),
            "created": publish.today(),
        },
        metrics_computed=[name for name in names if name in computed],
        metrics_skipped=skipped,
        reasoning={
            "traces_with_thinking": thinking_traces,
            "unfinished_thinking": unfinished_traces,
            "unaligned": unaligned_traces,  # answer tokens that do not give the answer text: their span metrics are NaN
            "scored_span": recipe.score.span,
        },
    )
    publish_stage.rows_in, publish_stage.rows_out = n, n
    stages.update(parse=parse_stage, score=score_stage, select=select_stage)
    if recipe.critic is not None:
        critic_stage = StageStats(rows_in=int(critic.get("requested", 0)) if critic else 0)
        critic_stage.rows_out = critic_stage.rows_in - sum(int((critic or {}).get(key, 0)) for key in ("failed", "unreadable", "missing"))
        for key in ("failed", "unreadable", "missing"):
            critic_stage.drop(key, int((critic or {}).get(key, 0)))
        first = ("source", "generate", "scorer")
        stages = {**{k_: v for k_, v in stages.items() if k_ in first}, "critic": critic_stage, **{k_: v for k_, v in stages.items() if k_ not in first}}
    t0 = time.monotonic()
    plot = pa.table({"answer": pa.array(list(predicted), pa.string()), "uncertainty": pa.array(uncertainty), "kept": pa.array(selection.kept)})
    stages["publish"] = publish_stage
    summary.stages = {name: stage.to_json() for name, stage in stages.items()}
    publish.write_run_folder_metadata(run_dir, summary, recipe, recipe_yaml, plot)
    publish_stage.seconds += time.monotonic() - t0
    return summary


def judged_trace(chunk: TraceChunk, row: int) -> str:
    """The trace a judge reads: the answer text, after a reasoning trace's thinking as the <think> block SynthPert's critic judges."""
    thinking = chunk.reasoning[row]
    return chunk.text[row] if thinking is None else f"<think>{thinking}</think>{chunk.text[row]}"


def _judge_variables(question: Question, text: str | None, answer: str | None, show_label: bool) -> dict:
    """Template variables of the judge prompt: the question, the kept trace, its answer, the source columns."""
    user = [m["content"] for m in question.messages if m.get("role") == "user"]
    variables = {**question.columns, "question": user[-1] if user else "", "trace": text or "", "answer": answer}
    if show_label:
        variables["label"] = question.label
    return variables


def rescore(run_dir: Path, overrides: dict | None = None, *, show_progress: bool = True, chunk_questions: int | None = None) -> publish.RunSummary:
    """Recompute scores and selection from the journal (no generation); `overrides` patch score/select."""
    import yaml

    from curation.run_folder import RunFolder

    recipe = RunFolder(run_dir).recipe(overrides)
    questions = _questions_from_scored(run_dir, recipe)
    if recipe.source.traces is not None:
        return _rescore_imported(run_dir, recipe, questions, chunk_questions, show_progress)
    journal_path = run_dir / publish.JOURNAL_FILE
    with Journal(journal_path) as journal:
        provenance = journal.get_meta("provenance", {})
        backend = _IdentityOnly(provenance, recipe)
        requests = plan_requests(questions, recipe.generator, backend)
        adaptive_outcome = None
        if recipe.generator.adaptive is not None:  # replay the run's stopping decisions from the journal
            from curation import adaptive

            adaptive_outcome = adaptive.sample(recipe, questions, requests, journal, backend.fingerprint_params(recipe.generator), None)
            requests = adaptive_outcome.requests
        fingerprints = [r.fingerprint for r in requests]
        if not journal.done(fingerprints):
            raise ValueError(f"the journal in {run_dir} has none of this recipe's traces; did the generator settings change? Run `curate run` instead.")
        failed_traces = len(journal.failures(fingerprints))
    grid = fingerprint_grid(requests, [q.id for q in questions], recipe.generator.samples)
    del requests, fingerprints
    scorer_key, provenance = _run_scorer(recipe, questions, grid, journal_path, provenance, {}, generate=False)
    chunks = journal_chunks(journal_path, grid, chunk_questions, scorer=scorer_key)
    recipe_yaml = yaml.safe_dump(recipe.model_dump(mode="json", exclude_none=True), sort_keys=False, allow_unicode=True, width=100)
    grades, critic_stats = grade_with_critic(recipe, questions, chunks, run_dir, generate=False, show_progress=show_progress)
    return curate_chunks(
        recipe, questions, chunks, failed_traces=failed_traces, provenance=provenance, run_dir=run_dir, recipe_yaml=recipe_yaml, critic=critic_stats, critic_grades=grades,
        adaptive=adaptive_outcome,
    )


def _questions_from_scored(run_dir: Path, recipe: Recipe) -> list[Question]:
    """The questions back from the scored shards, reading only the columns that make a question."""
    import pyarrow.parquet as pq

    from curation.run_folder import RunFolder

    shards = RunFolder(run_dir).split_files("scored")
    if not shards:
        raise FileNotFoundError(f"{run_dir} is not a run folder (no {publish.SCORED_FILE})")
    questions = []
    for shard in shards:
        file = pq.ParquetFile(shard)
        names = file.schema_arrow.names
        wanted = sorted(_question_columns(names, recipe) | ({"id", "prompt", "label", "teacher_prompt"} & set(names)), key=names.index)
        reserved = {"id", "prompt", "label", "teacher_prompt"}
        for batch in file.iter_batches(batch_size=8192, columns=wanted):
            for row in batch.to_pylist():
                columns = {key: value for key, value in row.items() if key not in reserved}
                questions.append(Question(id=row["id"], messages=row["prompt"], columns=columns, label=row.get("label"), teacher_messages=row.get("teacher_prompt")))
    return questions


def _question_columns(column_names: Sequence[str], recipe: Recipe) -> set[str]:
    """Columns of the scored split that came from the source (everything curate did not add)."""
    from curation.source import RESERVED_COLUMNS

    added = RESERVED_COLUMNS | set(METRICS)
    return {name for name in column_names if name not in added}


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


def publish_from_journal(
    loaded: LoadedRecipe, run_dir: Path, *, show_progress: bool = True, chunk_questions: int | None = None, generate_stage: StageStats | None = None
) -> publish.RunSummary:
    """Parse, score, select and write the run folder from the run's journal, as `run` does after generating.

    ``generate_stage``: the shards' generate stages added up (a merged run), so its stats.json has
    every stage's section, as an unsharded run's has.
    """
    recipe = loaded.recipe
    started = time.monotonic()
    source = load_questions(loaded)
    stages = {"source": source_stage_of(source, time.monotonic() - started)}
    if generate_stage is not None:
        stages["generate"] = generate_stage
    journal_path = run_dir / publish.JOURNAL_FILE
    with Journal(journal_path) as journal:
        provenance = journal.get_meta("provenance", {})
        requests = plan_requests(source.questions, recipe.generator, _IdentityOnly(provenance, recipe))
        failed_traces = len(journal.failures(r.fingerprint for r in requests))
    grid = fingerprint_grid(requests, [q.id for q in source.questions], recipe.generator.samples)
    del requests
    scorer_key, provenance = _run_scorer(recipe, source.questions, grid, journal_path, provenance, stages, generate=True, show_progress=show_progress)
    chunks = journal_chunks(journal_path, grid, chunk_questions, scorer=scorer_key)
    grades, critic_stats = grade_with_critic(recipe, source.questions, chunks, run_dir, generate=True, show_progress=show_progress)
    return curate_chunks(
        recipe, source.questions, chunks, failed_traces=failed_traces, provenance=provenance, run_dir=run_dir,
        recipe_yaml=_recipe_yaml_for(loaded, run_dir), critic=critic_stats, critic_grades=grades, stages=stages,
    )
