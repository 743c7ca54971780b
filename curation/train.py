"""Train: fine-tune a small model on a run's curated split with TRL's SFTTrainer and (Q)LoRA.

    curate train recipes/quickstart.yaml                 # the recipe's run folder, split `filtered`
    curate train runs/quickstart --split scored          # ablation: every row, unfiltered
    curate train runs/quickstart --split random          # ablation: as many random rows as `filtered` has
    curate train recipes/quickstart.yaml --push my-lab/quickstart-sft
    curate eval --model runs/quickstart/adapters/filtered --split test

The recipe's ``train:`` section maps one to one onto ``trl.SFTConfig``, ``peft.LoraConfig`` and
``transformers.BitsAndBytesConfig``; anything else SFTConfig knows goes under ``train.extra``.
The rows are in TRL's conversational prompt/completion format, so SFTTrainer masks the prompt out
of the loss and only the reasoning trace (with the end-of-turn token) is learned.

A GGUF base (the embedded SmolLM2) is dequantized once and saved as an ordinary checkpoint in the
cache (``~/.cache/curate/models``): transformers cannot quantize a GGUF with bitsandbytes while
loading it, but it can quantize that checkpoint, and every later run skips the slow conversion.

Imports of torch, transformers, trl and peft are kept inside functions so that ``curate --help``
and recipe validation stay fast.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from curation.run_folder import CARD_FILE, RECIPE_FILE, RunFolder  # an adapter folder uses the run folder's file names
from curation.types import CurateError

if TYPE_CHECKING:
    import datasets

    from curation.recipe import LoadedRecipe, TrainConfig

log = logging.getLogger(__name__)

META_FILE = "curate_train.json"  # how the adapter was made: base model, data, ids, losses
# What `--push` uploads: the adapter, tokenizer, card, recipe and metadata; never checkpoints.
PUSH_IGNORE = ["checkpoint-*", "checkpoint-*/**", "*.tmp", "eval/*.jsonl"]
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what the embedded GGUF was quantized from


class TrainError(CurateError):
    """A problem with the user's input (one line, exit status 1, no traceback)."""


# --------------------------------------------------------------------------- what to train on
@dataclass
class TrainTarget:
    """The recipe and the dataset a `curate train` argument points at."""

    loaded: LoadedRecipe
    config: TrainConfig
    dataset: str  # local run folder or Hub dataset id
    is_local: bool

    @property
    def hub_dataset(self) -> str | None:
        """Hub id of the dataset when it is (or will be) on the Hub, for the model card's link."""
        if not self.is_local:
            return self.dataset
        return self.loaded.recipe.hub.repo if self.loaded.recipe.hub else None


