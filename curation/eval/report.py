"""The outputs of `curate eval` on a run folder: eval/report.json, its plots, the card section and the printed summary.

``curation.eval.run`` computes the report (a dict); this module only renders and writes it, so the
numbers have one source and every rendering reads the same dict.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from curation.run_folder import EVAL_CURVES_PLOT, EVAL_HISTOGRAM_PLOT, EVAL_REPORT_FILE, EVAL_STRATEGY_PLOT, RunFolder

CARD_SECTION = "Evaluation against labels"


def write_outputs(run_dir: Path, report: dict, values: dict, answers: np.ndarray, correct: np.ndarray, pool: np.ndarray, card: bool) -> None:
    """The plots, eval/report.json (with the plots it lists) and, with ``card``, the card's results section."""
    from curation import dataset_card

    RunFolder(run_dir).eval_dir.mkdir(parents=True, exist_ok=True)
    plot_selective_accuracy(report, correct[pool], run_dir / EVAL_CURVES_PLOT)
    plot_histograms(values, answers, correct, pool, report["classes"], run_dir / EVAL_HISTOGRAM_PLOT)
    plot_strategies(report, run_dir / EVAL_STRATEGY_PLOT)
    report["plots"] = [p for p in (EVAL_CURVES_PLOT, EVAL_HISTOGRAM_PLOT, EVAL_STRATEGY_PLOT) if (run_dir / p).exists()]
    dataset_card.write_text_atomic(run_dir / EVAL_REPORT_FILE, json.dumps(report, indent=2, default=_json_default) + "\n")
    if card:
        dataset_card.add_card_section(run_dir, CARD_SECTION, card_section(report))


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


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
    used = "the calibration questions' labels chose the kept set and are not counted here" if report.get("fdr") else "labels were never used to select"
    lines = [
        f"Computed by `curate eval` on the {report['labelled']} labelled rows; {used}. "
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
    if report.get("fdr"):
        lines += [fdr_line(report["fdr"]), ""]
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


def fdr_line(fdr: dict) -> str:
    """The realized share of wrong answers among the kept, with held-out labels, next to the level asked for."""
    return (
        f"Conformal selection at level {fdr['level']} ({fdr['scope']}): of the {fdr['kept_labelled']} kept rows with a held-out label, "
        f"{_fmt_ci(fdr['wrong_share'], fdr.get('interval'))} are wrong. The level bounds the expected share over draws of "
        "calibration and pool, so one run's share can exceed it."
    )


def summary_text(report: dict, run_dir: Path) -> str:
    """What `curate eval` prints: the pool, kept against all, one line per metric, the paired comparisons, the files."""
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
    if report.get("fdr"):
        lines.append(fdr_line(report["fdr"]))
    if report.get("comparisons"):
        lines.append(f"paired bootstrap ({report['bootstrap']['draws']} resamples, seed {report['bootstrap']['seed']}):")
        for row in report["comparisons"]:
            lines.append(
                f"  {row['a']} vs {row['b']}: ΔPRR = {_fmt_ci(row['delta_prr'], row['delta_prr_ci'], signed=True)}, "
                f"ΔAUROC = {_fmt_ci(row['delta_auroc'], row['delta_auroc_ci'], signed=True)} ({row['verdict']})"
            )
    lines.append(f"report: {run_dir / EVAL_REPORT_FILE}")
    for plot in report.get("plots", []):
        lines.append(f"plot: {run_dir / plot}")
    return "\n".join(line for line in lines if line)
