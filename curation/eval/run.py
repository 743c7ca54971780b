"""`curate eval RUN_DIR`: how well each uncertainty metric separates right answers from wrong ones.

Labels are used here and only here: selection never sees them (label-free filtering). The steps,
in order: read the scored split's labelled rows (``read_rows``), head the report with the pool and
kept-against-all scores, then judge every metric column on the pool (``metric_entry``: AUROC, PRR,
per class, the selective-accuracy curve, per-class against global selection), optionally with
bootstrap intervals and paired comparisons (``curation.eval.bootstrap``), and write the outputs
(``curation.eval.report``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from curation import run_folder
from curation.eval.bootstrap import DEFAULT_DRAWS, DEFAULT_SEED, LEVEL, Resamples, auroc_draws, interval, paired_comparisons, proportion_interval, prr_draws, selective_accuracy_draws
from curation.eval.classification import classification_scores, is_correct
from curation.eval.ranking import auroc, prr, ranking, selective_accuracy

DEFAULT_FRACTIONS = (0.1, 0.25, 0.5)
CURVE_POINTS = 200
POOL_DEFINITION = "labelled rows with a parsed answer and no failed generation; every metric is ranked on these"


@dataclass
class LabelledRows:
    """The scored split's columns that evaluation reads, one entry per row, and the pool metrics are judged on."""

    ids: np.ndarray
    labels: np.ndarray
    answers: np.ndarray
    kept: np.ndarray
    labelled: np.ndarray
    correct: np.ndarray
    # rows with a label and a readable answer from a complete generation, i.e. the rows selection
    # ranks; unparsed rows are wrong but no metric ranks them
    pool: np.ndarray
    values: dict[str, np.ndarray]  # metric name -> its column
    n_samples: np.ndarray | None
    classes: list[str]


def scored_table(run_dir: Path):
    from curation.run_folder import RunFolder

    folder = RunFolder(run_dir)
    if not folder.has_split("scored"):
        raise FileNotFoundError(f"{run_dir} is not a run folder (no {run_folder.SCORED_FILE}); run `curate run` first")
    return folder.read_split("scored")


def run_settings(run_dir: Path) -> tuple[dict, list[str], str | None, float | None]:
    """(stats.json, classes, selection metric, budget fraction) of a run folder."""
    from curation.run_folder import RunFolder

    folder = RunFolder(run_dir)
    stats = folder.stats()
    recipe = folder.raw_recipe() if folder.recipe_file.exists() else {}
    labels = (recipe.get("answer") or {}).get("labels")
    classes = list(labels) if isinstance(labels, (dict, list)) else []
    fraction = (recipe.get("select") or {}).get("fraction")
    return stats, classes, stats.get("metric") or (recipe.get("score") or {}).get("metric"), fraction


def read_rows(run_dir: Path, table, classes: list[str]) -> LabelledRows:
    """RUN_DIR's scored split (``table``, all shards) as arrays; ValueError when it has no labels to evaluate against."""
    from curation.score import METRICS

    if "label" not in table.column_names:
        raise ValueError(f"{run_dir} has no `label` column: set source.label_column in the recipe to evaluate against ground truth")

    def column(name: str, dtype=object) -> np.ndarray:
        return np.array(table.column(name).to_pylist(), dtype=dtype)

    labels, answers, kept = column("label"), column("answer"), column("kept", bool)
    reasons = column("drop_reason") if "drop_reason" in table.column_names else np.full(len(kept), None)
    labelled = np.array([label is not None for label in labels], dtype=bool)
    if "calibration" in table.column_names:  # calibration questions chose the kept set: only the others are held out
        labelled &= ~column("calibration", bool)
    if not labelled.any():
        raise ValueError(f"{run_dir}: every `label` is empty; nothing to evaluate against")
    classes = classes or sorted({str(x) for x in labels[labelled]} | {str(a) for a in answers if a is not None})
    if not any(str(lab) in classes for lab in labels[labelled]):
        raise ValueError(f"no label value matches an answer class ({', '.join(classes)}); map them with source.label_map")
    return LabelledRows(
        ids=column("id"),
        labels=labels,
        answers=answers,
        kept=kept,
        labelled=labelled,
        correct=np.array([is_correct(a, lab) for a, lab in zip(answers, labels)], dtype=bool),
        pool=labelled & np.array([a is not None for a in answers], dtype=bool) & (reasons != "generation_failed"),
        values={name: column(name, np.float64) for name in METRICS if name in table.column_names},
        n_samples=column("n_samples", np.float64) if "n_samples" in table.column_names else None,
        classes=classes,
    )


