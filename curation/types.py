"""Shared types: what the stages hand to each other, with no behaviour that needs another module.

Every other module may import this one; it imports nothing from ``curation`` at run time, so it
breaks the old generate <-> backends <-> journal cycle. The names are the project's vocabulary:

- ``Question``: one source row made into a prompt (``source`` makes them).
- ``SamplingParams`` and ``TraceRequest``: one trace to generate, with its seed and fingerprint
  (``generate.plan_requests`` makes them).
- ``Trace``: one generated trace, as a backend returns it and the journal stores it.
- ``Backend``: the protocol the generation runner drives (local, tgi, openai).
- ``GenerationError`` / ``RetryableError``: how a backend says a request failed.
- ``CurateError``: the base of every error that is the user's to fix (a bad recipe, a missing
  file, a refused push). ``cli.main`` prints its message as one line, with no class name.

Bulk token data after generation does not travel as ``Trace`` objects (a Python float per token
costs about 30 bytes): the journal reads it back as numpy buffers, chunk by chunk
(``journal.TraceChunk``).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, Sequence

if TYPE_CHECKING:
    from curation.deepconf import EarlyStop
    from curation.recipe.sections import GeneratorConfig

REFERENCE_INDEX = 0  # sample_index 0 is the greedy reference; samples are 1..K


@dataclass
class StageStats:
    """What one stage did, as datatrove's steps count it: rows in, rows out, dropped by reason, seconds.

    ``stats.json`` keeps one section per stage under ``stages``; the published copy leaves out
    ``seconds``, which say how fast this machine was, not what the data is.
    """

    rows_in: int = 0
    rows_out: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def drop(self, reason: str, count: int = 1) -> None:
        if count:
            self.dropped[reason] = self.dropped.get(reason, 0) + int(count)

    def update(self, name: str, value: int | float = 1) -> None:
        """Count as a stage goes, as datatrove's ``stat_update``: ``rows_in``, ``rows_out``, ``seconds``, or ``dropped_<reason>``."""
        if name.startswith("dropped_"):
            self.drop(name[len("dropped_") :], int(value))
        elif name in ("rows_in", "rows_out"):
            setattr(self, name, getattr(self, name) + int(value))
        elif name == "seconds":
            self.seconds += float(value)
        else:
            raise KeyError(f"StageStats has no counter {name!r} (rows_in, rows_out, seconds or dropped_<reason>)")

    def __add__(self, other: "StageStats") -> "StageStats":
        """Two shards' (or two passes') counts of the same stage, added up."""
        dropped = dict(self.dropped)
        for reason, count in other.dropped.items():
            dropped[reason] = dropped.get(reason, 0) + count
        return StageStats(self.rows_in + other.rows_in, self.rows_out + other.rows_out, dropped, self.seconds + other.seconds)

    @classmethod
    def from_json(cls, data: dict) -> "StageStats":
        return cls(int(data.get("rows_in", 0)), int(data.get("rows_out", 0)), dict(data.get("dropped") or {}), float(data.get("seconds", 0.0)))

    def to_json(self) -> dict:
        return {"rows_in": self.rows_in, "rows_out": self.rows_out, "dropped": dict(sorted(self.dropped.items())), "seconds": round(self.seconds, 3)}


class CurateError(Exception):
    """A problem the user can fix; ``str()`` is the message printed, one line per problem."""


class CliError(CurateError):
    """A command-line misuse with a one-line reason for the user (exit status 1)."""


@dataclass
class Problem:
    """One problem in a recipe, at its place: ``file:line:col: dotted.path: message``."""

    file: str
    line: int
    col: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        if self.line == 0:  # not from a file: a command-line override (`--set source.limit: must be ≥ 1`)
            return f"{self.file} {where}{self.message}"
        return f"{self.file}:{self.line}:{self.col}: {where}{self.message}"


