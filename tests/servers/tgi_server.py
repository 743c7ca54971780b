"""A text-generation-inference (TGI) protocol server for tests, built from TGI's OpenAPI spec.

TGI itself cannot run on the build machines (its router is Rust and crates cannot be
fetched), so the `tgi` backend is tested against this server instead. It speaks TGI's
native protocol as described by `tests/servers/tgi_spec/openapi.json` (v3.3.6-dev0, vendored), and
where the spec is silent it copies what TGI's router and Python server actually do
(read from their sources):

- `POST /generate`, `POST /generate_stream`, `POST /` (the "compat" route that
  `huggingface_hub.InferenceClient(model=url)` posts to), `POST /tokenize`,
  `GET /info`, `GET /health`;
- every request body is validated against the spec's JSON Schemas, and so is every
  response body, before it is sent (a response that fails is a bug in this server and
  raises loudly);
- TGI's validation rules and error messages, with TGI's error shape
  `{"error": str, "error_type": str}`; streamed errors arrive as `data:{...}` events over
  HTTP 200, as in TGI, where validation and overload errors happen inside the stream;
- a concurrency limit (`max_concurrent_requests`) answered with 429 `overloaded`;
- fault injection (429, 503, 424, connection resets, hangs, truncated bodies), chosen by a
  seeded RNG and never changing the generated content, so a retried request returns
  exactly what the first attempt would have;
- counters tests can assert on.

Generation is fake but behaves like a model: a deterministic "language model" over a small
vocabulary writes a reasoning trace `<think> ...</think><answer>LABEL</answer></s>`. The
logits at each step are a pure function of the prompt and the tokens generated so far;
temperature, top-k, top-p, typical-p, repetition and frequency penalties are applied as
TGI applies them, and sampling draws from a RNG seeded with the request's `seed`. So the
output is a pure function of (inputs, parameters, seed), greedy decoding needs no seed,
and a shorter `max_new_tokens` yields a prefix of a longer one. Each prompt has a favoured
label with a prompt-specific margin: the greedy answer is usually the favoured label and
sampled answers mostly agree with it, more so for "confident" prompts.

Usage from pytest:

    with TGITestServer(max_concurrent_requests=8, fault_rate=0.2) as tgi:
        client = AsyncInferenceClient(model=tgi.url)
        ...
        assert not tgi.invalid_requests

Manual use:

    python -m tests.servers.tgi_server --port 8080 --fault-rate 0.1 --latency 0.05
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import copy
import dataclasses
import hashlib
import json
import math
import os
import random
import re
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import jsonschema
import jsonschema.exceptions
import jsonschema.validators
import referencing
import referencing.jsonschema
from aiohttp import web

# --------------------------------------------------------------------------------------
# The OpenAPI spec, converted once to JSON Schema 2020-12
# --------------------------------------------------------------------------------------

SPEC_ENV_VAR = "TGI_OPENAPI_SPEC"
# TGI's own spec, vendored with the tests (tgi_spec/README.md says where it came from).
VENDORED_SPEC = Path(__file__).resolve().parent / "tgi_spec" / "openapi.json"
_SPEC_BASE_URI = "urn:tgi-openapi"

# OpenAPI's integer formats carry ranges that JSON Schema does not check on its own; TGI's
# router deserialises them into fixed-width Rust integers, so out-of-range values fail there.
_INTEGER_FORMAT_BOUNDS = {
    "int32": (-(2**31), 2**31 - 1),
    "int64": (-(2**63), 2**63 - 1),
}

# Schema keys whose value is a map of name -> schema, or a schema / list of schemas.
_SCHEMA_MAP_KEYS = ("properties", "patternProperties", "$defs", "definitions")
_SCHEMA_LIST_KEYS = ("allOf", "anyOf", "oneOf", "prefixItems")
_SCHEMA_KEYS = ("items", "not", "additionalProperties", "contains", "if", "then", "else")
# Annotations OpenAPI 3.0 has and JSON Schema lacks; they never affect validation.
_OPENAPI_ONLY_KEYS = ("nullable", "example", "discriminator", "xml", "externalDocs")

# The request schemas whose unknown fields are rejected in strict mode (see `strict_fields`).
_STRICT_REQUEST_SCHEMAS = ("GenerateRequest", "CompatGenerateRequest", "GenerateParameters")


def find_openapi_spec() -> Path:
    """TGI's openapi.json: `$TGI_OPENAPI_SPEC` (to test against another TGI version), else the vendored copy."""
    override = os.environ.get(SPEC_ENV_VAR)
    return Path(override) if override else VENDORED_SPEC


def openapi_schema_to_json_schema(node: Any) -> Any:
    """Convert one OpenAPI 3.0 schema object to JSON Schema 2020-12.

    The spec uses OpenAPI 3.0's `nullable: true`, which JSON Schema does not know: a
    validator would silently ignore it and reject every `null` TGI sends (e.g.
    `details.seed` for greedy decoding). It becomes a type union, or an `anyOf` with
    `null` where the schema has no `type` of its own (the `allOf: [$ref]` wrappers).
    The spec's numeric `exclusiveMinimum` is already JSON Schema (2019+) syntax.
    """
    if isinstance(node, list):
        return [openapi_schema_to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _OPENAPI_ONLY_KEYS:
            continue
        if key in _SCHEMA_MAP_KEYS and isinstance(value, dict):
            # Keys here are property names, not keywords: a property may be called "example".
            out[key] = {name: openapi_schema_to_json_schema(sub) for name, sub in value.items()}
        elif key in _SCHEMA_LIST_KEYS or key in _SCHEMA_KEYS:
            out[key] = openapi_schema_to_json_schema(value)
        else:
            out[key] = copy.deepcopy(value)
    bounds = _INTEGER_FORMAT_BOUNDS.get(node.get("format", ""))
    if bounds and node.get("type") == "integer":
        low, high = bounds
        out["minimum"] = max(out.get("minimum", low), low)
        out["maximum"] = min(out.get("maximum", high), high)
    if node.get("nullable") is True:
        if "type" in out:
            types = out["type"] if isinstance(out["type"], list) else [out["type"]]
            out["type"] = [*types, "null"]
            if "enum" in out:
                out["enum"] = [*out["enum"], None]
        else:
            out = {"anyOf": [{"type": "null"}, out]}
    return out


def _is_strict_integer(checker: Any, instance: Any) -> bool:
    # JSON Schema counts 1.0 as an integer; serde does not: `"max_new_tokens": 1.0` is a
    # 422 from TGI's router. Match the router, so a client sending floats is caught here.
    return isinstance(instance, int) and not isinstance(instance, bool)


_StrictDraft202012Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", _is_strict_integer
    ),
)


class SpecViolation(AssertionError):
    """A response this server was about to send does not match TGI's spec (a server bug)."""


