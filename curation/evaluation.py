"""Evaluation: how well each uncertainty metric separates right answers from wrong ones.

Labels are used here and only here: selection never sees them (label-free filtering).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from curation.bootstrap import DEFAULT_DRAWS, DEFAULT_SEED, LEVEL, Resamples, auroc_draws, interval, prr_draws, proportion_interval, selective_accuracy_draws


# --------------------------------------------------------------------------- classification
from curation.eval_metrics import classification_scores  # noqa: E402,F401 - lives with the metric modules


# --------------------------------------------------------------------------- ranking
def ranking(uncertainty: np.ndarray, tiebreak: np.ndarray | None = None) -> np.ndarray:
    """Dense ranks of rows by (uncertainty, tie-break), as selection orders them; equal keys share a rank.

    Undefined values rank last (selection never keeps them). Higher rank = more uncertain.
    """
    u = np.where(np.isfinite(uncertainty), uncertainty, np.inf)
    t = np.zeros(len(u)) if tiebreak is None else np.where(np.isfinite(tiebreak), tiebreak, np.inf)
    order = np.lexsort((t, u))
    su, st = u[order], t[order]
    new_group = np.ones(len(u), dtype=bool)
    new_group[1:] = (su[1:] != su[:-1]) | (st[1:] != st[:-1])
    ranks = np.empty(len(u), dtype=np.int64)
    ranks[order] = np.cumsum(new_group) - 1
    return ranks


def _expected_prefix_sums(ranks: np.ndarray, quality: np.ndarray) -> np.ndarray:
    """E[sum of quality over the m lowest-ranked rows], m = 1..n, with ties in random order.

    Inside a tie group every order is equally likely, so the expected prefix grows by the group's
    mean quality per row. This makes PRR and selective accuracy deterministic and fair to metrics
    with many ties (self-consistency, CoCoA with answer similarity).
    """
    order = np.argsort(ranks, kind="stable")
    r, q = ranks[order], quality[order].astype(np.float64)
    n = len(r)
    starts = np.flatnonzero(np.r_[True, r[1:] != r[:-1]])
    sizes = np.diff(np.r_[starts, n])
    group_sums = np.add.reduceat(q, starts) if n else np.zeros(0)
    before = np.r_[0.0, np.cumsum(group_sums)[:-1]]
    group = np.repeat(np.arange(len(starts)), sizes)
    within = np.arange(n) - starts[group] + 1
    return before[group] + within * (group_sums / sizes)[group]


def prr(uncertainty: np.ndarray, quality: np.ndarray, tiebreak: np.ndarray | None = None) -> dict:
    """Prediction-rejection ratio as LM-Polygraph computes it, normalised between random and oracle.

    ``quality`` is higher-is-better (1 = correct). As LM-Polygraph's PredictionRejectionArea with
    max_rejection = 1: the quality is min-max normalised, rows are sorted by uncertainty, and the
    score is the mean over m = 1..n of the mean quality of the m least uncertain rows. The oracle
    sorts by quality; the random baseline is its exact expectation, mean(quality) (LM-Polygraph
    averages 1,000 shuffles). Ties are averaged (see ``_expected_prefix_sums``).
    Returns {"prr", "raw", "oracle", "random"}; prr is None when oracle == random (all rows alike).
    """
    quality = np.asarray(quality, dtype=np.float64)
    n = len(quality)
    if n == 0:
        return {"prr": None, "raw": None, "oracle": None, "random": None}
    lo, hi = quality.min(), quality.max()
    if np.isclose(lo, hi):
        lo, hi = lo - 1, hi + 1
    target = (quality - lo) / (hi - lo)
    m = np.arange(1, n + 1)
    raw = float(np.mean(_expected_prefix_sums(ranking(uncertainty, tiebreak), target) / m))
    oracle = float(np.mean(np.cumsum(np.sort(target)[::-1]) / m))
    random = float(target.mean())
    value = None if np.isclose(oracle, random) else (raw - random) / (oracle - random)
    return {"prr": value, "raw": raw, "oracle": oracle, "random": random}


def auroc(uncertainty: np.ndarray, wrong: np.ndarray, tiebreak: np.ndarray | None = None) -> float | None:
    """AUROC of the uncertainty ranking for detecting wrong answers (through `evaluate`'s roc_auc); None without both kinds."""
    from curation.eval_metrics import load_metric

    wrong = np.asarray(wrong, dtype=bool)
    if wrong.all() or not wrong.any():
        return None
    ranks = ranking(uncertainty, tiebreak).astype(np.float64)
    return float(load_metric("roc_auc").compute(references=wrong.astype(np.int32), prediction_scores=ranks)["roc_auc"])


def selective_accuracy(uncertainty: np.ndarray, correct: np.ndarray, tiebreak: np.ndarray | None = None) -> np.ndarray:
    """Expected accuracy of the m least uncertain rows, m = 1..n."""
    n = len(correct)
    return _expected_prefix_sums(ranking(uncertainty, tiebreak), np.asarray(correct, dtype=np.float64)) / np.arange(1, n + 1)


# --------------------------------------------------------------------------- a run folder
EVAL_DIR = "eval"
REPORT_FILE = "eval/report.json"
CURVES_PLOT = "eval/selective_accuracy.png"
HISTOGRAM_PLOT = "eval/uncertainty_by_class.png"
STRATEGY_PLOT = "eval/per_class_vs_global.png"
CARD_SECTION = "Evaluation against labels"
DEFAULT_FRACTIONS = (0.1, 0.25, 0.5)
CURVE_POINTS = 200


def _scored_table(run_dir: Path):
    from curation import publish
    from curation.run_folder import RunFolder

    folder = RunFolder(run_dir)
    if not folder.has_split("scored"):
        raise FileNotFoundError(f"{run_dir} is not a run folder (no {publish.SCORED_FILE}); run `curate run` first")
    return folder.read_split("scored")


def _run_settings(run_dir: Path) -> tuple[dict, list[str], str | None, float | None]:
    """(stats.json, classes, selection metric, budget fraction) of a run folder."""
    from curation.run_folder import RunFolder

    folder = RunFolder(run_dir)
    stats = folder.stats()
    recipe = folder.raw_recipe() if folder.recipe_file.exists() else {}
    labels = (recipe.get("answer") or {}).get("labels")
    classes = list(labels) if isinstance(labels, (dict, list)) else []
    fraction = (recipe.get("select") or {}).get("fraction")
    return stats, classes, stats.get("metric") or (recipe.get("score") or {}).get("metric"), fraction


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
    curation.bootstrap). Raises ValueError when the run has no labels.
    """
    from curation import publish
    from curation.recipe.sections import SelectConfig
    from curation.score import METRICS, selection_keys
    from curation.select import select

    run_dir = Path(run_dir)
    table = _scored_table(run_dir)
    stats, classes, selection_metric, run_fraction = _run_settings(run_dir)
    if "label" not in table.column_names:
        raise ValueError(f"{run_dir} has no `label` column: set source.label_column in the recipe to evaluate against ground truth")
    labels = np.array(table.column("label").to_pylist(), dtype=object)
    answers = np.array(table.column("answer").to_pylist(), dtype=object)
    kept = np.array(table.column("kept").to_pylist(), dtype=bool)
    reasons = np.array(table.column("drop_reason").to_pylist(), dtype=object) if "drop_reason" in table.column_names else np.full(len(kept), None)
    ids = np.array(table.column("id").to_pylist(), dtype=object)
    labelled = np.array([label is not None for label in labels], dtype=bool)
    if not labelled.any():
        raise ValueError(f"{run_dir}: every `label` is empty; nothing to evaluate against")
    classes = classes or sorted({str(x) for x in labels[labelled]} | {str(a) for a in answers if a is not None})
    correct = np.array([a is not None and lab is not None and str(a) == str(lab) for a, lab in zip(answers, labels)], dtype=bool)
    if not any(str(lab) in classes for lab in labels[labelled]):
        raise ValueError(f"no label value matches an answer class ({', '.join(classes)}); map them with source.label_map")

    # The pool every metric is judged on: rows with a label and a readable answer from a complete
    # generation, i.e. the rows selection ranks. Unparsed rows are wrong but no metric ranks them.
    pool = labelled & np.array([a is not None for a in answers], dtype=bool) & (reasons != "generation_failed")
    values = {name: np.array(table.column(name).to_pylist(), dtype=np.float64) for name in METRICS if name in table.column_names}
    fractions = sorted({*(fractions or DEFAULT_FRACTIONS), *([run_fraction] if isinstance(run_fraction, float) else [])})

    report: dict = {
        "run": stats.get("name", run_dir.name),
        "selection_metric": selection_metric,
        "similarity": stats.get("similarity"),
        "classes": classes,
        "rows": int(len(labels)),
        "labelled": int(labelled.sum()),
        "pool": {
            "n": int(pool.sum()),
            "accuracy": float(correct[pool].mean()) if pool.any() else None,
            "definition": "labelled rows with a parsed answer and no failed generation; every metric is ranked on these",
        },
        "kept_vs_all": {
            "all": classification_scores(labels[labelled], answers[labelled], classes),
            "pool": classification_scores(labels[pool], answers[pool], classes),
            "kept": classification_scores(labels[kept & labelled], answers[kept & labelled], classes),
        },
        "fractions": fractions,
        "metrics": {},
    }
    wrong = ~correct
    # Adaptive sampling (docs/adaptive.md) leaves dropped questions with fewer than K samples; a
    # sample-based score over fewer samples is not comparable, so those metrics are judged on the
    # fully sampled rows of the pool (confidence-only metrics keep the whole pool).
    n_samples = np.array(table.column("n_samples").to_pylist(), dtype=np.float64) if "n_samples" in table.column_names else None
    full_k = None
    if n_samples is not None and len(n_samples) and np.nanmin(n_samples) < np.nanmax(n_samples):
        full_k = n_samples == np.nanmax(n_samples)
        report["variable_k"] = {
            "max_samples": int(np.nanmax(n_samples)),
            "rows_below_max": int((~full_k).sum()),
            "note": "metrics that use the samples are ranked on the pool's fully sampled rows only",
        }
    whole_pool = pool
    if bootstrap > 0:
        report["bootstrap"] = {
            "draws": bootstrap,
            "seed": seed,
            "level": LEVEL,
            "method": "percentile intervals; pool rows resampled with replacement, the same resamples for every metric, so differences are paired",
        }
        report["pool"]["accuracy_ci"] = proportion_interval(correct[pool], bootstrap, seed)
        for part, rows in (("all", labelled), ("pool", pool), ("kept", kept & labelled)):
            report["kept_vs_all"][part]["accuracy_ci"] = proportion_interval(correct[rows], bootstrap, seed)
    # One set of resamples per pool, so that metrics ranked on the same rows are paired; with
    # variable K the sample-based metrics have a smaller pool than the confidence-only ones.
    resamples_by_pool: dict[str, Resamples] = {}
    pool_of: dict[str, str] = {}
    draws: dict[str, dict[str, np.ndarray]] = {}
    for name, column in values.items():
        pool_key = "fully_sampled" if full_k is not None and "samples" in METRICS[name].requires else "pool"
        pool = whole_pool & full_k if pool_key == "fully_sampled" else whole_pool
        if bootstrap > 0 and pool_key not in resamples_by_pool:
            resamples_by_pool[pool_key] = Resamples.draw(int(pool.sum()), bootstrap, seed)
        resamples = resamples_by_pool.get(pool_key)
        pool_of[name] = pool_key
        uncertainty, tiebreak = selection_keys(name, values)
        u, t = uncertainty[pool], (tiebreak[pool] if tiebreak is not None else None)
        entry: dict = {
            "n": int(pool.sum()),
            "undefined": int((~np.isfinite(u)).sum()),
            "tiebreak": METRICS[name].tiebreak,
            "higher_is_better": METRICS[name].higher_is_better,
            "auroc": auroc(u, wrong[pool], t),
            **{f"prr_{key}" if key != "prr" else "prr": value for key, value in prr(u, correct[pool], t).items()},
        }
        per_class = {}
        for label in classes:
            rows = answers[pool] == label
            if rows.any():
                per_class[label] = {
                    "n": int(rows.sum()),
                    "accuracy": float(correct[pool][rows].mean()),
                    "auroc": auroc(u[rows], wrong[pool][rows], t[rows] if t is not None else None),
                    "prr": prr(u[rows], correct[pool][rows], t[rows] if t is not None else None)["prr"],
                }
        entry["per_class"] = per_class
        curve = selective_accuracy(u, correct[pool], t)
        points = np.unique(np.linspace(1, len(curve), min(CURVE_POINTS, len(curve))).round().astype(int)) if len(curve) else np.zeros(0, dtype=int)
        entry["selective_accuracy"] = {"fraction": (points / max(len(curve), 1)).tolist(), "accuracy": curve[points - 1].tolist()}
        if resamples is not None and len(curve):
            ranks = ranking(u, t)
            draws[name] = {"auroc": auroc_draws(ranks, wrong[pool], resamples), "prr": prr_draws(ranks, correct[pool], resamples)}
            entry["auroc_ci"], entry["prr_ci"] = interval(draws[name]["auroc"]), interval(draws[name]["prr"])
            band = np.percentile(selective_accuracy_draws(ranks, correct[pool], resamples, points), [100 * (1 - LEVEL) / 2, 100 * (1 + LEVEL) / 2], axis=0)
            entry["selective_accuracy"]["low"], entry["selective_accuracy"]["high"] = band[0].tolist(), band[1].tolist()
        # Stoisser et al.: the same budget spent per predicted class or under one global threshold
        comparison = {}
        for fraction in fractions:
            comparison[str(fraction)] = {}
            for strategy in ("per_class", "global"):
                chosen = select(ids[pool], answers[pool], uncertainty[pool], t, SelectConfig(strategy=strategy, fraction=fraction)).kept
                scores = classification_scores(labels[pool][chosen], answers[pool][chosen], classes)
                scores["kept_per_class"] = {label: int((answers[pool][chosen] == label).sum()) for label in classes}
                if resamples is not None:
                    scores["accuracy_ci"] = proportion_interval(correct[pool][chosen], bootstrap, seed)
                comparison[str(fraction)][strategy] = scores
        entry["selection"] = comparison
        report["metrics"][name] = entry
    if draws:
        report["comparisons"] = paired_comparisons(draws, report, bootstrap, pool_of)
    pool = whole_pool
    oracle = np.sort(correct[pool].astype(float))[::-1]
    report["oracle_selective_accuracy"] = (np.cumsum(oracle) / np.arange(1, len(oracle) + 1)).tolist()[:: max(1, len(oracle) // CURVE_POINTS)]

    if write:
        (run_dir / EVAL_DIR).mkdir(parents=True, exist_ok=True)
        plot_selective_accuracy(report, correct[pool], run_dir / CURVES_PLOT)
        plot_histograms(values, answers, correct, pool, classes, run_dir / HISTOGRAM_PLOT)
        plot_strategies(report, run_dir / STRATEGY_PLOT)
        report["plots"] = [p for p in (CURVES_PLOT, HISTOGRAM_PLOT, STRATEGY_PLOT) if (run_dir / p).exists()]
        publish.write_text_atomic(run_dir / REPORT_FILE, json.dumps(report, indent=2, default=_json_default) + "\n")
        if card:
            publish.add_card_section(run_dir, CARD_SECTION, card_section(report))
    return report


RANDOM = "random"


def paired_comparisons(draws: dict[str, dict[str, np.ndarray]], report: dict, n_draws: int, pool_of: dict[str, str] | None = None) -> list[dict]:
    """ΔPRR and ΔAUROC with paired bootstrap intervals: every metric against random, and the
    selection metric against every other metric. A difference whose interval excludes 0 is one
    the pool's size can tell apart from chance.

    `random` is ranked by a constant (every order equally likely), so its PRR is exactly 0 and its
    AUROC exactly 0.5 on every resample: "m vs random" is m's own interval, said as a comparison.
    Two metrics ranked on different pools (``pool_of``; variable K) share no resamples, so that
    pair is not compared.
    """
    pool_of = pool_of or {}
    baseline = {"auroc": np.full(n_draws, 0.5), "prr": np.zeros(n_draws)}
    table = {**draws, RANDOM: baseline}
    point = {name: {"auroc": e["auroc"], "prr": e["prr"]} for name, e in report["metrics"].items()}
    point[RANDOM] = {"auroc": 0.5, "prr": 0.0}
    pairs = [(name, RANDOM) for name in draws]
    chosen = report.get("selection_metric")
    if chosen in draws:
        pairs += [(chosen, other) for other in draws if other != chosen and pool_of.get(other) == pool_of.get(chosen)]
    out = []
    for a, b in pairs:
        row = {"a": a, "b": b}
        for key in ("prr", "auroc"):
            pa, pb = point[a][key], point[b][key]
            row[f"delta_{key}"] = None if pa is None or pb is None else float(pa - pb)
            row[f"delta_{key}_ci"] = interval(table[a][key] - table[b][key])
        ci = row["delta_prr_ci"]
        row["verdict"] = "not distinguishable" if ci is None or ci[0] <= 0 <= ci[1] else (f"{a} better" if ci[0] > 0 else f"{b} better")
        out.append(row)
    return out


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# --------------------------------------------------------------------------- outputs
def _fmt(value, digits: int = 3) -> str:
    return "–" if value is None or (isinstance(value, float) and not np.isfinite(value)) else f"{value:.{digits}f}"


def _fmt_ci(value, ci, digits: int = 3, signed: bool = False) -> str:
    """``0.712 [0.650, 0.770]``: a point estimate with its bootstrap interval, when there is one."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    text = f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
    if ci:
        text += f" [{ci[0]:+.{digits}f}, {ci[1]:+.{digits}f}]" if signed else f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"
    return text


