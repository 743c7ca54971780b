"""Adaptive sampling: pay only for the samples that selection can need (docs/adaptive.md).

With a budget of 10% per class, 90% of the questions are dropped, yet fixed-K sampling buys K
samples for every one of them. Here the references come first (one pass); from them every
question's predicted class, its confidence and each class's budget are known. Then samples are
drawn in windows, most promising questions first, and a question stops as soon as bounds on its
final (fixed-K) score prove that at least `budget` other questions of its class rank ahead of it.

``exact`` mode keeps exactly the rows a fixed-K run with the same seeds keeps, and every kept row
got all K samples, so its data equals the fixed-K run's. The bounds, per metric family:

- confidence only (msp, perplexity, mean_token_entropy): the score is the reference's, known after
  the first pass; the kept rows are sampled in full, nothing else is sampled;
- CoCoA and semantic consistency with *answer* similarity: after m of K samples with a agreeing,
  the final mean dissimilarity lies in [1 - (a + K - m)/K, 1 - a/K] (the rest agree, or none do);
  times the reference's confidence; ties broken by that confidence, as selection does;
- self_consistency: with c the largest answer count so far, the final count lies in
  [c, c + K - m], so the score lies in [1 - (c + K - m)/K, 1 - c/K].

Every other metric (model-based similarities, the critic) has no bound computed here, and neither
do backends whose samples depend on how many are asked for at once (local, OpenAI ``n``): those
runs fall back to K samples for every question, and say so.

``esc`` mode (ESC, Li et al. 2024) also stops a question whose first window agrees fully with the
reference, treating it as fully agreeing: an approximation, measured in bench/adaptive.py.

``deepconf`` mode (DeepConf, Fu et al. 2025) keeps exact mode's question stopping and also cuts
traces while they stream: the first ``warmup`` sampled traces run in full and set a threshold on
the sliding-window token confidence (curation.deepconf); every later sample is streamed with it,
and the backend closes a stream whose window confidence falls below it. A cut trace is recorded
(``finish_reason: early_stop``) but is not one of its question's samples: consistency, agreement
and ``n_samples`` count only traces that ran to the end, as DeepConf's vote leaves cut traces out.
The bounds are widened for that (the final number of samples is between the uncut ones so far and
those plus every request still to come). An approximation too, measured in bench/adaptive.py.

Decisions are a pure function of the samples already granted, replayed round by round from the
journal, so a resumed (or rescored) run re-derives the same decisions and asks only for what is
missing: an interrupted run equals an uninterrupted one.
"""

from __future__ import annotations

import enum
import logging
from collections import Counter
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from curation.deepconf import EARLY_STOP, EarlyStop, cut_at, lowest_group_confidence, warmup_threshold
from curation.journal import chunks_from_traces
from curation.parse import AnswerParser
from curation.score import METRICS, Bound, SamplesSoFar
from curation.select import class_budget
from curation.types import REFERENCE_INDEX, Question, TraceRequest

if TYPE_CHECKING:
    from curation.generate import GenerationStats
    from curation.journal import Journal
    from curation.recipe.sections import Recipe

log = logging.getLogger(__name__)

# why a question stopped before K samples
PRUNED = "cannot_make_budget"
ESC_AGREED = "first_window_agreed"


@dataclass
class AdaptiveOutcome:
    requests: list[TraceRequest]  # what the run is made of: every reference plus the samples granted
    # question id -> (uncertainty, tie-break) that selection ranks a stopped question by: its proven
    # lower bound (exact mode) or its estimate (esc); see docs/adaptive.md for why this is exact
    selection_keys: dict[str, tuple[float, float]] = field(default_factory=dict)
    stopped: dict[str, str] = field(default_factory=dict)  # question id -> PRUNED | ESC_AGREED
    fallback: str | None = None  # why every question got K samples instead
    mode: str = "exact"
    window: int = 0
    samples: int = 0  # K
    rounds: int = 0
    stats: "GenerationStats | None" = None
    # deepconf: fingerprints of the sampled traces that were (or, replayed from a journal filled
    # without cutting, would have been) cut; they are recorded but are not their question's samples
    cut: set[str] = field(default_factory=set)
    early_stop: dict | None = None  # deepconf: the threshold, window and what the warm-up was

    def summary(self) -> dict:
        """The card's and stats.json's record of how many samples questions received."""
        drawn = Counter()
        per_question = Counter(r.prompt_id for r in self.requests if r.sample_index != REFERENCE_INDEX)
        questions = {r.prompt_id for r in self.requests}
        for qid in questions:
            drawn[per_question.get(qid, 0)] += 1
        total = sum(per_question.values())
        return {
            "mode": self.mode,
            "window": self.window,
            "rounds": self.rounds,
            "fallback": self.fallback,
            "samples_drawn": total,
            "samples_fixed_k": self.samples * len(questions),
            "questions_by_samples": {str(k): v for k, v in sorted(drawn.items())},
            "stopped": dict(sorted(Counter(self.stopped.values()).items())),
            **({"early_stop": {**self.early_stop, "cut": len(self.cut)}} if self.early_stop is not None else {}),
        }


