"""Parse: read the answer out of a trace, without executing anything.

Order of evidence: the last ``<tag>…</tag>`` (or an unclosed ``<tag>…`` when a stop sequence
cut the closing tag), then the recipe's regex, then label names and synonyms. With labels, the
*last* mention wins, since reasoning traces often list every option before committing to one.
A trace whose answer cannot be read gets ``None``, and is counted, never dropped silently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from curation.recipe.sections import AnswerConfig
from curation.score import majority, sequence_perplexity
from curation.types import StageStats


def _normalise(text: str, case_sensitive: bool) -> str:
    text = re.sub(r"\s+", " ", text).strip().strip(".,;:!\"'*`()[]")
    return text if case_sensitive else text.lower()


@dataclass
class AnswerParser:
    config: AnswerConfig

    def __post_init__(self) -> None:
        flags = 0 if self.config.case_sensitive else re.IGNORECASE
        self._tag = None
        if self.config.tag:
            name = re.escape(self.config.tag)
            self._tag = re.compile(rf"<{name}>(.*?)(?:</{name}>|$)", flags | re.DOTALL)
        self._regex = re.compile(self.config.regex, flags | re.DOTALL) if self.config.regex else None
        # synonym (normalised) -> class; longest synonyms first so "not upregulated" beats "upregulated"
        self._synonyms: dict[str, str] = {}
        labels = self.config.labels
        if isinstance(labels, list):
            labels = {label: [] for label in labels}
        for label, synonyms in (labels or {}).items():
            for surface in [label, *synonyms]:
                self._synonyms[_normalise(surface, self.config.case_sensitive)] = label
        if self._synonyms:
            alternatives = sorted(self._synonyms, key=len, reverse=True)
            self._mention = re.compile(r"(?<![\w-])(" + "|".join(re.escape(a) for a in alternatives) + r")(?![\w-])", flags)

    def __call__(self, text: str | None) -> str | None:
        if not text:
            return None
        candidates: list[str] = []
        if self._tag is not None:
            tagged = [m.group(1) for m in self._tag.finditer(text) if m.group(1).strip()]
            if tagged:
                candidates.append(tagged[-1])
        if self._regex is not None:
            matches = list(self._regex.finditer(candidates[0] if candidates else text))
            if matches:
                last = matches[-1]
                candidates.insert(0, last.group(1) if last.groups() else last.group(0))
        if not self._synonyms:
            return _normalise(candidates[0], self.config.case_sensitive) or None if candidates else None
        for candidate in candidates:
            label = self._label_in(candidate)
            if label is not None:
                return label
        if self._tag is not None and candidates:
            # The model used the tag but wrote no known label in it: that answer is unreadable,
            # and guessing from the reasoning text would put words in its mouth.
            return None
        return self._label_in(text)

    def _label_in(self, text: str) -> str | None:
        exact = self._synonyms.get(_normalise(text, self.config.case_sensitive))
        if exact is not None:
            return exact
        mentions = list(self._mention.finditer(text))
        if not mentions:
            return None
        return self._synonyms[_normalise(mentions[-1].group(1), self.config.case_sensitive)]


# --------------------------------------------------------------------------- a chunk of questions
class AnswerCodes:
    """Answer label -> int code, shared by every chunk of a run (-1 = unparsed or missing).

    Codes only need to be equal for equal answers (majority, agreement, answer similarity), so
    labels the recipe does not list get the next free code when first seen: no pass over the
    whole run is needed to learn the classes.
    """

    def __init__(self, classes: list[str] | None = None):
        self.labels: list[str] = list(classes or [])
        self._code = {label: code for code, label in enumerate(self.labels)}

    def encode(self, answer: str | None) -> int:
        if answer is None:
            return -1
        code = self._code.get(answer)
        if code is None:
            code = self._code[answer] = len(self.labels)
            self.labels.append(answer)
        return code

    def label(self, code: int) -> str | None:
        return self.labels[code] if code >= 0 else None


@dataclass
class ParsedChunk:
    """What parsing decides for the questions of one journal chunk (``journal.TraceChunk``)."""

    trace_answers: list[str | None]  # [T] per trace row
    reference_codes: np.ndarray  # [q] -1 = unparsed or no reference
    sample_codes: np.ndarray  # [q, K]
    majority_codes: np.ndarray  # [q]
    majority_counts: np.ndarray  # [q]
    chosen: np.ndarray  # [q] trace row kept for the question (the completion), -1 = none
    predicted: list[str | None]  # [q] the question's predicted class
    failed: np.ndarray  # [q] a planned trace is missing (generation failed)
    truncated: np.ndarray  # [q] the chosen trace hit max_new_tokens
    unfinished: np.ndarray | None = None  # [q] the chosen (reference) trace never closed its thinking: it has no answer


def parse_chunk(chunk, parser: AnswerParser, codes: AnswerCodes, samples: int, keep: str) -> ParsedChunk:
    """Answers of every trace, the majority, and the choice of trace (``select.completion``) per question.

    ``keep="reference"`` keeps the greedy reference and its answer; ``"best_agreeing"`` keeps the
    sample of lowest perplexity among those agreeing with the majority, and the majority as the answer.
    """
    q, k = chunk.n_questions, samples
    trace_answers = [parser(text) for text in chunk.text]
    row_codes = np.array([codes.encode(a) for a in trace_answers] + [-1], dtype=np.int64)  # row -1 reads the -1 at the end
    reference_codes = row_codes[chunk.slots[:, 0]]
    sample_slots = chunk.slots[:, 1 : k + 1]
    sample_codes = row_codes[sample_slots].reshape(q, k)
    failed = (chunk.planned & (chunk.slots < 0)).any(axis=1)
    if k:
        majority_codes, majority_counts = majority(sample_codes, reference_codes)
    else:
        majority_codes, majority_counts = np.full(q, -1, dtype=np.int64), np.zeros(q, dtype=np.int64)
    chosen = chunk.slots[:, 0].copy()
    predicted = [trace_answers[row] if row >= 0 else None for row in chosen]
    if keep == "best_agreeing" and k:
        sample_ppl = sequence_perplexity(chunk.token_arrays(sample_slots.reshape(-1))).reshape(q, k)
        agreeing = (sample_codes == majority_codes[:, None]) & (majority_codes[:, None] >= 0)
        # traces without logprobs (a teacher that gives none, no scorer) rank after those with, but still
        # before every disagreeing sample: the first agreeing one is kept
        ranked = np.where(np.isfinite(sample_ppl), sample_ppl, np.finfo(np.float64).max)
        best = np.argmin(np.where(agreeing, ranked, np.inf), axis=1)
        has = agreeing.any(axis=1)
        chosen = np.where(has, sample_slots[np.arange(q), best], -1)
        predicted = [codes.label(int(majority_codes[i])) if has[i] else None for i in range(q)]
    truncated = np.array([row >= 0 and chunk.finish_reason[row] == "length" for row in chosen], dtype=bool)
    # the question's answer comes from a trace whose thinking never closed: no answer, never one read out of the thinking
    row_unfinished = np.array([a == "unfinished" for a in chunk.alignment] + [False], dtype=bool)  # row -1 reads False
    if keep == "best_agreeing" and k:  # no majority because every sample drawn stopped inside its thinking
        present = sample_slots >= 0
        unfinished = present.any(axis=1) & (row_unfinished[sample_slots] | ~present).all(axis=1)
    else:
        unfinished = row_unfinished[chunk.slots[:, 0]]
    unfinished &= np.array([p is None for p in predicted], dtype=bool)
    return ParsedChunk(trace_answers, reference_codes, sample_codes, majority_codes, majority_counts, chosen, predicted, failed, truncated, unfinished)


def parse_stage(chunk, parsed: ParsedChunk, cut: np.ndarray | None = None) -> StageStats:
    """The parse stage's counts for one chunk: traces read, and why a trace gave no answer.

    A trace whose thinking never closed has no answer, which is not an unreadable one; a trace
    adaptive DeepConf cut while streaming (``cut``) is no sample at all (``early_stop``).
    """
    unfinished = [row for row, alignment in enumerate(chunk.alignment) if alignment == "unfinished" and (cut is None or not cut[row])]
    no_answer = {row for row, answer in enumerate(parsed.trace_answers) if answer is None}
    cut_rows = set(np.flatnonzero(cut).tolist()) if cut is not None else set()
    stage = StageStats(rows_in=chunk.n_traces)
    stage.drop("unparsed_answer", len(no_answer - set(unfinished) - cut_rows))
    stage.drop("unfinished_thinking", len(unfinished))
    stage.drop("early_stop", len(cut_rows))
    stage.rows_out = stage.rows_in - sum(stage.dropped.values())
    return stage


def trace_flags(chunk) -> dict[str, int]:
    """What the card says of a chunk's traces besides their answers: thinking kept, unaligned, hit max_new_tokens."""
    return {
        "with_thinking": sum(reasoning is not None for reasoning in chunk.reasoning),
        "unaligned": chunk.alignment.count("unaligned"),
        "truncated": sum(reason == "length" for reason in chunk.finish_reason),
    }


# --------------------------------------------------------------------------- verbalized confidence
CONFIDENCE_TAG = r"<confidence>\s*([0-9]+(?:\.[0-9]*)?)\s*%?\s*</confidence>"


def read_confidence(texts: Sequence[str | None], regex: str | None = None) -> np.ndarray:
    """The confidence each text states, in [0, 1]; NaN where none is read. No code runs.

    The first match of ``regex`` (one group holding a number; default a ``<confidence>87</confidence>``
    tag) is read, as LM-Polygraph's Verbalized1S reads its ``confidence_regex``. LM-Polygraph expects
    a value in [0, 1]; a value above 1 is read as a percentage (87 -> 0.87), and one above 100, or
    a group that is not a number, as no confidence.
    """
    pattern = re.compile(regex or CONFIDENCE_TAG, re.IGNORECASE if regex is None else 0)
    out = np.full(len(texts), np.nan)
    for i, text in enumerate(texts):
        match = pattern.search(text) if text else None
        if match is None:
            continue
        try:
            value = float(match.group(1))
        except (TypeError, ValueError):
            continue
        value = value / 100.0 if value > 1 else value
        if 0.0 <= value <= 1.0:
            out[i] = value
    return out
