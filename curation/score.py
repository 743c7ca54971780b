"""Score: uncertainty metrics as small pure functions over whole-run arrays.

Definitions follow LM-Polygraph (IINemo/lm-polygraph); higher always means more uncertain.
For a greedy reference trace y* and K samples y_1..y_K:

- ``msp``                = -sum_t log p(y*_t)
- ``perplexity``         = -mean_t log p(y*_t)                (log-perplexity, not exponentiated)
- ``mean_token_entropy`` = mean_t of -sum_v p log p over the *returned top-k* alternatives,
                           not renormalised (as LM-Polygraph does with truncated rows)
- ``self_consistency``   = 1 - share of the K samples whose answer equals the majority answer
- ``cocoa_msp|ppl|mte``  = u(y*) * (1/K) sum_i (1 - s(y*, y_i))   with u the matching metric above

Ties: with answer similarity, every question whose K samples all agree with y* gets CoCoA = 0,
which erases the confidence signal. We keep the paper's product unchanged and declare the
underlying confidence metric as the *tie-break* key, so selection ranks such questions by their
confidence (see ``Metric.tiebreak``). Token sequences include the final EOS where the backend
returns it (local and TGI do; OpenAI-compatible servers do not).

Everything is vectorised over the run: a trace is a segment of one flat token array, and
per-trace reductions are ``np.bincount`` over segment ids (correct for empty segments too).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np


# --------------------------------------------------------------------------- inputs
@dataclass
class TokenArrays:
    """Token-level data of T traces, flattened. Trace j owns tokens offsets[j]:offsets[j+1]."""

    offsets: np.ndarray  # [T+1] int64
    logprobs: np.ndarray  # [N] float64, logprob of each chosen token
    top_logprobs: np.ndarray | None = None  # [N, k] float64, -inf where the server returned fewer than k

    @property
    def n_traces(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def segment_ids(self) -> np.ndarray:
        return np.repeat(np.arange(self.n_traces), self.lengths)

    @classmethod
    def from_lists(cls, logprobs: Sequence[Sequence[float]], top_logprobs: Sequence[Sequence[Sequence[float]]] | None = None) -> "TokenArrays":
        lengths = np.fromiter((len(x) for x in logprobs), dtype=np.int64, count=len(logprobs))
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        flat = np.fromiter((v for trace in logprobs for v in trace), dtype=np.float64, count=int(offsets[-1]))
        top = None
        if top_logprobs is not None and any(len(t) for t in top_logprobs):
            k = max((len(row) for trace in top_logprobs for row in trace), default=0)
            top = np.full((int(offsets[-1]), k), -np.inf)
            position = 0
            for trace, n_tokens in zip(top_logprobs, lengths):
                for row in trace[:n_tokens]:
                    top[position, : len(row)] = row
                    position += 1
                position += max(0, int(n_tokens) - len(trace))  # a trace without top-k rows keeps -inf
        return cls(offsets=offsets, logprobs=flat, top_logprobs=top)


@dataclass
class ScoringInputs:
    """What the metrics of one run see. n questions, K samples each."""

    reference: TokenArrays  # n reference traces
    reference_answers: np.ndarray  # [n] int codes, -1 = unparsed/missing
    sample_answers: np.ndarray  # [n, K] int codes, -1 = unparsed/missing
    similarity: np.ndarray | None = None  # [n, K] s(y*, y_i) in [0, 1] for the chosen similarity

    @property
    def n(self) -> int:
        return len(self.reference_answers)


# --------------------------------------------------------------------------- per-trace confidence
def _segment_sum(values: np.ndarray, arrays: TokenArrays) -> np.ndarray:
    return np.bincount(arrays.segment_ids(), weights=values, minlength=arrays.n_traces)


def sequence_msp(arrays: TokenArrays) -> np.ndarray:
    out = -_segment_sum(arrays.logprobs, arrays)
    out[arrays.lengths == 0] = np.nan  # an empty trace has no probability to speak of
    return out


def sequence_perplexity(arrays: TokenArrays) -> np.ndarray:
    lengths = arrays.lengths
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(lengths > 0, -_segment_sum(arrays.logprobs, arrays) / np.maximum(lengths, 1), np.nan)


def token_entropy(top_logprobs: np.ndarray) -> np.ndarray:
    """-sum p log p over each token's returned alternatives (-inf padding contributes 0)."""
    finite = np.isfinite(top_logprobs)
    safe = np.where(finite, top_logprobs, 0.0)
    return -(np.exp(safe) * safe * finite).sum(axis=1)


def sequence_mean_entropy(arrays: TokenArrays) -> np.ndarray:
    if arrays.top_logprobs is None:
        return np.full(arrays.n_traces, np.nan)
    lengths = arrays.lengths
    totals = _segment_sum(token_entropy(arrays.top_logprobs), arrays)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(lengths > 0, totals / np.maximum(lengths, 1), np.nan)


