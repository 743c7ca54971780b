"""`train()`: fine-tune a small model on a run's curated split, step by step, as TRL's scripts/sft.py does.

    curate train recipes/quickstart.yaml                 # the recipe's run folder, split `filtered`
    curate train runs/quickstart --split scored          # ablation: every row, unfiltered
    curate train runs/quickstart --split random          # ablation: as many random rows as `filtered` has
    curate train recipes/quickstart.yaml --push my-lab/quickstart-sft
    curate eval --model runs/quickstart/adapters/filtered --split test

Typed configs in (``TrainTarget``: the recipe, its ``TrainConfig`` and the dataset), then the
steps in order: the rows (target.py), the trainer over the base (sft.py, base_model.py), training,
and the adapter folder (card.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from curation.recipe.dump import fingerprint_recipe
from curation.train.base_model import base_model_hub_id, base_model_identity, no_rename_warnings, quiet_loading, resolve_device
from curation.train.card import adapter_recipe_yaml, write_adapter_files
from curation.train.config import TrainConfig
from curation.train.sft import build_trainer
from curation.train.splits import LABEL_USING_SPLITS
from curation.train.target import TrainingRows, TrainTarget, default_output_dir, load_training_rows


@dataclass
class TrainResult:
    output_dir: Path
    steps: int
    rows: int
    final_loss: float | None
    seconds: float
    meta: dict = field(default_factory=dict)


def train(
    target: TrainTarget,
    *,
    split: str | None = None,
    output_dir: Path | None = None,
    show_progress: bool = True,
) -> TrainResult:
    """Fine-tune on the chosen split and write adapter, tokenizer, card, recipe and metadata."""
    quiet_loading()
    config = target.config
    split = split or config.split
    output_dir = Path(output_dir) if output_dir else default_output_dir(target, split)
    rows = load_training_rows(target, split, config.seed)
    device = resolve_device(config)
    if show_progress:
        print(
            f"{'QLoRA (4-bit NF4)' if config.qlora else 'LoRA'} r={config.lora_r} on {base_model_identity(config)}, {device}; "
            f"{counted(len(rows.ids), 'row')} of split {split!r} of {target.dataset}",
            flush=True,
        )
    with no_rename_warnings():
        trainer = build_trainer(target, rows, output_dir, show_progress=show_progress)
        started = time.monotonic()
        trainer.train()
        seconds = time.monotonic() - started

    output_dir.mkdir(parents=True, exist_ok=True)
    config = config.model_copy(update={"split": split})
    recipe_yaml = adapter_recipe_yaml(target, config, output_dir)
    _save_adapter(trainer, config, output_dir)
    meta = _metadata(target, config, rows, trainer, device, seconds)
    write_adapter_files(output_dir, meta, recipe_yaml)
    return TrainResult(output_dir, trainer.state.global_step, len(rows.ids), meta["final_loss"], seconds, meta)


def _save_adapter(trainer, config: TrainConfig, output_dir: Path) -> None:
    """The trained adapter and the tokenizer, named after the base a user can download."""
    hub_base = base_model_hub_id(config)
    for peft_cfg in trainer.model.peft_config.values():
        # The cache path of a converted GGUF means nothing elsewhere; name the Hub model instead.
        peft_cfg.base_model_name_or_path = hub_base or base_model_identity(config)
    # the base's vocabulary is unchanged, so no embedding layers go into the adapter
    trainer.model.save_pretrained(output_dir, save_embedding_layers=False)
    trainer.processing_class.save_pretrained(output_dir)


def _metadata(target: TrainTarget, config: TrainConfig, rows: TrainingRows, trainer, device: str, seconds: float) -> dict:
    """curate_train.json: how the adapter was made (base model, data, ids, losses, the train section)."""
    from curation import dataset_card

    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {
        "curate_version": __import__("curation").__version__,
        "base_model": base_model_identity(config),
        "base_model_hub_id": base_model_hub_id(config),
        "device": device,
        # what the frozen base really was during training (bitsandbytes sets these flags)
        "base_quantization": f"bitsandbytes-4bit-{config.bnb_4bit_quant_type}" if getattr(trainer.model, "is_loaded_in_4bit", False) else None,
        "dataset": target.dataset,
        "hub_dataset": target.hub_dataset,
        "split": rows.split,
        "rows": len(rows.ids),
        "rows_in_split": rows.available,
        "rows_per_class": rows.per_class,
        "rows_short_per_class": rows.short,
        "uses_labels": rows.split in LABEL_USING_SPLITS,
        "questions": rows.source_rows,
        "steps": trainer.state.global_step,
        "epochs": trainer.state.epoch,
        "seconds": round(seconds, 1),
        "final_loss": losses[-1] if losses else None,
        "log_history": trainer.state.log_history,
        "recipe_name": target.loaded.recipe.name,
        "recipe_fingerprint": fingerprint_recipe(target.loaded.recipe),
        "created": dataset_card.today(),
        "train": config.model_dump(mode="json"),
        "train_ids": rows.ids,
    }


def counted(n: int, noun: str) -> str:
    """'1 row', '2 rows'."""
    return f"{n} {noun}{'' if n == 1 else 's'}"