def resolve_target(target: str, dataset: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainTarget:
    """Read the recipe behind ``target`` (recipe file, run folder or hf:// dataset) and where its data is."""

    from curation.recipe import load_recipe

    path = Path(target)
    is_run_folder = path.is_dir() and RunFolder(path).recipe_file.exists()
    if path.is_dir() and not is_run_folder:
        raise TrainError(f"{target} is not a run folder (no {RECIPE_FILE}); give a recipe file or a run folder")
    loaded = load_recipe(target, overrides=overrides)
    config = loaded.recipe.train
    if config is None:
        raise TrainError(f"{loaded.file} has no `train:` section; add one (see recipes/quickstart.yaml for a CPU-sized example)")
    location = dataset or config.dataset
    if location is not None:
        # An existing folder is a run folder; otherwise `org/name` is a Hub dataset id.
        is_local = Path(location).expanduser().exists() or not re.fullmatch(r"[\w.-]+/[\w.-]+", location)
    elif is_run_folder:
        location, is_local = str(path), True
    elif target.startswith("hf://"):
        location, is_local = _hub_dataset_id(target), False
    else:
        from curation.run_folder import default_run_dir

        location, is_local = str(default_run_dir(loaded)), True
    if is_local and not Path(location).expanduser().is_dir():
        raise TrainError(f"run folder {location} not found; run `curate run` first, or set train.dataset to a run folder or Hub dataset id")
    return TrainTarget(loaded=loaded, config=config, dataset=location, is_local=is_local)


def _hub_dataset_id(location: str) -> str:
    # hf://datasets/ORG/NAME[/recipe.yaml][@REVISION] -> ORG/NAME
    rest = location[len("hf://") :].split("@")[0]
    parts = [p for p in rest.split("/") if p]
    if parts and parts[0] == "datasets":
        parts = parts[1:]
    return "/".join(parts[:2])


# What `--split` can name. `filtered` and `scored` are the run's own splits; the others are drawn
# from `scored` here, as baselines for the filtered split (results/m49_study.md):
#   random           as many rows as `filtered`, from every row with a trace (unreadable answers included)
#   random-readable  the like-for-like random baseline: from rows whose answer could be read, with the
#                    same count per predicted class as `filtered`, so only the uncertainty ranking differs
#   label-correct    the ground-truth reference: rows whose answer equals the label, the same count per
#                    predicted class as `filtered`. It USES THE LABELS, so it is an upper reference for
#                    what a perfect filter of that size would give, never a label-free curation.
SPLITS = ("filtered", "scored", "random", "random-readable", "label-correct")
LABEL_USING_SPLITS = frozenset({"label-correct"})


@dataclass
class TrainingRows:
    dataset: "datasets.Dataset"  # columns: prompt, completion (TRL conversational)
    ids: list[str]
    split: str
    available: int  # rows in the split before dropping those without a completion (drawn splits: rows they were drawn from)
    source_rows: int  # rows of `scored` (all questions)
    per_class: dict[str, int] = field(default_factory=dict)  # rows per predicted class (answer), None as "unreadable"
    short: dict[str, int] = field(default_factory=dict)  # classes where fewer rows could be drawn than `filtered` has


def _has_completion(row: dict) -> bool:
    completion = row.get("completion") or []
    return any((message or {}).get("content") for message in completion)


def _class_counts(rows: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows:
        key = "unreadable" if row.get("answer") is None else str(row["answer"])
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def draw_like_filtered(scored: list[dict], filtered: list[dict], seed: int, *, label_correct: bool) -> tuple[list[dict], dict[str, int], int]:
    """Rows of `scored` with the same count per predicted class (answer) as `filtered`, drawn at random (seed).

    Drawn only from rows with a trace and a readable answer; with ``label_correct``, only from those
    whose answer equals the label. Returns (rows in `scored` order, shortfall per class, rows drawn from).
    Each class is drawn with its own generator seeded from (seed, class), so adding a class or
    reordering `scored` does not change what another class gets.
    """
    import numpy as np

    wanted = {c: n for c, n in _class_counts(filtered).items() if c != "unreadable"}
    eligible = [
        (i, row) for i, row in enumerate(scored)
        if _has_completion(row) and row.get("answer") is not None
        and (not label_correct or (row.get("label") is not None and str(row["answer"]) == str(row["label"])))
    ]
    chosen: list[int] = []
    short: dict[str, int] = {}
    for cls, n in wanted.items():
        # sorted by id: the draw depends on which rows exist, not on the order the run wrote them
        members = sorted((i for i, row in eligible if str(row["answer"]) == cls), key=lambda i: str(scored[i].get("id")))
        class_seed = int.from_bytes(hashlib.sha256(f"{seed}|{cls}".encode()).digest()[:8], "little")
        take = min(n, len(members))
        if take < n:
            short[cls] = n - take
        picks = np.random.default_rng(class_seed).choice(len(members), size=take, replace=False) if take else []
        chosen.extend(members[j] for j in picks)
    return [scored[i] for i in sorted(chosen)], short, len(eligible)


def _read_split(location: str, is_local: bool, split: str) -> list[dict]:
    """Rows of one split of a run folder (read directly) or of a Hub dataset (through `datasets`)."""
    if is_local:
        from curation.run_folder import RunFolder

        folder = RunFolder(Path(location).expanduser())
        if folder.has_split(split):
            return folder.read_split(split).to_pylist()
    import datasets

    try:
        return datasets.load_dataset(str(location), split=split).to_list()
    except Exception as exc:  # noqa: BLE001 - offline, missing repo, missing split: all one line for the user
        raise TrainError(f"cannot load split {split!r} of dataset {location}: {_first_line(exc)}") from None


def load_training_rows(target: TrainTarget, split: str, seed: int) -> TrainingRows:
    """The rows to train on (see SPLITS); the drawn splits are reproducible from ``seed``."""
    import datasets
    import numpy as np

    if split not in SPLITS:
        raise TrainError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    scored = _read_split(target.dataset, target.is_local, "scored")
    short: dict[str, int] = {}
    if split == "random":
        # same size as `filtered`, drawn from every row with a trace: the ablation's first baseline
        filtered = [r for r in _read_split(target.dataset, target.is_local, "filtered") if _has_completion(r)]
        pool = [r for r in scored if _has_completion(r)]
        chosen = sorted(np.random.default_rng(seed).choice(len(pool), size=min(len(filtered), len(pool)), replace=False).tolist())
        rows, available = [pool[i] for i in chosen], len(scored)
    elif split in ("random-readable", "label-correct"):
        if split == "label-correct" and not any(r.get("label") is not None for r in scored):
            raise TrainError(
                f"split 'label-correct' needs labels, and the scored split of {target.dataset} has none; set source.label_column in the recipe"
            )
        filtered = [r for r in _read_split(target.dataset, target.is_local, "filtered") if _has_completion(r)]
        rows, short, available = draw_like_filtered(scored, filtered, seed, label_correct=split == "label-correct")
    else:
        all_rows = scored if split == "scored" else _read_split(target.dataset, target.is_local, split)
        rows = [r for r in all_rows if _has_completion(r)]
        available = len(all_rows)
    source_rows = len(scored)
    if not rows:
        if split == "scored":
            reason = f"none of its {source_rows} questions has a trace"
        elif split == "label-correct":
            reason = "no kept class has a row whose answer equals its label"
        else:
            reason = f"the selection kept none of the {source_rows} questions; loosen select: or train on --split scored"
        raise TrainError(f"split {split!r} of {target.dataset} has no rows to train on: {reason}")
    for row in rows:
        if "prompt" not in row or "completion" not in row:
            raise TrainError(f"dataset {target.dataset} has no prompt/completion columns; is it a curate run folder?")
    data = datasets.Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])
    return TrainingRows(
        dataset=data, ids=[str(r.get("id")) for r in rows], split=split, available=available, source_rows=source_rows,
        per_class=_class_counts(rows), short=short,
    )