def unsupported(recipe: "Recipe", fingerprint_params: dict) -> str | None:
    """Why this recipe cannot stop early without changing what a fixed-K run keeps (None: it can)."""
    g, s = recipe.generator, recipe.score
    metric = s.metric
    if not g.reference:
        return "generator.reference is off: stopping needs the references' classes first"
    if g.backend == "local":
        return "the local backend decodes a question's traces in one batch, so fewer samples would be different samples"
    if "sampled" in fingerprint_params:
        return "the openai backend asks for the K samples with one n=K request (their content depends on n); set generator.use_n: false"
    if recipe.select.completion != "reference":
        return "select.completion: best_agreeing takes the class from the samples' majority, unknown before sampling"
    if recipe.select.require_correct:
        return "select.require_correct drops wrong answers before the budget, and the labels are read only at selection"
    if recipe.select.strategy == "random":
        return "select.strategy: random"
    if recipe.critic is not None:
        return "a critic grades the kept traces; its grades are not bounded"
    bound = METRICS[metric].bound if metric in METRICS else None
    if bound is None:
        reason = METRICS[metric].no_bound if metric in METRICS else None
        return f"no sound bound for score.metric {metric!r}" + (f": {reason}" if reason else "")
    if bound.answer_similarity_only and s.similarity != "answer":
        return f"no bound computed for score.similarity {s.similarity!r} (it needs the similarity model between windows); only answer similarity is bounded"
    return None


def _keys_order(u: np.ndarray, tb: np.ndarray, ids: np.ndarray, flag: np.ndarray) -> np.ndarray:
    # select.rank sorts by (uncertainty, tie-break, id); the flag puts a question's lower bound
    # before its own upper bound when they are equal, so a question never counts against itself
    return np.lexsort((flag, ids, tb, u))


class Status(enum.IntEnum):
    """Where a question stands in adaptive sampling."""

    ACTIVE = 0  # may get more samples
    FULL = 1  # has all K samples
    PRUNED = 2  # proven out of its class's budget (PRUNED)
    ESC = 3  # esc: its first window agreed fully, taken as fully agreeing (ESC_AGREED)
    FAILED = 4  # a granted sample failed; cannot be kept this run
    OUT = 5  # not a candidate: no reference, no answer, truncated, or no finite confidence


RANKED = (Status.ACTIVE, Status.FULL, Status.PRUNED, Status.ESC)  # still in their class's ranking


@dataclass
class SamplingState:
    """Per question (arrays over the run's questions): what its samples so far say, and its status."""

    status: np.ndarray  # Status values
    drawn: np.ndarray  # samples granted and received
    ran_to_end: np.ndarray  # of those, the ones not cut (all unless deepconf)
    agree: np.ndarray  # of those, how many give the reference's answer
    counts: list[Counter]  # answer counts among those

    @classmethod
    def start(cls, candidate: np.ndarray) -> "SamplingState":
        n = len(candidate)
        status = np.where(candidate, int(Status.ACTIVE), int(Status.OUT)).astype(np.int8)
        zeros = lambda: np.zeros(n, dtype=np.int64)  # noqa: E731
        return cls(status, zeros(), zeros(), zeros(), [Counter() for _ in range(n)])

    def so_far(self, rows: np.ndarray, confidence: np.ndarray, cuts_possible: bool) -> SamplesSoFar:
        largest = np.array([max(self.counts[i].values(), default=0) for i in rows], dtype=np.int64)
        return SamplesSoFar(confidence[rows], self.drawn[rows], self.ran_to_end[rows], self.agree[rows], largest, cuts_possible)

    def record(self, i: int, answers: Sequence[str | None], reference_answer: str | None, received: int) -> None:
        """Question i received ``received`` samples, of which ``answers`` (one per uncut sample) ran to the end."""
        self.drawn[i] += received
        for answer in answers:
            self.ran_to_end[i] += 1
            self.agree[i] += answer is not None and answer == reference_answer
            if answer is not None:
                self.counts[i][answer] += 1