class OpenAPISpec:
    """TGI's spec with its `components.schemas` compiled into JSON Schema validators.

    `strict_fields` makes the generate request schemas reject unknown properties. The spec
    does not forbid them and TGI silently ignores them, which is exactly why tests want
    them flagged: a misspelt parameter (`max_tokens`, `stop_sequences`) would otherwise be
    dropped without a trace.
    """

    def __init__(self, path: Path | None = None, *, strict_fields: bool = True):
        self.path = path or find_openapi_spec()
        raw = json.loads(self.path.read_text())
        self.version: str = raw["info"]["version"]
        self.paths: dict[str, Any] = raw["paths"]
        schemas = {
            name: openapi_schema_to_json_schema(schema)
            for name, schema in raw["components"]["schemas"].items()
        }
        self.strict_fields = strict_fields
        if strict_fields:
            for name in _STRICT_REQUEST_SCHEMAS:
                schemas[name] = {**schemas[name], "additionalProperties": False}
        document = {"$id": _SPEC_BASE_URI, "components": {"schemas": schemas}}
        resource = referencing.jsonschema.DRAFT202012.create_resource(document)
        self._registry = referencing.Registry().with_resource(_SPEC_BASE_URI, resource)
        self._validators: dict[str, Any] = {}
        self.schema_names = frozenset(schemas)

    def _validator(self, schema: str | Mapping[str, Any]) -> Any:
        key = schema if isinstance(schema, str) else json.dumps(schema, sort_keys=True)
        validator = self._validators.get(key)
        if validator is None:
            root = {"$ref": self.ref(schema)} if isinstance(schema, str) else dict(schema)
            _StrictDraft202012Validator.check_schema(root)
            validator = _StrictDraft202012Validator(root, registry=self._registry)
            self._validators[key] = validator
        return validator

    def ref(self, name: str) -> str:
        if name not in self.schema_names:
            raise KeyError(f"no schema {name!r} in TGI's spec")
        return f"{_SPEC_BASE_URI}#/components/schemas/{name}"

    def errors(self, schema: str | Mapping[str, Any], instance: Any) -> list[str]:
        """Human-readable validation errors, `[]` when `instance` is valid."""
        found = sorted(
            self._validator(schema).iter_errors(instance), key=lambda e: list(e.absolute_path)
        )
        messages = []
        for error in found:
            # For oneOf/anyOf the most specific sub-error explains the failure best.
            best = jsonschema.exceptions.best_match([error])
            where = ".".join(str(part) for part in best.absolute_path) or "<root>"
            messages.append(f"{where}: {best.message}")
        return messages

    def check_response(self, schema: str | Mapping[str, Any], body: Any, *, what: str) -> None:
        problems = self.errors(schema, body)
        if problems:
            name = schema if isinstance(schema, str) else "inline schema"
            raise SpecViolation(f"{what} does not match TGI's spec ({name}): " + "; ".join(problems[:5]))


# --------------------------------------------------------------------------------------
# The fake tokenizer and model
# --------------------------------------------------------------------------------------

DEFAULT_LABELS = ("upregulated", "downregulated", "not differentially expressed")

BOS_TEXT, EOS_TEXT, UNK_TEXT = "<s>", "</s>", "<unk>"
THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE = "<think>", "</think>", "<answer>", "</answer>"

# The reasoning vocabulary. Entries carry their leading space, as BPE tokens do, so that
# generated text is the plain concatenation of token texts.
REASONING_WORDS = (
    " the", " gene", " knockdown", " of", " expression", " target", " pathway", " in",
    " cells", " is", " likely", " to", " be", " reduced", " increased", " unchanged",
    " because", " it", " regulates", " transcription", " factor", " binding", " promoter",
    " downstream", " upstream", " signaling", " feedback", " loop", " suggests", " that",
    " this", " perturbation", " affects", " protein", " levels", " via", " stress",
    " response", " and", " may", " not", " directly", " interact", " with", " K562",
    " CRISPRi", " repression", " activation", " so", " therefore", ",", ".", "\n",
)

# Ids for text the model never generates (prompt words): stable hashes in a range that
# cannot collide with the generation vocabulary's small ids.
_PROMPT_ID_BASE, _PROMPT_ID_SPAN = 1000, 49_000

# One token per word or punctuation mark, with its leading whitespace, like a BPE tokenizer.
_TOKEN_PATTERN = re.compile(r"\s*\w+|\s*[^\w\s]|\s+")

# Raw logits of the scripted model, per phase of the trace. The dominant structural token
# gets DOMINANT; tokens that make no sense in a phase get OFF_SCRIPT (never exactly
# impossible, as in a real model, so top-n lists are always full under greedy decoding).
_DOMINANT = 9.0
_OFF_SCRIPT = -14.0
_WORD_SCALE = 2.2  # spread of word logits while thinking: realistic per-token entropy
_WORDS_OUTSIDE_THINKING = -9.0
_LABEL_OFFSET = 2.0
_TRACE_LABEL_NOISE = 0.4  # how much the reasoning written so far sways the answer
# A hedging trace (the server's `hedge_rate` of sampled traces, chosen by seed) thinks with flatter
# word distributions, hence lower DeepConf token confidence, and then nearly guesses its label:
# the pattern DeepConf relies on, that traces which lose confidence tend to be wrong.
_HEDGE_WORD_SCALE = 0.5
_HEDGE_LABEL_NOISE = 1.5
_THINK_CLOSE_BEFORE_MIN = -12.0
_THINK_CLOSE_START, _THINK_CLOSE_RAMP = -2.5, 0.45
_THINK_FORCE_CLOSE_AFTER = 40  # tokens past the prompt's minimum: always stop thinking


def float32(value: float) -> float:
    """Round to float32, the precision TGI's router serialises logprobs with."""
    return struct.unpack("f", struct.pack("f", value))[0]


def _digest(*parts: bytes | str) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\x00")
    return h.digest()


@dataclass(frozen=True)
class VocabToken:
    id: int
    text: str
    special: bool


@dataclass(frozen=True)
class SamplingParams:
    """Validated generation parameters, with TGI's defaults resolved."""

    max_new_tokens: int
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    typical_p: float = 1.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    top_n_tokens: int = 0
    truncate: int | None = None

    @property
    def sampling(self) -> bool:
        # TGI's Python server turns sampling on whenever a warper is active, even with
        # `do_sample: false` (HeterogeneousNextTokenChooser): a "greedy" request carrying
        # `temperature: 0.7` is sampled. Only do_sample=false with no warpers is greedy.
        return (
            self.do_sample
            or self.temperature != 1.0
            or self.top_k != 0
            or self.top_p < 1.0
            or self.typical_p < 1.0
        )


@dataclass
class Generation:
    """One generated sequence, in TGI's wire shapes (token dicts)."""

    text: str
    tokens: list[dict[str, Any]]
    top_tokens: list[list[dict[str, Any]]]
    finish_reason: str
    seed: int | None
    prefill: list[dict[str, Any]]
    input_length: int

    @property
    def mean_logprob(self) -> float:
        return sum(t["logprob"] for t in self.tokens) / max(len(self.tokens), 1)


@dataclass(frozen=True)
class _PromptProfile:
    min_think: int
    label_logits: tuple[float, ...]