# --------------------------------------------------------------------------- base model
def cache_dir() -> Path:
    """Where converted checkpoints live: $CURATE_CACHE, else $XDG_CACHE_HOME/curate, else ~/.cache/curate."""
    if os.environ.get("CURATE_CACHE"):
        return Path(os.environ["CURATE_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "curate"


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
        raise TrainError(f"base model {config.base_model!r} not found: {_first_line(exc)}") from None
    if not gguf:
        local = Path(location).expanduser()
        if local.exists() and not (local / "config.json").exists():
            raise TrainError(f"base model {config.base_model!r} not found: {local} has no config.json (a GGUF needs train.gguf_file)")
        return str(local) if local.exists() else location, ({"revision": config.revision} if config.revision else {})
    gguf_path = Path(location).expanduser() / gguf
    if gguf_path.exists():
        stat = gguf_path.stat()
        key_source = f"{gguf_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    elif Path(location).expanduser().exists():
        raise TrainError(f"base model {config.base_model!r} not found: no {gguf} in {location}")
    else:
        key_source = f"{location}|{gguf}|{config.revision}"
    import transformers

    key = hashlib.sha256(f"{key_source}|transformers={transformers.__version__}".encode()).hexdigest()[:16]
    target = cache_dir() / "models" / f"{Path(gguf).stem}-{key}"
    if not (target / "config.json").exists():
        _convert_gguf(config, target)
    return str(target), {}


def _convert_gguf(config: TrainConfig, target: Path) -> None:
    """Dequantize a GGUF to float32 and save it as a plain checkpoint (written aside, then renamed)."""
    from curation.backends.local import load_model_and_tokenizer

    print(f"converting {base_model_identity(config)} to a trainable checkpoint in {target} (once)...", file=sys.stderr, flush=True)
    try:
        model, tokenizer = load_model_and_tokenizer(config.base_model, config.gguf_file, config.revision, device="cpu")
    except (RuntimeError, OSError, ValueError) as exc:
        raise TrainError(f"base model {config.base_model!r} not found: {_first_line(exc)}") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.{os.getpid()}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / "curate_source.json").write_text(json.dumps({"base_model": config.base_model, "gguf_file": config.gguf_file, "revision": config.revision}) + "\n")
    try:
        os.rename(staging, target)
    except OSError:  # another process finished first; its copy is as good as ours
        shutil.rmtree(staging, ignore_errors=True)


def resolve_device(config: TrainConfig) -> str:
    import torch

    if config.device:
        return config.device
    return "cuda" if torch.cuda.is_available() else "cpu"


def _gpu_bf16(device: str) -> bool:
    import torch

    return device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def compute_dtype(config: TrainConfig, device: str):
    import torch

    if config.bnb_4bit_compute_dtype != "auto":
        return getattr(torch, config.bnb_4bit_compute_dtype)
    if device.startswith("cuda"):
        return torch.bfloat16 if _gpu_bf16(device) else torch.float16
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
        raise TrainError(f"base model {config.base_model!r} not found: {_first_line(exc)}") from None
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
            dtype = torch.bfloat16 if _gpu_bf16(device) else torch.float32
            model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype, **kwargs).to(device)
    except (OSError, ValueError) as exc:
        raise TrainError(f"base model {config.base_model!r} not found: {_first_line(exc)}") from None
    return model