@dataclass
class RoundPlan:
    pruned: list[int]  # questions proven out this round
    grants: list[tuple[int, int, int]]  # (rank in its class, question, samples to grant), most promising first


def plan_round(
    state: SamplingState,
    groups: dict[str | None, np.ndarray],
    budgets: dict[str | None, int],
    bound: Bound,
    confidence: np.ndarray,
    tiebreak: np.ndarray,
    ids: np.ndarray,
    k: int,
    window: int,
    cuts_possible: bool,
) -> RoundPlan:
    """Which questions are proven out, and how many samples each still-promising one gets next.

    Pure: reads the state, changes nothing. Within a class, a question is out once at least
    ``budget`` others are certainly ahead of its best case; the ``budget`` questions with the best
    lower bounds get samples, in full when fewer than ``budget`` others could be ahead of their
    worst case (they are kept whatever comes), else one window.
    """
    status = state.status.copy()
    pruned: list[int] = []
    grants: list[tuple[int, int, int]] = []
    for label, rows in groups.items():
        rows = rows[np.isin(status[rows], RANKED)]  # failed questions cannot be kept
        if not len(rows):
            continue
        budget = budgets[label]
        lo, hi = bound.interval(state.so_far(rows, confidence, cuts_possible), k)
        hi = np.where(status[rows] == Status.ESC, lo, hi)  # esc takes the all-agree estimate as the value
        r = len(rows)
        order = _keys_order(np.concatenate([lo, hi]), np.concatenate([tiebreak[rows]] * 2), np.concatenate([ids[rows]] * 2), np.repeat([0, 1], r))
        is_hi = order >= r
        hi_before = np.cumsum(is_hi) - is_hi  # upper bounds strictly ahead of each entry
        lo_before = np.cumsum(~is_hi) - ~is_hi
        position = np.empty(2 * r, dtype=np.int64)
        position[order] = np.arange(2 * r)
        beaten_by = hi_before[position[:r]]  # others certainly ahead of each question's best case
        may_beat = lo_before[position[r:]] - 1  # others possibly ahead of its worst case (itself excluded)
        newly_out = (status[rows] == Status.ACTIVE) & (beaten_by >= budget)
        status[rows[newly_out]] = Status.PRUNED
        pruned.extend(int(i) for i in rows[newly_out])
        # best first: the budget's worth of questions with the best lower bounds, among those not out
        alive = np.flatnonzero(status[rows] != Status.PRUNED)
        alive = alive[np.argsort(position[alive], kind="stable")][:budget]
        for rank, j in enumerate(alive):
            i = int(rows[j])
            if status[i] != Status.ACTIVE:
                continue
            left = k - int(state.drawn[i])
            grants.append((rank, i, left if may_beat[j] < budget else min(window, left)))
    grants.sort(key=lambda g: g[0])  # most promising first, across classes
    return RoundPlan(pruned, grants)


@dataclass
class _DeepConfWarmup:
    """deepconf: the warm-up traces' lowest window confidence, until the threshold is set."""

    confidence_window: int
    lowest: list[float] = field(default_factory=list)
    stop: EarlyStop | None = None
    mismatched_cuts: int = 0

    def after_round(self, outcome: AdaptiveOutcome, warmup: int, keep_top: float) -> None:
        # the warm-up traces are the first ones granted, and the journal holds them: a replay sets
        # the same threshold at the same round
        if self.stop is None and len(self.lowest) >= warmup:
            self.stop = EarlyStop(threshold=warmup_threshold(self.lowest, keep_top), window=self.confidence_window)
            outcome.early_stop = {**self.stop.to_json(), "keep_top": keep_top, "warmup_traces": len(self.lowest), "set_after_round": outcome.rounds}

    def finish(self, outcome: AdaptiveOutcome, keep_top: float) -> None:
        if outcome.early_stop is None:
            outcome.early_stop = {"threshold": None, "window": self.confidence_window, "keep_top": keep_top, "warmup_traces": len(self.lowest), "set_after_round": None}
        if self.mismatched_cuts:
            log.warning(
                "adaptive deepconf: %d traces in the journal were cut under another threshold or window than this run's; "
                "they stay cut (use a fresh run folder to regenerate them)",
                self.mismatched_cuts,
            )

    def is_cut(self, request: TraceRequest, trace) -> bool:
        """Whether a received sample was cut online, or would have been (a journal filled without cutting)."""
        if trace.finish_reason == EARLY_STOP:
            if request.early_stop is None or (trace.usage or {}).get("early_stop") != request.early_stop.to_json():
                self.mismatched_cuts += 1
            return True
        return request.early_stop is not None and cut_at(trace.top_logprobs, request.early_stop) is not None


