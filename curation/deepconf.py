"""DeepConf-style online trace stopping (Fu et al. 2025): cut a trace whose confidence collapses.

Token confidence is DeepConf's: ``C_i = -mean(top-k logprobs at token i)`` (high when one token
takes nearly all the mass, since the alternatives' logprobs are then very negative). A trace's
*group confidence* at token i is the mean of ``C`` over the last ``window`` tokens. DeepConf
stops a trace as soon as a full window's group confidence falls below a threshold, and sets the
threshold from warm-up traces generated in full: the ``1 - keep_top`` quantile of their *lowest*
group confidence (``keep_top: 0.9`` is DeepConf-high, ``0.1`` DeepConf-low).

One ``WindowConfidence`` does the arithmetic for both places that decide: the streaming backends
(``tgi`` with ``/generate_stream``, ``openai`` with ``stream: true``), which close the stream when
it says stop, and the replay from the journal (``cut_at``), which asks the same question of a
trace already stored. Both push the same float64 values in the same order, so they agree bit for
bit: a resumed run, or a run over a journal filled by fixed K, decides what the online run did.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

EARLY_STOP = "early_stop"  # the finish_reason of a cut trace; such a trace is never kept


@dataclass(frozen=True)
class EarlyStop:
    """What a streaming backend needs to cut a trace: stop once a full window's mean confidence < threshold."""

    threshold: float
    window: int

    def to_json(self) -> dict:
        return {"threshold": self.threshold, "window": self.window}


def token_confidence(top_logprobs: Sequence[float]) -> float:
    """DeepConf's C_i: minus the mean of the top-k alternatives' logprobs (NaN with none)."""
    if not len(top_logprobs):
        return float("nan")
    return -float(sum(float(x) for x in top_logprobs)) / len(top_logprobs)


class WindowConfidence:
    """The running group confidence of one trace, token by token.

    ``push`` takes a token's top-k logprobs and says whether the trace should stop now. The sum
    is recomputed over the window (not kept as a running sum) so that the value at token i does
    not depend on rounding carried over from earlier tokens: online and replay agree exactly.
    """

    def __init__(self, window: int, threshold: float = -np.inf):
        if window < 1:
            raise ValueError("window must be >= 1")
        self.window = window
        self.threshold = threshold
        self._values: deque[float] = deque(maxlen=window)
        self.tokens = 0
        self.lowest = np.inf  # the lowest full-window mean so far

    def push(self, top_logprobs: Sequence[float]) -> bool:
        value = token_confidence(top_logprobs)
        self.tokens += 1
        if value != value:  # a token without alternatives (NaN) says nothing; it never cuts
            return False
        self._values.append(value)
        if len(self._values) < self.window:
            return False
        mean = float(np.sum(np.fromiter(self._values, dtype=np.float64, count=self.window))) / self.window
        self.lowest = min(self.lowest, mean)
        return mean < self.threshold

    def lowest_group_confidence(self) -> float:
        """The trace's lowest group confidence (for a trace shorter than the window: its mean)."""
        if self.lowest < np.inf:
            return float(self.lowest)
        if not self._values:
            return float("nan")
        return float(np.sum(np.fromiter(self._values, dtype=np.float64))) / len(self._values)


def cut_at(top_logprobs: Sequence[Sequence[float]], stop: EarlyStop) -> int | None:
    """How many tokens a streaming run with ``stop`` would have kept of this whole trace (None: not cut).

    A trace whose window first falls below the threshold at its last token is not cut: the
    backends only cut while more tokens are coming, since there is nothing left to save.
    """
    running = WindowConfidence(stop.window, stop.threshold)
    last = len(top_logprobs)
    for row in top_logprobs:
        if running.push(row):
            return running.tokens if running.tokens < last else None
    return None


def lowest_group_confidence(top_logprobs: Iterable[Sequence[float]], window: int) -> float:
    running = WindowConfidence(window)
    for row in top_logprobs:
        running.push(row)
    return running.lowest_group_confidence()


def warmup_threshold(lowest: Sequence[float], keep_top: float) -> float:
    """DeepConf's threshold: the (1 - keep_top) quantile of the warm-up traces' lowest group confidence.

    With ``keep_top`` = 0.9 about 90% of traces like the warm-up ones run to the end; numpy's
    default (linear) quantile, over the finite values only.
    """
    values = np.asarray([v for v in lowest if np.isfinite(v)], dtype=np.float64)
    if not len(values):
        return float("-inf")  # nothing to learn from: cut nothing
    return float(np.quantile(values, 1.0 - keep_top))


# --------------------------------------------------------------------------- offline trace scores
# DeepConf's offline confidences of whole traces (Fu et al. 2025, facebookresearch/deepconf), the
# same token confidence and window means as the online cut above, vectorised over one trace:
# - lowest group confidence: the minimum of the sliding-window means (a trace shorter than the
#   window has one group: its mean), as WindowConfidence.lowest_group_confidence;
# - bottom-10% group confidence: the mean of the lowest 10% of the sliding-window means;
# - tail confidence: the mean token confidence over the last `tail` tokens.
# Tokens without alternatives (NaN confidence) are left out, as WindowConfidence.push leaves them.
DEFAULT_GROUP_WINDOW = 2048  # the paper's group size and tail length, for traces of thousands of tokens
DEFAULT_TAIL = 2048
BOTTOM_SHARE = 0.1


def token_confidences(row_offsets: np.ndarray, values: np.ndarray) -> np.ndarray:
    """C_i of every top-k row (``values[row_offsets[i]:row_offsets[i+1]]``), NaN for an empty row."""
    widths = np.diff(row_offsets)
    sums = np.zeros(len(widths), dtype=np.float64)
    nonempty = widths > 0
    if nonempty.any():
        sums[nonempty] = np.add.reduceat(values[: row_offsets[-1]], row_offsets[:-1][nonempty], dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(nonempty, -sums / np.maximum(widths, 1), np.nan)


def group_confidences(confidences: np.ndarray, window: int) -> np.ndarray:
    """The sliding-window means of one trace's token confidences (NaN tokens left out)."""
    c = confidences[np.isfinite(confidences)]
    if not len(c):
        return np.zeros(0)
    if len(c) < window:
        return np.array([c.mean()])
    sums = np.concatenate(([0.0], np.cumsum(c, dtype=np.float64)))
    return (sums[window:] - sums[:-window]) / window


def trace_confidences(confidences: np.ndarray, window: int, tail: int, bottom: float = BOTTOM_SHARE) -> tuple[float, float, float]:
    """(lowest group, bottom-share group mean, tail) confidence of one trace; NaN for a trace without confidences."""
    groups = group_confidences(confidences, window)
    if not len(groups):
        return float("nan"), float("nan"), float("nan")
    c = confidences[np.isfinite(confidences)]
    lowest_count = max(1, int(np.ceil(bottom * len(groups))))
    return float(groups.min()), float(np.partition(groups, lowest_count - 1)[:lowest_count].mean()), float(c[-tail:].mean())
