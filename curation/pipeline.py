"""The run, end to end: source -> generate (+ scorer, critic) -> parse -> score -> select -> write.

Each stage lives in its own module and counts what it did itself (a ``StageStats``); this file
only passes data from one to the next and adds the counts up. Every way to a run folder (``run``,
``curate score``, ``curate merge`` and Ray, imported traces, the Python ``curate``) ends the same:
``inputs_from_journal`` (or traces in hand) gives a ``JournalInputs``, and ``finish`` makes the folder
in four passes:

    score pass    parse and score the journal a chunk of whole questions at a time (``journal.read_chunks``),
                  writing the traces and the unselected scored rows; keep per question only the scalars
                  the selection needs (predicted class, uncertainty, tie-break, flags)
    select pass   the global selection over those scalars (``select``)
    write pass    split the unselected rows into scored and filtered (``tables.RunWriters``)
    summary       stats.json, the plot and the card (``dataset_card``)

Memory is one chunk plus those scalars, whatever the size of the run.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

import curation
from curation import dataset_card, tables
from curation.generate import GenerationStats, RecordedIdentity, make_backend, plan_requests, run_generation
from curation.journal import Journal, TraceChunk, chunks_from_traces, fingerprint_grid
from curation.parse import AnswerCodes, AnswerParser, parse_chunk, parse_stage, read_confidence, trace_flags
from curation.recipe.dump import fingerprint_recipe, resolved_recipe_yaml
from curation.recipe.load import LoadedRecipe
from curation.recipe.sections import Recipe
from curation.run_folder import RunFolder
from curation.score import METRICS, SIMILARITIES, ScoringInputs, compute_scores, sample_similarity_matrix, score_stage, selection_keys
from curation.select import select
from curation.source import load_questions, mark_calibration
from curation.types import Question, StageStats, Trace, TraceRequest

log = logging.getLogger(__name__)

TRACE_TOKENS = "trace_tokens"  # the learned score's length input: the kept trace's tokens over score.span

# Questions per chunk of the streamed passes: about 0.5 MB of token data per question of 9 traces
# x 1,000 tokens with top-5, so a chunk holds ~16 MB and its temporaries a few times that.
# CURATE_CHUNK_QUESTIONS overrides (tests set it small).
CHUNK_QUESTIONS = int(os.environ.get("CURATE_CHUNK_QUESTIONS", 32))

Chunks = Callable[[], Iterator[TraceChunk]]  # a fresh pass over the run's chunks each call


@dataclass
class RunResult:
    run_dir: Path
    summary: dataset_card.RunSummary
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
    source = load_questions(loaded)
    if not source.questions:
        raise ValueError("the source produced no questions (check source.filter and source.limit)")
    run_dir.mkdir(parents=True, exist_ok=True)
    generated = generate_into_journal(recipe, source.questions, RunFolder(run_dir).journal, show_progress=show_progress)
    inputs = inputs_from_journal(
        recipe, source.questions, generated.grid, run_dir, provenance=generated.provenance, recipe_yaml=_recipe_yaml_for(loaded, run_dir),
        generate=True, failed_traces=generated.failed_traces, stages={"source": source.stage(), "generate": generated.stats.stage()},
        adaptive=generated.adaptive, show_progress=show_progress, chunk_questions=chunk_questions,
    )
    return RunResult(run_dir, finish(inputs, run_dir, generate=True, show_progress=show_progress), generated.stats)


@dataclass
class GeneratedTraces:
    """What generation left in the journal: where each question's traces are, and what made them."""

    grid: list  # [n][1 + K] fingerprints (journal.fingerprint_grid)
    provenance: dict
    failed_traces: int
    stats: GenerationStats
    adaptive: Any = None  # adaptive.AdaptiveOutcome when generator.adaptive is set


