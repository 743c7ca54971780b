"""The recipe's `train:` section, and the error `curate train` reports for a user's mistake.

Light on purpose (pydantic only, no torch): ``curation.recipe.sections`` imports it for
``Recipe.train``, so validating a recipe never loads a training library.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator

from curation.recipe.base import Strict
from curation.train.splits import SPLITS
from curation.types import CurateError


class TrainError(CurateError):
    """A problem with the user's input (one line, exit status 1, no traceback)."""


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
    split: Literal[SPLITS] = Field(
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

