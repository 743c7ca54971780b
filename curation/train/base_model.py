"""The frozen base model: its checkpoint (a GGUF converted once into the cache), 4-bit quantisation for QLoRA,
its tokenizer and device; and loading a trained adapter back onto it.

A GGUF base (the embedded SmolLM2) is read from the dequantized checkpoint that every loader shares
(curation.models, ``~/.cache/curate/models``): transformers cannot quantize a GGUF with bitsandbytes
while loading it, but it can quantize that checkpoint.
torch and transformers are imported inside the functions, so that importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path

from curation.train.card import read_meta
from curation.train.config import TrainConfig, TrainError
from curation.types import first_line

EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what the embedded GGUF was quantized from


def base_model_identity(config: TrainConfig) -> str:
    """Human-readable name of the base model, for cards and reports."""
    from curation.backends.local import EMBEDDED_MODEL_ID

    if config.base_model == "embedded":
        return EMBEDDED_MODEL_ID
    name = config.base_model + (f"/{config.gguf_file}" if config.gguf_file else "")
    return name + (f"@{config.revision}" if config.revision else "")


def base_model_hub_id(config: TrainConfig) -> str | None:
    """The Hub model a pushed adapter should name as its base, when there is one."""
    if config.base_model == "embedded":
        return EMBEDDED_HUB_ID
    if not Path(config.base_model).expanduser().exists() and config.base_model.count("/") == 1:
        return config.base_model
    return None


def base_checkpoint(config: TrainConfig) -> tuple[str, dict]:
    """(location, from_pretrained kwargs) of the base model. A GGUF is converted once into the cache."""
    from curation.backends.local import resolve_model

    try:
        location, gguf = resolve_model(config.base_model, config.gguf_file)
    except RuntimeError as exc:
        raise TrainError(f"base model {config.base_model!r} not found: {first_line(exc)}") from None
    if not gguf:
        local = Path(location).expanduser()
        if local.exists() and not (local / "config.json").exists():
            raise TrainError(f"base model {config.base_model!r} not found: {local} has no config.json (a GGUF needs train.gguf_file)")
        return str(local) if local.exists() else location, ({"revision": config.revision} if config.revision else {})
    from curation.models import gguf_checkpoint

    try:
        return str(gguf_checkpoint(location, gguf, config.revision, name=base_model_identity(config))), {}
    except (RuntimeError, OSError, ValueError) as exc:
        raise TrainError(f"base model {config.base_model!r} not found: {first_line(exc)}") from None


def resolve_device(config: TrainConfig) -> str:
    import torch

    if config.device:
        return config.device
    return "cuda" if torch.cuda.is_available() else "cpu"


def gpu_supports_bf16(device: str) -> bool:
    import torch

    return device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def compute_dtype(config: TrainConfig, device: str):
    import torch

    if config.bnb_4bit_compute_dtype != "auto":
        return getattr(torch, config.bnb_4bit_compute_dtype)
    if device.startswith("cuda"):
        return torch.bfloat16 if gpu_supports_bf16(device) else torch.float16
    return torch.float32


def bnb_config(config: TrainConfig, device: str):
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=config.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=config.bnb_4bit_use_double_quant,
        bnb_4bit_compute_dtype=compute_dtype(config, device),
    )


def load_tokenizer(config: TrainConfig):
    from transformers import AutoTokenizer

    location, kwargs = base_checkpoint(config)
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
    except (OSError, ValueError) as exc:
        raise TrainError(f"base model {config.base_model!r} not found: {first_line(exc)}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(config: TrainConfig, device: str, *, quantize: bool | None = None):
    """The frozen base: 4-bit NF4 through bitsandbytes for QLoRA, else float32 on CPU / bf16 on a GPU."""
    import torch
    from transformers import AutoModelForCausalLM

    quantize = config.qlora if quantize is None else quantize
    location, kwargs = base_checkpoint(config)
    quiet_loading()
    try:
        if quantize:
            model = AutoModelForCausalLM.from_pretrained(
                location, quantization_config=bnb_config(config, device), dtype=compute_dtype(config, device), device_map={"": device}, **kwargs
            )
        else:
            dtype = torch.bfloat16 if gpu_supports_bf16(device) else torch.float32
            model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype, **kwargs).to(device)
    except (OSError, ValueError) as exc:
        raise TrainError(f"base model {config.base_model!r} not found: {first_line(exc)}") from None
    return model


@contextlib.contextmanager
def no_rename_warnings():
    """transformers 5 renamed gradient_checkpointing; TRL and peft still call the old names. Nothing a user can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*is deprecated and will be removed in v6", category=FutureWarning)
        yield


def quiet_loading() -> None:
    """Loading bars and the bitsandbytes note about the optional `kernels` package say nothing useful here.

    Called before anything imports bitsandbytes (peft and trl do), which logs that note on import.
    """
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    import transformers

    transformers.utils.logging.disable_progress_bar()


def load_adapter(adapter_dir: str | Path, *, device: str | None = None, quantize: bool | None = None):
    """Base model plus the trained adapter, in eval mode: (model, tokenizer, meta).

    The base is loaded as it was trained (4-bit for a QLoRA adapter) unless ``quantize`` says otherwise.
    """
    from peft import PeftModel
    from transformers import AutoTokenizer

    meta = read_meta(adapter_dir)
    config = TrainConfig.model_validate(meta["train"])
    if device:
        config = config.model_copy(update={"device": device})
    device = resolve_device(config)
    base = load_base_model(config, device, quantize=quantize)
    with no_rename_warnings():
        model = PeftModel.from_pretrained(base, str(adapter_dir))
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, meta