def generate_into_journal(recipe: Recipe, questions: Sequence[Question], journal_path: Path, *, show_progress: bool = True) -> GeneratedTraces:
    """The generate stage: every planned trace the journal lacks (only those selection can need, with generator.adaptive)."""
    backend = make_backend(recipe.generator)
    try:
        requests = plan_requests(questions, recipe.generator, backend)
        with Journal(journal_path) as journal:
            outcome = None
            if recipe.generator.adaptive is not None:  # budget-aware: only the samples selection can need
                from curation import adaptive

                outcome = adaptive.sample(
                    recipe, questions, requests, journal, backend.fingerprint_params(recipe.generator),
                    lambda batch: run_generation(batch, backend, journal, show_progress=show_progress),
                )
                requests, stats = outcome.requests, outcome.stats
            else:
                stats = run_generation(requests, backend, journal, show_progress=show_progress)
            # identity and fingerprint settings let `curate score` find these traces again without a backend
            provenance = {**backend.provenance(), "identity": backend.model_identity(), "fingerprint_params": backend.fingerprint_params(recipe.generator)}
            journal.set_meta("provenance", provenance)
            failed_traces = len(journal.failures(r.fingerprint for r in requests))
    finally:
        asyncio.run(backend.aclose())
    grid = fingerprint_grid(requests, [q.id for q in questions], recipe.generator.samples)
    return GeneratedTraces(grid, provenance, failed_traces, stats, outcome)


def _run_scorer(recipe: Recipe, questions: Sequence[Question], grid, journal_path: Path, provenance: dict, stages: dict, *, generate: bool, show_progress: bool = True):
    """The scorer stage (teacher-forced token logprobs, curation.scorer): its journal key, and the provenance with the scorer in it."""
    if recipe.scorer is None:
        return None, provenance
    from curation import scorer

    outcome = scorer.run_scorer(recipe, questions, grid, journal_path, generate=generate, show_progress=show_progress)
    if outcome.key is None:
        return None, provenance
    if generate:
        stages["scorer"] = outcome.stage()
    with Journal(journal_path) as journal:
        recorded = journal.get_meta(scorer.PROVENANCE_KEY) or {}
    return outcome.key, {**provenance, "scorer": {key: recorded.get(key) for key in ("backend", "model_id", "server_version", "top_logprobs", "traces", "retokenized")}}


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
    journal_path = RunFolder(run_dir).journal
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
    mark_calibration(result.questions, recipe)  # calibrate.size holds out labelled imported questions too
    imported = result.summary()
    with Journal(journal_path) as journal:
        journal.set_meta("provenance", provenance)
        journal.set_meta(IMPORT_META, {
            "ids": [q.id for q in result.questions], "grid": result.grid, "samples": result.samples, "reference": result.has_reference,
            "summary": imported, "identity": identity, "logprob_kinds": result.logprob_kinds,
        })
    # traces without logprobs get them from the recipe's scorer (teacher forcing), journaled beside them
    inputs = inputs_from_journal(
        scoring_recipe(recipe, result.samples, result.has_reference), result.questions, result.grid, run_dir, provenance=provenance,
        recipe_yaml=_recipe_yaml_for(loaded, run_dir), generate=True, stages={"read_traces": result.stats}, imported=imported,
        show_progress=show_progress, chunk_questions=chunk_questions,
    )
    return RunResult(run_dir, finish(inputs, run_dir, generate=True, show_progress=show_progress), None)


def _unchanged_import(run_dir: Path, recipe: Recipe, identity: dict):
    """A rerun on files that did not change reads none of them again: the questions come back from the
    run's scored split and the traces' fingerprints from the journal. None when anything differs."""
    from curation import trace_import

    journal_path = RunFolder(run_dir).journal
    if not journal_path.exists() or not RunFolder(run_dir).split_files("scored"):
        return None
    with Journal(journal_path) as journal:
        stored = journal.get_meta(IMPORT_META)
    if not stored or stored.get("identity") != identity:
        return None
    questions = questions_from_scored(run_dir, recipe)
    if [q.id for q in questions] != stored["ids"]:
        return None
    result = trace_import.ImportResult.from_stored(stored, questions)
    result.stats.seconds = 0.0
    return result


