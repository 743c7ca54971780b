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

import logging
from collections import Counter
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from curation.deepconf import EARLY_STOP, EarlyStop, cut_at, lowest_group_confidence, warmup_threshold
from curation.parse import AnswerParser
from curation.score import METRICS, TokenArrays, sequence_mean_entropy, sequence_msp, sequence_perplexity
from curation.select import class_budget
from curation.types import REFERENCE_INDEX, Question, TraceRequest

if TYPE_CHECKING:
    from curation.generate import GenerationStats
    from curation.journal import Journal
    from curation.recipe import Recipe

log = logging.getLogger(__name__)

CONFIDENCE = {"msp": sequence_msp, "perplexity": sequence_perplexity, "mean_token_entropy": sequence_mean_entropy}
BOUNDED_CONSISTENCY = {"cocoa_msp", "cocoa_ppl", "cocoa_mte", "semantic_consistency", "self_consistency"}

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
    if recipe.select.keep != "reference":
        return "select.keep: best_agreeing takes the class from the samples' majority, unknown before sampling"
    if recipe.select.require_correct:
        return "select.require_correct drops wrong answers before the budget, and the labels are read only at selection"
    if recipe.select.strategy == "random":
        return "select.strategy: random"
    if recipe.critic is not None:
        return "a critic grades the kept traces; its grades are not bounded"
    if metric not in CONFIDENCE and metric not in BOUNDED_CONSISTENCY:
        return f"no sound bound for score.metric {metric!r}"
    if metric in BOUNDED_CONSISTENCY and metric != "self_consistency" and s.similarity != "answer":
        return f"no bound computed for score.similarity {s.similarity!r} (it needs the similarity model between windows); only answer similarity is bounded"
    return None


