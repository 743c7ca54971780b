"""`curate eval --model`: how well a model fine-tuned by `curate train` answers held-out labelled questions.

    curate eval runs/quickstart --model runs/quickstart/adapters/filtered --split test
    curate eval runs/quickstart --model runs/quickstart/adapters/random --split test --limit 100

The fine-tuned model (base plus adapter, loaded as it was trained) answers greedily with the
recipe's own prompt, stop strings and answer parser; accuracy, F1 per class and macro-F1 come
from `curation.eval.classification.classification_scores` (the `evaluate` library). The questions come
from the recipe's source through `curation.source.load_questions`, with `--split` selecting the
held-out part (a `split` column of a local file, or the split of a `datasets` source), and every
question the adapter was trained on is left out. Training on `filtered`, `scored` and `random`
and evaluating each on the same split gives the papers' ablation side by side.

The report goes to ``ADAPTER_DIR/eval/<split>.json`` (predictions beside it as JSONL) and into
the adapter's model card.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from curation.run_folder import RECIPE_FILE, RunFolder
from curation.types import CurateError

if TYPE_CHECKING:
    from curation.recipe.load import LoadedRecipe
    from curation.types import Question


class EvalError(CurateError):
    """A problem with the user's input (one line, exit status 1, no traceback)."""


# --------------------------------------------------------------------------- questions
def eval_recipe(adapter_dir: Path, recipe: str | None = None) -> "LoadedRecipe":
    """The recipe whose source, prompt and answer parser the evaluation uses: the adapter's own copy by default."""
    from curation.recipe.load import load_recipe

    location = recipe or str(Path(adapter_dir) / RECIPE_FILE)
    if recipe is None and not Path(location).exists():
        raise EvalError(f"{adapter_dir} has no {RECIPE_FILE}; pass the recipe or run folder to evaluate with")
    return load_recipe(location)


def held_out_questions(loaded: "LoadedRecipe", *, split: str | None, limit: int | None, exclude_ids: Sequence[str] = ()) -> tuple[list["Question"], dict]:
    """Labelled questions from the recipe's source, restricted to ``split``, minus the training rows, at most ``limit``.

    The recipe's own `limit` is replaced by ``limit`` (it sized the curation run, not the evaluation);
    its `shuffle_seed` and `sample` scheme stay, so `--limit N` is a stable subset drawn the same
    way (e.g. balanced per class). Training rows are left out after that, so a split that overlaps
    the training data yields fewer than N questions; the report says how many were left out.
    """
    from curation.source import load_questions, peek_columns

    recipe = loaded.recipe
    source = recipe.source
    if not source.label_column:
        raise EvalError("the recipe has no source.label_column; evaluating a model needs ground-truth labels")
    update: dict[str, Any] = {"limit": limit}
    if split is not None:
        if source.format == "perturbqa" or source.path is None:
            update["split"] = split  # perturbqa: the split column's value; datasets: the split
        else:
            columns = peek_columns(loaded)
            if "split" not in columns:
                raise EvalError(f"--split {split}: the source {source.path} has no `split` column; source has: {', '.join(columns)}")
            update["filter"] = {**(source.filter or {}), "split": split}
    recipe = recipe.model_copy(update={"source": source.model_copy(update=update)})
    questions = load_questions(dataclasses.replace(loaded, recipe=recipe)).questions
    excluded = set(map(str, exclude_ids))
    labelled = [q for q in questions if q.label is not None]
    held_out = [q for q in labelled if q.id not in excluded]
    info = {
        "source": Path(source.path).name if source.path else source.dataset,
        "source_location": str(loaded.resolve_path(source.path).resolve()) if source.path else source.dataset,
        "split": split,
        "filter": recipe.source.filter,
        "rows": len(questions),
        "unlabelled_rows": len(questions) - len(labelled),
        "excluded_training_rows": len(labelled) - len(held_out),
    }
    if not held_out:
        where = f"split {split!r} of " if split else ""
        raise EvalError(f"no held-out labelled questions in {where}{info['source']} ({info['rows']} rows, {info['excluded_training_rows']} used for training)")
    return held_out, info


# --------------------------------------------------------------------------- generation
@dataclass
class Answer:
    text: str
    finish_reason: str  # "stop" or "length"