def report_header(run_dir: Path, stats: dict, selection_metric: str | None, rows: LabelledRows, fractions: list[float]) -> dict:
    """The report before any metric: the run, the pool, and the kept subset against all rows."""
    labels, answers, pool, classes = rows.labels, rows.answers, rows.pool, rows.classes
    kept_labelled = rows.kept & rows.labelled
    return {
        "run": stats.get("name", run_dir.name),
        "selection_metric": selection_metric,
        "similarity": stats.get("similarity"),
        "classes": classes,
        "rows": int(len(labels)),
        "labelled": int(rows.labelled.sum()),
        "pool": {"n": int(pool.sum()), "accuracy": float(rows.correct[pool].mean()) if pool.any() else None, "definition": POOL_DEFINITION},
        "kept_vs_all": {
            "all": classification_scores(labels[rows.labelled], answers[rows.labelled], classes),
            "pool": classification_scores(labels[pool], answers[pool], classes),
            "kept": classification_scores(labels[kept_labelled], answers[kept_labelled], classes),
        },
        "fractions": fractions,
        "metrics": {},
    }


def fully_sampled_rows(rows: LabelledRows, report: dict) -> np.ndarray | None:
    """The rows with the most samples when adaptive sampling left some with fewer (else None), noted in the report.

    Adaptive sampling (docs/adaptive.md) leaves dropped questions with fewer than K samples; a
    sample-based score over fewer samples is not comparable, so those metrics are judged on the
    fully sampled rows of the pool (confidence-only metrics keep the whole pool).
    """
    n_samples = rows.n_samples
    if n_samples is None or not len(n_samples) or not np.nanmin(n_samples) < np.nanmax(n_samples):
        return None
    full_k = n_samples == np.nanmax(n_samples)
    report["variable_k"] = {
        "max_samples": int(np.nanmax(n_samples)),
        "rows_below_max": int((~full_k).sum()),
        "note": "metrics that use the samples are ranked on the pool's fully sampled rows only",
    }
    return full_k


def add_bootstrap_header(report: dict, rows: LabelledRows, bootstrap: int, seed: int) -> None:
    """How the intervals were drawn, and the intervals of the pool's and kept-against-all accuracies."""
    report["bootstrap"] = {
        "draws": bootstrap,
        "seed": seed,
        "level": LEVEL,
        "method": "percentile intervals; pool rows resampled with replacement, the same resamples for every metric, so differences are paired",
    }
    report["pool"]["accuracy_ci"] = proportion_interval(rows.correct[rows.pool], bootstrap, seed)
    for part, subset in (("all", rows.labelled), ("pool", rows.pool), ("kept", rows.kept & rows.labelled)):
        report["kept_vs_all"][part]["accuracy_ci"] = proportion_interval(rows.correct[subset], bootstrap, seed)


def realized_fdr(guarantee: dict, rows: LabelledRows, bootstrap: int, seed: int) -> dict:
    """The share of wrong answers among the kept rows with held-out labels, next to the level the selection asked for.

    One run's share is one draw: the guarantee bounds its expectation, so a share above the level
    on one run is possible without the guarantee failing; many splits (scripts/conformal_study.py) test it.
    """
    kept = rows.kept & rows.labelled

    def share(mask: np.ndarray) -> dict:
        wrong = ~rows.correct[mask]
        return {"kept_labelled": int(mask.sum()), "wrong_share": float(wrong.mean()) if mask.any() else None,
                "interval": proportion_interval(wrong, bootstrap, seed) if bootstrap > 0 and mask.any() else None}

    per_class = {label: share(kept & (rows.answers == label)) for label in rows.classes if (kept & (rows.answers == label)).any()}
    return {"level": guarantee["fdr"], "scope": guarantee["scope"], **share(kept), "per_class": per_class,
            "note": "a bound on the expected share; one run's share is one draw of it"}


