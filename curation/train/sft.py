"""The trainer: TRL's SFTConfig and peft's LoraConfig from the recipe's train section, the thinking put into
the loss, and the SFTTrainer over the (Q)LoRA-wrapped base.

The train section names its fields as SFTConfig does, so they are passed by name, read from
``dataclasses.fields(SFTConfig)``, not copied by hand; anything else SFTConfig knows goes under
``train.extra``. SFTTrainer masks the prompt out of the loss, so only the reasoning trace (with
the end-of-turn token) is learned.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

from curation.train.base_model import base_model_identity, gpu_supports_bf16, load_base_model, load_tokenizer, no_rename_warnings, resolve_device
from curation.train.config import TrainConfig, TrainError
from curation.train.target import TrainingRows, TrainTarget
from curation.types import first_line

log = logging.getLogger(__name__)


def sft_field_names(sft_fields: set[str]) -> list[str]:
    """The train section's fields that are SFTConfig fields of the same name (output_dir is the adapter folder, set apart)."""
    return [name for name in TrainConfig.model_fields if name in sft_fields and name != "output_dir"]


def sft_config(config: TrainConfig, output_dir: Path, device: str):
    """Map the recipe's train section onto trl.SFTConfig."""
    import dataclasses

    from trl import SFTConfig

    on_gpu = device.startswith("cuda")
    known = {f.name for f in dataclasses.fields(SFTConfig)}
    # The train section names its fields as SFTConfig does, so every one SFTConfig knows is passed by
    # name, not copied by hand (tests/train/test_train.py pins which those are). None means "curate's default
    # for this device".
    values: dict[str, Any] = {name: getattr(config, name) for name in sft_field_names(known)}
    values.update(output_dir=str(output_dir), data_seed=config.seed)
    if config.warmup_steps >= 1:
        values["warmup_steps"] = int(config.warmup_steps)  # a count; below 1 it is a ratio of all steps
    if values["gradient_checkpointing"] is None:
        values["gradient_checkpointing"] = on_gpu
    if values["bf16"] is None:
        values["bf16"] = gpu_supports_bf16(device)
    first_class = set(values) | {"activation_checkpointing"}
    # curate's choices for the trainer; train.extra may still override these
    values.update(report_to="none", save_strategy="no", disable_tqdm=True, use_cpu=not on_gpu, dataloader_pin_memory=on_gpu, logging_first_step=True)
    known = {f.name for f in dataclasses.fields(SFTConfig)}
    for key, value in config.extra.items():
        if key not in known:
            raise TrainError(f"train.extra.{key}: not a field of trl.SFTConfig")
        if key in first_class:
            raise TrainError(f"train.extra.{key}: set train.{key} instead" if key in TrainConfig.model_fields else f"train.extra.{key}: set train.gradient_checkpointing instead")
        values[key] = value
    if values["gradient_checkpointing"]:
        values.setdefault("gradient_checkpointing_kwargs", {"use_reentrant": False})
    if "activation_checkpointing" in known:
        # transformers 5 renamed gradient_checkpointing*; pass the new names so no deprecation warning fires
        values["activation_checkpointing"] = values.pop("gradient_checkpointing")
        if "gradient_checkpointing_kwargs" in values:
            values["activation_checkpointing_kwargs"] = values.pop("gradient_checkpointing_kwargs")
    try:
        return SFTConfig(**values)
    except (ValueError, TypeError) as exc:
        raise TrainError(f"train: {first_line(exc)}") from None


def lora_config(config: TrainConfig):
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )


# --------------------------------------------------------------------------- progress
def _progress_callback(stream=None):
    from transformers import TrainerCallback

    class LossPrinter(TrainerCallback):
        """One line per logging step: step, loss, learning rate, speed and time left."""

        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.monotonic()
            print(f"training: {state.max_steps} steps", file=stream or sys.stdout, flush=True)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "loss" not in logs:
                return
            elapsed = time.monotonic() - self.start
            per_step = elapsed / max(state.global_step, 1)
            left = per_step * max(state.max_steps - state.global_step, 0)
            width = len(str(state.max_steps))
            print(
                f"step {state.global_step:>{width}}/{state.max_steps}  loss {logs['loss']:.4f}"
                f"  lr {logs.get('learning_rate', 0.0):.2e}  {per_step:.1f}s/step  eta {_duration(left)}",
                file=stream or sys.stdout,
                flush=True,
            )

    return LossPrinter()


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


# --------------------------------------------------------------------------- thinking in the loss
THINKING_SLOTS = ("reasoning_content", "thinking")  # publish.thinking_format's message fields
_PROBE_THINKING, _PROBE_ANSWER = "curate-probe-thinking-7f3a", "curate-probe-answer-7f3a"


def _render(tokenizer, messages: list[dict], **kwargs) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)


