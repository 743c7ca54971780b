"""What an adapter folder holds besides the weights: its metadata, the recipe as trained, the model card; and the push.

The card is rendered from hub_cards/model_card.md; it links the dataset, embeds the recipe and
shows the evaluations `curate eval --model` wrote into the folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from curation.recipe.dump import resolved_recipe_yaml
from curation.run_folder import CARD_FILE, RECIPE_FILE  # an adapter folder uses the run folder's file names
from curation.train.config import TrainConfig, TrainError

if TYPE_CHECKING:
    from curation.train.target import TrainTarget

META_FILE = "curate_train.json"  # how the adapter was made: base model, data, ids, losses
# What `--push` uploads: the adapter, tokenizer, card, recipe and metadata; never checkpoints.
PUSH_IGNORE = ["checkpoint-*", "checkpoint-*/**", "*.tmp", "eval/*.jsonl"]


def adapter_recipe_yaml(target: TrainTarget, config: TrainConfig, output_dir: Path) -> str:
    """The recipe as trained (this train section), its local source path re-anchored to the adapter folder
    so that `curate eval --model` finds the questions from there."""
    recipe = target.loaded.recipe.model_copy(update={"train": config})
    if recipe.source.path is not None:
        absolute = target.loaded.resolve_path(recipe.source.path).resolve()
        relative = os.path.relpath(absolute, Path(output_dir).resolve())
        recipe = recipe.model_copy(update={"source": recipe.source.model_copy(update={"path": relative})})
    return resolved_recipe_yaml(recipe)


def render_model_card(meta: dict, recipe_yaml: str, evaluations: dict | None = None) -> str:
    """README.md of the adapter, from hub_cards/model_card.md: links the dataset and embeds the recipe."""
    from huggingface_hub import ModelCard, ModelCardData

    from curation import dataset_card

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


def write_adapter_files(output_dir: Path, meta: dict, recipe_yaml: str) -> None:
    """Everything in the adapter folder besides the weights and tokenizer: the metadata, the recipe as trained, the card."""
    from curation import dataset_card

    dataset_card.write_text_atomic(output_dir / META_FILE, json.dumps(meta, indent=2, default=str) + "\n")
    dataset_card.write_text_atomic(output_dir / RECIPE_FILE, recipe_yaml)
    write_model_card(output_dir, meta, recipe_yaml)


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


def read_meta(adapter_dir: str | Path) -> dict:
    """The adapter's curate_train.json: how it was made (base model, data, ids, losses, the train section)."""
    path = Path(adapter_dir) / META_FILE
    if not path.exists():
        raise TrainError(f"{adapter_dir} is not an adapter made by `curate train` (no {META_FILE})")
    return json.loads(path.read_text())


def push_adapter(output_dir: Path, repo: str, *, private: bool = False) -> str:
    """Push the adapter folder (not its checkpoints) to a model repo in one commit; returns the one-line outcome."""
    from curation.hub import HubError, push_folder

    try:
        result = push_folder(output_dir, repo, repo_type="model", private=private, ignore_patterns=PUSH_IGNORE, commit_message="curate train: adapter")
    except HubError as exc:
        raise TrainError(f"push to {repo}: {exc}") from None
    return result.describe()
