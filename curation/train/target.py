"""What `curate train` trains on: the recipe and dataset behind its argument, and the chosen split's rows.

The run's own splits are `filtered` and `scored`; the others are drawn from `scored` as baselines
for the filtered split (see SPLITS). Rows come in TRL's conversational prompt/completion format.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from curation.run_folder import RECIPE_FILE, RunFolder
from curation.train.config import TrainError
from curation.train.splits import SPLITS
from curation.types import first_line

if TYPE_CHECKING:
    import datasets

    from curation.recipe.load import LoadedRecipe
    from curation.train.config import TrainConfig


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

    from curation.recipe.load import load_recipe

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
        and not row.get("calibration")  # held-out labelled questions (calibrate:) are never in a publishable split
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
        folder = RunFolder(Path(location).expanduser())
        if folder.has_split(split):
            return folder.read_split(split).to_pylist()
    import datasets

    try:
        return datasets.load_dataset(str(location), split=split).to_list()
    except Exception as exc:  # noqa: BLE001 - offline, missing repo, missing split: all one line for the user
        raise TrainError(f"cannot load split {split!r} of dataset {location}: {first_line(exc)}") from None


def load_training_rows(target: TrainTarget, split: str, seed: int) -> TrainingRows:
    """The rows to train on (see SPLITS); the drawn splits are reproducible from ``seed``."""
    import datasets

    if split not in SPLITS:
        raise TrainError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    scored = _read_split(target.dataset, target.is_local, "scored")
    rows, short, available = _rows_of_split(target, split, seed, scored)
    source_rows = len(scored)
    if not rows:
        raise TrainError(f"split {split!r} of {target.dataset} has no rows to train on: {_why_no_rows(split, source_rows)}")
    for row in rows:
        if "prompt" not in row or "completion" not in row:
            raise TrainError(f"dataset {target.dataset} has no prompt/completion columns; is it a curate run folder?")
    data = datasets.Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])
    return TrainingRows(
        dataset=data, ids=[str(r.get("id")) for r in rows], split=split, available=available, source_rows=source_rows,
        per_class=_class_counts(rows), short=short,
    )


def _rows_of_split(target: TrainTarget, split: str, seed: int, scored: list[dict]) -> tuple[list[dict], dict[str, int], int]:
    """(rows with a trace, shortfall per class, rows in the split or drawn from) for one of SPLITS."""
    import numpy as np

    if split == "random":
        # same size as `filtered`, drawn from every row with a trace: the ablation's first baseline
        filtered = [r for r in _read_split(target.dataset, target.is_local, "filtered") if _has_completion(r)]
        pool = [r for r in scored if _has_completion(r)]
        chosen = sorted(np.random.default_rng(seed).choice(len(pool), size=min(len(filtered), len(pool)), replace=False).tolist())
        return [pool[i] for i in chosen], {}, len(scored)
    if split in ("random-readable", "label-correct"):
        if split == "label-correct" and not any(r.get("label") is not None for r in scored):
            raise TrainError(
                f"split 'label-correct' needs labels, and the scored split of {target.dataset} has none; set source.label_column in the recipe"
            )
        filtered = [r for r in _read_split(target.dataset, target.is_local, "filtered") if _has_completion(r)]
        return draw_like_filtered(scored, filtered, seed, label_correct=split == "label-correct")
    all_rows = scored if split == "scored" else _read_split(target.dataset, target.is_local, split)
    return [r for r in all_rows if _has_completion(r)], {}, len(all_rows)


def _why_no_rows(split: str, source_rows: int) -> str:
    if split == "scored":
        return f"none of its {source_rows} questions has a trace"
    if split == "label-correct":
        return "no kept class has a row whose answer equals its label"
    return f"the selection kept none of the {source_rows} questions; loosen select: or train on --split scored"


def default_output_dir(target: TrainTarget, split: str) -> Path:
    """train.output_dir, else <run folder>/adapters/<split> (runs/<recipe name>/adapters/<split> for a Hub dataset)."""
    if target.config.output_dir:
        return Path(target.config.output_dir).expanduser()
    if target.is_local:
        return Path(target.dataset).expanduser() / "adapters" / split
    return Path("runs") / target.loaded.recipe.name / "adapters" / split