# --------------------------------------------------------------------------- consistency
def majority(sample_answers: np.ndarray, reference_answers: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Majority answer per question and how many of the K samples gave it.

    Ties go to the reference answer when it is among the tied, else to the first sample's.
    Unparsed samples (-1) never form a majority. Returns (answer codes [n], counts [n]).
    """
    n, k = sample_answers.shape
    if k == 0:
        return np.full(n, -1), np.zeros(n, dtype=np.int64)
    valid = sample_answers >= 0
    # counts[i, j] = how many samples of question i equal sample j  (K x K per row, K is small)
    counts = ((sample_answers[:, :, None] == sample_answers[:, None, :]) & valid[:, None, :]).sum(axis=2)
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


def mean_dissimilarity(similarity: np.ndarray) -> np.ndarray:
    if similarity.shape[1] == 0:
        return np.full(similarity.shape[0], np.nan)
    return (1.0 - similarity).mean(axis=1)


# --------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class Metric:
    name: str
    fn: Callable[[ScoringInputs], np.ndarray]
    requires: frozenset[str]  # "reference", "top_logprobs", "samples", "similarity"
    description: str
    tiebreak: str | None = None  # metric ranking questions whose value ties (see module doc)


METRICS: dict[str, Metric] = {}


def metric(name: str, *, requires: Sequence[str], tiebreak: str | None = None):
    def register(fn: Callable[[ScoringInputs], np.ndarray]):
        METRICS[name] = Metric(name, fn, frozenset(requires), (fn.__doc__ or "").strip().splitlines()[0], tiebreak)
        return fn

    return register


@metric("msp", requires=["reference"])
def msp(inputs: ScoringInputs) -> np.ndarray:
    """Maximum sequence probability: -sum of the reference's token logprobs."""
    return sequence_msp(inputs.reference)


@metric("perplexity", requires=["reference"])
def perplexity(inputs: ScoringInputs) -> np.ndarray:
    """Log-perplexity: -mean of the reference's token logprobs."""
    return sequence_perplexity(inputs.reference)


@metric("mean_token_entropy", requires=["reference", "top_logprobs"])
def mean_token_entropy(inputs: ScoringInputs) -> np.ndarray:
    """Mean over tokens of the entropy of the returned top-k distribution (not renormalised)."""
    return sequence_mean_entropy(inputs.reference)


@metric("self_consistency", requires=["samples"])
def self_consistency(inputs: ScoringInputs) -> np.ndarray:
    """1 - share of the K samples agreeing with the majority answer."""
    k = inputs.sample_answers.shape[1]
    if k == 0:
        return np.full(inputs.n, np.nan)
    _, counts = majority(inputs.sample_answers, inputs.reference_answers)
    return 1.0 - counts / k


def _cocoa(confidence: Callable[[TokenArrays], np.ndarray]) -> Callable[[ScoringInputs], np.ndarray]:
    def compute(inputs: ScoringInputs) -> np.ndarray:
        similarity = inputs.similarity if inputs.similarity is not None else answer_similarity(inputs.reference_answers, inputs.sample_answers)
        return confidence(inputs.reference) * mean_dissimilarity(similarity)

    return compute


for _name, _confidence, _base in (
    ("cocoa_msp", sequence_msp, "msp"),
    ("cocoa_ppl", sequence_perplexity, "perplexity"),
    ("cocoa_mte", sequence_mean_entropy, "mean_token_entropy"),
):
    _fn = _cocoa(_confidence)
    _fn.__doc__ = f"CoCoA: {_base} of the reference times its mean dissimilarity to the K samples."
    metric(_name, requires=["reference", "samples", "similarity"] + (["top_logprobs"] if _base == "mean_token_entropy" else []), tiebreak=_base)(_fn)


# --------------------------------------------------------------------------- similarities
@dataclass(frozen=True)
class Similarity:
    name: str
    fn: Callable[..., np.ndarray]  # (reference_texts, sample_texts[n][K], reference_answers, sample_answers) -> [n, K]
    description: str


SIMILARITIES: dict[str, Similarity] = {}


def similarity(name: str, description: str):
    def register(fn):
        SIMILARITIES[name] = Similarity(name, fn, description)
        return fn

    return register


@similarity("answer", "1 if the parsed answers are equal, else 0")
def _answer_similarity(reference_texts, sample_texts, reference_answers, sample_answers) -> np.ndarray:
    return answer_similarity(reference_answers, sample_answers)


# --------------------------------------------------------------------------- driver
@dataclass
class Scores:
    values: dict[str, np.ndarray] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # metric -> why it could not be computed


def available(metric_: Metric, inputs: ScoringInputs) -> str | None:
    """Why a metric cannot be computed on these inputs, or None if it can."""
    if "top_logprobs" in metric_.requires and inputs.reference.top_logprobs is None:
        return "the traces carry no top-k logprobs (generator.top_logprobs: 0)"
    if "samples" in metric_.requires and inputs.sample_answers.shape[1] == 0:
        return "no samples (generator.samples)"
    if "reference" in metric_.requires and inputs.reference.n_traces != inputs.n:
        return "no reference traces (generator.reference: false)"
    return None


def compute_scores(inputs: ScoringInputs, names: Sequence[str] | None = None) -> Scores:
    """Compute the named metrics (default: every registered metric the inputs support)."""
    scores = Scores()
    for name in names or list(METRICS):
        m = METRICS[name]
        reason = available(m, inputs)
        if reason:
            scores.skipped[name] = reason
            continue
        scores.values[name] = np.asarray(m.fn(inputs), dtype=np.float64)
    return scores