def _rescore_imported(run_dir: Path, recipe: Recipe, questions: list[Question], chunk_questions: int | None, show_progress: bool) -> dataset_card.RunSummary:
    """`curate score` of an imported run: the questions from the scored split, the traces by the fingerprints the import recorded."""
    with Journal(RunFolder(run_dir).journal) as journal:
        provenance = journal.get_meta("provenance", {})
        stored = journal.get_meta(IMPORT_META)
    if not stored:
        raise ValueError(f"the journal in {run_dir} has no imported traces; run `curate run` on the recipe first")
    row_of = {qid: i for i, qid in enumerate(stored["ids"])}
    grid = [stored["grid"][row_of[q.id]] for q in questions]
    inputs = inputs_from_journal(
        scoring_recipe(recipe, stored["samples"], stored["reference"]), questions, grid, run_dir, provenance=provenance,
        recipe_yaml=resolved_recipe_yaml(recipe), generate=False, stages=stages_not_rerun(run_dir), imported=stored["summary"], chunk_questions=chunk_questions,
    )
    return finish(inputs, run_dir, generate=False, show_progress=show_progress)


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
) -> dataset_card.RunSummary:
    """Parse, score, select and publish from ``Trace`` objects already in hand (no generation).

    The small-run entry point (tests, scripts); ``run`` and ``rescore`` stream from the journal.
    ``critic_mode``: "generate" asks the judge for what the journal lacks; "journal" only reads
    judgements already there (rescoring never calls a backend).
    """
    grid = fingerprint_grid(requests, [q.id for q in questions], recipe.generator.samples)
    chunks: Chunks = lambda: chunks_from_traces(grid, traces, chunk_questions or CHUNK_QUESTIONS)  # noqa: E731
    inputs = JournalInputs(recipe, questions, chunks, provenance, recipe_yaml, failed_traces=len(failures), adaptive=adaptive)
    return finish(inputs, run_dir, generate=critic_mode == "generate", show_progress=show_progress)


def grade_with_critic(recipe: Recipe, questions: Sequence[Question], chunks: Chunks, run_dir: Path, *, generate: bool, show_progress: bool = True):
    """The critic stage: the judge's grade of every question's kept trace that could still be kept.

    Returns the ``critic.CriticResult`` (grades [n], the judge's counts), or None without a critic
    section. One pass over the chunks to build the judgements; their text is held until the judge has answered.
    """
    if recipe.critic is None:
        return None
    from curation import critic

    parser, codes = AnswerParser(recipe.answer), AnswerCodes(recipe.answer.classes)
    judgements: list = [None] * len(questions)
    for chunk in chunks():
        parsed = parse_chunk(chunk, parser, codes, recipe.generator.samples, recipe.select.completion)
        for i in range(chunk.n_questions):
            row, answer = int(parsed.chosen[i]), parsed.predicted[i]
            if parsed.failed[i] or row < 0 or answer is None or (recipe.select.drop_truncated and parsed.truncated[i]):
                continue
            question = questions[chunk.start + i]
            judgements[chunk.start + i] = critic.Judgement(question.id, _judge_variables(question, judged_trace(chunk, row), answer, recipe.critic.show_label))
    return critic.grade(recipe.critic, judgements, RunFolder(run_dir).journal, generate=generate, show_progress=show_progress)


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


@dataclass
class JournalInputs:
    """What the stages after generation read, wherever the traces came from (generated, merged, imported, in hand).

    ``chunks()`` gives the questions' chunks in order, each call a fresh pass. ``adaptive`` (an
    ``adaptive.AdaptiveOutcome``): questions may have fewer than K samples, and those that stopped
    early are ranked by the key adaptive sampling proved for them (docs/adaptive.md). ``imported``
    (``trace_import.ImportResult.summary()``): the traces were read, not generated, and the card
    says where from. ``stages``: the sections of the stages before this point (source, generate, ...).
    """

    recipe: Recipe
    questions: Sequence[Question]
    chunks: Chunks
    provenance: dict
    recipe_yaml: str
    failed_traces: int = 0
    stages: dict[str, StageStats] = field(default_factory=dict)
    adaptive: Any = None
    imported: dict | None = None


def inputs_from_journal(
    recipe: Recipe, questions: Sequence[Question], grid, run_dir: Path, *, provenance: dict, recipe_yaml: str, generate: bool,
    failed_traces: int = 0, stages: dict[str, StageStats] | None = None, adaptive=None, imported: dict | None = None,
    show_progress: bool = True, chunk_questions: int | None = None,
) -> JournalInputs:
    """The journal's traces of ``grid`` as the stages after generation read them; with a ``scorer:``,
    their token logprobs are the scorer's (run now for what the journal lacks when ``generate``)."""
    stages = dict(stages or {})
    journal_path = RunFolder(run_dir).journal
    scorer_key, provenance = _run_scorer(recipe, questions, grid, journal_path, provenance, stages, generate=generate, show_progress=show_progress)
    chunks = journal_chunks(journal_path, grid, chunk_questions, scorer=scorer_key)
    return JournalInputs(recipe, questions, chunks, provenance, recipe_yaml, failed_traces, stages, adaptive, imported)