@contextlib.contextmanager
def _no_rename_warnings():
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


# --------------------------------------------------------------------------- configs
# Defaults curate picks for the trainer that `train.extra` may still override.
_OVERRIDABLE_DEFAULTS = {"report_to", "save_strategy", "disable_tqdm", "dataloader_pin_memory", "use_cpu", "logging_first_step"}


def sft_field_names(sft_fields: set[str]) -> list[str]:
    """The train section's fields that are SFTConfig fields of the same name (output_dir is the adapter folder, set apart)."""
    from curation.recipe import TrainConfig

    return [name for name in TrainConfig.model_fields if name in sft_fields and name != "output_dir"]


def sft_config(config: TrainConfig, output_dir: Path, device: str):
    """Map the recipe's train section onto trl.SFTConfig."""
    import dataclasses

    from trl import SFTConfig

    from curation.recipe import TrainConfig

    on_gpu = device.startswith("cuda")
    known = {f.name for f in dataclasses.fields(SFTConfig)}
    # The train section names its fields as SFTConfig does, so every one SFTConfig knows is passed by
    # name, not copied by hand (tests/test_train.py pins which those are). None means "curate's default
    # for this device".
    values: dict[str, Any] = {name: getattr(config, name) for name in sft_field_names(known)}
    values.update(output_dir=str(output_dir), data_seed=config.seed)
    if config.warmup_steps >= 1:
        values["warmup_steps"] = int(config.warmup_steps)  # a count; below 1 it is a ratio of all steps
    if values["gradient_checkpointing"] is None:
        values["gradient_checkpointing"] = on_gpu
    if values["bf16"] is None:
        values["bf16"] = _gpu_bf16(device)
    first_class = set(values) | {"activation_checkpointing"}
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
        raise TrainError(f"train: {_first_line(exc)}") from None


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


