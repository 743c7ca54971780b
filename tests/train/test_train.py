"""`curate train`: the recipe's train section -> SFTConfig/LoraConfig/BitsAndBytesConfig, the rows of each
ablation split, the loss mask, clear one-line errors, and (slow) real LoRA and QLoRA runs on the
embedded SmolLM2-135M-Instruct that write an adapter which loads back and changes the model's outputs.

The run folder is synthesized with `pipeline.curate()` from constructed traces (no generation), so
these tests need neither `runs/quickstart` nor minutes of sampling.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest


def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    from curation.cli import main

    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --------------------------------------------------------------------------- configs (fast)
def test_train_section_maps_onto_sft_lora_and_bnb_configs(tmp_path):
    import torch

    from curation.train.base_model import bnb_config
    from curation.train.config import TrainConfig
    from curation.train.sft import lora_config, sft_config

    config = TrainConfig(
        lora_r=8, lora_alpha=16, lora_dropout=0.1, target_modules=["q_proj", "v_proj"], learning_rate=2e-4,
        num_train_epochs=2, max_steps=7, per_device_train_batch_size=3, gradient_accumulation_steps=4,
        max_length=512, warmup_steps=0.1, packing=True, seed=13, lr_scheduler_type="cosine",
        extra={"max_grad_norm": 0.5, "save_strategy": "steps", "save_steps": 100},
    )
    args = sft_config(config, tmp_path / "out", "cpu")
    assert (args.learning_rate, args.num_train_epochs, args.max_steps) == (2e-4, 2, 7)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (3, 4)
    assert args.max_length == 512 and args.packing is True and args.seed == 13
    assert args.warmup_steps == 0.1 and getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type) == "cosine"
    assert args.completion_only_loss is True and args.assistant_only_loss is False
    assert args.bf16 is False and args.gradient_checkpointing is False  # CPU defaults
    assert args.max_grad_norm == 0.5 and args.save_steps == 100  # train.extra passes through
    assert args.report_to in ([], "none", ["none"]) or not args.report_to

    lora = lora_config(config)
    assert (lora.r, lora.lora_alpha, lora.lora_dropout) == (8, 16, 0.1)
    assert set(lora.target_modules) == {"q_proj", "v_proj"} and lora.task_type == "CAUSAL_LM"

    bnb = bnb_config(config, "cpu")
    assert bnb.load_in_4bit and bnb.bnb_4bit_quant_type == "nf4" and bnb.bnb_4bit_use_double_quant
    assert bnb.bnb_4bit_compute_dtype == torch.float32  # auto on CPU
    assert bnb_config(config.model_copy(update={"bnb_4bit_compute_dtype": "bfloat16"}), "cpu").bnb_4bit_compute_dtype == torch.bfloat16


def test_the_train_fields_passed_to_sft_config_are_derived_from_its_dataclass_fields():
    """Derived, not copied: a train field named like an SFTConfig field reaches it; this pins which ones, so a
    TRL release that adds a field of the same name as a curate-only one (or drops one) shows up here."""

    from trl import SFTConfig

    from curation.train.sft import sft_field_names

    assert sft_field_names({f.name for f in dataclasses.fields(SFTConfig)}) == [
        "learning_rate", "lr_scheduler_type", "num_train_epochs", "max_steps", "per_device_train_batch_size",
        "gradient_accumulation_steps", "max_length", "warmup_steps", "weight_decay", "packing", "completion_only_loss",
        "gradient_checkpointing", "bf16", "seed", "logging_steps",
    ]


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"no_such_field": 1}, "train.extra.no_such_field: not a field of trl.SFTConfig"),
        ({"learning_rate": 1.0}, "train.extra.learning_rate: set train.learning_rate instead"),
    ],
)
def test_train_extra_is_checked_against_sft_config(tmp_path, extra, message):
    from curation.train.config import TrainConfig, TrainError
    from curation.train.sft import sft_config

    with pytest.raises(TrainError, match=message):
        sft_config(TrainConfig(extra=extra), tmp_path, "cpu")


def test_train_section_is_validated_with_positions(tmp_path, write_train_recipe):
    from curation.recipe.load import load_recipe
    from curation.types import RecipeError

    path = write_train_recipe(tmp_path, train="train:\n  lora_r: 0\n  split: everything\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(str(path))
    text = str(info.value)
    assert "train.lora_r" in text and "train.split" in text and "recipe.yaml:" in text


# --------------------------------------------------------------------------- rows (fast)
def test_splits_for_the_ablation(run_folder, train_target):
    import pyarrow.parquet as pq

    from curation.train.target import load_training_rows

    scored = pq.read_table(run_folder / "data" / "scored-00000-of-00001.parquet").to_pylist()
    kept = [r["id"] for r in scored if r["kept"]]
    target = train_target(run_folder)

    filtered = load_training_rows(target, "filtered", seed=0)
    assert filtered.ids == kept and 0 < len(kept) < len(scored)
    row = filtered.dataset[0]
    assert [m["role"] for m in row["prompt"]] == ["system", "user"]
    assert [m["role"] for m in row["completion"]] == ["assistant"] and "<answer>" in row["completion"][0]["content"]
    assert filtered.dataset.column_names == ["prompt", "completion"]

    unfiltered = load_training_rows(target, "scored", seed=0)
    assert unfiltered.ids == [r["id"] for r in scored]

    random_a = load_training_rows(target, "random", seed=0)
    random_b = load_training_rows(target, "random", seed=0)
    assert len(random_a.ids) == len(kept) and set(random_a.ids) <= {r["id"] for r in scored}
    assert random_a.ids == random_b.ids  # reproducible from train.seed
    draws = {tuple(load_training_rows(target, "random", seed=s).ids) for s in range(6)}
    assert len(draws) > 1  # and really random


# --------------------------------------------------------------------------- errors (fast: nothing is loaded)
def test_missing_train_section_is_one_line(tmp_path, capsys, write_train_recipe):
    path = write_train_recipe(tmp_path, train=None)
    code, out, err = _cli(["train", str(path)], capsys)
    assert code == 1
    assert err.strip().count("\n") == 0 and "no `train:` section" in err and "Traceback" not in err


def test_missing_run_folder_is_one_line(tmp_path, capsys, write_train_recipe):
    path = write_train_recipe(tmp_path)
    os.chdir(tmp_path)  # the default run folder runs/<name> does not exist here
    code, out, err = _cli(["train", str(path)], capsys)
    assert code == 1 and "run folder runs/train-test not found" in err and err.strip().count("\n") == 0


def test_empty_split_is_one_line(tmp_path, capsys, build_run_folder):
    import pyarrow.parquet as pq

    run_dir = build_run_folder(tmp_path, limit=4)
    filtered = run_dir / "data" / "filtered-00000-of-00001.parquet"
    table = pq.read_table(filtered)
    pq.write_table(table.slice(0, 0), filtered)  # as if the selection had kept nothing
    code, out, err = _cli(["train", str(run_dir)], capsys)
    assert code == 1 and err.strip().count("\n") == 0
    assert "split 'filtered'" in err and "no rows to train on" in err


@pytest.mark.parametrize("base_model", ["nobody-here/no-such-model", "/no/such/folder"])
def test_unknown_base_model_is_one_line(tmp_path, capsys, base_model, build_run_folder):
    run_dir = build_run_folder(tmp_path, limit=4)
    recipe = run_dir / "recipe.yaml"
    recipe.write_text(recipe.read_text().replace("base_model: embedded", f"base_model: {base_model}"))
    code, out, err = _cli(["train", str(run_dir), "-q"], capsys)
    assert code == 1 and err.strip().count("\n") == 0 and "Traceback" not in err
    assert f"base model {base_model!r} not found" in err


# --------------------------------------------------------------------------- card (fast)
def test_model_card_links_dataset_and_recipe():
    from huggingface_hub import ModelCard

    from curation.train.card import render_model_card
    from curation.train.config import TrainConfig

    meta = {
        "recipe_name": "quickstart", "split": "filtered", "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF)",
        "base_model_hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct", "curate_version": "0.1.0", "dataset": "runs/quickstart",
        "hub_dataset": "my-lab/quickstart-cocoa", "rows": 6, "questions": 12, "steps": 3, "epochs": 1.0, "seconds": 20.0,
        "device": "cpu", "final_loss": 1.5, "log_history": [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}],
        "recipe_fingerprint": "abc", "created": "2026-01-01", "train": TrainConfig().model_dump(mode="json"),
    }
    evaluations = {"test": {"n": 10, "unparsed": 1, "scores": {"accuracy": 0.5, "macro_f1": None}, "eval": {"source": "x.csv"}}}
    text = render_model_card(meta, "name: quickstart\nlicense: cc-by-4.0\n", evaluations)
    card = ModelCard(text)
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and card.data.library_name == "peft"
    assert card.data.datasets == ["my-lab/quickstart-cocoa"] and card.data.license == "cc-by-4.0"
    assert "https://huggingface.co/datasets/my-lab/quickstart-cocoa" in text and "[recipe.yaml](recipe.yaml)" in text
    assert "name: quickstart" in text and "QLoRA" in text and "| test (`x.csv`) | 10 | 0.500 | n/a | 1 |" in text
    assert "<!-- curate:begin" in text and "<!-- curate:end -->" in text


# --------------------------------------------------------------------------- real training (slow)
def _prompt_length(tokenizer, prompt) -> int:
    return len(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])


@pytest.mark.slow
def test_loss_mask_covers_the_completion_only(run_folder, tmp_path, train_target):
    """Every prompt token (system + user + the assistant header) is -100; every completion token, with its end-of-turn, is learned."""
    import torch

    from curation.train.sft import build_trainer
    from curation.train.target import load_training_rows

    target = train_target(run_folder)
    rows = load_training_rows(target, "filtered", seed=0)
    trainer = build_trainer(target, rows, tmp_path / "out", show_progress=False)
    tokenizer = trainer.processing_class
    for example, source in zip(trainer.train_dataset, rows.dataset):
        labels, ids = example["labels"], example["input_ids"]
        n_prompt = _prompt_length(tokenizer, source["prompt"])
        assert all(label == -100 for label in labels[:n_prompt])
        assert labels[n_prompt:] == ids[n_prompt:]
        learned = tokenizer.decode(ids[n_prompt:])
        assert learned == source["completion"][0]["content"] + "<|im_end|>\n"

    # Through the collator and the model: the trainer's loss is the mean NLL of completion tokens alone.
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()  # padding is never learned
    model = trainer.model
    model.eval()
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    manual = []
    for row in range(batch["input_ids"].shape[0]):
        source = rows.dataset[row]
        n_prompt = _prompt_length(tokenizer, source["prompt"])
        n_total = int(batch["attention_mask"][row].sum())
        logprobs = torch.log_softmax(logits[row, n_prompt - 1 : n_total - 1].float(), dim=-1)
        targets = batch["input_ids"][row, n_prompt:n_total]
        manual.append(-logprobs.gather(-1, targets[:, None]).squeeze(-1))
    assert torch.isclose(out.loss, torch.cat(manual).mean(), atol=1e-4)


def _check_adapter_folder(adapter: Path, *, qlora: bool, split: str, rows: int) -> dict:
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "README.md", "recipe.yaml", "curate_train.json"):
        assert (adapter / name).exists(), name
    meta = json.loads((adapter / "curate_train.json").read_text())
    assert meta["split"] == split and meta["rows"] == rows and meta["train"]["qlora"] is qlora
    assert meta["base_quantization"] == ("bitsandbytes-4bit-nf4" if qlora else None)
    assert meta["steps"] == 2 and all(e["loss"] == e["loss"] for e in meta["log_history"] if "loss" in e)
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and config["r"] == 4
    card = (adapter / "README.md").read_text()
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card and "```yaml" in card
    return meta


def _logits_with_and_without_adapter(model, tokenizer, messages):
    import torch

    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        tuned = model(**encoded).logits
        with model.disable_adapter():
            base = model(**encoded).logits
    return tuned, base


@pytest.mark.slow
def test_lora_trains_and_the_adapter_changes_outputs(run_folder, tmp_path, capsys):
    import torch

    from curation.train.base_model import load_adapter

    adapter = tmp_path / "lora"
    code, out, err = _cli(["train", str(run_folder), "-o", str(adapter)], capsys)
    assert code == 0, err
    assert "step 1/2  loss" in out and "step 2/2  loss" in out and f"adapter: {adapter}" in out  # progress with loss
    kept = json.loads((run_folder / "stats.json").read_text())["kept"]
    meta = _check_adapter_folder(adapter, qlora=False, split="filtered", rows=kept)
    assert meta["final_loss"] < meta["log_history"][0]["loss"]  # 2 steps at a high lr on 4 rows: the loss falls

    model, tokenizer, _ = load_adapter(adapter)
    assert not getattr(model, "is_loaded_in_4bit", False)
    import pyarrow.parquet as pq

    messages = pq.read_table(run_folder / "data" / "filtered-00000-of-00001.parquet").column("prompt")[0].as_py()
    tuned, base = _logits_with_and_without_adapter(model, tokenizer, messages)
    assert (tuned - base).abs().max() > 1e-2
    assert not torch.equal(tuned.argmax(-1), base.argmax(-1)) or (tuned - base).abs().mean() > 1e-3


@pytest.mark.slow
def test_qlora_trains_in_4bit_on_a_random_subset(run_folder, tmp_path, capsys):
    import shutil

    import bitsandbytes as bnb

    from curation.train.base_model import load_adapter

    qlora_run = tmp_path / "run"
    shutil.copytree(run_folder, qlora_run, ignore=shutil.ignore_patterns("adapters"))
    recipe = qlora_run / "recipe.yaml"
    recipe.write_text(recipe.read_text().replace("qlora: false", "qlora: true"))
    code, out, err = _cli(["train", str(qlora_run), "--split", "random"], capsys)
    assert code == 0, err
    assert "QLoRA (4-bit NF4)" in out and "step 2/2  loss" in out
    adapter = qlora_run / "adapters" / "random"
    kept = json.loads((run_folder / "stats.json").read_text())["kept"]
    _check_adapter_folder(adapter, qlora=True, split="random", rows=kept)

    model, tokenizer, meta = load_adapter(adapter)
    assert model.is_loaded_in_4bit
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    tuned, base = _logits_with_and_without_adapter(model, tokenizer, [{"role": "user", "content": "What happens to GATA1?"}])
    assert (tuned - base).abs().max() > 1e-2


# --------------------------------------------------------------------------- push (fast, local Hub)
def test_push_adapter_uploads_the_adapter_not_its_checkpoints(tmp_path):
    from curation.train.card import META_FILE, render_model_card
    from curation.train.config import TrainConfig
    from tests.servers.hub_fixtures import run_hub_client
    from tests.servers.hub_server import HubTestServer

    adapter = tmp_path / "adapter"
    (adapter / "checkpoint-2").mkdir(parents=True)
    (adapter / "eval").mkdir()
    meta = {
        "recipe_name": "quickstart", "split": "filtered", "base_model": "embedded", "base_model_hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "curate_version": "0.1.0", "dataset": "runs/quickstart", "hub_dataset": "test-org/quickstart-cocoa", "rows": 6, "questions": 12,
        "steps": 3, "epochs": 1.0, "seconds": 2.0, "device": "cpu", "final_loss": 1.0, "log_history": [], "recipe_fingerprint": "x",
        "created": "2026-01-01", "train": TrainConfig().model_dump(mode="json"),
    }
    (adapter / "README.md").write_text(render_model_card(meta, "name: quickstart\n"))
    (adapter / META_FILE).write_text(json.dumps(meta))
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    (adapter / "recipe.yaml").write_text("name: quickstart\n")
    (adapter / "checkpoint-2" / "optimizer.pt").write_bytes(b"\0")
    (adapter / "eval" / "test.json").write_text("{}")
    (adapter / "eval" / "test-predictions.jsonl").write_text("{}\n")

    with HubTestServer() as server:
        said = run_hub_client(server, tmp_path, f"""
            import json
            from pathlib import Path
            from curation.train.card import push_adapter
            print(json.dumps(push_adapter(Path({str(adapter)!r}), "test-org/quickstart-sft")))
        """)
        files = server.files("test-org/quickstart-sft", repo_type="model")
        assert not server.server_errors
    assert said.startswith("pushed to test-org/quickstart-sft@main")
    assert {"README.md", META_FILE, "adapter_config.json", "adapter_model.safetensors", "recipe.yaml", "eval/test.json"} <= set(files)
    assert not any(path.startswith("checkpoint-") or path.endswith(".jsonl") for path in files)
    assert b"base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in files["README.md"]
    assert b"https://huggingface.co/datasets/test-org/quickstart-cocoa" in files["README.md"]


def test_push_without_a_token_fails_before_training(tmp_path, capsys, monkeypatch, build_run_folder):
    import huggingface_hub

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)  # no stored login either
    run_dir = build_run_folder(tmp_path, limit=4)
    code, out, err = _cli(["train", str(run_dir), "--push", "test-org/x"], capsys)
    assert code == 1 and "--push test-org/x:" in err and "HF_TOKEN" in err and "training" not in out


def test_training_rows_from_a_hub_dataset(run_folder, tmp_path):
    """`train.dataset: org/name` (or --dataset) reads the pushed splits through `datasets`, the same rows as locally."""
    import pyarrow.parquet as pq

    from tests.servers.hub_fixtures import run_hub_client
    from tests.servers.hub_server import HubTestServer

    kept = pq.read_table(run_folder / "data" / "filtered-00000-of-00001.parquet").column("id").to_pylist()
    with HubTestServer() as server:
        said = run_hub_client(server, tmp_path, f"""
            import json
            from curation.hub import push_run
            from curation.train.target import load_training_rows, resolve_target
            push_run({str(run_folder)!r}, "test-org/train-test")
            target = resolve_target({str(run_folder)!r}, dataset="test-org/train-test")
            rows = {{s: load_training_rows(target, s, seed=0).ids for s in ("filtered", "scored", "random")}}
            print(json.dumps({{"is_local": target.is_local, "hub_dataset": target.hub_dataset, **rows}}))
        """)
        assert not server.server_errors
    assert said["is_local"] is False and said["hub_dataset"] == "test-org/train-test"
    assert said["filtered"] == kept and len(said["scored"]) == 8 and len(said["random"]) == len(kept)