def generate_answers(model, tokenizer, chats: Sequence[list[dict]], *, max_new_tokens: int, stop: Sequence[str] = (), batch_size: int = 8, progress=None) -> list[Answer]:
    """Greedy answers, batched with left padding. Text ends at the first stop string, which is kept (as in generation)."""
    import torch

    tokenizer.padding_side = "left"
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
    answers: list[Answer] = []
    for start in range(0, len(chats), batch_size):
        batch = chats[start : start + batch_size]
        texts = [tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False) for chat in batch]
        encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        with torch.no_grad():
            out = model.generate(
                **encoded,
                do_sample=False,
                num_beams=1,
                max_new_tokens=max_new_tokens,
                stop_strings=list(stop) or None,
                tokenizer=tokenizer,
                pad_token_id=pad_id,
                temperature=None, top_p=None, top_k=None,
            )
        for row in out[:, encoded["input_ids"].shape[1] :].tolist():
            ended = any(token in eos_ids for token in row)
            text = tokenizer.decode(row, skip_special_tokens=True)
            cut = _cut_at_stop(text, stop)
            finish = "stop" if ended or cut is not None else ("length" if len(row) >= max_new_tokens else "stop")
            answers.append(Answer(text if cut is None else text[:cut], finish))
        if progress is not None:
            progress(len(answers), len(chats))
    return answers


def _cut_at_stop(text: str, stop: Sequence[str]) -> int | None:
    ends = [text.find(s) + len(s) for s in stop if s and s in text]
    return min(ends) if ends else None


# --------------------------------------------------------------------------- evaluation
def _score_base_model(base_answers: list[Answer], parser, labels: list, classes: list[str], rows: list[dict]) -> dict:
    """The base model's scores (the report's ``baseline``); its prediction and text go into each row beside the adapter's."""
    from curation.eval.classification import classification_scores

    base_predictions = [parser(a.text) for a in base_answers]
    for row, p, a in zip(rows, base_predictions, base_answers):
        row.update(base_prediction=p, base_text=a.text)
    return {"scores": classification_scores(labels, base_predictions, classes), "unparsed": sum(p is None for p in base_predictions)}


def _adapter_meta(adapter_dir: Path) -> dict:
    """What `curate train` recorded about the adapter; EvalError when the folder is not an adapter."""
    from curation.train.card import read_meta

    try:
        return read_meta(adapter_dir)
    except Exception as exc:  # noqa: BLE001 - TrainError: not an adapter folder
        raise EvalError(str(exc)) from None


def _adapter_header(adapter_dir: Path, meta: dict) -> dict:
    """The report's first keys: which adapter, on which base model, trained on what."""
    return {
        "adapter": str(adapter_dir),
        "base_model": meta.get("base_model"),
        "qlora": meta.get("train", {}).get("qlora"),
        "trained_on": {"dataset": meta.get("dataset"), "split": meta.get("split"), "rows": meta.get("rows")},
    }