# --------------------------------------------------------------------------- train
@dataclass
class TrainResult:
    output_dir: Path
    steps: int
    rows: int
    final_loss: float | None
    seconds: float
    meta: dict = field(default_factory=dict)


def default_output_dir(target: TrainTarget, split: str) -> Path:
    if target.config.output_dir:
        return Path(target.config.output_dir).expanduser()
    if target.is_local:
        return Path(target.dataset).expanduser() / "adapters" / split
    return Path("runs") / target.loaded.recipe.name / "adapters" / split


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
        with _no_rename_warnings():
            trainer = SFTTrainer(
                model=model,
                args=args,
                train_dataset=rows.dataset,
                processing_class=tokenizer,
                peft_config=lora_config(config),
                callbacks=callbacks,
            )
    except ValueError as exc:
        raise TrainError(f"train: {_first_line(exc)}") from None
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # its raw log dicts would repeat the loss lines
    if len(trainer.train_dataset) == 0:
        raise TrainError(f"no training rows left after tokenizing to train.max_length={config.max_length}: every prompt fills it")
    return trainer


def train(
    target: TrainTarget,
    *,
    split: str | None = None,
    output_dir: Path | None = None,
    show_progress: bool = True,
) -> TrainResult:
    """Fine-tune on the chosen split and write adapter, tokenizer, card, recipe and metadata."""
    from curation import dataset_card

    quiet_loading()
    config = target.config
    split = split or config.split
    output_dir = Path(output_dir) if output_dir else default_output_dir(target, split)
    rows = load_training_rows(target, split, config.seed)
    device = resolve_device(config)
    if show_progress:
        print(
            f"{'QLoRA (4-bit NF4)' if config.qlora else 'LoRA'} r={config.lora_r} on {base_model_identity(config)}, {device}; "
            f"{_count(len(rows.ids), 'row')} of split {split!r} of {target.dataset}",
            flush=True,
        )
    with _no_rename_warnings():
        trainer = build_trainer(target, rows, output_dir, show_progress=show_progress)
        started = time.monotonic()
        trainer.train()
        seconds = time.monotonic() - started

    output_dir.mkdir(parents=True, exist_ok=True)
    config = config.model_copy(update={"split": split})
    recipe_yaml = adapter_recipe_yaml(target, config, output_dir)
    model = trainer.model
    hub_base = base_model_hub_id(config)
    for peft_cfg in model.peft_config.values():
        # The cache path of a converted GGUF means nothing elsewhere; name the Hub model instead.
        peft_cfg.base_model_name_or_path = hub_base or base_model_identity(config)
    # the base's vocabulary is unchanged, so no embedding layers go into the adapter
    model.save_pretrained(output_dir, save_embedding_layers=False)
    trainer.processing_class.save_pretrained(output_dir)

    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    meta = {
        "curate_version": __import__("curation").__version__,
        "base_model": base_model_identity(config),
        "base_model_hub_id": hub_base,
        "device": device,
        # what the frozen base really was during training (bitsandbytes sets these flags)
        "base_quantization": f"bitsandbytes-4bit-{config.bnb_4bit_quant_type}" if getattr(model, "is_loaded_in_4bit", False) else None,
        "dataset": target.dataset,
        "hub_dataset": target.hub_dataset,
        "split": split,
        "rows": len(rows.ids),
        "rows_in_split": rows.available,
        "rows_per_class": rows.per_class,
        "rows_short_per_class": rows.short,
        "uses_labels": split in LABEL_USING_SPLITS,
        "questions": rows.source_rows,
        "steps": trainer.state.global_step,
        "epochs": trainer.state.epoch,
        "seconds": round(seconds, 1),
        "final_loss": losses[-1] if losses else None,
        "log_history": trainer.state.log_history,
        "recipe_name": target.loaded.recipe.name,
        "recipe_fingerprint": _recipe_fingerprint(target),
        "created": dataset_card.today(),
        "train": config.model_dump(mode="json"),
        "train_ids": rows.ids,
    }
    dataset_card.write_text_atomic(output_dir / META_FILE, json.dumps(meta, indent=2, default=str) + "\n")
    dataset_card.write_text_atomic(output_dir / RECIPE_FILE, recipe_yaml)
    write_model_card(output_dir, meta, recipe_yaml)
    return TrainResult(output_dir, trainer.state.global_step, len(rows.ids), meta["final_loss"], seconds, meta)


