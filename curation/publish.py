"""Publish: write a run folder in the Hub's own dataset layout.

``datasets.load_dataset(RUN_DIR, split="filtered")`` works before anything is pushed, because the
folder is exactly what the Hub repo will hold: parquet under ``data/`` and ``traces/``, a
``README.md`` card whose YAML ``configs:`` block names the splits, the ``recipe.yaml`` that made
it and the plots. The journal also lives in the folder but is never pushed.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

import curation

SCORED_FILE = "data/scored-00000-of-00001.parquet"
FILTERED_FILE = "data/filtered-00000-of-00001.parquet"
TRACES_FILE = "traces/train-00000-of-00001.parquet"
JOURNAL_FILE = "journal.sqlite"
RECIPE_FILE = "recipe.yaml"
STATS_FILE = "stats.json"
CARD_FILE = "README.md"
PLOTS_DIR = "plots"
# What a push uploads; everything else in the run folder (the journal) stays local.
PUBLISHED_PATTERNS = ["README.md", "recipe.yaml", "stats.json", "data/*.parquet", "traces/*.parquet", "plots/*.png", "eval/*.json", "eval/*.png"]

CONFIGS = [
    {
        "config_name": "default",
        "data_files": [{"split": "scored", "path": SCORED_FILE}, {"split": "filtered", "path": FILTERED_FILE}],
        "default": True,
    },
    {"config_name": "traces", "data_files": [{"split": "train", "path": TRACES_FILE}]},
]


def hub_cards_dir() -> Path:
    """Card templates: shipped inside the wheel as curation/hub_cards, or the repo's hub_cards/ in a checkout."""
    for candidate in (Path(__file__).parent / "hub_cards", Path(__file__).parent.parent / "hub_cards"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("hub_cards templates not found")


def write_parquet_atomic(table: pa.Table, path: Path) -> None:
    """Write next to the target and rename, so a crash never leaves a half-written parquet behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as handle:
        tmp = Path(handle.name)
    try:
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")):
        if n < limit:
            return name
    return "10M<n<100M"


@dataclass
class RunSummary:
    """Counts and provenance that go into stats.json, the card and the final CLI summary."""

    name: str
    questions: int
    traces: int
    unparsed_traces: int
    failed_traces: int
    truncated_traces: int
    kept: int
    metric: str
    similarity: str
    per_class_before: dict[str, int]
    per_class_after: dict[str, int]
    drop_reasons: dict[str, int]
    budget: dict[str, int]
    generation: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    metrics_computed: list[str] = field(default_factory=list)
    metrics_skipped: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        return dict(self.__dict__)


def plot_uncertainty_by_class(scored: pa.Table, metric: str, path: Path) -> bool:
    """Histogram of the selection metric per predicted class, kept rows highlighted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    answers = scored.column("answer").to_pylist()
    values = np.asarray(scored.column("uncertainty").to_pylist(), dtype=float)
    kept = np.asarray(scored.column("kept").to_pylist(), dtype=bool)
    classes = sorted({a for a in answers if a is not None})
    if not classes or not np.isfinite(values).any():
        return False
    fig, axes = plt.subplots(1, len(classes), figsize=(4 * len(classes), 3), squeeze=False)
    finite = values[np.isfinite(values)]
    bins = np.linspace(finite.min(), finite.max() if finite.max() > finite.min() else finite.min() + 1, 21)
    for axis, label in zip(axes[0], classes):
        in_class = np.array([a == label for a in answers]) & np.isfinite(values)
        axis.hist(values[in_class & ~kept], bins=bins, color="#bbbbbb", label="dropped")
        axis.hist(values[in_class & kept], bins=bins, color="#ff9d00", label="kept")
        axis.set_title(f"{label} (n={int(in_class.sum())})")
        axis.set_xlabel(metric)
    axes[0][0].set_ylabel("questions")
    axes[0][-1].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def render_card(run_dir: Path, summary: RunSummary, recipe_yaml: str, recipe, extra_sections: dict[str, str] | None = None) -> str:
    """Render README.md from hub_cards/dataset_card.md with correct Hub metadata."""
    from huggingface_hub import DatasetCardData, DatasetCard

    tags = sorted({"curate", "synthetic", "reasoning", "uncertainty-filtering", *recipe.tags})
    card_data = DatasetCardData(
        license=recipe.license,
        task_categories=["text-generation"],
        size_categories=[size_category(summary.questions)],
        tags=tags,
        pretty_name=recipe.name,
        configs=CONFIGS,
    )
    plots = sorted(str(p.relative_to(run_dir)) for p in (run_dir / PLOTS_DIR).glob("*.png")) if (run_dir / PLOTS_DIR).exists() else []
    template = (hub_cards_dir() / "dataset_card.md").read_text(encoding="utf-8")
    card = DatasetCard.from_template(
        card_data,
        template_str=template,
        recipe=recipe,
        recipe_yaml=recipe_yaml,
        summary=summary,
        plots=plots,
        extra_sections=extra_sections or {},
        version=curation.__version__,
    )
    return str(card)


def write_run_folder(
    run_dir: Path,
    scored: pa.Table,
    traces: pa.Table,
    summary: RunSummary,
    recipe,
    recipe_yaml: str,
) -> None:
    """Write data, plots, stats, recipe and card. Parquet goes first, the card last."""
    import pyarrow.compute as pc

    write_parquet_atomic(scored, run_dir / SCORED_FILE)
    write_parquet_atomic(scored.filter(pc.equal(scored.column("kept"), True)), run_dir / FILTERED_FILE)
    write_parquet_atomic(traces, run_dir / TRACES_FILE)
    plot_uncertainty_by_class(scored, summary.metric, run_dir / PLOTS_DIR / "uncertainty_by_class.png")
    write_text_atomic(run_dir / RECIPE_FILE, recipe_yaml)
    write_text_atomic(run_dir / STATS_FILE, json.dumps(summary.to_json(), indent=2, default=str) + "\n")
    existing_sections = load_extra_sections(run_dir)
    write_text_atomic(run_dir / CARD_FILE, render_card(run_dir, summary, recipe_yaml, recipe, existing_sections))


def load_extra_sections(run_dir: Path) -> dict[str, str]:
    """Sections other stages added to the card (e.g. eval results), kept across rewrites."""
    path = run_dir / "card_sections.json"
    return json.loads(path.read_text()) if path.exists() else {}


def add_card_section(run_dir: Path, title: str, markdown: str) -> None:
    """Add or replace a titled section of the card and re-render it from stats.json and recipe.yaml."""
    sections = load_extra_sections(run_dir)
    sections[title] = markdown
    write_text_atomic(run_dir / "card_sections.json", json.dumps(sections, indent=2) + "\n")
    rerender_card(run_dir)


def rerender_card(run_dir: Path) -> None:
    from curation.recipe import load_recipe

    loaded = load_recipe(str(run_dir / RECIPE_FILE))
    summary = RunSummary(**json.loads((run_dir / STATS_FILE).read_text()))
    recipe_yaml = (run_dir / RECIPE_FILE).read_text(encoding="utf-8")
    write_text_atomic(run_dir / CARD_FILE, render_card(run_dir, summary, recipe_yaml, loaded.recipe, load_extra_sections(run_dir)))


def today() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")