def finish(inputs: JournalInputs, run_dir: Path, *, generate: bool, show_progress: bool = True) -> dataset_card.RunSummary:
    """Critic, parse, score, select and write: the one way from traces to a run folder.

    ``generate``: the critic may ask its judge for what the journal lacks (``curate score`` never does).
    """
    recipe, questions = inputs.recipe, inputs.questions
    critic_result = grade_with_critic(recipe, questions, inputs.chunks, run_dir, generate=generate, show_progress=show_progress)
    stages = dict(inputs.stages)
    if critic_result is not None:
        stages["critic"] = critic_result.stage()
    grades = critic_result.grades if critic_result is not None else None
    folder = RunFolder(run_dir)
    writers = tables.RunWriters.open(folder)
    try:
        scored = ScorePass(recipe, questions, metric_names(recipe, grades is not None), grades, inputs.adaptive)
        scored.run(inputs.chunks, writers)
        started = time.monotonic()
        selection = select_pass(recipe, questions, scored.keys, grades)
        stages.update(parse=scored.parse, score=score_stage(scored.keys.uncertainty, scored.score_seconds), select=selection.stage(time.monotonic() - started))
        started = time.monotonic()
        writers.write_selected(selection.kept, selection.drop_reason, [name for name in scored.names if name not in scored.computed])
        write_seconds = scored.write_seconds + time.monotonic() - started
    except BaseException:
        writers.abort()
        raise
    finally:
        tables.remove_tree(folder.partial_dir)
    return write_summary(inputs, scored, selection, stages, critic_result, run_dir, write_seconds, writers.scored.rows)


def metric_names(recipe: Recipe, with_critic: bool) -> list[str]:
    """The metrics a run computes: the selection metric first, then the recipe's list (default: every default metric but the critic)."""
    defaults = [name for name, m in METRICS.items() if m.default and name != "critic"]
    names = list(dict.fromkeys([recipe.score.metric, *(recipe.score.metrics or defaults)]))
    if with_critic and "critic" not in names:
        names.append("critic")
    return names


@dataclass
class QuestionKeys:
    """Per question, what the global selection reads; filled chunk by chunk by the score pass."""

    predicted: np.ndarray  # [n] object: the predicted class, None when unparsed
    uncertainty: np.ndarray  # [n] the selection metric
    tiebreak: np.ndarray  # [n] the confidence metric that orders CoCoA's ties
    truncated: np.ndarray
    failed: np.ndarray
    unfinished: np.ndarray
    has_tiebreak: bool = False
    # every computed metric and the kept trace's token count: the learned score's inputs (calibrate.learn)
    features: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def empty(cls, n: int) -> "QuestionKeys":
        flags = (np.zeros(n, dtype=bool) for _ in range(3))
        return cls(np.full(n, None, dtype=object), np.full(n, np.nan), np.full(n, np.nan), *flags)

    def record_features(self, a: int, b: int, values: dict[str, np.ndarray], trace_tokens: np.ndarray) -> None:
        n = len(self.predicted)
        for name, column in {**values, TRACE_TOKENS: trace_tokens}.items():
            self.features.setdefault(name, np.full(n, np.nan))[a:b] = column