def adapter_recipe_yaml(target: TrainTarget, config: TrainConfig, output_dir: Path) -> str:
    """The recipe as trained (this train section), its local source path re-anchored to the adapter folder
    so that `curate eval --model` finds the questions from there."""
    from curation.recipe import resolved_recipe_yaml

    recipe = target.loaded.recipe.model_copy(update={"train": config})
    if recipe.source.path is not None:
        absolute = target.loaded.resolve_path(recipe.source.path).resolve()
        relative = os.path.relpath(absolute, Path(output_dir).resolve())
        recipe = recipe.model_copy(update={"source": recipe.source.model_copy(update={"path": relative})})
    return resolved_recipe_yaml(recipe)


def _recipe_fingerprint(target: TrainTarget) -> str:
    from curation.recipe import fingerprint_recipe

    return fingerprint_recipe(target.loaded.recipe)


# --------------------------------------------------------------------------- card
def render_model_card(meta: dict, recipe_yaml: str, evaluations: dict | None = None) -> str:
    """README.md of the adapter, from hub_cards/model_card.md: links the dataset and embeds the recipe."""
    from curation import dataset_card

    from huggingface_hub import ModelCard, ModelCardData

    train = meta["train"]
    tags = ["curate", "trl", "sft", "peft", "lora", "uncertainty-filtering"] + (["qlora", "4-bit", "bitsandbytes"] if train["qlora"] else [])
    if meta.get("uses_labels"):
        tags.append("label-using-reference")  # searchable: never mistake it for a label-free adapter
    card_data = ModelCardData(
        library_name="peft",
        base_model=meta.get("base_model_hub_id"),
        datasets=[meta["hub_dataset"]] if meta.get("hub_dataset") else None,
        tags=tags,
        pipeline_tag="text-generation",
        license=_license_of(recipe_yaml),
    )
    template = (dataset_card.hub_cards_dir() / "model_card.md").read_text(encoding="utf-8")
    card = ModelCard.from_template(
        card_data,
        template_str=template,
        meta=meta,
        train=train,
        recipe_yaml=recipe_yaml,
        evaluations=evaluations or {},
        fmt=lambda value: "n/a" if value is None else f"{value:.3f}",
        card_begin=getattr(dataset_card, "CARD_BEGIN", ""),
        card_end=getattr(dataset_card, "CARD_END", ""),
        losses=[(e["step"], e["loss"]) for e in meta.get("log_history", []) if "loss" in e],
    )
    return str(card)


def _license_of(recipe_yaml: str) -> str | None:
    import yaml

    try:
        return (yaml.safe_load(recipe_yaml) or {}).get("license")
    except yaml.YAMLError:
        return None


def write_model_card(output_dir: Path, meta: dict, recipe_yaml: str) -> None:
    from curation import dataset_card

    dataset_card.write_text_atomic(output_dir / CARD_FILE, render_model_card(meta, recipe_yaml, load_evaluations(output_dir)))


def load_evaluations(output_dir: Path) -> dict:
    """Evaluation reports written by `curate eval --model` (eval/<split>.json), for the card."""
    folder = Path(output_dir) / "eval"
    reports = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            reports[path.stem] = json.loads(path.read_text())
        except json.JSONDecodeError:
            continue
    return reports