def card_section(report: dict) -> str:
    """Markdown for the dataset card: one row per metric, the kept subset against all rows, the plots."""
    kept, everything = report["kept_vs_all"]["kept"], report["kept_vs_all"]["all"]
    fraction = report["fractions"][0] if report["fractions"] else None
    lines = [
        f"Computed by `curate eval` on the {report['labelled']} labelled rows; labels were never used to select. "
        f"Metrics are ranked on the {report['pool']['n']} rows with a parsed answer (accuracy {_fmt(report['pool']['accuracy'])}). "
        "AUROC: how well the uncertainty detects wrong answers (0.5 = chance). PRR: LM-Polygraph's prediction-rejection ratio "
        "(0 = random, 1 = oracle). Selection: accuracy / macro-F1 when keeping the least uncertain "
        + (f"{fraction:.0%} " if fraction else "")
        + "per predicted class against one global threshold (Stoisser et al. 2025).",
        "",
        "| metric | AUROC | PRR | per-class acc / macro-F1 | global acc / macro-F1 |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, entry in report["metrics"].items():
        marker = " (selection)" if name == report["selection_metric"] else ""
        sel = entry["selection"].get(str(fraction), {})
        pc, gl = sel.get("per_class", {}), sel.get("global", {})
        lines.append(
            f"| `{name}`{marker} | {_fmt_ci(entry['auroc'], entry.get('auroc_ci'))} | {_fmt_ci(entry['prr'], entry.get('prr_ci'))} "
            f"| {_fmt_ci(pc.get('accuracy'), pc.get('accuracy_ci'))} / {_fmt(pc.get('macro_f1'))} "
            f"| {_fmt_ci(gl.get('accuracy'), gl.get('accuracy_ci'))} / {_fmt(gl.get('macro_f1'))} |"
        )
    lines += [
        "",
        f"Kept subset ({kept['n']} labelled rows): accuracy {_fmt_ci(kept['accuracy'], kept.get('accuracy_ci'))}, macro-F1 {_fmt(kept['macro_f1'])}; "
        f"all {everything['n']} labelled rows: accuracy {_fmt_ci(everything['accuracy'], everything.get('accuracy_ci'))}, macro-F1 {_fmt(everything['macro_f1'])} "
        "(an unparsed answer counts as wrong).",
        "",
    ]
    if report.get("comparisons"):
        boot = report["bootstrap"]
        lines += [
            f"Brackets: {boot['level']:.0%} bootstrap intervals ({boot['draws']} resamples of the pool, seed {boot['seed']}). "
            "Paired comparisons on the same resamples (an interval that excludes 0 is a difference this many questions can show):",
            "",
            "| comparison | ΔPRR | ΔAUROC | verdict |",
            "| --- | --- | --- | --- |",
        ]
        for row in report["comparisons"]:
            lines.append(
                f"| `{row['a']}` vs `{row['b']}` | {_fmt_ci(row['delta_prr'], row['delta_prr_ci'], signed=True)} "
                f"| {_fmt_ci(row['delta_auroc'], row['delta_auroc_ci'], signed=True)} | {row['verdict']} |"
            )
        lines.append("")
    for plot in report.get("plots", []):
        lines.append(f"![{Path(plot).stem}]({plot})")
    return "\n".join(lines).rstrip() + "\n"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_selective_accuracy(report: dict, correct: np.ndarray, path: Path) -> bool:
    """Selective accuracy against the fraction kept, one curve per metric, with oracle and random."""
    if not report["metrics"] or not len(correct):
        return False
    plt = _pyplot()
    fig, axis = plt.subplots(figsize=(7, 4.5))
    cmap = plt.get_cmap("tab20")
    for i, (name, entry) in enumerate(report["metrics"].items()):
        curve = entry["selective_accuracy"]
        width = 2.4 if name == report["selection_metric"] else 1.3
        axis.plot(curve["fraction"], curve["accuracy"], label=f"{name} (PRR {_fmt(entry['prr'], 2)})", color=cmap(i % 20), linewidth=width)
        if name == report["selection_metric"] and "low" in curve:  # one band: several overlapping ones hide the curves
            axis.fill_between(curve["fraction"], curve["low"], curve["high"], color=cmap(i % 20), alpha=0.2, linewidth=0, label=f"{name}: 95% bootstrap band")
    n = len(correct)
    oracle = np.cumsum(np.sort(correct.astype(float))[::-1]) / np.arange(1, n + 1)
    axis.plot(np.arange(1, n + 1) / n, oracle, color="black", linestyle="--", linewidth=1, label="oracle")
    axis.axhline(correct.mean(), color="grey", linestyle=":", linewidth=1, label="random")
    axis.set_xlabel("fraction kept (least uncertain first)")
    axis.set_ylabel("accuracy of the kept rows")
    axis.set_xlim(0, 1)
    axis.set_ylim(-0.02, 1.02)
    axis.set_title(f"{report['run']}: selective accuracy (n={n})")
    axis.legend(fontsize=7, loc="lower left", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_histograms(values: dict, answers: np.ndarray, correct: np.ndarray, pool: np.ndarray, classes: list[str], path: Path) -> bool:
    """Histograms of each metric's uncertainty per predicted class, right and wrong answers apart."""
    from curation.score import METRICS

    present = [c for c in classes if (answers[pool] == c).any()]
    if not values or not present:
        return False
    plt = _pyplot()
    names = list(values)
    fig, axes = plt.subplots(len(names), len(present), figsize=(3.2 * len(present), 1.9 * len(names)), squeeze=False)
    for r, name in enumerate(names):
        u = METRICS[name].uncertainty(values[name])
        finite = pool & np.isfinite(u)
        bins = np.linspace(u[finite].min(), u[finite].max() if np.ptp(u[finite]) > 0 else u[finite].min() + 1, 16) if finite.any() else 10
        for c, label in enumerate(present):
            axis = axes[r][c]
            rows = finite & (answers == label)
            axis.hist(u[rows & correct], bins=bins, color="#2b8a3e", alpha=0.7, label="right")
            axis.hist(u[rows & ~correct], bins=bins, color="#c92a2a", alpha=0.5, label="wrong")
            if r == 0:
                axis.set_title(f"{label} (n={int((pool & (answers == label)).sum())})", fontsize=9)
            if c == 0:
                axis.set_ylabel(name if not METRICS[name].higher_is_better else f"{name}\n(5 - grade)", fontsize=8)
            axis.tick_params(labelsize=7)
    axes[0][-1].legend(fontsize=7)
    fig.suptitle("uncertainty per predicted class (higher = more uncertain)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_strategies(report: dict, path: Path) -> bool:
    """Accuracy and macro-F1 of per-class against global selection at the first budget fraction."""
    if not report["metrics"] or not report["fractions"]:
        return False
    fraction = str(report["fractions"][0])
    plt = _pyplot()
    names = list(report["metrics"])
    x = np.arange(len(names))
    fig, axes = plt.subplots(1, 2, figsize=(max(7, 0.9 * len(names) + 3), 3.8), sharey=True)
    for axis, key in zip(axes, ("accuracy", "macro_f1")):
        for offset, strategy, color in ((-0.2, "per_class", "#ff9d00"), (0.2, "global", "#4c6ef5")):
            heights = [report["metrics"][n]["selection"][fraction][strategy][key] or 0.0 for n in names]
            axis.bar(x + offset, heights, width=0.4, color=color, label=strategy.replace("_", "-"))
        axis.axhline(report["kept_vs_all"]["pool"][key] or 0.0, color="grey", linestyle=":", linewidth=1, label="no filter")
        axis.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
        axis.set_title(f"{key.replace('_', '-')} keeping {float(fraction):.0%}", fontsize=10)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------- cli
def add_cli(sub) -> None:
    p = sub.add_parser("eval", help="measure how well each metric separates right from wrong answers (needs labels)")
    p.add_argument("run_dir", nargs="?", help="run folder (with a label column, from source.label_column); optional with --model")
    p.add_argument("--fractions", help="comma-separated budgets for the per-class vs global comparison (default 0.1,0.25,0.5 and the recipe's)")
    p.add_argument("--no-card", action="store_true", help="do not add the results section to the run's card")
    p.add_argument("--bootstrap", type=int, default=DEFAULT_DRAWS, metavar="N", help=f"resamples for the 95%% intervals and paired comparisons (default {DEFAULT_DRAWS}; 0: none)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the bootstrap resamples (default 0)")
    p.add_argument("--model", metavar="ADAPTER_DIR", help="instead, evaluate a trained adapter's answers on the labelled rows (curate train output)")
    p.add_argument("--split", help="with --model: split to evaluate on")
    p.add_argument("--limit", type=int, help="with --model: evaluate at most this many rows")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args) -> int:
    if getattr(args, "model", None):
        from curation.model_eval import evaluate_adapter

        result = evaluate_adapter(args)
        return result if isinstance(result, int) else 0
    if not args.run_dir:
        raise ValueError("give a run folder, or --model ADAPTER_DIR to evaluate a trained adapter")
    fractions = [float(f) for f in args.fractions.split(",")] if args.fractions else None
    if args.bootstrap < 0:
        raise ValueError("--bootstrap must be 0 (no intervals) or a number of resamples")
    report = evaluate_run(args.run_dir, fractions=fractions, card=not args.no_card, bootstrap=args.bootstrap, seed=args.seed)
    print(summary_text(report, Path(args.run_dir)))
    return 0


def summary_text(report: dict, run_dir: Path) -> str:
    kept, everything = report["kept_vs_all"]["kept"], report["kept_vs_all"]["all"]
    fraction = str(report["fractions"][0]) if report["fractions"] else None
    lines = [
        f"eval: {report['labelled']} labelled rows, {report['pool']['n']} with a parsed answer (accuracy {_fmt(report['pool']['accuracy'])})",
        f"kept {kept['n']}: accuracy {_fmt_ci(kept['accuracy'], kept.get('accuracy_ci'))}, macro-F1 {_fmt(kept['macro_f1'])}   "
        f"all: accuracy {_fmt_ci(everything['accuracy'], everything.get('accuracy_ci'))}, macro-F1 {_fmt(everything['macro_f1'])}",
        f"{'metric':<22} {'AUROC [95% CI]':>22} {'PRR [95% CI]':>23}   keep {float(fraction):.0%}: per-class acc  global acc" if fraction else "",
    ]
    for name, entry in report["metrics"].items():
        sel = entry["selection"].get(fraction, {}) if fraction else {}
        marker = "*" if name == report["selection_metric"] else " "
        lines.append(
            f"{marker}{name:<21} {_fmt_ci(entry['auroc'], entry.get('auroc_ci')):>22} {_fmt_ci(entry['prr'], entry.get('prr_ci')):>23}   "
            f"{_fmt(sel.get('per_class', {}).get('accuracy')):>22} {_fmt(sel.get('global', {}).get('accuracy')):>11}"
        )
    if report.get("comparisons"):
        lines.append(f"paired bootstrap ({report['bootstrap']['draws']} resamples, seed {report['bootstrap']['seed']}):")
        for row in report["comparisons"]:
            lines.append(
                f"  {row['a']} vs {row['b']}: ΔPRR = {_fmt_ci(row['delta_prr'], row['delta_prr_ci'], signed=True)}, "
                f"ΔAUROC = {_fmt_ci(row['delta_auroc'], row['delta_auroc_ci'], signed=True)} ({row['verdict']})"
            )
    lines.append(f"report: {run_dir / REPORT_FILE}")
    for plot in report.get("plots", []):
        lines.append(f"plot: {run_dir / plot}")
    return "\n".join(line for line in lines if line)