def thinking_layout(tokenizer) -> str:
    """How the student's chat template can carry a completion's thinking into the rendered text.

    "slot": it renders the message's `reasoning_content`/`thinking` field (Qwen3, gpt-oss);
    "inline": it keeps `<think>…</think>` written in `content`; "text": it drops the thinking
    either way (DeepSeek-R1 distills cut everything before `</think>` from assistant turns), so
    the rows become plain prompt/completion text rendered here, thinking included.
    """
    user = {"role": "user", "content": "q"}
    for slot in THINKING_SLOTS:
        rendered = _render(tokenizer, [user, {"role": "assistant", "content": _PROBE_ANSWER, slot: _PROBE_THINKING}])
        if _PROBE_THINKING in rendered and _PROBE_ANSWER in rendered:
            return "slot:" + slot
    inline = f"<think>\n{_PROBE_THINKING}\n</think>\n\n{_PROBE_ANSWER}"
    if _PROBE_THINKING in _render(tokenizer, [user, {"role": "assistant", "content": inline}]):
        return "inline"
    return "text"


def with_thinking_in_the_loss(rows: list[dict], tokenizer) -> tuple[list[dict], str]:
    """The training rows rewritten so the student's template puts each completion's thinking into the text SFT learns.

    Returns (rows, layout); rows without thinking anywhere come back unchanged (layout "none").
    """
    def thinking_of(message: dict) -> str | None:
        return next((message.get(slot) for slot in THINKING_SLOTS if message.get(slot) is not None), None)

    if not any(thinking_of(m or {}) is not None for r in rows for m in r["completion"]):
        return [{"prompt": r["prompt"], "completion": [{"role": m["role"], "content": m["content"]} for m in r["completion"]]} for r in rows], "none"
    layout = thinking_layout(tokenizer)
    out = []
    for row in rows:
        (message,) = row["completion"]  # curate writes one assistant message
        thinking, answer = thinking_of(message), message.get("content") or ""
        if layout.startswith("slot:"):
            slot = layout.split(":", 1)[1]
            completion = {"role": "assistant", "content": answer, slot: thinking}
            out.append({"prompt": row["prompt"], "completion": [completion]})
        elif layout == "inline":
            content = answer if thinking is None else f"<think>\n{thinking}\n</think>\n\n{answer}"
            out.append({"prompt": row["prompt"], "completion": [{"role": "assistant", "content": content}]})
        else:
            prompt = _render(tokenizer, row["prompt"], add_generation_prompt=True)
            # what the template writes after an assistant turn's content (end of turn, EOS)
            closing = _render(tokenizer, [*row["prompt"], {"role": "assistant", "content": _PROBE_ANSWER}]).split(_PROBE_ANSWER)[-1]
            opened = prompt.rstrip().endswith("<think>")  # R1 distills open the thinking in the generation prompt
            think = "" if thinking is None else ("" if opened else "<think>\n") + f"{thinking}\n</think>\n\n"
            out.append({"prompt": prompt, "completion": think + answer + closing})
    return out, layout


def build_trainer(target: TrainTarget, rows: TrainingRows, output_dir: Path, *, show_progress: bool = True):
    """SFTTrainer over a (Q)LoRA-wrapped base, ready to train (no steps taken)."""
    import datasets
    from trl import SFTTrainer

    config = target.config
    device = resolve_device(config)
    args = sft_config(config, output_dir, device)
    tokenizer = load_tokenizer(config)
    if not tokenizer.chat_template and not args.chat_template_path:
        raise TrainError(f"base model {base_model_identity(config)} has no chat template; set train.extra.chat_template_path")
    if not args.chat_template_path:
        converted, layout = with_thinking_in_the_loss(rows.dataset.to_list(), tokenizer)
        if layout != "none":
            log.info("thinking goes into the loss as %s", layout)
            rows.dataset = datasets.Dataset.from_list(converted)
    model = load_base_model(config, device)
    if config.qlora:
        from peft import prepare_model_for_kbit_training

        # norms and embeddings in float32, input grads on for checkpointing: the QLoRA recipe
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=args.gradient_checkpointing)
    datasets.disable_progress_bars()
    callbacks = [_progress_callback()] if show_progress else []
    try:
        with no_rename_warnings():
            trainer = SFTTrainer(
                model=model,
                args=args,
                train_dataset=rows.dataset,
                processing_class=tokenizer,
                peft_config=lora_config(config),
                callbacks=callbacks,
            )
    except ValueError as exc:
        raise TrainError(f"train: {first_line(exc)}") from None
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # its raw log dicts would repeat the loss lines
    if len(trainer.train_dataset) == 0:
        raise TrainError(f"no training rows left after tokenizing to train.max_length={config.max_length}: every prompt fills it")
    return trainer