def evaluate_model(
    adapter_dir: str | Path,
    *,
    split: str | None = None,
    limit: int | None = None,
    recipe: str | None = None,
    batch_size: int = 8,
    max_new_tokens: int | None = None,
    baseline: bool = False,
    write: bool = True,
    show_progress: bool = True,
) -> dict:
    """Answer held-out questions with base + adapter and score them; with ``baseline`` also the base alone."""
    from curation.eval.classification import classification_scores, is_correct
    from curation.parse import AnswerParser
    from curation.train.base_model import load_adapter, quiet_loading

    adapter_dir = Path(adapter_dir)
    meta = _adapter_meta(adapter_dir)
    loaded = eval_recipe(adapter_dir, recipe)
    questions, info = held_out_questions(loaded, split=split, limit=limit, exclude_ids=meta.get("train_ids", []))
    generator = loaded.recipe.generator
    max_new_tokens = max_new_tokens or generator.max_new_tokens
    parser = AnswerParser(loaded.recipe.answer)
    labels = [q.label for q in questions]
    classes = loaded.recipe.answer.classes or sorted(set(labels))

    quiet_loading()
    started = time.monotonic()
    model, tokenizer, _ = load_adapter(adapter_dir)
    chats = [q.messages for q in questions]

    def progress(done: int, total: int) -> None:
        if show_progress:
            print(f"  answered {done}/{total} ({time.monotonic() - started:.0f}s)", file=sys.stderr, flush=True)

    if show_progress:
        print(f"evaluating {adapter_dir} on {len(questions)} held-out questions", file=sys.stderr, flush=True)
    answers = generate_answers(model, tokenizer, chats, max_new_tokens=max_new_tokens, stop=generator.stop, batch_size=batch_size, progress=progress)
    predictions = [parser(a.text) for a in answers]
    report: dict[str, Any] = {
        **_adapter_header(adapter_dir, meta),
        "recipe": loaded.file,
        "eval": {**info, "limit": limit, "max_new_tokens": max_new_tokens, "decoding": "greedy"},
        "n": len(questions),
        "classes": classes,
        "scores": classification_scores(labels, predictions, classes),
        "unparsed": sum(p is None for p in predictions),
        "truncated": sum(a.finish_reason == "length" for a in answers),
    }
    rows = [
        {"id": q.id, "label": q.label, "prediction": p, "correct": is_correct(p, q.label), "finish_reason": a.finish_reason, "text": a.text}
        for q, p, a in zip(questions, predictions, answers)
    ]
    if baseline:
        with model.disable_adapter():
            base_answers = generate_answers(model, tokenizer, chats, max_new_tokens=max_new_tokens, stop=generator.stop, batch_size=batch_size, progress=progress)
        report["baseline"] = _score_base_model(base_answers, parser, labels, classes, rows)
    report["seconds"] = round(time.monotonic() - started, 1)
    if write:
        report["files"] = write_report(adapter_dir, report, rows, name=split or "heldout")
    report["predictions"] = rows
    return report


def write_report(adapter_dir: Path, report: dict, rows: list[dict], *, name: str) -> dict:
    """eval/<name>.json (scores) and eval/<name>-predictions.jsonl, then the card is re-rendered with them."""
    from curation import dataset_card
    from curation.train.card import read_meta, write_model_card

    json_path, rows_path = RunFolder(adapter_dir).model_eval_files(name)
    files = {"report": str(json_path), "predictions": str(rows_path)}
    dataset_card.write_text_atomic(json_path, json.dumps({**report, "files": files}, indent=2, default=str) + "\n")
    dataset_card.write_text_atomic(rows_path, "".join(json.dumps(row, default=str) + "\n" for row in rows))
    recipe_file = RunFolder(adapter_dir).recipe_file
    if recipe_file.exists():
        write_model_card(adapter_dir, read_meta(adapter_dir), recipe_file.read_text(encoding="utf-8"))
    return files


def summary_text(report: dict) -> str:
    scores = report["scores"]
    lines = [
        f"model: {report['adapter']} ({report['base_model']} + adapter trained on split {report['trained_on']['split']!r}, {report['trained_on']['rows']} rows)",
        f"eval: {report['n']} held-out questions of {report['eval']['source']}"
        + (f" split {report['eval']['split']!r}" if report["eval"]["split"] else "")
        + f" ({report['eval']['excluded_training_rows']} training rows left out); {report['unparsed']} unparsed, {report['truncated']} truncated",
        f"accuracy {_fmt(scores['accuracy'])}   macro-F1 {_fmt(scores['macro_f1'])}"
        + (f"   (base model alone: accuracy {_fmt(report['baseline']['scores']['accuracy'])}, macro-F1 {_fmt(report['baseline']['scores']['macro_f1'])})" if "baseline" in report else ""),
    ]
    width = max((len(c) for c in report["classes"]), default=5)
    lines.append(f"  {'class':<{width}}  {'F1':>6}  {'support':>7}")
    for label in report["classes"]:
        lines.append(f"  {label:<{width}}  {_fmt(scores['f1_per_class'].get(label)):>6}  {scores['support'].get(label, 0):>7}")
    if report.get("files"):
        lines.append(f"report: {report['files']['report']}")
    return "\n".join(lines)


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def recipe_from_run_dir(run_dir: str | None, adapter_dir: str) -> str | None:
    """`curate eval RUN_DIR --model ADAPTER`: RUN_DIR's recipe (source, prompt, parser) when it is a run folder or recipe."""
    if not run_dir:
        return None
    path = Path(run_dir)
    if path.resolve() == Path(adapter_dir).resolve():
        return None
    if path.is_dir() and not RunFolder(path).recipe_file.exists():
        raise EvalError(f"{run_dir} is not a run folder (no {RECIPE_FILE})")
    return str(path)