class FakeReasoningModel:
    """A deterministic scripted "language model" that writes short reasoning traces.

    It is also usable without the server, e.g. to compute the exact output a backend test
    should expect for a request: `model.generate(inputs, SamplingParams(...))`.
    """

    def __init__(self, labels: Sequence[str] = DEFAULT_LABELS, hedge_rate: float = 0.0):
        if not 0.0 <= hedge_rate <= 1.0:
            raise ValueError("hedge_rate must be in [0, 1]")
        self.hedge_rate = hedge_rate
        if len(set(labels)) != len(labels) or not labels:
            raise ValueError("labels must be a non-empty sequence of distinct strings")
        self.labels = tuple(labels)
        specials = [(0, UNK_TEXT), (1, BOS_TEXT), (2, EOS_TEXT)]
        structural = [(3, THINK_OPEN), (4, THINK_CLOSE), (5, ANSWER_OPEN), (6, ANSWER_CLOSE)]
        label_tokens = [(10 + i, label) for i, label in enumerate(self.labels)]
        word_tokens = [(100 + i, word) for i, word in enumerate(REASONING_WORDS)]
        if len(label_tokens) > 90:
            raise ValueError("at most 90 labels are supported")
        self.by_text: dict[str, VocabToken] = {}
        for token_id, text in specials + structural + label_tokens + word_tokens:
            if text in self.by_text:
                raise ValueError(f"label {text!r} clashes with a vocabulary token")
            self.by_text[text] = VocabToken(token_id, text, token_id in (0, 1, 2))
        self.bos = self.by_text[BOS_TEXT]
        self.eos = self.by_text[EOS_TEXT]
        # The tokens the model can generate, in a fixed order that indexes logit vectors.
        self.output_vocab: tuple[VocabToken, ...] = tuple(
            self.by_text[text]
            for text in [EOS_TEXT, THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE]
            + list(self.labels)
            + list(REASONING_WORDS)
        )
        self._index = {token.text: i for i, token in enumerate(self.output_vocab)}
        self._label_indices = tuple(self._index[label] for label in self.labels)
        self._word_indices = tuple(self._index[word] for word in REASONING_WORDS)

    # ---- tokenizer

    def token_id(self, text: str) -> int:
        """Ids are stable per token text: vocabulary ids, else a hash of the text."""
        known = self.by_text.get(text)
        if known is not None:
            return known.id
        digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
        return _PROMPT_ID_BASE + int.from_bytes(digest, "little") % _PROMPT_ID_SPAN

    def tokenize(self, text: str) -> list[tuple[int, str, int, int]]:
        """(id, text, start, stop) per token, character offsets, BOS first (as TGI's
        tokenizer adds special tokens; BOS has the empty span (0, 0))."""
        pieces = [(self.bos.id, "", 0, 0)]
        for match in _TOKEN_PATTERN.finditer(text):
            piece = match.group(0)
            pieces.append((self.token_id(piece), piece, match.start(), match.end()))
        return pieces

    def prompt_tokens(self, inputs: str, truncate: int | None = None) -> list[tuple[int, str]]:
        """The prompt the model sees: BOS + tokens, keeping the last `truncate` (TGI
        truncates from the left, and counts BOS in the input length)."""
        tokens = [(self.bos.id, BOS_TEXT)] + [
            (token_id, text) for token_id, text, _, _ in self.tokenize(inputs)[1:]
        ]
        if truncate is not None:
            tokens = tokens[-truncate:]
        return tokens

    # ---- the scripted language model

    def _profile(self, prompt_key: bytes) -> _PromptProfile:
        rng = random.Random(_digest(b"profile", prompt_key))
        favoured = rng.randrange(len(self.labels))
        others = [rng.gauss(0.0, 0.5) for _ in self.labels]
        margin = rng.uniform(0.3, 5.0)  # prompt-specific confidence
        logits = list(others)
        logits[favoured] = max(others) + margin
        return _PromptProfile(min_think=rng.randint(6, 20), label_logits=tuple(logits))

    def _raw_logits(
        self, step_key: bytes, phase: str, think_pos: int, profile: _PromptProfile, hedging: bool = False
    ) -> list[float]:
        rng = random.Random(step_key)
        noise = [rng.gauss(0.0, 1.0) for _ in self.output_vocab]
        logits = [_OFF_SCRIPT + 0.5 * z for z in noise]
        index = self._index

        def words(offset: float, scale: float) -> None:
            for i in self._word_indices:
                logits[i] = offset + scale * noise[i]

        if phase == "start":
            words(-4.0, 1.0)
            logits[index[THINK_OPEN]] = _DOMINANT
        elif phase == "think":
            words(0.0, _HEDGE_WORD_SCALE if hedging else _WORD_SCALE)
            if think_pos < profile.min_think:
                close = _THINK_CLOSE_BEFORE_MIN
            elif think_pos >= profile.min_think + _THINK_FORCE_CLOSE_AFTER:
                close = 2 * _DOMINANT
            else:
                close = _THINK_CLOSE_START + _THINK_CLOSE_RAMP * (think_pos - profile.min_think)
            logits[index[THINK_CLOSE]] = close
        elif phase == "after_think":
            words(_WORDS_OUTSIDE_THINKING, 1.0)
            logits[index[ANSWER_OPEN]] = _DOMINANT
        elif phase == "answer":
            words(_WORDS_OUTSIDE_THINKING, 1.0)
            for label_logit, i in zip(profile.label_logits, self._label_indices):
                if hedging:
                    logits[i] = _LABEL_OFFSET + _HEDGE_LABEL_NOISE * noise[i]
                else:
                    logits[i] = _LABEL_OFFSET + label_logit + _TRACE_LABEL_NOISE * noise[i]
        elif phase == "after_label":
            words(_WORDS_OUTSIDE_THINKING, 1.0)
            logits[index[ANSWER_CLOSE]] = _DOMINANT
        elif phase == "after_answer":
            words(_WORDS_OUTSIDE_THINKING, 1.0)
            logits[self._index[EOS_TEXT]] = _DOMINANT
        else:  # pragma: no cover - phases are internal
            raise AssertionError(phase)
        return logits

    def _next_phase(self, phase: str, text: str) -> str:
        # Any unexpected token sends the model back to thinking, so every path is total.
        expected = {
            "start": (THINK_OPEN, "think"),
            "after_think": (ANSWER_OPEN, "answer"),
            "after_label": (ANSWER_CLOSE, "after_answer"),
        }
        if phase in expected:
            token, nxt = expected[phase]
            return nxt if text == token else "think"
        if phase == "think":
            return "after_think" if text == THINK_CLOSE else "think"
        if phase == "answer":
            return "after_label" if text in self.labels else "think"
        return "think"  # after_answer: anything but EOS

    # ---- logits processors and warpers, in the order TGI applies them

    @staticmethod
    def _apply_penalties(
        logits: list[float], vocab: Sequence[VocabToken], history: Sequence[int], params: SamplingParams
    ) -> list[float]:
        if params.repetition_penalty == 1.0 and params.frequency_penalty == 0.0:
            return logits
        counts = collections.Counter(history)
        out = list(logits)
        for i, token in enumerate(vocab):
            count = counts.get(token.id, 0)
            if not count:
                continue
            if params.repetition_penalty != 1.0:  # CTRL-style, as HF/TGI implement it
                penalty = params.repetition_penalty
                out[i] = out[i] / penalty if out[i] > 0 else out[i] * penalty
            if params.frequency_penalty != 0.0:  # TGI normalises counts by sequence length
                out[i] -= params.frequency_penalty * count / len(history)
        return out

    @staticmethod
    def _warp(logits: list[float], params: SamplingParams) -> list[float]:
        """Temperature, top-k, top-p, typical-p; removed tokens become -inf."""
        scores = list(logits)
        if params.temperature != 1.0:
            scores = [s / params.temperature for s in scores]
        if params.top_k:
            keep = sorted(scores, reverse=True)[min(params.top_k, len(scores)) - 1]
            scores = [s if s >= keep else -math.inf for s in scores]
        if params.top_p < 1.0:
            # TGI: sort ascending, drop tokens whose cumulative mass is <= 1 - top_p,
            # always keep the most likely one.
            probs = _softmax(scores)
            order = sorted(range(len(scores)), key=lambda i: (scores[i], -i))
            cumulative, removed = 0.0, set()
            for rank, i in enumerate(order):
                cumulative += probs[i]
                if cumulative <= 1.0 - params.top_p and rank < len(order) - 1:
                    removed.add(i)
            scores = [-math.inf if i in removed else s for i, s in enumerate(scores)]
        if params.typical_p < 1.0:
            logprobs = _log_softmax(scores)
            entropy = -sum(math.exp(lp) * lp for lp in logprobs if lp > -math.inf)
            shifted = [abs(-lp - entropy) if lp > -math.inf else math.inf for lp in logprobs]
            order = sorted(range(len(scores)), key=lambda i: (shifted[i], i))
            probs = _softmax(scores)
            cumulative, last = 0.0, 0
            for rank, i in enumerate(order):
                cumulative += probs[i]
                if cumulative < params.typical_p:
                    last = rank + 1
            last = min(last, len(order) - 1)
            threshold = shifted[order[last]]
            scores = [
                -math.inf if (shifted[i] > threshold and i != order[0]) else s
                for i, s in enumerate(scores)
            ]
        return scores

    # ---- generation

    def generate(
        self,
        inputs: str,
        params: SamplingParams,
        *,
        decoder_input_details: bool = False,
    ) -> Generation:
        """Generate one sequence; a pure function of (inputs, params).

        Logprobs follow TGI's semantics: they are log-softmax of the scores *after*
        repetition/frequency penalties and the temperature/top-k/top-p/typical-p warpers,
        i.e. of the distribution actually sampled from. Greedy requests (no warpers) get
        the raw model distribution. OpenAI-compatible servers return raw logprobs instead.
        Tokens removed by a warper have probability 0, so they are left out of
        `top_tokens` (TGI's `batch_top_tokens` drops -inf), which can make a top-n list
        shorter than `top_n_tokens` when sampling with top-p or top-k.
        """
        if params.sampling and params.seed is None:
            raise ValueError("sampling needs a seed (the server draws one when the client sends none)")
        prompt = self.prompt_tokens(inputs, params.truncate)
        prompt_key = _digest(b"prompt", "\x00".join(text for _, text in prompt))
        profile = self._profile(prompt_key)
        sampler = random.Random(params.seed) if params.sampling else None
        # drawn from its own stream, so that hedge_rate 0 leaves every trace as it was
        hedging = sampler is not None and self.hedge_rate > 0 and (
            random.Random(_digest(b"hedge", prompt_key, str(params.seed))).random() < self.hedge_rate
        )
        history = [token_id for token_id, _ in prompt]

        tokens: list[dict[str, Any]] = []
        top_tokens: list[list[dict[str, Any]]] = []
        output = ""
        phase, think_pos = "start", 0
        step_key = prompt_key
        finish_reason = "length"
        vocab = self.output_vocab
        while True:
            logits = self._raw_logits(step_key, phase, think_pos, profile, hedging)
            scores = self._apply_penalties(logits, vocab, history, params)
            if params.sampling:
                scores = self._warp(scores, params)
            logprobs = _log_softmax(scores)
            if sampler is not None:
                choice = _sample(logprobs, sampler.random())
            else:
                choice = max(range(len(scores)), key=lambda i: (scores[i], -i))
            token = vocab[choice]
            tokens.append(_token_dict(token, logprobs[choice]))
            if params.top_n_tokens:
                ranked = sorted(
                    (i for i, lp in enumerate(logprobs) if lp > -math.inf),
                    key=lambda i: (-logprobs[i], vocab[i].id),
                )[: params.top_n_tokens]
                top_tokens.append([_token_dict(vocab[i], logprobs[i]) for i in ranked])
            history.append(token.id)
            if not token.special:
                output += token.text
            # TGI's StoppingCriteria order: length first, then EOS, then stop sequences
            # (matched against the end of the text generated so far).
            if len(tokens) >= params.max_new_tokens:
                finish_reason = "length"
                break
            if token.id == self.eos.id:
                finish_reason = "eos_token"
                break
            if any(stop and output.endswith(stop) for stop in params.stop):
                finish_reason = "stop_sequence"
                break
            if phase == "think" or (phase == "start" and token.text != THINK_OPEN):
                think_pos += 1
            phase = self._next_phase(phase, token.text)
            step_key = _digest(step_key, token.id.to_bytes(4, "little"))

        prefill: list[dict[str, Any]] = []
        if decoder_input_details:
            # The first prompt token has no logprob: TGI sends NaN, serialised as null.
            for position, (token_id, text) in enumerate(prompt):
                if position == 0:
                    logprob = None
                else:
                    u = random.Random(_digest(b"prefill", prompt_key, str(position))).random()
                    logprob = float32(-(0.05 + 6.0 * u))
                prefill.append({"id": token_id, "text": text, "logprob": logprob})
        return Generation(
            text=output,
            tokens=tokens,
            top_tokens=top_tokens,
            finish_reason=finish_reason,
            seed=params.seed if params.sampling else None,
            prefill=prefill,
            input_length=len(prompt),
        )


