"""RunFolder: the one place that knows a run folder's paths and reads its recipe back.

A run folder is in the Hub's dataset layout (see ``publish``): sharded parquet under ``data/``
and ``traces/``, the card, ``recipe.yaml``, ``stats.json``, plots, and the journal (never pushed).
Every stage that reads a finished run (``curate score``, ``eval``, ``train``, ``push``) goes
through this object, so the layout is declared once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

JOURNAL_FILE = "journal.sqlite"
RECIPE_FILE = "recipe.yaml"
STATS_FILE = "stats.json"
CARD_FILE = "README.md"
PLOTS_DIR = "plots"
UNCERTAINTY_PLOT = "plots/uncertainty_by_class.png"  # the card's histogram, drawn when the folder is published
EVAL_DIR = "eval"
SECTIONS_FILE = "card_sections.json"  # hand-written card sections (curate eval's) that survive a re-render
SOURCE_DIR = "source"
# the first shard of each split, as a one-shard run names it (tests and small runs read these)
SCORED_FILE = "data/scored-00000-of-00001.parquet"
FILTERED_FILE = "data/filtered-00000-of-00001.parquet"
TRACES_FILE = "traces/train-00000-of-00001.parquet"
REPORT_FILE = "report.html"  # curate view's page
SHARDS_DIR = "shards"  # a --shard run's journals, one folder per shard, and its manifest
PARTIAL_DIR = ".curate-partial"  # unselected scored shards between the score pass and the write pass
# split -> (folder, shard prefix): load_dataset(RUN_DIR, split=...) and the "traces" config
SPLITS = {"scored": ("data", "scored"), "filtered": ("data", "filtered"), "traces": ("traces", "train")}


def shard_glob(split: str) -> str:
    """The glob of a split's shards, as the card's ``configs:`` names them (``data/scored-*.parquet``)."""
    folder, prefix = SPLITS[split]
    return f"{folder}/{prefix}-*.parquet"


def default_run_dir(loaded) -> Path:
    """Where a recipe's run goes unless ``-o`` says otherwise: its ``output_dir``, else ``runs/<name>``."""
    return Path(loaded.recipe.output_dir) if loaded.recipe.output_dir else Path("runs") / loaded.recipe.name


@dataclass(frozen=True)
class RunFolder:
    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def journal(self) -> Path:
        return self.path / JOURNAL_FILE

    @property
    def recipe_file(self) -> Path:
        return self.path / RECIPE_FILE

    @property
    def stats_file(self) -> Path:
        return self.path / STATS_FILE

    @property
    def card_file(self) -> Path:
        return self.path / CARD_FILE

    @property
    def report_file(self) -> Path:
        return self.path / REPORT_FILE

    @property
    def partial_dir(self) -> Path:
        return self.path / PARTIAL_DIR

    def split_folder(self, split: str) -> tuple[Path, str]:
        """Where a split's shards are written, and their name prefix: ``data/scored-00000-of-00002.parquet``."""
        folder, prefix = SPLITS[split]
        return self.path / folder, prefix

    def split_files(self, split: str) -> list[Path]:
        """The shards of ``scored``, ``filtered`` or ``traces``, in order."""
        from curation.tables import split_files

        folder, prefix = SPLITS[split]
        return split_files(self.path, folder, prefix)

    def has_split(self, split: str) -> bool:
        return bool(self.split_files(split))

    def read_split(self, split: str, columns: Sequence[str] | None = None):
        """One split as a pyarrow Table (all its shards). For large splits, iterate split_files instead."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        files = self.split_files(split)
        if not files:
            raise FileNotFoundError(f"{self.path} is not a finished run folder (no {split} split); run `curate run` first")
        tables = [pq.read_table(f, columns=list(columns) if columns is not None else None) for f in files]
        return pa.concat_tables(tables) if len(tables) > 1 else tables[0]

    def dataset(self, split: str):
        """One split as a lazy pyarrow Dataset over its shards (filters and columns stream), or None."""
        import pyarrow.dataset as ds

        files = self.split_files(split)
        return ds.dataset([str(f) for f in files], format="parquet") if files else None

    def stats(self) -> dict:
        return json.loads(self.stats_file.read_text(encoding="utf-8")) if self.stats_file.exists() else {}

    def raw_recipe(self) -> dict:
        """recipe.yaml as data, in the current recipe format (fully merged when it was written: ``extends`` is not followed)."""
        from curation.recipe.versions import migrate
        from curation.recipe.yaml_marks import MarkIndex, parse_yaml
        from curation.types import Problem, RecipeError

        if not self.recipe_file.exists():
            raise FileNotFoundError(f"{self.path} is not a run folder (no {RECIPE_FILE})")
        data, node = parse_yaml(self.recipe_file.read_text(encoding="utf-8"), str(self.recipe_file))
        if not isinstance(data, dict):
            raise RecipeError([Problem(str(self.recipe_file), 1, 1, "", "a recipe must be a mapping")])
        data.pop("extends", None)
        # a folder written by an older curate: its recipe in the current format (warning per renamed key)
        return migrate(data, str(self.recipe_file), MarkIndex(node))

    def recipe(self, overrides: dict | None = None):
        """The Recipe the run was made with, with ``overrides`` (e.g. score/select for `curate score`) merged in."""
        from pydantic import ValidationError

        from curation.recipe.overrides import deep_merge
        from curation.recipe.sections import Recipe
        from curation.types import Problem, RecipeError

        try:
            return Recipe.model_validate(deep_merge(self.raw_recipe(), overrides or {}))
        except ValidationError as exc:  # an edited or older recipe.yaml: say what is wrong, not a traceback
            file = str(self.recipe_file)
            raise RecipeError([Problem(file, 1, 1, ".".join(str(part) for part in error["loc"]), error["msg"]) for error in exc.errors()]) from None

    # -- eval (curation/eval): where `curate eval` writes, in a run folder and (--model) in an adapter folder
    @property
    def eval_dir(self) -> Path:
        return self.path / EVAL_DIR

    def model_eval_files(self, name: str) -> tuple[Path, Path]:
        """An adapter folder's eval/<name>.json (scores) and eval/<name>-predictions.jsonl (`curate eval --model`)."""
        return self.eval_dir / f"{name}.json", self.eval_dir / f"{name}-predictions.jsonl"


# -- eval (curation/eval): the files `curate eval` writes into a run folder (relative paths: the card links them)
EVAL_REPORT_FILE = f"{EVAL_DIR}/report.json"
EVAL_CURVES_PLOT = f"{EVAL_DIR}/selective_accuracy.png"
EVAL_HISTOGRAM_PLOT = f"{EVAL_DIR}/uncertainty_by_class.png"
EVAL_STRATEGY_PLOT = f"{EVAL_DIR}/per_class_vs_global.png"