class ScorePass:
    """The first pass: parse, score and write chunk by chunk; keeps per question only the selection's scalars.

    Memory is one chunk plus those scalars, whatever the size of the run. Counts the parse stage
    itself (``parse.parse_stage``) and the seconds of scoring and writing.
    """

    def __init__(self, recipe: Recipe, questions: Sequence[Question], names: list[str], critic_grades: np.ndarray | None, adaptive=None):
        self.recipe, self.questions, self.names = recipe, questions, names
        self.critic_grades, self.adaptive = critic_grades, adaptive
        self.parser, self.codes = AnswerParser(recipe.answer), AnswerCodes(recipe.answer.classes)
        self.k = recipe.generator.samples
        self.needs_similarity = bool(self.k) and any("similarity" in METRICS[name].requires for name in names)
        needed = set().union(*(METRICS[name].requires for name in names))
        # the sample measures (curation.semantic): the K x K matrix (built from codes when it is answer
        # similarity), the samples' likelihoods, the reference's stated confidence
        self.needs_sample_matrix = bool(self.k) and "sample_similarity" in needed and recipe.score.similarity != "answer"
        self.needs_sample_tokens = bool(self.k) and "sample_logprobs" in needed
        self.needs_verbalized = "verbalized" in needed
        self.needs_p_true = "p_true" in needed and recipe.scorer is not None
        self._scorer = None  # made on first use, for P(True)
        self.layout = tables.QuestionColumns.of(questions, bool(recipe.source.label_column) or recipe.calibrate is not None, recipe.calibrate is not None)
        self.keys = QuestionKeys.empty(len(questions))
        self.computed: set[str] = set()
        self.skipped: dict[str, str] = {}
        self.parse = StageStats()
        self.flags: Counter = Counter()  # parse.trace_flags, added up
        self.score_seconds = self.write_seconds = 0.0

    def run(self, chunks: Chunks, writers: tables.RunWriters) -> None:
        for chunk in chunks():
            self.add(chunk, writers)
        metric = self.recipe.score.metric
        if metric not in self.computed:
            raise ValueError(f"metric {metric!r} cannot be computed: {self.skipped.get(metric)}")
        self.skipped = {name: reason for name, reason in self.skipped.items() if name not in self.computed}

    def add(self, chunk: TraceChunk, writers: tables.RunWriters) -> None:
        cut = None
        if self.adaptive is not None and self.adaptive.cut:
            chunk, cut = without_cut_samples(chunk, self.adaptive.cut)
        started = time.monotonic()
        parsed = parse_chunk(chunk, self.parser, self.codes, self.k, self.recipe.select.completion)
        self.parse += parse_stage(chunk, parsed, cut)
        self.flags.update(trace_flags(chunk))
        parsed_at = time.monotonic()
        self.parse.seconds += parsed_at - started
        metric_values = self.score(chunk, parsed)
        scored_at = time.monotonic()
        self.score_seconds += scored_at - parsed_at
        a, b = chunk.start, chunk.start + chunk.n_questions
        questions, thinking_format = self.questions[a:b], self.recipe.publish.thinking_format
        writers.unselected.write(tables.scored_table(questions, self.layout, chunk, parsed, self.codes, self.k, self.keys.uncertainty[a:b], metric_values, thinking_format))
        writers.traces.write(tables.traces_table(questions, chunk, parsed, chunk.token_strings()))
        self.write_seconds += time.monotonic() - scored_at

    def score(self, chunk: TraceChunk, parsed) -> dict[str, np.ndarray]:
        """Every metric of the chunk's questions; records the selection's keys. Returns name -> [q] values (NaN where skipped)."""
        scores = compute_scores(self.scoring_inputs(chunk, parsed), self.names)
        self.computed.update(scores.values)
        for name, reason in scores.skipped.items():
            self.skipped.setdefault(name, reason)
        a, b = chunk.start, chunk.start + chunk.n_questions
        keys = self.keys
        if self.recipe.score.metric in scores.values:
            # ranked by (uncertainty, tie-break): CoCoA ties (all samples agree) are ordered by the confidence metric
            uncertainty, tiebreak = selection_keys(self.recipe.score.metric, scores.values)
            keys.uncertainty[a:b] = uncertainty
            if tiebreak is not None:
                keys.tiebreak[a:b], keys.has_tiebreak = tiebreak, True
            proven = self.adaptive.selection_keys if self.adaptive is not None else {}
            for i, question in enumerate(self.questions[a:b]):
                if question.id in proven:  # stopped early: ranked by its proven bound
                    keys.uncertainty[a + i], keys.tiebreak[a + i] = proven[question.id]
        keys.predicted[a:b] = parsed.predicted
        keys.truncated[a:b], keys.failed[a:b], keys.unfinished[a:b] = parsed.truncated, parsed.failed, parsed.unfinished
        values = {name: scores.values.get(name, np.full(chunk.n_questions, np.nan)) for name in self.names}
        if self.recipe.calibrate is not None and self.recipe.calibrate.learn:
            keys.record_features(a, b, {k: v for k, v in values.items() if k in scores.values}, self._kept_trace_tokens(chunk, parsed))
        return values

    def _kept_trace_tokens(self, chunk: TraceChunk, parsed) -> np.ndarray:
        """Tokens of each question's kept trace over the scored span (NaN without one)."""
        rows = np.asarray(parsed.chosen)
        return np.where(rows >= 0, chunk.token_arrays(rows, span=self.recipe.score.span).lengths, np.nan)

    def scoring_inputs(self, chunk: TraceChunk, parsed) -> ScoringInputs:
        recipe, k = self.recipe, self.k
        a, b = chunk.start, chunk.start + chunk.n_questions
        return ScoringInputs(
            # reasoning traces: the token metrics read score.span (the answer by default), DeepConf the whole output
            reference=chunk.token_arrays(chunk.slots[:, 0], span=recipe.score.span),
            reference_whole=chunk.token_arrays(chunk.slots[:, 0]) if recipe.score.span != "whole" else None,
            group_window=recipe.score.group_window,
            tail_tokens=recipe.score.tail_tokens,
            reference_answers=parsed.reference_codes,
            sample_answers=parsed.sample_codes,
            similarity=self.similarity(chunk, parsed) if self.needs_similarity else None,
            critic_grades=self.critic_grades[a:b] if self.critic_grades is not None else None,
            has_reference=recipe.generator.reference,
            # variable K (adaptive sampling, imported traces): consistency terms average over the samples drawn
            sampled=(chunk.slots[:, 1 : k + 1] >= 0) if self.adaptive is not None or not chunk.planned[:, 1 : k + 1].all() else None,
            no_token_logprobs=bool(chunk.logprob_kind) and all(kind == "none" for kind in chunk.logprob_kind),
            samples=chunk.token_arrays(chunk.slots[:, 1 : k + 1].reshape(-1), span=recipe.score.span, top=False) if self.needs_sample_tokens else None,
            sample_similarity=self.sample_similarity(chunk, parsed) if self.needs_sample_matrix else None,
            verbalized=read_confidence([chunk.text[row] if row >= 0 else None for row in chunk.slots[:, 0]], recipe.score.confidence_regex) if self.needs_verbalized else None,
            p_true=self.p_true(chunk) if self.needs_p_true else None,
        )

    def p_true(self, chunk: TraceChunk) -> np.ndarray:
        """log P(True) of each question's reference under the scorer model (curation.scorer.p_true)."""
        from curation import scorer

        if self._scorer is None:
            self._scorer = scorer.make_scorer(self.recipe.scorer)
        questions = self.questions[chunk.start : chunk.start + chunk.n_questions]
        asked = [next((m["content"] for m in reversed(q.messages) if m.get("role") == "user"), "") for q in questions]
        answers = [chunk.text[row] if row >= 0 else None for row in chunk.slots[:, 0]]
        return np.asarray(scorer.p_true(self._scorer, asked, answers), dtype=np.float64)

    def sample_similarity(self, chunk: TraceChunk, parsed) -> np.ndarray:
        text_of = chunk.text + [""]
        texts = [[text_of[row] for row in slots] for slots in chunk.slots[:, 1 : self.k + 1]]
        return sample_similarity_matrix(self.recipe.score.similarity, texts, parsed.sample_codes, model=self.recipe.score.similarity_model)

    def similarity(self, chunk: TraceChunk, parsed) -> np.ndarray:
        text_of = chunk.text + [""]  # row -1 reads the empty text at the end
        return SIMILARITIES[self.recipe.score.similarity].fn(
            [text_of[row] for row in chunk.slots[:, 0]],
            [[text_of[row] for row in slots] for slots in chunk.slots[:, 1 : self.k + 1]],
            parsed.reference_codes,
            parsed.sample_codes,
            model=self.recipe.score.similarity_model,
        )


