"""Reasoning spans: split a trace into thinking and answer, and find the answer in its token arrays.

Every backend calls ``capture`` once per trace, with what its server gave: the answer text (the
message ``content``, or the whole generated text where the server leaves thinking inline), the
thinking where a server's reasoning parser split it out (vLLM ``reasoning`` / older
``reasoning_content``, SGLang and llama-server ``reasoning_content``, gpt-oss ``reasoning`` /
``thinking``), and the output tokens' strings (1:1 with the logprobs). It returns a ``Span``:

- ``text``: the answer, what parsing reads; ``reasoning``: the thinking, markers stripped (None:
  the trace did not think);
- ``answer_start``: index of the first answer token in the token arrays;
- ``alignment``: ``ok``; ``unaligned`` when the answer tokens do not reproduce the answer text
  (recorded and counted, never guessed); ``unfinished`` when the thinking never closed, so the
  trace has no answer at all (it is never parsed out of the thinking).

How the split is found, in order:

1. Inline thinking (TGI ``/generate``, ``/v1/completions``, llama-server ``reasoning_format:
   none``, SGLang ``separate_reasoning: false``): the text holds ``<think>…</think>answer``, or
   only ``…</think>answer`` when the chat template opened ``<think>`` in the prompt. The text is
   split at the first end marker.
2. The token strings are joined and searched for the first end marker (``</think>``, or harmony's
   ``<|channel|>final<|message|>``): the answer starts at the first token after it. Servers that
   drop the marker token (a llama-server stream sends no chunk for a token its parser consumed;
   special tokens printed as empty strings) fall back to finding the answer text at the end of
   the joined tokens.
3. Either way the answer tokens must reproduce the answer text, up to surrounding whitespace and
   what follows the answer but is not text: an end-of-turn token (``<|im_end|>``, ``</s>``,
   harmony's ``<|return|>``) or a stop sequence. Otherwise the trace is ``unaligned``.

A trace without thinking needs no search: all its tokens are answer tokens (``answer_start`` 0),
which keeps the common case to two substring tests per trace.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from dataclasses import dataclass
from itertools import accumulate
from typing import Sequence

OK = "ok"
UNALIGNED = "unaligned"
UNFINISHED = "unfinished"
ALIGNMENTS = (OK, UNALIGNED, UNFINISHED)


@dataclass(frozen=True)
class Markers:
    """One pair of thinking markers: the text that opens the thinking and the text after which the answer starts."""

    start: str
    end: str


# DeepSeek-R1 / Qwen3 / QwQ / SmolLM3 style, then gpt-oss harmony (analysis channel, then final channel)
DEFAULT_MARKERS: tuple[Markers, ...] = (
    Markers("<think>", "</think>"),
    Markers("<|channel|>analysis<|message|>", "<|channel|>final<|message|>"),
)
# what may follow the answer in the token arrays without being part of the answer text: the
# end-of-turn / end-of-sequence tokens servers return with a logprob, and harmony's closers
_TRAILER = re.compile(r"(?:\s|<\|[^|<>]{1,40}\|>|</s>|<eos>|<\|endoftext\|>|<end_of_turn>)*")
_HARMONY_CLOSE = ("<|end|>", "<|return|>", "<|call|>")


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs ~1 us more, once per trace
class Span:
    text: str
    reasoning: str | None
    answer_start: int | None
    alignment: str


def thinking_mode(value: bool | str | None) -> str | None:
    """``generator.reasoning`` as one word: None (server default), "on", "off", or an effort ("low", "medium", "high")."""
    if value is None:
        return None
    if value is True or value == "on":
        return "on"
    if value is False or value == "off":
        return "off"
    return str(value)


def expects_thinking(value: bool | str | None) -> bool:
    """The recipe asked for thinking (on, or an effort)."""
    return thinking_mode(value) not in (None, "off")


def markers_from(pairs: Sequence[Sequence[str]] | None) -> tuple[Markers, ...]:
    """Recipe form ([[start, end], ...]) to Markers; None gives the defaults."""
    if pairs is None:
        return DEFAULT_MARKERS
    return tuple(Markers(str(start), str(end)) for start, end in pairs)


def split_inline(text: str, markers: Sequence[Markers] = DEFAULT_MARKERS) -> tuple[str | None, str, bool] | None:
    """(thinking, answer, finished) of text that holds its thinking inline; None when it holds none.

    ``<think>a</think>b`` and ``a</think>b`` (the template opened ``<think>``) both give ("a", "b",
    True); ``<think>a`` with no end gives ("a", "", False).
    """
    best = None
    for marker in markers:
        at = text.find(marker.end)
        if at >= 0 and (best is None or at < best[0]):
            best = (at, marker)
    if best is not None:
        at, marker = best
        thinking = text[:at]
        opened = thinking.find(marker.start)
        if opened >= 0 and not thinking[:opened].strip():
            thinking = thinking[opened + len(marker.start) :]
        return _clean_thinking(thinking), _clean_answer(text[at + len(marker.end) :]), True
    stripped = text.lstrip()
    for marker in markers:
        if stripped.startswith(marker.start):
            return _clean_thinking(stripped[len(marker.start) :]), "", False
    return None


def _clean_thinking(thinking: str) -> str:
    thinking = thinking.strip()
    for close in _HARMONY_CLOSE:  # harmony ends the analysis message with <|end|><|start|>assistant
        if close in thinking:
            thinking = thinking[: thinking.find(close)].rstrip()
    return thinking


def _clean_answer(answer: str) -> str:
    answer = answer.strip()
    for close in _HARMONY_CLOSE:
        if answer.endswith(close):
            answer = answer[: -len(close)].rstrip()
    return answer


def capture(
    text: str | None,
    reasoning: str | None,
    tokens: Sequence[str] | None,
    *,
    markers: Sequence[Markers] = DEFAULT_MARKERS,
    stop: Sequence[str] = (),
    expect_thinking: bool = False,
) -> Span:
    """The trace's thinking, answer and answer span (see the module docstring).

    ``text``: the answer text the server gave (or the whole output where thinking is inline).
    ``reasoning``: the thinking a server's parser split out (None or "" when it split none).
    ``tokens``: the output tokens' strings ([] or None when the server gave none).
    ``expect_thinking``: the recipe asked for thinking (``generator.reasoning: on``), so an inline
    output with no end marker is thinking that never closed, not an answer.
    """
    text = text or ""
    tokens = tokens or ()
    finished = True
    if not reasoning:
        inline = split_inline(text, markers) if text else None
        if inline is None:
            if expect_thinking and text and not _has_end(tokens, markers):
                return Span("", text.strip(), len(tokens) if tokens else None, UNFINISHED)
            # no thinking in what the server gave: every token is an answer token (no search of
            # the tokens: this is the common case, and it must cost next to nothing)
            return Span(text, None, 0, OK)
        else:
            reasoning, text, finished = inline
    if not finished or (not text and not _has_end(tokens, markers) and reasoning):
        return Span("", reasoning, len(tokens) if tokens else None, UNFINISHED)
    if not tokens:
        return Span(text, reasoning, None, UNALIGNED)  # nothing to locate the answer in
    start = answer_start(tokens, text, markers, stop)
    return Span(text, reasoning, start, OK if start is not None else UNALIGNED)


def _has_end(tokens: Sequence[str], markers: Sequence[Markers]) -> bool:
    if not tokens:
        return False
    joined = "".join(tokens)
    return any(marker.end in joined for marker in markers)


def answer_start(tokens: Sequence[str], answer: str, markers: Sequence[Markers] = DEFAULT_MARKERS, stop: Sequence[str] = ()) -> int | None:
    """Index of the first answer token, or None when the answer tokens cannot reproduce ``answer``."""
    # fast path: the end marker is one token of its own (`</think>` is a special token in Qwen3's
    # and DeepSeek-R1's vocabularies); a C-level list search, no offsets over the whole trace
    for marker in markers:
        if marker.end in tokens:
            index = tokens.index(marker.end) + 1
            if _reproduces("".join(tokens[index:]), answer, stop):
                return index
            break
    joined = "".join(tokens)
    starts = [0, *accumulate(map(len, tokens))]  # starts[i]: offset of token i; starts[-1] == len(joined)
    ends = [at + len(m.end) for m in markers if (at := joined.find(m.end)) >= 0]
    if ends:
        boundary = min(ends)
        index = _token_at(starts, joined, boundary)
        if index is not None and _reproduces(joined[starts[index] :], answer, stop):
            return index
    # the marker token is missing from the arrays (or printed as ""): the answer is at the end
    wanted = answer.strip()
    if not wanted:
        return None
    at = joined.rfind(wanted)
    while at >= 0:
        index = _token_at(starts, joined, at)
        if index is not None and _reproduces(joined[starts[index] :], answer, stop):
            return index
        at = joined.rfind(wanted, 0, at)
    return None


def _token_at(starts: list[int], joined: str, offset: int) -> int | None:
    """The token that begins the text at ``offset``; a token straddling it is allowed only if its part before is whitespace."""
    index = bisect_left(starts, offset)
    if index < len(starts) and starts[index] == offset:
        return min(index, len(starts) - 1)
    index -= 1  # starts[index] < offset: token `index` straddles the boundary
    if joined[starts[index] : offset].strip():
        return None
    return index


def _reproduces(span_text: str, answer: str, stop: Sequence[str]) -> bool:
    """Do the answer tokens' strings give the answer text (whitespace around it, then only a trailer or a stop sequence)?"""
    body = span_text.strip()
    wanted = answer.strip()
    if not body.startswith(wanted):
        return False
    rest = body[len(wanted) :]
    if not rest or _TRAILER.fullmatch(rest):
        return True
    rest = rest.lstrip()
    return any(rest.startswith(s) and _TRAILER.fullmatch(rest[len(s) :]) for s in stop if s)


def span_bounds(n_tokens: int, answer_start: int | None, alignment: str, span: str) -> tuple[int, int] | None:
    """[lo, hi) of the tokens a metric over ``span`` (answer, thinking, whole) reads; None when unknown."""
    if span == "whole":
        return 0, n_tokens
    if alignment == UNALIGNED or answer_start is None:
        return None
    start = min(answer_start, n_tokens)
    if span == "answer":
        return (start, n_tokens) if alignment != UNFINISHED else (n_tokens, n_tokens)
    if span == "thinking":
        return 0, start
    raise ValueError(f"unknown span {span!r}")