def _softmax(scores: Sequence[float]) -> list[float]:
    return [math.exp(lp) for lp in _log_softmax(scores)]


def _log_softmax(scores: Sequence[float]) -> list[float]:
    top = max(scores)
    total = sum(math.exp(s - top) for s in scores if s > -math.inf)
    log_total = math.log(total)
    # (s - top) <= 0 and log_total >= 0, so every logprob is <= 0 exactly.
    return [(s - top) - log_total if s > -math.inf else -math.inf for s in scores]


def _sample(logprobs: Sequence[float], u: float) -> int:
    cumulative, last = 0.0, 0
    for i, lp in enumerate(logprobs):
        if lp == -math.inf:
            continue
        last = i
        cumulative += math.exp(lp)
        if u < cumulative:
            return i
    return last  # rounding left a sliver of mass: take the last possible token


def _token_dict(token: VocabToken, logprob: float) -> dict[str, Any]:
    return {"id": token.id, "text": token.text, "logprob": float32(logprob), "special": token.special}


# --------------------------------------------------------------------------------------
# TGI's validation rules and errors
# --------------------------------------------------------------------------------------


class TGIError(Exception):
    """An error TGI answers with `{"error": message, "error_type": error_type}`."""

    def __init__(self, status: int, error_type: str, message: str):
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message

    def body(self) -> dict[str, str]:
        return {"error": self.message, "error_type": self.error_type}


def validation_error(message: str) -> TGIError:
    return TGIError(422, "validation", message)


def overloaded_error() -> TGIError:
    return TGIError(429, "overloaded", "Model is overloaded")


def generation_error(message: str = "injected fault") -> TGIError:
    return TGIError(424, "generation", f"Request failed during generation: {message}")


def unavailable_error() -> TGIError:
    # TGI has no 503 on its generate routes; it comes from what usually sits in front of
    # it (a load balancer, an Inference Endpoint scaling from zero), so this is not one of
    # TGI's error types.
    return TGIError(503, "unavailable", "Service Unavailable")


@dataclass(frozen=True)
class ValidRequest:
    inputs: str
    params: SamplingParams
    best_of: int
    details: bool
    decoder_input_details: bool
    return_full_text: bool
    input_length: int


@dataclass(frozen=True)
class ServerLimits:
    max_concurrent_requests: int = 128
    max_best_of: int = 2
    max_stop_sequences: int = 4
    max_top_n_tokens: int = 5
    max_input_tokens: int = 4095
    max_total_tokens: int = 4096
    # The spec documents 1024 as the default of an absent `max_new_tokens` (an explicit
    # null means "up to max_total_tokens", as TGI's validation does).
    default_max_new_tokens: int = 1024


_ABSENT = object()


def validate_generate_request(
    body: Mapping[str, Any], model: FakeReasoningModel, limits: ServerLimits, *, compat_full_text: bool
) -> ValidRequest:
    """TGI's router validation (validation.rs), in its order and with its messages.

    It runs after the JSON Schema check, so types are right; the checks here are the
    semantic ones serde cannot express.
    """
    inputs: str = body["inputs"]
    has_parameters = "parameters" in body
    p: Mapping[str, Any] = body.get("parameters") or {}
    # Without a `parameters` object TGI uses `default_parameters()`, which samples
    # (do_sample: true) and returns no details; with one, absent fields default to
    # false/None (serde `default`), so `details` is false unless sent, whatever the
    # spec's `"default": "true"` says.
    do_sample = bool(p.get("do_sample", not has_parameters))
    temperature = p.get("temperature")
    top_k, top_p, typical_p = p.get("top_k"), p.get("top_p"), p.get("typical_p")
    best_of = p.get("best_of") or 1

    sampling_requested = do_sample or any(v is not None for v in (temperature, top_k, top_p, typical_p))
    if best_of > 1 and not sampling_requested:
        raise validation_error("you must use sampling when `best_of` is > 1")
    temperature = 1.0 if temperature is None else temperature
    if temperature <= 0.0:
        raise validation_error("`temperature` must be strictly positive")
    repetition_penalty = p.get("repetition_penalty")
    repetition_penalty = 1.0 if repetition_penalty is None else repetition_penalty
    if repetition_penalty <= 0.0:
        raise validation_error("`repetition_penalty` must be strictly positive")
    frequency_penalty = p.get("frequency_penalty")
    frequency_penalty = 0.0 if frequency_penalty is None else frequency_penalty
    if not -2.0 <= frequency_penalty <= 2.0:
        raise validation_error("`frequency_penalty` must be >= -2.0 and <= 2.0")
    if top_p is not None and not 0.0 < top_p < 1.0:
        raise validation_error("`top_p` must be > 0.0 and < 1.0")
    if typical_p is not None and not 0.0 < typical_p < 1.0:
        raise validation_error("`typical_p` must be > 0.0 and < 1.0")
    if top_k is not None and top_k <= 0:
        raise validation_error("`top_k` must be strictly positive")
    max_new_tokens = p.get("max_new_tokens", _ABSENT)
    if max_new_tokens is _ABSENT:
        max_new_tokens = limits.default_max_new_tokens
    if max_new_tokens == 0:
        raise validation_error("`max_new_tokens` must be strictly positive")
    stop = list(p.get("stop") or [])
    if len(stop) > limits.max_stop_sequences:
        raise validation_error(
            f"`stop` supports up to {limits.max_stop_sequences} stop sequences. Given: {len(stop)}"
        )
    seed = p.get("seed")
    if seed is not None and best_of > 1:
        raise validation_error("`seed` must not be set when `best_of` > 1")
    top_n_tokens = p.get("top_n_tokens")
    if top_n_tokens is not None and top_n_tokens > limits.max_top_n_tokens:
        raise validation_error(
            f"`top_n_tokens` must be >= 0 and <= {limits.max_top_n_tokens}. Given: {top_n_tokens}"
        )
    if not inputs:
        raise validation_error("`inputs` cannot be empty")
    truncate = p.get("truncate")
    if truncate is not None and (truncate == 0 or truncate > limits.max_input_tokens):
        raise validation_error(
            f"`truncate` must be strictly positive and less than {limits.max_input_tokens}. Given: {truncate}"
        )
    input_length = len(model.prompt_tokens(inputs))
    if truncate is not None:
        input_length = min(input_length, truncate)
    if max_new_tokens is None:
        max_new_tokens = max(limits.max_total_tokens - input_length, 0)
    if input_length + max_new_tokens > limits.max_total_tokens:
        raise validation_error(
            f"`inputs` tokens + `max_new_tokens` must be <= {limits.max_total_tokens}. "
            f"Given: {input_length} `inputs` tokens and {max_new_tokens} `max_new_tokens`"
        )
    if input_length > limits.max_input_tokens:
        raise validation_error(
            f"`inputs` must have less than {limits.max_input_tokens} tokens. Given: {input_length}"
        )
    if p.get("grammar") is not None:
        # As a TGI started with --disable-grammar-support: the fake model cannot follow one.
        raise validation_error("grammar is not supported")
    if p.get("adapter_id") is not None:
        raise validation_error(f"adapter `{p['adapter_id']}` is not loaded on this server")

    return_full_text = p.get("return_full_text")
    if return_full_text is None:
        return_full_text = compat_full_text
    params = SamplingParams(
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        temperature=float(temperature),
        top_k=top_k or 0,
        top_p=1.0 if top_p is None else float(top_p),
        typical_p=1.0 if typical_p is None else float(typical_p),
        repetition_penalty=float(repetition_penalty),
        frequency_penalty=float(frequency_penalty),
        seed=seed,
        stop=tuple(stop),
        top_n_tokens=top_n_tokens or 0,
        truncate=truncate,
    )
    decoder_input_details = bool(p.get("decoder_input_details", False))
    return ValidRequest(
        inputs=inputs,
        params=params,
        best_of=best_of,
        # TGI's generate(): details are returned when either flag is set.
        details=bool(p.get("details", False)) or decoder_input_details,
        decoder_input_details=decoder_input_details,
        return_full_text=bool(return_full_text),
        input_length=input_length,
    )


# --------------------------------------------------------------------------------------
# Fault injection
# --------------------------------------------------------------------------------------

FAULT_KINDS = ("429", "503", "424", "reset", "timeout", "truncated")


class FaultInjector:
    """Decides, per generation request, whether to inject a fault and which.

    Decisions are a seeded pure function of (seed, route, request body, how many times
    this exact request was seen before), not of arrival order, so a run with concurrent
    requests is reproducible, and a retried request gets a fresh, equally reproducible
    draw. Faults never feed into generation, so a retry that succeeds returns exactly
    what a fault-free first attempt would have.
    """

    def __init__(
        self,
        rate: float,
        kinds: Sequence[str] | Mapping[str, float] | None,
        seed: int,
        max_per_request: int | None,
    ):
        if not 0.0 <= rate <= 1.0:
            raise ValueError("fault_rate must be within [0, 1]")
        weights = dict(kinds) if isinstance(kinds, Mapping) else {k: 1.0 for k in (kinds or FAULT_KINDS)}
        unknown = set(weights) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {FAULT_KINDS}")
        if rate > 0 and not any(w > 0 for w in weights.values()):
            raise ValueError("fault_kinds needs at least one kind with a positive weight")
        self.rate = rate
        self.kinds = [k for k in FAULT_KINDS if weights.get(k, 0) > 0]
        self.weights = [weights[k] for k in self.kinds]
        self.seed = seed
        self.max_per_request = max_per_request
        self._seen: collections.Counter[str] = collections.Counter()
        self._faulted: collections.Counter[str] = collections.Counter()
        self._forced: collections.deque[str] = collections.deque()

    def force(self, kinds: Iterable[str]) -> None:
        for kind in kinds:
            if kind not in FAULT_KINDS:
                raise ValueError(f"unknown fault kind {kind!r}; known: {FAULT_KINDS}")
            self._forced.append(kind)

    def decide(self, route: str, body: Any) -> str | None:
        key = route + "\x00" + json.dumps(body, sort_keys=True, separators=(",", ":"))
        attempt = self._seen[key]
        self._seen[key] += 1
        if self._forced:
            return self._forced.popleft()
        if self.rate <= 0.0:
            return None
        if self.max_per_request is not None and self._faulted[key] >= self.max_per_request:
            return None
        rng = random.Random(_digest(b"fault", str(self.seed), str(attempt), key))
        if rng.random() >= self.rate:
            return None
        self._faulted[key] += 1
        return rng.choices(self.kinds, weights=self.weights)[0]


# --------------------------------------------------------------------------------------
# The HTTP server
# --------------------------------------------------------------------------------------