def select_pass(recipe: Recipe, questions: Sequence[Question], keys: QuestionKeys, critic_grades: np.ndarray | None):
    """The global selection over every question's scalars (select.select)."""
    eligible = None
    if recipe.critic is not None:
        from curation.critic import eligible as critic_eligible

        eligible = critic_eligible(critic_grades, recipe.critic.min_grade)
    ids = np.array([q.id for q in questions], dtype=object)
    # select.require_correct (SynthPert): label-using, so the card marks the dataset as not label-free
    incorrect = np.array([p is not None and p != q.label for p, q in zip(keys.predicted, questions)], dtype=bool) if recipe.select.require_correct else None
    calibration = np.array([q.calibration for q in questions], dtype=bool) if recipe.calibrate is not None else None
    # calibrate: the labels of the held-out questions, and only theirs, say which kept answers are wrong
    wrong = np.array([p != q.label for p, q in zip(keys.predicted, questions)], dtype=bool) if calibration is not None else None
    return select(
        ids, keys.predicted, keys.uncertainty, keys.tiebreak if keys.has_tiebreak else None, recipe.select,
        truncated=keys.truncated, failed=keys.failed, eligible=eligible, incorrect=incorrect, unfinished=keys.unfinished,
        calibration=calibration, wrong=wrong, calibrate=recipe.calibrate, features=keys.features,
    )