def per_class_scores(u: np.ndarray, t: np.ndarray | None, answers: np.ndarray, correct: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, AUROC and PRR within each predicted class of the pool (``answers``, ``correct``: pool rows)."""
    out = {}
    for label in classes:
        rows = answers == label
        if rows.any():
            out[label] = {
                "n": int(rows.sum()),
                "accuracy": float(correct[rows].mean()),
                "auroc": auroc(u[rows], ~correct[rows], t[rows] if t is not None else None),
                "prr": prr(u[rows], correct[rows], t[rows] if t is not None else None)["prr"],
            }
    return out


def curve_points(n: int) -> np.ndarray:
    """At most CURVE_POINTS kept counts, 1..n, at which the selective-accuracy curve is reported."""
    return np.unique(np.linspace(1, n, min(CURVE_POINTS, n)).round().astype(int)) if n else np.zeros(0, dtype=int)


def selection_by_strategy(rows: LabelledRows, pool: np.ndarray, uncertainty: np.ndarray, t: np.ndarray | None, fractions: list[float], resamples: Resamples | None, bootstrap: int, seed: int) -> dict:
    """Stoisser et al.: the same budget spent per predicted class or under one global threshold, scored against the labels."""
    from curation.recipe.sections import SelectConfig
    from curation.select import select

    ids, labels, answers, correct, classes = rows.ids[pool], rows.labels[pool], rows.answers[pool], rows.correct[pool], rows.classes
    comparison: dict = {}
    for fraction in fractions:
        comparison[str(fraction)] = {}
        for strategy in ("per_class", "global"):
            chosen = select(ids, answers, uncertainty[pool], t, SelectConfig(strategy=strategy, fraction=fraction)).kept
            scores = classification_scores(labels[chosen], answers[chosen], classes)
            scores["kept_per_class"] = {label: int((answers[chosen] == label).sum()) for label in classes}
            if resamples is not None:
                scores["accuracy_ci"] = proportion_interval(correct[chosen], bootstrap, seed)
            comparison[str(fraction)][strategy] = scores
    return comparison


def metric_entry(name: str, rows: LabelledRows, pool: np.ndarray, fractions: list[float], resamples: Resamples | None, bootstrap: int, seed: int) -> tuple[dict, dict | None]:
    """One metric judged on ``pool``: its report entry, and its bootstrap draws (None without resamples)."""
    from curation.score import METRICS, selection_keys

    uncertainty, tiebreak = selection_keys(name, rows.values)
    u, t = uncertainty[pool], (tiebreak[pool] if tiebreak is not None else None)
    correct = rows.correct[pool]
    entry: dict = {
        "n": int(pool.sum()),
        "undefined": int((~np.isfinite(u)).sum()),
        "tiebreak": METRICS[name].tiebreak,
        "higher_is_better": METRICS[name].higher_is_better,
        "auroc": auroc(u, ~correct, t),
        **{f"prr_{key}" if key != "prr" else "prr": value for key, value in prr(u, correct, t).items()},
        "per_class": per_class_scores(u, t, rows.answers[pool], correct, rows.classes),
    }
    curve = selective_accuracy(u, correct, t)
    points = curve_points(len(curve))
    entry["selective_accuracy"] = {"fraction": (points / max(len(curve), 1)).tolist(), "accuracy": curve[points - 1].tolist()}
    draws = None
    if resamples is not None and len(curve):
        ranks = ranking(u, t)
        draws = {"auroc": auroc_draws(ranks, ~correct, resamples), "prr": prr_draws(ranks, correct, resamples)}
        entry["auroc_ci"], entry["prr_ci"] = interval(draws["auroc"]), interval(draws["prr"])
        band = np.percentile(selective_accuracy_draws(ranks, correct, resamples, points), [100 * (1 - LEVEL) / 2, 100 * (1 + LEVEL) / 2], axis=0)
        entry["selective_accuracy"]["low"], entry["selective_accuracy"]["high"] = band[0].tolist(), band[1].tolist()
    entry["selection"] = selection_by_strategy(rows, pool, uncertainty, t, fractions, resamples, bootstrap, seed)
    return entry, draws


def judge_metrics(report: dict, rows: LabelledRows, full_k: np.ndarray | None, bootstrap: int, seed: int) -> None:
    """Every metric column into ``report["metrics"]``, and the paired comparisons between them when bootstrapping."""
    from curation.score import METRICS

    # One set of resamples per pool, so that metrics ranked on the same rows are paired; with
    # variable K the sample-based metrics have a smaller pool than the confidence-only ones.
    resamples_by_pool: dict[str, Resamples] = {}
    pool_of: dict[str, str] = {}
    draws: dict[str, dict[str, np.ndarray]] = {}
    for name in rows.values:
        pool_key = "fully_sampled" if full_k is not None and "samples" in METRICS[name].requires else "pool"
        pool = rows.pool & full_k if pool_key == "fully_sampled" else rows.pool
        if bootstrap > 0 and pool_key not in resamples_by_pool:
            resamples_by_pool[pool_key] = Resamples.draw(int(pool.sum()), bootstrap, seed)
        pool_of[name] = pool_key
        entry, metric_draws = metric_entry(name, rows, pool, report["fractions"], resamples_by_pool.get(pool_key), bootstrap, seed)
        if metric_draws is not None:
            draws[name] = metric_draws
        report["metrics"][name] = entry
    if draws:
        report["comparisons"] = paired_comparisons(draws, report, bootstrap, pool_of)


def evaluate_run(
    run_dir: str | Path,
    *,
    fractions: Sequence[float] | None = None,
    write: bool = True,
    card: bool = True,
    bootstrap: int = DEFAULT_DRAWS,
    seed: int = DEFAULT_SEED,
) -> dict:
    """Evaluate every metric column of RUN_DIR's scored split against its labels.

    Writes eval/report.json and the plots (when ``write``) and a results section into the card
    (when ``card``). With ``bootstrap`` > 0, every AUROC, PRR and kept accuracy gets a 95%
    percentile interval from that many resamples of the pool (seeded, the same resamples for
    every metric), and ``comparisons`` holds paired differences between metrics (see
    curation.eval.bootstrap). Raises ValueError when the run has no labels.
    """
    run_dir = Path(run_dir)
    table = scored_table(run_dir)
    stats, classes, selection_metric, run_fraction = run_settings(run_dir)
    rows = read_rows(run_dir, table, classes)
    fractions = sorted({*(fractions or DEFAULT_FRACTIONS), *([run_fraction] if isinstance(run_fraction, float) else [])})
    report = report_header(run_dir, stats, selection_metric, rows, fractions)
    full_k = fully_sampled_rows(rows, report)
    if bootstrap > 0:
        add_bootstrap_header(report, rows, bootstrap, seed)
    judge_metrics(report, rows, full_k, bootstrap, seed)
    if (stats.get("quality") or {}).get("guarantee"):
        report["fdr"] = realized_fdr(stats["quality"]["guarantee"], rows, bootstrap, seed)
    oracle = np.sort(rows.correct[rows.pool].astype(float))[::-1]
    report["oracle_selective_accuracy"] = (np.cumsum(oracle) / np.arange(1, len(oracle) + 1)).tolist()[:: max(1, len(oracle) // CURVE_POINTS)]
    if write:
        from curation.eval.report import write_outputs

        write_outputs(run_dir, report, rows.values, rows.answers, rows.correct, rows.pool, card)
    return report