def _receive(state: SamplingState, i: int, wanted: list[TraceRequest], results: list, parser: AnswerParser, reference_answer, deepconf: "_DeepConfWarmup | None", outcome: AdaptiveOutcome, qid: str, k: int) -> None:
    """Record question i's round: its samples' answers, cut traces, and its new status."""
    if any(t is None for t in results):
        state.status[i] = Status.FAILED  # the pipeline reports it; a rerun replays and asks again
        return
    first_window = state.drawn[i] == 0
    answers = []
    for request, t in zip(wanted, results):
        if deepconf is not None and deepconf.is_cut(request, t):
            outcome.cut.add(t.fingerprint)
            continue
        if deepconf is not None and deepconf.stop is None:
            deepconf.lowest.append(lowest_group_confidence(t.top_logprobs, deepconf.confidence_window))
        answers.append(parser(t.text))
    state.record(i, answers, reference_answer, len(results))
    if state.drawn[i] >= k:
        state.status[i] = Status.FULL
    elif outcome.mode == "esc" and first_window and state.agree[i] == state.drawn[i]:
        state.status[i] = Status.ESC
        outcome.stopped[qid] = ESC_AGREED


def _ranking_inputs(recipe: "Recipe", traces: list, ref_answers: list) -> tuple[Bound, np.ndarray, np.ndarray, np.ndarray]:
    """The metric's bound, the references' confidence and tie-break, and which questions can be kept at all."""
    metric = METRICS[recipe.score.metric]
    bound = metric.bound
    n = len(traces)
    # the same arrays, over the same rows and the same span (score.span: a reasoning trace's answer by
    # default), as the pipeline builds them from its chunks: bit-identical confidences
    grid = [[t.fingerprint if t is not None else None] for t in traces]
    chunk = next(chunks_from_traces(grid, {t.fingerprint: t for t in traces if t is not None}, chunk_questions=max(1, n)))
    arrays = chunk.token_arrays(chunk.slots[:, 0], span=recipe.score.span)
    confidence = bound.confidence(arrays) if bound.confidence is not None else np.ones(n)
    tiebreak = METRICS[metric.tiebreak].bound.confidence(arrays).astype(np.float64) if metric.tiebreak else np.zeros(n)
    tiebreak = np.where(np.isfinite(tiebreak), tiebreak, np.inf)  # as select() does
    drop_truncated = recipe.select.drop_truncated
    candidate = np.array(
        [
            t is not None and a is not None and not (drop_truncated and t.finish_reason == "length") and (bound.kind == "majority" or np.isfinite(confidence[i]))
            for i, (t, a) in enumerate(zip(traces, ref_answers))
        ],
        dtype=bool,
    )
    return bound, confidence, tiebreak, candidate


def _references_first(recipe: "Recipe", questions: Sequence[Question], by_question: dict, journal: "Journal", run) -> tuple[list, list, list]:
    references = [by_question[q.id][REFERENCE_INDEX] for q in questions]
    run(references)
    found = journal.load(r.fingerprint for r in references)
    traces = [found.get(r.fingerprint) for r in references]
    parser = AnswerParser(recipe.answer)
    return references, traces, [parser(t.text) if t is not None else None for t in traces]


def _class_groups(recipe: "Recipe", candidate: np.ndarray, answers: list) -> dict[str | None, np.ndarray]:
    if recipe.select.strategy != "per_class":  # global: one class
        return {None: np.flatnonzero(candidate)}
    return {
        label: np.flatnonzero(candidate & np.array([a == label for a in answers], dtype=bool))
        for label in sorted({answers[i] for i in np.flatnonzero(candidate)})
    }