def write_summary(inputs: JournalInputs, scored: ScorePass, selection, stages: dict, critic_result, run_dir: Path, write_seconds: float, rows_written: int):
    """The summary pass: stats.json and the card, from every stage's own counts."""
    started = time.monotonic()
    summary = run_summary(inputs, scored, selection, critic_result)
    publish_stage = StageStats(rows_in=len(inputs.questions), rows_out=rows_written, seconds=write_seconds)
    stages["publish"] = publish_stage
    summary.stages = {name: stage.to_json() for name, stage in stages.items()}
    dataset_card.write_run_folder_metadata(run_dir, summary, inputs.recipe, inputs.recipe_yaml)
    publish_stage.seconds += time.monotonic() - started
    return summary


def run_summary(inputs: JournalInputs, scored: ScorePass, selection, critic_result) -> dataset_card.RunSummary:
    recipe, generator = inputs.recipe, inputs.recipe.generator
    predicted, parse = scored.keys.predicted, scored.parse
    sampling = {"temperature": generator.temperature, "top_p": generator.top_p, "max_new_tokens": generator.max_new_tokens}
    return dataset_card.RunSummary(
        name=recipe.name,
        questions=len(inputs.questions),
        traces=parse.rows_in,
        unparsed_traces=parse.dropped.get("unparsed_answer", 0),
        failed_traces=inputs.failed_traces,
        truncated_traces=scored.flags["truncated"],
        kept=int(selection.kept.sum()),
        metric=recipe.score.metric,
        similarity=recipe.score.similarity,
        per_class_before=dict(sorted(Counter(a if a is not None else "(unparsed)" for a in predicted).items())),
        per_class_after=dict(sorted(Counter(predicted[i] for i in np.flatnonzero(selection.kept)).items())),
        drop_reasons=selection.drop_counts(),
        budget=selection.budget,
        generation={
            "samples": generator.samples,
            "reference": generator.reference,
            # imported traces: nothing here sampled them, so no sampling settings are claimed
            **({"imported": inputs.imported} if inputs.imported is not None else sampling),
            **({"critic": critic_result.stats} if critic_result is not None else {}),
            **({"adaptive": inputs.adaptive.summary()} if inputs.adaptive is not None else {}),
        },
        provenance={**inputs.provenance, "curate_version": curation.__version__, "recipe_fingerprint": fingerprint_recipe(recipe), "created": dataset_card.today()},
        metrics_computed=[name for name in scored.names if name in scored.computed],
        metrics_skipped=scored.skipped,
        quality=_quality(inputs, scored, selection),
        reasoning={
            "traces_with_thinking": scored.flags["with_thinking"],
            "unfinished_thinking": parse.dropped.get("unfinished_thinking", 0),
            "unaligned": scored.flags["unaligned"],  # answer tokens that do not give the answer text: their span metrics are NaN
            "scored_span": recipe.score.span,
        },
    )


def _quality(inputs: JournalInputs, scored: ScorePass, selection) -> dict:
    """stats.json's "quality": what labels measured of the kept (select.quality_statement); `curate run` warns from it."""
    from curation.conformal import order_scores
    from curation.select import quality_statement

    recipe, keys = inputs.recipe, scored.keys
    labelled = bool(recipe.source.label_column) or recipe.calibrate is not None
    labels = np.array([q.label for q in inputs.questions], dtype=object) if labelled else None
    return quality_statement(selection, order_scores(keys.uncertainty, keys.tiebreak if keys.has_tiebreak else None), labels, keys.predicted)


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