# --------------------------------------------------------------------------- load back
def read_meta(adapter_dir: str | Path) -> dict:
    path = Path(adapter_dir) / META_FILE
    if not path.exists():
        raise TrainError(f"{adapter_dir} is not an adapter made by `curate train` (no {META_FILE})")
    return json.loads(path.read_text())


def load_adapter(adapter_dir: str | Path, *, device: str | None = None, quantize: bool | None = None):
    """Base model plus the trained adapter, in eval mode: (model, tokenizer, meta).

    The base is loaded as it was trained (4-bit for a QLoRA adapter) unless ``quantize`` says otherwise.
    """
    from peft import PeftModel
    from transformers import AutoTokenizer

    from curation.recipe import TrainConfig

    meta = read_meta(adapter_dir)
    config = TrainConfig.model_validate(meta["train"])
    if device:
        config = config.model_copy(update={"device": device})
    device = resolve_device(config)
    base = load_base_model(config, device, quantize=quantize)
    with _no_rename_warnings():
        model = PeftModel.from_pretrained(base, str(adapter_dir))
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, meta


# --------------------------------------------------------------------------- push
def push_adapter(output_dir: Path, repo: str, *, private: bool = False) -> str:
    """Push the adapter folder (not its checkpoints) to a model repo in one commit; returns the one-line outcome."""
    from curation.hub import HubError, push_folder

    try:
        result = push_folder(output_dir, repo, repo_type="model", private=private, ignore_patterns=PUSH_IGNORE, commit_message="curate train: adapter")
    except HubError as exc:
        raise TrainError(f"push to {repo}: {exc}") from None
    return result.describe()


# --------------------------------------------------------------------------- CLI
def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="fine-tune on the run's filtered split with TRL SFTTrainer and (Q)LoRA",
        description="Fine-tune the recipe's train.base_model on a run's split with TRL SFTTrainer and (Q)LoRA; "
        "writes the adapter, tokenizer and a model card.",
    )
    p.add_argument("target", help="recipe file, run folder, or hf://datasets/ORG/NAME")
    p.add_argument(
        "--split", choices=list(SPLITS),
        help="rows to train on (default: train.split, else filtered); random: as many rows as filtered from every row; "
        "random-readable: the same count per predicted class as filtered, from readable answers; label-correct: the same, "
        "from answers equal to the label (uses the labels: an upper reference)",
    )
    p.add_argument("--dataset", help="run folder or Hub dataset id to train on (default: train.dataset, else the recipe's run folder)")
    p.add_argument("-o", "--output", help="adapter folder (default: train.output_dir, else <run folder>/adapters/<split>)")
    p.add_argument("--max-steps", type=int, help="override train.max_steps")
    p.add_argument("--push", metavar="ORG/NAME", help="push the adapter to this Hub model repo")
    p.add_argument("--private", action="store_true", help="with --push: create the repo private")
    p.add_argument("-q", "--quiet", action="store_true", help="no per-step loss lines")
    from curation.recipe import add_override_option

    add_override_option(p)  # --set train.learning_rate=5e-5
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    try:
        if args.push:
            from curation.hub import HubError, require_token

            try:
                require_token()  # fail now, not after the training
            except HubError as exc:
                raise TrainError(f"--push {args.push}: {exc}") from None
        target = resolve_target(args.target, args.dataset, args.overrides)
        if args.max_steps is not None:
            target.config = target.config.model_copy(update={"max_steps": args.max_steps})
        result = train(target, split=args.split, output_dir=Path(args.output) if args.output else None, show_progress=not args.quiet)
        loss = f", final loss {result.final_loss:.4f}" if result.final_loss is not None else ""
        print(f"adapter: {result.output_dir} ({_count(result.steps, 'step')} on {_count(result.rows, 'row')} in {result.seconds:.0f}s{loss})")
        print(f"evaluate it: curate eval --model {result.output_dir}")
        if args.push:
            print(push_adapter(result.output_dir, args.push, private=args.private))
    except KeyboardInterrupt:
        print("interrupted: no adapter was written", file=sys.stderr)
        return 130
    return 0


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