def sample(
    recipe: "Recipe",
    questions: Sequence[Question],
    requests: Sequence[TraceRequest],
    journal: "Journal",
    fingerprint_params: dict,
    generate: Callable[[list[TraceRequest]], "GenerationStats"] | None,
) -> AdaptiveOutcome:
    """Grant samples round by round until every candidate is fully sampled or proven out.

    ``generate`` runs a batch of requests into the journal (None: replay from the journal only,
    as ``curate score`` does; a granted sample missing there makes its question failed).
    """
    config = recipe.generator
    adaptive = config.adaptive
    k = config.samples
    outcome = AdaptiveOutcome(requests=[], mode=adaptive.mode, window=min(adaptive.window, k), samples=k)
    stats_parts: list = []

    def run(batch: list[TraceRequest]) -> None:
        if generate is not None and batch:
            stats_parts.append(generate(batch))

    outcome.fallback = unsupported(recipe, fingerprint_params)
    if outcome.fallback is not None:
        log.warning("adaptive sampling falls back to %d samples per question: %s", k, outcome.fallback)
        outcome.requests = list(requests)
        run(list(requests))
        outcome.stats = _merge(stats_parts, len(requests))
        return outcome

    by_question: dict[str, dict[int, TraceRequest]] = {}
    for request in requests:
        by_question.setdefault(request.prompt_id, {})[request.sample_index] = request
    references, traces, ref_answers = _references_first(recipe, questions, by_question, journal, run)
    outcome.rounds = 1
    bound, confidence, tiebreak, candidate = _ranking_inputs(recipe, traces, ref_answers)
    ids = np.array([q.id for q in questions], dtype=object).astype(str)
    state = SamplingState.start(candidate)
    deepconf = _DeepConfWarmup(adaptive.confidence_window) if adaptive.mode == "deepconf" else None
    groups = _class_groups(recipe, candidate, ref_answers)
    budgets = {label: class_budget(len(rows), recipe.select, label) for label, rows in groups.items()}
    parser = AnswerParser(recipe.answer)
    granted: list[TraceRequest] = []

    while True:
        plan = plan_round(state, groups, budgets, bound, confidence, tiebreak, ids, k, outcome.window, deepconf is not None)
        state.status[plan.pruned] = Status.PRUNED
        for i in plan.pruned:
            outcome.stopped[ids[i]] = PRUNED
        if not plan.grants:
            break
        round_grants = _granted_requests(plan, state, by_question, ids, deepconf)
        batch = [request for _, wanted in round_grants for request in wanted]
        granted.extend(batch)
        run(batch)
        outcome.rounds += 1
        got = journal.load(r.fingerprint for r in batch)
        for i, wanted in round_grants:
            _receive(state, i, wanted, [got.get(r.fingerprint) for r in wanted], parser, ref_answers[i], deepconf, outcome, ids[i], k)
        if deepconf is not None:
            deepconf.after_round(outcome, adaptive.warmup, adaptive.keep_top)

    if deepconf is not None:
        deepconf.finish(outcome, adaptive.keep_top)

    _keys_of_stopped(outcome, state, groups, bound, confidence, tiebreak, ids, k, deepconf is not None)
    failed = int((state.status == Status.FAILED).sum())
    if failed:
        log.warning("adaptive sampling: %d questions had failed samples; rerun to retry them (until then the kept set may differ from fixed K)", failed)
    outcome.requests = references + granted
    outcome.stats = _merge(stats_parts, len(outcome.requests))
    return outcome


def _granted_requests(plan: RoundPlan, state: SamplingState, by_question: dict, ids: np.ndarray, deepconf) -> list[tuple[int, list[TraceRequest]]]:
    """The round's requests per question granted samples: the next ``step`` sample indices after those drawn
    (with DeepConf's early-stop threshold once its warm-up has set one)."""
    round_grants = []
    for _, i, step in plan.grants:
        wanted = [by_question[ids[i]][index] for index in range(state.drawn[i] + 1, state.drawn[i] + step + 1)]
        if deepconf is not None and deepconf.stop is not None:
            wanted = [replace(request, early_stop=deepconf.stop) for request in wanted]
        round_grants.append((i, wanted))
    return round_grants


def _keys_of_stopped(outcome: AdaptiveOutcome, state: SamplingState, groups: dict, bound: Bound, confidence, tiebreak, ids, k: int, deepconf: bool) -> None:
    """The selection keys of questions that stopped early: their lower bound (see docs/adaptive.md for why this is exact)."""
    for rows in groups.values():
        stopped = rows[np.isin(state.status[rows], (Status.PRUNED, Status.ESC))]
        if len(stopped):
            lo, _ = bound.interval(state.so_far(stopped, confidence, deepconf), k)
            for i, value in zip(stopped, lo):
                outcome.selection_keys[ids[i]] = (float(value), float(tiebreak[i]))


def _merge(parts: list, requested: int):
    """One GenerationStats for all rounds."""
    from curation.generate import GenerationStats

    total = GenerationStats(requested=requested)
    for part in parts:
        for f in fields(GenerationStats):
            if f.name in ("requested",):
                continue
            value = getattr(part, f.name)
            if isinstance(value, bool):
                setattr(total, f.name, getattr(total, f.name) or value)
            elif isinstance(value, (int, float)):
                setattr(total, f.name, getattr(total, f.name) + value)
            elif isinstance(value, Counter):
                getattr(total, f.name).update(value)
            elif isinstance(value, dict):
                getattr(total, f.name).update(value)
    return total