def _keys_order(u: np.ndarray, tb: np.ndarray, ids: np.ndarray, flag: np.ndarray) -> np.ndarray:
    # select.rank sorts by (uncertainty, tie-break, id); the flag puts a question's lower bound
    # before its own upper bound when they are equal, so a question never counts against itself
    return np.lexsort((flag, ids, tb, u))


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

    reason = unsupported(recipe, fingerprint_params)
    if reason is not None:
        log.warning("adaptive sampling falls back to %d samples per question: %s", k, reason)
        outcome.fallback = reason
        outcome.requests = list(requests)
        run(list(requests))
        outcome.stats = _merge(stats_parts, len(requests))
        return outcome

    by_question: dict[str, dict[int, TraceRequest]] = {}
    for request in requests:
        by_question.setdefault(request.prompt_id, {})[request.sample_index] = request
    references = [by_question[q.id][REFERENCE_INDEX] for q in questions]
    run(references)
    outcome.rounds = 1
    ref_traces = journal.load(r.fingerprint for r in references)
    parser = AnswerParser(recipe.answer)
    n = len(questions)
    traces = [ref_traces.get(r.fingerprint) for r in references]
    ref_answers = [parser(t.text) if t is not None else None for t in traces]

    metric = recipe.score.metric
    family = "confidence" if metric in CONFIDENCE else ("self" if metric == "self_consistency" else "cocoa")
    # the same arrays, over the same rows, as the pipeline builds: bit-identical confidences
    arrays = TokenArrays.from_lists([t.token_logprobs if t else [] for t in traces], [t.top_logprobs if t else [] for t in traces])
    if family == "confidence":
        confidence = CONFIDENCE[metric](arrays)
    elif metric == "semantic_consistency" or family == "self":
        confidence = np.ones(n)
    else:
        confidence = CONFIDENCE[METRICS[metric].tiebreak](arrays)
    tiebreak_name = METRICS[metric].tiebreak
    tiebreak = CONFIDENCE[tiebreak_name](arrays).astype(np.float64) if tiebreak_name else np.zeros(n)
    tiebreak = np.where(np.isfinite(tiebreak), tiebreak, np.inf)  # as select() does

    drop_truncated = recipe.select.drop_truncated
    candidate = np.array(
        [
            t is not None and a is not None and not (drop_truncated and t.finish_reason == "length") and (family == "self" or np.isfinite(confidence[i]))
            for i, (t, a) in enumerate(zip(traces, ref_answers))
        ],
        dtype=bool,
    )
    ids = np.array([q.id for q in questions], dtype=object).astype(str)
    drawn = np.zeros(n, dtype=np.int64)  # samples granted and received so far
    agree = np.zeros(n, dtype=np.int64)  # of those, how many give the reference's answer
    counts: list[Counter] = [Counter() for _ in range(n)]
    uncut = np.zeros(n, dtype=np.int64)  # of those, how many ran to the end (all of them unless deepconf)
    deepconf = adaptive.mode == "deepconf"
    warmup_lowest: list[float] = []  # deepconf: the warm-up traces' lowest window confidence
    stop: EarlyStop | None = None  # deepconf: set once the warm-up is done
    mismatched_cuts = 0
    status = np.array(["active" if c else "out" for c in candidate], dtype=object)  # active|full|pruned|esc|failed|out
    granted: list[TraceRequest] = []

    def is_cut(request: TraceRequest, trace) -> bool:
        """Whether a received sample was cut online, or would have been (a journal filled without cutting)."""
        nonlocal mismatched_cuts
        if trace.finish_reason == EARLY_STOP:
            if request.early_stop is None or (trace.usage or {}).get("early_stop") != request.early_stop.to_json():
                mismatched_cuts += 1
            return True
        return request.early_stop is not None and cut_at(trace.top_logprobs, request.early_stop) is not None

    if recipe.select.strategy == "per_class":
        groups: dict[str | None, np.ndarray] = {}
        for label in sorted({ref_answers[i] for i in np.flatnonzero(candidate)}):
            groups[label] = np.flatnonzero(candidate & np.array([a == label for a in ref_answers], dtype=bool))
    else:  # global: one class
        groups = {None: np.flatnonzero(candidate)}
    budgets = {label: class_budget(len(rows), recipe.select, label) for label, rows in groups.items()}

    def bounds(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        m, a = drawn[rows], agree[rows]
        if family == "confidence":
            u = confidence[rows].astype(np.float64)
            return u, u
        if deepconf:
            return deepconf_bounds(rows)
        if family == "self":
            c = np.array([max(counts[i].values(), default=0) for i in rows], dtype=np.int64)
            # the same float expression as score.self_consistency, so a full question's bound is its value
            return 1.0 - (c + (k - m)) / k, 1.0 - c / k
        conf = confidence[rows]
        least = conf * (1.0 - (a + (k - m)) / k)  # the rest all agree
        most = conf * (1.0 - a / k)  # none of the rest agrees
        return np.minimum(least, most), np.maximum(least, most)

    def deepconf_bounds(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # u samples ran to the end, a of them agree; each of the r requests left may be cut or not,
        # so the final count of samples is between u and u + r. With none possible: ranked last.
        u, a, r = uncut[rows].astype(np.float64), agree[rows].astype(np.float64), (k - drawn[rows]).astype(np.float64)
        total = u + r
        with np.errstate(divide="ignore", invalid="ignore"):
            if family == "self":
                c = np.array([max(counts[i].values(), default=0) for i in rows], dtype=np.float64)
                least, most = 1.0 - (c + r) / total, 1.0 - c / total
            else:
                conf = confidence[rows]
                least, most = conf * ((u - a) / total), conf * ((u - a + r) / total)
        lo, hi = np.minimum(least, most), np.maximum(least, most)
        none = total == 0
        return np.where(none, np.inf, lo), np.where(none, np.inf, hi)

    while True:
        round_grants: list[tuple[int, int, list[TraceRequest]]] = []  # (rank in class, question, requests)
        for label, rows in groups.items():
            rows = rows[np.isin(status[rows], ("active", "full", "pruned", "esc"))]  # failed questions cannot be kept
            if not len(rows):
                continue
            budget = budgets[label]
            lo, hi = bounds(rows)
            hi = np.where(status[rows] == "esc", lo, hi)  # esc takes the all-agree estimate as the value
            r = len(rows)
            u = np.concatenate([lo, hi])
            order = _keys_order(u, np.concatenate([tiebreak[rows]] * 2), np.concatenate([ids[rows]] * 2), np.repeat([0, 1], r))
            is_hi = order >= r
            hi_before = np.cumsum(is_hi) - is_hi  # upper bounds strictly ahead of each entry
            lo_before = np.cumsum(~is_hi) - ~is_hi
            position = np.empty(2 * r, dtype=np.int64)
            position[order] = np.arange(2 * r)
            beaten_by = hi_before[position[:r]]  # others certainly ahead of each question's best case
            may_beat = lo_before[position[r:]] - 1  # others possibly ahead of its worst case (itself excluded)
            active = status[rows] == "active"
            newly_out = active & (beaten_by >= budget)
            status[rows[newly_out]] = "pruned"
            for i in rows[newly_out]:
                outcome.stopped[ids[i]] = PRUNED
            # best first: the budget's worth of questions with the best lower bounds, among those not out
            alive = np.flatnonzero(~np.isin(status[rows], ("pruned",)))
            alive = alive[np.argsort(position[alive], kind="stable")][:budget]
            for rank, j in enumerate(alive):
                i = rows[j]
                if status[i] != "active":
                    continue
                step = k - drawn[i] if may_beat[j] < budget else min(outcome.window, k - drawn[i])
                wanted = [by_question[ids[i]][index] for index in range(drawn[i] + 1, drawn[i] + step + 1)]
                if stop is not None:
                    wanted = [replace(request, early_stop=stop) for request in wanted]
                round_grants.append((rank, i, wanted))
        if not round_grants:
            break
        round_grants.sort(key=lambda g: g[0])  # most promising first, across classes
        batch = [request for _, _, wanted in round_grants for request in wanted]
        granted.extend(batch)
        run(batch)
        outcome.rounds += 1
        got = journal.load(r.fingerprint for r in batch)
        for _, i, wanted in round_grants:
            results = [got.get(r.fingerprint) for r in wanted]
            if any(t is None for t in results):
                status[i] = "failed"  # the pipeline reports it; a rerun replays and asks again
                continue
            first_window = drawn[i] == 0
            drawn[i] += len(results)
            for request, t in zip(wanted, results):
                if deepconf and is_cut(request, t):
                    outcome.cut.add(t.fingerprint)
                    continue
                uncut[i] += 1
                if deepconf and stop is None:
                    warmup_lowest.append(lowest_group_confidence(t.top_logprobs, adaptive.confidence_window))
                answer = parser(t.text)
                agree[i] += answer is not None and answer == ref_answers[i]
                if answer is not None:
                    counts[i][answer] += 1
            if drawn[i] >= k:
                status[i] = "full"
            elif adaptive.mode == "esc" and first_window and agree[i] == drawn[i]:
                status[i] = "esc"
                outcome.stopped[ids[i]] = ESC_AGREED
        if deepconf and stop is None and len(warmup_lowest) >= adaptive.warmup:
            # the warm-up traces are the first ones granted, and the journal holds them: a replay
            # sets the same threshold at the same round
            stop = EarlyStop(threshold=warmup_threshold(warmup_lowest, adaptive.keep_top), window=adaptive.confidence_window)
            outcome.early_stop = {
                **stop.to_json(),
                "keep_top": adaptive.keep_top,
                "warmup_traces": len(warmup_lowest),
                "set_after_round": outcome.rounds,
            }

    if deepconf and outcome.early_stop is None:
        outcome.early_stop = {"threshold": None, "window": adaptive.confidence_window, "keep_top": adaptive.keep_top, "warmup_traces": len(warmup_lowest), "set_after_round": None}
    if mismatched_cuts:
        log.warning(
            "adaptive deepconf: %d traces in the journal were cut under another threshold or window than this run's; "
            "they stay cut (use a fresh run folder to regenerate them)",
            mismatched_cuts,
        )

    # the selection keys of questions that stopped early: their lower bound (see docs/adaptive.md)
    for label, rows in groups.items():
        stopped = rows[np.isin(status[rows], ("pruned", "esc"))]
        if len(stopped):
            lo, _ = bounds(stopped)
            for i, value in zip(stopped, lo):
                outcome.selection_keys[ids[i]] = (float(value), float(tiebreak[i]))
    if np.any(status == "failed"):
        log.warning("adaptive sampling: %d questions had failed samples; rerun to retry them (until then the kept set may differ from fixed K)", int((status == "failed").sum()))
    outcome.requests = references + granted
    outcome.stats = _merge(stats_parts, len(outcome.requests))
    return outcome


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