class RecipeError(CurateError):
    """One or more problems with a recipe; ``str()`` gives one line per problem."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its class name when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@dataclass
class Question:
    id: str
    messages: list[dict[str, str]]  # the dataset's prompt: what a student trains and is evaluated on
    columns: dict[str, Any]
    label: str | None = None
    teacher_messages: list[dict[str, str]] | None = None  # what the teacher sees, when prompt.teacher_hint adds to it
    calibration: bool = False  # a labelled calibration question (recipe `calibrate:`): scored, never published as kept


@dataclass(frozen=True)
class SamplingParams:
    greedy: bool
    temperature: float
    top_p: float
    max_new_tokens: int
    stop: tuple[str, ...]
    top_logprobs: int


@dataclass(frozen=True)
class TraceRequest:
    prompt_id: str
    messages: tuple[tuple[tuple[str, str], ...], ...]  # hashable form of [{role, content}]
    sample_index: int
    seed: int | None
    params: SamplingParams
    fingerprint: str
    group_size: int = 1  # samples generated together with this one (part of the fingerprint where it matters)
    # adaptive `mode: deepconf`: a streaming backend cuts the trace once its window confidence falls
    # below the threshold (curation.deepconf). Not in the fingerprint: an uncut trace is the same trace.
    early_stop: "EarlyStop | None" = None

    @property
    def is_reference(self) -> bool:
        return self.sample_index == REFERENCE_INDEX

    @property
    def chat(self) -> list[dict[str, str]]:
        return [dict(message) for message in self.messages]


@dataclass
class Trace:
    """One generated trace with what the metrics need. Logprobs are of the chosen tokens."""

    fingerprint: str
    prompt_id: str
    sample_index: int
    text: str
    token_logprobs: list[float]
    top_logprobs: list[list[float]]  # per token, the top-k alternatives' logprobs, best first
    finish_reason: str  # "stop" (EOS or stop sequence), "length", or "early_stop" (cut by adaptive deepconf)
    logprob_kind: str  # "raw" (model distribution) or "processed" (after temperature/top-p, as TGI)
    seed: int | None = None
    token_ids: list[int] = field(default_factory=list)
    model: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    # Reasoning teachers (curation.reasoning splits and checks these; every backend fills them):
    # `text` is the ANSWER only (what parsing reads); `reasoning` the thinking, markers stripped
    # (None: the trace did not think). `tokens` are the output tokens' strings as the server gave
    # them, 1:1 with token_logprobs ([] where the server gives none). `answer_start` indexes the
    # first answer token: tokens before it are thinking and markers (None: not known, e.g. no token
    # strings). `alignment`: "ok"; "unaligned" when the answer tokens do not reproduce `text`
    # (recorded and counted, never guessed); "unfinished" when the thinking never closed.
    reasoning: str | None = None
    tokens: list[str] = field(default_factory=list)
    answer_start: int | None = None
    alignment: str = "ok"

    @property
    def is_reference(self) -> bool:
        return self.sample_index == REFERENCE_INDEX

    def to_payload(self) -> dict:
        payload = asdict(self)
        for key in ("fingerprint", "prompt_id", "sample_index"):
            payload.pop(key)
        return payload

    @classmethod
    def from_payload(cls, fingerprint: str, prompt_id: str, sample_index: int, payload: dict) -> "Trace":
        return cls(fingerprint=fingerprint, prompt_id=prompt_id, sample_index=sample_index, **payload)


class GenerationError(Exception):
    """A request that failed for good: retrying cannot help (a 422, a bad key, a broken response)."""


class RequestRejected(GenerationError, CurateError):
    """The server refused what every request of the run would send (a parameter the model does not take, no
    logprobs where they are needed): the runner stops dispatching instead of failing every request the same way.
    The message carries the server's own words and the recipe key to change."""


class RetryableError(GenerationError):
    """A transient failure: 429/503/5xx, a dropped connection, a timeout, a body cut short.

    retry_after: what the server asked us to wait, in seconds. overload: the endpoint said it is
    too busy (429/503), so it gets fewer requests for a while. endpoint_fault: the endpoint
    itself looks broken (connection refused, timeout, 5xx); after a few in a row it rests.
    """

    def __init__(self, message: str, *, retry_after: float | None = None, overload: bool = False, endpoint_fault: bool = False):
        super().__init__(message)
        self.retry_after = retry_after
        self.overload = overload
        self.endpoint_fault = endpoint_fault


class Backend(Protocol):
    """What the runner needs from a backend. Implementations: local, tgi, openai."""

    name: str
    logprob_kind: str
    concurrency: int  # requests (groups) in flight per endpoint
    endpoints: list[str]  # where groups can be sent; the runner spreads them and passes one to generate()

    def model_identity(self) -> str:
        """Stable model identity for fingerprints (model id + revision/sha)."""

    def fingerprint_params(self, config: "GeneratorConfig") -> dict:
        """Backend settings that change what a trace would be (mixed into the fingerprint).

        Settings under the key "sampled" shape only the sampled traces (e.g. `n`, the number
        of samples asked for in one request), so the greedy reference stays valid when they
        change.
        """

    def group(self, requests: Sequence[TraceRequest]) -> list[list[TraceRequest]]:
        """Split one question's missing requests into groups generated together."""

    async def generate(self, group: list[TraceRequest], endpoint: str | None = None) -> list[Trace]:
        """Generate every trace of the group or raise (RetryableError for what may pass)."""

    def provenance(self) -> dict:
        """What to record about the model/endpoint (model id, revision, server version). Never secrets."""

    async def aclose(self) -> None:
        """Release connections made in the running loop; the backend stays usable."""


def derive_seed(base_seed: int, prompt_id: str, sample_index: int) -> int:
    # 31 bits: the smallest seed range among the servers we talk to (llama.cpp uses uint32, some signed).
    digest = hashlib.sha256(f"{base_seed}:{prompt_id}:{sample_index}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF
