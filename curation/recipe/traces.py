"""``source.traces``: reading traces made elsewhere (distilabel, curator, a curate run) instead of generating them.

The section maps the columns of another tool's output onto what curate needs; presets name the
columns of the tools curate was checked against (curation.trace_import reads the file).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_serializer, model_validator

from curation.recipe.base import Strict

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
        "tokens": "tokens", "token_ids": "token_ids", "reasoning": "thinking",
    },
}

_TRACE_COLUMN_KEYS = (
    "id", "prompt", "completion", "sample_index", "reference", "token_logprobs", "top_logprobs", "tokens", "token_ids",
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
    tokens: str | None = Field(
        None, description="Column of the token strings (checked against the logprobs' length). A scorer of the same model forces the strings that re-encode to themselves."
    )
    token_ids: str | None = Field(
        None, description="Column of the generator's token ids (a curate run's traces config has them). A scorer of the same model forces exactly these tokens."
    )
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
        return self

    def mapped_columns(self) -> dict[str, str]:
        """recipe key -> file column, for every column this mapping reads."""
        return {key: getattr(self, key) for key in _TRACE_COLUMN_KEYS if getattr(self, key) is not None}