class TGITestServer:
    """A TGI-protocol server on 127.0.0.1, run in a background thread with its own loop.

        with TGITestServer(fault_rate=0.1, fault_seed=3) as tgi:
            response = httpx.post(tgi.url + "/generate", json={...})
            assert tgi.faults_injected["429"] >= 0 and not tgi.invalid_requests

    Options (all keyword-only):
      model_id, model_sha, model_pipeline_tag, version: what `/info` reports. With
        pipeline tag "text-generation", the compat route `POST /` prepends the prompt to
        `generated_text` unless `return_full_text` is sent, as TGI does.
      max_concurrent_requests, max_best_of, max_stop_sequences, max_top_n_tokens,
      max_input_tokens, max_total_tokens, max_client_batch_size, validation_workers:
        TGI's launcher limits (defaults as TGI's, except a smaller context).
      default_max_new_tokens: what an absent `max_new_tokens` means (the spec's 1024).
      labels: the answer labels the fake model chooses from.
      latency: seconds every generation request takes (while holding its slot);
        token_latency: extra seconds between streamed tokens.
      fault_rate: probability that a generation request gets a fault; fault_kinds: which
        kinds (names from FAULT_KINDS, or a {kind: weight} mapping; default all, equally);
        fault_seed: seeds the fault draws; max_faults_per_request: after that many faults
        for the same request body, it is always served (so retry loops terminate);
        timeout_delay: how long a "timeout" fault hangs before answering.
      seed: seeds the server's own RNG, which draws a seed for sampled requests that
        send none (TGI draws a random one and reports it in `details.seed`).
      strict_fields: reject (422) and record request fields the spec does not list,
        which real TGI silently ignores. Default True, because that is a client bug.
      max_recorded_requests: cap on `received`.
      spec_path: TGI's openapi.json (default: found beside the checkout, or
        `$TGI_OPENAPI_SPEC`).

    Attributes tests read (mutated on the server thread; read them between requests):
      url; requests_total; requests_by_route (Counter); responses_by_status (Counter);
      faults_injected (Counter by kind); in_flight; max_in_flight; received (list of
      {"route", "body"}, capped); invalid_requests (list of {"route", "body", "errors"}:
      requests that broke the spec); spec_violations (responses that broke the spec; the
      server raises on them and `stop()` re-raises); generations (sequences generated);
      generated_tokens (tokens sent: a stream counts only the events sent before its client
      left); streams_cancelled (streams the client closed early, as adaptive deepconf does).
    `hedge_rate`: the share of sampled traces that hedge (lower token confidence, a near-random
      label); 0 by default, which leaves every trace as before.
    Methods: start(), stop(), inject_faults(*kinds) forces the next generation requests'
      faults in order; set_unavailable(bool) makes every route answer 503; reset_counters().
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        model_id: str = "curate-test/fake-reasoner",
        model_sha: str | None = "0123456789abcdef0123456789abcdef01234567",
        model_pipeline_tag: str | None = "text-generation",
        version: str | None = None,
        max_concurrent_requests: int = 128,
        max_best_of: int = 2,
        max_stop_sequences: int = 4,
        max_top_n_tokens: int = 5,
        max_input_tokens: int = 4095,
        max_total_tokens: int = 4096,
        max_client_batch_size: int = 4,
        validation_workers: int = 2,
        default_max_new_tokens: int = 1024,
        labels: Sequence[str] = DEFAULT_LABELS,
        hedge_rate: float = 0.0,
        latency: float = 0.0,
        token_latency: float = 0.0,
        fault_rate: float = 0.0,
        fault_kinds: Sequence[str] | Mapping[str, float] | None = None,
        fault_seed: int = 0,
        max_faults_per_request: int | None = None,
        timeout_delay: float = 30.0,
        seed: int = 0,
        strict_fields: bool = True,
        max_recorded_requests: int = 10_000,
        spec_path: Path | str | None = None,
    ):
        if max_input_tokens >= max_total_tokens:
            raise ValueError("`max_input_tokens` must be < `max_total_tokens`")  # as TGI's launcher
        self.host, self.port = host, port
        self.spec = OpenAPISpec(Path(spec_path) if spec_path else None, strict_fields=strict_fields)
        self.model = FakeReasoningModel(labels, hedge_rate)
        self.limits = ServerLimits(
            max_concurrent_requests=max_concurrent_requests,
            max_best_of=max_best_of,
            max_stop_sequences=max_stop_sequences,
            max_top_n_tokens=max_top_n_tokens,
            max_input_tokens=max_input_tokens,
            max_total_tokens=max_total_tokens,
            default_max_new_tokens=default_max_new_tokens,
        )
        self.info: dict[str, Any] = {
            "model_id": model_id,
            "model_sha": model_sha,
            "model_pipeline_tag": model_pipeline_tag,
            "max_concurrent_requests": max_concurrent_requests,
            "max_best_of": max_best_of,
            "max_stop_sequences": max_stop_sequences,
            "max_input_tokens": max_input_tokens,
            "max_total_tokens": max_total_tokens,
            "validation_workers": validation_workers,
            "max_client_batch_size": max_client_batch_size,
            "router": "text-generation-router",
            "version": version or self.spec.version,
            "sha": None,
            "docker_label": None,
        }
        self.spec.check_response("Info", self.info, what="/info")
        # TGI's compat route defaults return_full_text to true for models whose pipeline
        # tag is "text-generation" or missing.
        self._compat_full_text = model_pipeline_tag in (None, "text-generation")
        self.latency = latency
        self.token_latency = token_latency
        self.timeout_delay = timeout_delay
        self.faults = FaultInjector(fault_rate, fault_kinds, fault_seed, max_faults_per_request)
        self._seed_rng = random.Random(seed)
        self.max_recorded_requests = max_recorded_requests
        self.unavailable = False
        self.reset_counters()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._url = ""

    # ---- counters

    def reset_counters(self) -> None:
        self.requests_total = 0
        self.requests_by_route: collections.Counter[str] = collections.Counter()
        self.responses_by_status: collections.Counter[int] = collections.Counter()
        self.faults_injected: collections.Counter[str] = collections.Counter()
        self.in_flight = getattr(self, "in_flight", 0)
        self.max_in_flight = self.in_flight
        self.received: list[dict[str, Any]] = []
        self.invalid_requests: list[dict[str, Any]] = []
        self.spec_violations: list[str] = []
        self.generations = 0
        self.generated_tokens = 0  # tokens sent: whole /generate answers, and stream events until the client left
        self.streams_cancelled = 0  # streams whose client disconnected before the last token

    def inject_faults(self, *kinds: str) -> None:
        """Force the next generation requests' faults, in order, whatever `fault_rate` is."""
        self.faults.force(kinds)

    def set_unavailable(self, unavailable: bool = True) -> None:
        self.unavailable = unavailable

    # ---- lifecycle

    @property
    def url(self) -> str:
        if not self._url:
            raise RuntimeError("TGITestServer is not started")
        return self._url

    def build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._count_middleware])
        app.router.add_post("/", self._handle_compat)
        app.router.add_post("/generate", self._handle_generate)
        app.router.add_post("/generate_stream", self._handle_generate_stream)
        app.router.add_post("/tokenize", self._handle_tokenize)
        app.router.add_get("/info", self._handle_info)
        app.router.add_get("/health", self._handle_health)
        return app

    def make_runner(self) -> web.AppRunner:
        # handler_cancellation: a client that disconnects (e.g. after its timeout) cancels
        # its handler and frees its concurrency slot, as axum drops the request future.
        return web.AppRunner(
            self.build_app(), access_log=None, handler_cancellation=True, shutdown_timeout=1.0
        )

    def start(self) -> TGITestServer:
        if self._thread is not None:
            return self
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        async def serve() -> None:
            self._runner = self.make_runner()
            await self._runner.setup()
            site = web.TCPSite(self._runner, self.host, self.port)
            await site.start()
            host, port = self._runner.addresses[0][:2]
            self._url = f"http://{host}:{port}"

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(serve())
            except BaseException as err:  # surface bind errors in start()
                failure.append(err)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="tgi-test-server", daemon=True)
        self._thread.start()
        ready.wait(timeout=30)
        if failure:
            self._thread = None
            raise RuntimeError("TGITestServer failed to start") from failure[0]
        return self

    def stop(self) -> None:
        """Stop the server; raise if it ever produced a response that broke the spec."""
        if self._thread is not None and self._loop is not None:
            if self._runner is not None:
                asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=30)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
            self._thread = None
            self._url = ""
        if self.spec_violations:
            raise SpecViolation(
                "TGITestServer sent responses that break TGI's spec:\n" + "\n".join(self.spec_violations)
            )

    def __enter__(self) -> TGITestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- plumbing shared by the routes

    @web.middleware
    async def _count_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests_total += 1
        self.requests_by_route[request.path] += 1
        response = await handler(request)
        self.responses_by_status[response.status] += 1
        return response

    def _json(
        self, body: Any, *, status: int = 200, schema: str | Mapping[str, Any], what: str
    ) -> web.Response:
        try:
            self.spec.check_response(schema, body, what=what)
        except SpecViolation as err:
            self.spec_violations.append(str(err))
            raise
        return web.json_response(body, status=status, dumps=_dumps)

    def _error(self, err: TGIError, route: str) -> web.Response:
        return self._json(err.body(), status=err.status, schema="ErrorResponse", what=f"{route} error")

    def _record_invalid(self, route: str, body: Any, errors: list[str]) -> None:
        self.invalid_requests.append({"route": route, "body": body, "errors": errors})

    async def _read_request(self, request: web.Request, schema: str) -> tuple[Any, web.Response | None]:
        """The JSON body, or the response rejecting it (as axum's Json extractor would:
        415 without a JSON content type, 400 for malformed JSON, 422 for a body that does
        not deserialise, here: does not match the spec)."""
        route = request.path
        raw = await request.read()
        if len(self.received) < self.max_recorded_requests:
            try:
                recorded: Any = json.loads(raw)
            except ValueError:
                recorded = raw.decode(errors="replace")
            self.received.append({"route": route, "body": recorded})
        if request.content_type != "application/json":
            message = "Expected request with `Content-Type: application/json`"
            self._record_invalid(route, raw.decode(errors="replace"), [message])
            return None, self._error(TGIError(415, "validation", message), route)
        try:
            body = json.loads(raw)
        except ValueError as err:
            message = f"Failed to parse the request body as JSON: {err}"
            self._record_invalid(route, raw.decode(errors="replace"), [message])
            return None, self._error(TGIError(400, "validation", message), route)
        errors = self.spec.errors(schema, body)
        if errors:
            self._record_invalid(route, body, errors)
            # Prefer TGI's own message where its validation names the problem (e.g.
            # `temperature: 0` breaks the spec's exclusiveMinimum and TGI's rule alike).
            message = "Failed to deserialize the JSON body into the target type: " + errors[0]
            if isinstance(body, dict) and isinstance(body.get("inputs"), str):
                try:
                    validate_generate_request(body, self.model, self.limits, compat_full_text=False)
                except TGIError as err:
                    message = err.message
                except (TypeError, ValueError, AttributeError, KeyError):
                    pass
            return None, self._error(validation_error(message), route)
        return body, None

    def _try_acquire(self, slots: int) -> bool:
        # TGI's router holds one semaphore permit per sequence being generated
        # (best_of=2 takes two) and answers 429 when none is free; it never queues.
        if self.in_flight + slots > self.limits.max_concurrent_requests:
            return False
        self.in_flight += slots
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        return True

    def _release(self, slots: int) -> None:
        self.in_flight -= slots

    def _draw_seed(self) -> int:
        return self._seed_rng.randrange(1, 2**63)

    def _injected(self, kind: str) -> None:
        # Counted where the fault takes effect: a fault drawn for a request that fails
        # validation first never happens.
        self.faults_injected[kind] += 1

    async def _reset_connection(self, request: web.Request) -> None:
        """Drop the TCP connection without answering; the handler is then cancelled."""
        self._injected("reset")
        transport = request.transport
        if transport is not None:
            transport.abort()
        await asyncio.sleep(3600)  # cancelled as soon as aiohttp notices the lost connection
        raise ConnectionResetError("injected reset")

    def _generate_sequences(self, valid: ValidRequest) -> list[Generation]:
        if valid.best_of > 1:
            # TGI runs best_of independent requests with random seeds and returns the one
            # with the highest mean token logprob; the others go to best_of_sequences.
            seeds = [self._draw_seed() for _ in range(valid.best_of)]
        elif valid.params.sampling and valid.params.seed is None:
            seeds = [self._draw_seed()]
        else:
            seeds = [valid.params.seed]
        sequences = [
            self.model.generate(
                valid.inputs,
                dataclasses.replace(valid.params, seed=seed),
                decoder_input_details=valid.decoder_input_details,
            )
            for seed in seeds
        ]
        self.generations += len(sequences)
        return sequences

    def _generate_response(
        self, valid: ValidRequest, sequences: list[Generation], best_index: int
    ) -> dict[str, Any]:
        best = sequences[best_index]
        prefix = valid.inputs if valid.return_full_text else ""
        response: dict[str, Any] = {"generated_text": prefix + best.text}
        if valid.details:
            details: dict[str, Any] = {
                "finish_reason": best.finish_reason,
                "generated_tokens": len(best.tokens),
                "seed": best.seed,
                "prefill": best.prefill,
                "tokens": best.tokens,
            }
            if valid.best_of > 1:
                details["best_of_sequences"] = [
                    _best_of_sequence(sequence, prefix)
                    for i, sequence in enumerate(sequences)
                    if i != best_index
                ]
            if best.top_tokens:  # serde skips an empty top_tokens
                details["top_tokens"] = best.top_tokens
            response["details"] = details
        return response

    # ---- routes

    async def _handle_info(self, request: web.Request) -> web.Response:
        if self.unavailable:
            return self._error(unavailable_error(), request.path)
        return self._json(self.info, schema="Info", what="/info")

    async def _handle_health(self, request: web.Request) -> web.Response:
        if self.unavailable:
            return self._error(TGIError(503, "healthcheck", "unhealthy"), request.path)
        return web.Response(status=200)

    async def _handle_tokenize(self, request: web.Request) -> web.Response:
        if self.unavailable:
            return self._error(unavailable_error(), request.path)
        body, rejection = await self._read_request(request, "GenerateRequest")
        if rejection is not None:
            return rejection
        tokens = [
            {"id": token_id, "text": text, "start": start, "stop": stop}
            for token_id, text, start, stop in self.model.tokenize(body["inputs"])
        ]
        return self._json(tokens, schema="TokenizeResponse", what="/tokenize")

    async def _handle_generate(self, request: web.Request) -> web.StreamResponse:
        return await self._generation_route(request, "GenerateRequest", stream=False, compat=False)

    async def _handle_generate_stream(self, request: web.Request) -> web.StreamResponse:
        return await self._generation_route(request, "GenerateRequest", stream=True, compat=False)

    async def _handle_compat(self, request: web.Request) -> web.StreamResponse:
        return await self._generation_route(request, "CompatGenerateRequest", stream=None, compat=True)

    async def _generation_route(
        self, request: web.Request, schema: str, *, stream: bool | None, compat: bool
    ) -> web.StreamResponse:
        route = request.path
        body, rejection = await self._read_request(request, schema)
        if rejection is not None:
            return rejection
        if stream is None:
            stream = bool(body.get("stream", False))
        if self.unavailable:
            return self._error(unavailable_error(), route)
        fault = self.faults.decide(route, body)
        if fault == "503":
            self._injected("503")
            return self._error(unavailable_error(), route)
        if fault == "reset" and not stream:
            await self._reset_connection(request)
        if stream:
            return await self._stream(request, body, fault, compat)
        return await self._generate(request, body, fault, compat)

    async def _generate(
        self, request: web.Request, body: dict[str, Any], fault: str | None, compat: bool
    ) -> web.Response:
        route = request.path
        best_of = (body.get("parameters") or {}).get("best_of") or 1
        if best_of > 1:  # checked before any permit is taken, as in Infer::generate_best_of
            if self.limits.max_best_of == 1:
                return self._error(validation_error("`best_of` != 1 is not allowed for this endpoint"), route)
            if best_of > self.limits.max_best_of:
                limit = self.limits.max_best_of
                message = f"`best_of` must be > 0 and <= {limit}. Given: {best_of}"
                return self._error(validation_error(message), route)
        if fault == "429":
            self._injected("429")
            return self._error(overloaded_error(), route)
        if not self._try_acquire(best_of):
            return self._error(overloaded_error(), route)
        try:
            try:
                valid = validate_generate_request(
                    body, self.model, self.limits, compat_full_text=compat and self._compat_full_text
                )
            except TGIError as err:
                return self._error(err, route)
            if fault == "timeout":
                self._injected("timeout")
                await asyncio.sleep(self.timeout_delay)
            if self.latency:
                await asyncio.sleep(self.latency)
            sequences = self._generate_sequences(valid)
            if fault == "424":
                self._injected("424")
                return self._error(generation_error(), route)
            # TGI keeps the sequence with the highest mean token logprob (first on ties).
            best_index = max(range(len(sequences)), key=lambda i: (sequences[i].mean_logprob, -i))
            response = self._generate_response(valid, sequences, best_index)
            if compat:
                # TGI wraps the compat route's answer in a list, "to match api-inference".
                response_body: Any = [response]
                schema: Any = {"type": "array", "items": {"$ref": self.spec.ref("GenerateResponse")}}
            else:
                response_body, schema = response, "GenerateResponse"
            json_response = self._json(response_body, schema=schema, what=route)
            # A few of the headers TGI's generate route sets, for clients that log them.
            json_response.headers["x-compute-type"] = "fake-cpu"
            json_response.headers["x-prompt-tokens"] = str(valid.input_length)
            json_response.headers["x-generated-tokens"] = str(len(sequences[best_index].tokens))
            self.generated_tokens += sum(len(sequence.tokens) for sequence in sequences)
            if fault == "truncated":
                self._injected("truncated")
                assert json_response.body is not None
                full = bytes(json_response.body)  # type: ignore[arg-type]
                return web.Response(
                    body=full[: max(1, len(full) // 2)], status=200, content_type="application/json"
                )
            return json_response
        finally:
            self._release(best_of)

    async def _stream(
        self, request: web.Request, body: dict[str, Any], fault: str | None, compat: bool
    ) -> web.StreamResponse:
        route = request.path
        parameters = body.get("parameters") or {}
        response = web.StreamResponse(
            status=200,
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            },
        )
        await response.prepare(request)

        async def send(event: Mapping[str, Any], schema: str) -> None:
            try:
                self.spec.check_response(schema, event, what=f"{route} event")
            except SpecViolation as err:
                self.spec_violations.append(str(err))
                raise
            # axum's Sse writes "data:" with no space before the JSON.
            await response.write(b"data:" + _dumps(event).encode() + b"\n\n")

        async def fail(err: TGIError) -> web.StreamResponse:
            await send(err.body(), "ErrorResponse")
            await response.write_eof()
            return response

        # TGI's generate_stream checks these two before anything else, inside the stream.
        if (parameters.get("best_of") or 1) != 1:
            return await fail(validation_error("`best_of` != 1 is not supported when streaming tokens"))
        if parameters.get("decoder_input_details"):
            return await fail(
                validation_error("`decoder_input_details` == true is not supported when streaming tokens")
            )
        if fault == "429":
            self._injected("429")
            return await fail(overloaded_error())
        if not self._try_acquire(1):
            return await fail(overloaded_error())
        try:
            try:
                valid = validate_generate_request(
                    body, self.model, self.limits, compat_full_text=compat and self._compat_full_text
                )
            except TGIError as err:
                return await fail(err)
            if fault == "timeout":
                self._injected("timeout")
                await asyncio.sleep(self.timeout_delay)
            if self.latency:
                await asyncio.sleep(self.latency)
            (sequence,) = self._generate_sequences(valid)
            events = _stream_events(sequence, valid)
            # Mid-stream faults strike halfway, after some tokens were delivered.
            cut = len(events) // 2 if fault in ("424", "reset", "truncated") else None
            for index, event in enumerate(events):
                if index == cut:
                    if fault == "424":
                        self._injected("424")
                        return await fail(generation_error())
                    if fault == "reset":
                        await self._reset_connection(request)
                    if fault == "truncated":
                        self._injected("truncated")
                        partial = b"data:" + _dumps(event).encode()
                        await response.write(partial[: max(6, len(partial) // 2)])
                        await response.write_eof()
                        return response
                try:
                    await send(event, "StreamResponse")
                    self.generated_tokens += 1
                    if self.token_latency:
                        await asyncio.sleep(self.token_latency)
                except (ConnectionResetError, asyncio.CancelledError):
                    # the client closed the stream: TGI drops the request and generates no more
                    self.streams_cancelled += 1
                    raise
            await response.write_eof()
            return response
        finally:
            self._release(1)


def _best_of_sequence(sequence: Generation, prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "generated_text": prefix + sequence.text,
        "finish_reason": sequence.finish_reason,
        "generated_tokens": len(sequence.tokens),
        "seed": sequence.seed,
        "prefill": sequence.prefill,
        "tokens": sequence.tokens,
    }
    if sequence.top_tokens:
        out["top_tokens"] = sequence.top_tokens
    return out


def _stream_events(sequence: Generation, valid: ValidRequest) -> list[dict[str, Any]]:
    """One StreamResponse per token; the last carries generated_text and details.

    `index` counts from 1; `top_tokens` is omitted when empty and `generated_text` /
    `details` are null on intermediate events, as TGI's serde attributes make them.
    """
    events = []
    last = len(sequence.tokens) - 1
    for i, token in enumerate(sequence.tokens):
        event: dict[str, Any] = {"index": i + 1, "token": token, "generated_text": None, "details": None}
        if sequence.top_tokens:
            event["top_tokens"] = sequence.top_tokens[i]
        if i == last:
            event["generated_text"] = (valid.inputs if valid.return_full_text else "") + sequence.text
            if valid.details:
                event["details"] = {
                    "finish_reason": sequence.finish_reason,
                    "generated_tokens": len(sequence.tokens),
                    "seed": sequence.seed,
                    "input_length": sequence.input_length,
                }
        events.append(event)
    return events


def _dumps(value: Any) -> str:
    # Compact, as serde_json writes it. allow_nan=False: a NaN/inf logprob here would be a
    # bug (TGI sends null for those).
    return json.dumps(value, allow_nan=False, ensure_ascii=False, separators=(",", ":"))


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.servers.tgi_server",
        description="Serve TGI's native protocol with a deterministic fake reasoning model.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--model-id", default="curate-test/fake-reasoner")
    parser.add_argument("--max-concurrent-requests", type=int, default=128)
    parser.add_argument("--max-input-tokens", type=int, default=4095)
    parser.add_argument("--max-total-tokens", type=int, default=4096)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per generation request")
    parser.add_argument("--token-latency", type=float, default=0.0, help="seconds between streamed tokens")
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument(
        "--fault-kinds", default=",".join(FAULT_KINDS), help="comma-separated subset of the default"
    )
    parser.add_argument("--fault-seed", type=int, default=0)
    parser.add_argument("--max-faults-per-request", type=int, default=None)
    parser.add_argument("--timeout-delay", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--lenient-fields", action="store_true", help="accept unknown request fields, as TGI does"
    )
    args = parser.parse_args(argv)
    server = TGITestServer(
        host=args.host,
        port=args.port,
        model_id=args.model_id,
        max_concurrent_requests=args.max_concurrent_requests,
        max_input_tokens=args.max_input_tokens,
        max_total_tokens=args.max_total_tokens,
        latency=args.latency,
        token_latency=args.token_latency,
        fault_rate=args.fault_rate,
        fault_kinds=[k for k in args.fault_kinds.split(",") if k],
        fault_seed=args.fault_seed,
        max_faults_per_request=args.max_faults_per_request,
        timeout_delay=args.timeout_delay,
        seed=args.seed,
        strict_fields=not args.lenient_fields,
    )
    print(f"TGI test server on http://{args.host}:{args.port} (spec {server.spec.path})", flush=True)

    async def serve() -> None:
        runner = server.make_runner()
        await runner.setup()
        await web.TCPSite(runner, args.host, args.port).start()
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