def rescore(run_dir: Path, overrides: dict | None = None, *, show_progress: bool = True, chunk_questions: int | None = None) -> dataset_card.RunSummary:
    """Recompute scores and selection from the journal (no generation); `overrides` patch score/select."""
    recipe = RunFolder(run_dir).recipe(overrides)
    questions = questions_from_scored(run_dir, recipe)
    if recipe.source.traces is not None:
        return _rescore_imported(run_dir, recipe, questions, chunk_questions, show_progress)
    with Journal(RunFolder(run_dir).journal) as journal:
        provenance = journal.get_meta("provenance", {})
        backend = RecordedIdentity(provenance)
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
    inputs = inputs_from_journal(
        recipe, questions, grid, run_dir, provenance=provenance, recipe_yaml=resolved_recipe_yaml(recipe), generate=False,
        failed_traces=failed_traces, stages=stages_not_rerun(run_dir), adaptive=adaptive_outcome, chunk_questions=chunk_questions,
    )
    return finish(inputs, run_dir, generate=False, show_progress=show_progress)


def stages_not_rerun(run_dir: Path) -> dict[str, StageStats]:
    """`curate score` reruns the stages after generation only: the sections of those before it stay as the run recorded them."""
    recorded = RunFolder(run_dir).stats().get("stages", {})
    return {name: StageStats.from_json(recorded[name]) for name in ("source", "generate", "read_traces", "scorer") if name in recorded}


def questions_from_scored(run_dir: Path, recipe: Recipe) -> list[Question]:
    """The questions back from the scored shards, reading only the columns that make a question."""
    import pyarrow.parquet as pq

    shards = RunFolder(run_dir).split_files("scored")
    if not shards:
        raise FileNotFoundError(f"{run_dir} is not a run folder (no scored split under data/)")
    questions = []
    for shard in shards:
        file = pq.ParquetFile(shard)
        names = file.schema_arrow.names
        reserved = {"id", "prompt", "label", "teacher_prompt", "calibration"}
        wanted = sorted(_question_columns(names, recipe) | (reserved & set(names)), key=names.index)
        for batch in file.iter_batches(batch_size=8192, columns=wanted):
            for row in batch.to_pylist():
                columns = {key: value for key, value in row.items() if key not in reserved}
                questions.append(Question(
                    id=row["id"], messages=row["prompt"], columns=columns, label=row.get("label"), teacher_messages=row.get("teacher_prompt"),
                    calibration=bool(row.get("calibration")),
                ))
    mark_calibration(questions, recipe)  # calibrate.size: the same seeded draw as the run's
    return questions


def _question_columns(column_names: Sequence[str], recipe: Recipe) -> set[str]:
    """Columns of the scored split that came from the source (everything curate did not add)."""
    from curation.source import RESERVED_COLUMNS

    added = RESERVED_COLUMNS | set(METRICS)
    return {name for name in column_names if name not in added}


def publish_from_journal(
    loaded: LoadedRecipe, run_dir: Path, *, show_progress: bool = True, chunk_questions: int | None = None, generate_stage: StageStats | None = None
) -> dataset_card.RunSummary:
    """Parse, score, select and write the run folder from the run's journal, as `run` does after generating.

    ``generate_stage``: the shards' generate stages added up (a merged run), so its stats.json has
    every stage's section, as an unsharded run's has.
    """
    recipe = loaded.recipe
    source = load_questions(loaded)
    stages = {"source": source.stage(), **({"generate": generate_stage} if generate_stage is not None else {})}
    with Journal(RunFolder(run_dir).journal) as journal:
        provenance = journal.get_meta("provenance", {})
        requests = plan_requests(source.questions, recipe.generator, RecordedIdentity(provenance))
        failed_traces = len(journal.failures(r.fingerprint for r in requests))
    grid = fingerprint_grid(requests, [q.id for q in source.questions], recipe.generator.samples)
    del requests
    inputs = inputs_from_journal(
        recipe, source.questions, grid, run_dir, provenance=provenance, recipe_yaml=_recipe_yaml_for(loaded, run_dir), generate=True,
        failed_traces=failed_traces, stages=stages, show_progress=show_progress, chunk_questions=chunk_questions,
    )
    return finish(inputs, run_dir, generate=True, show_progress=show_progress)
