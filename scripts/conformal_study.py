"""Does the conformal guarantee hold on the study's tasks, and what does it keep? (issue 30; results/conformal_study.md)

    .venv/bin/python scripts/conformal_study.py                      # every run folder below that exists
    .venv/bin/python scripts/conformal_study.py --draws 500 --runs runs/m49-study runs/elements-study

For each scored run folder (made by `make study` / `make mini-study`; runs/ is not committed), the
labelled questions that selection ranks (readable answers that pass the pre-filters, as
select.PRE_FILTERS) are split at random, `--draws` times, into a calibration set of n questions and a
pool of the rest. On each split the recipe's metric, ranked by (uncertainty, tie-break) as curate
ranks it, gives conformal p-values against the calibration set, and Benjamini-Hochberg keeps a set of
the pool (curation.conformal.select_by_class, the code `select.strategy: conformal` runs). The pool's
labels then give that split's realized share of wrong answers among the kept (FDP, 0 when nothing is
kept). The guarantee is on the mean over splits: mean FDP <= level. Reported with its Monte Carlo
standard error, next to the fixed-fraction selection (the most certain 25% of each predicted class of
the same pool), and with the learned score (calibrate.learn: half the labels fit it).

No generation: it reads the scored split only. Writes results/conformal_study.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from curation import conformal
from curation.eval.study import REPO, labelled_rows
from curation.score import selection_keys
from curation.select import PRE_FILTERS

SIZES = (25, 50, 100)
LEVELS = (0.1, 0.2, 0.3)
FIXED_FRACTION = 0.25
TASKS = {
    "m49-study": "UN M49 regions",
    "elements-study": "element families",
    "mini-study-k562": "PerturbQA K562 (mini study)",
    "mini-study-rpe1": "PerturbQA RPE1 (mini study)",
}


def ranked_rows(run_dir: Path) -> dict:
    """The questions selection ranks, with their order score, predicted class, wrong flag and every metric."""
    from curation.run_folder import RunFolder

    rows = labelled_rows(run_dir)
    table = RunFolder(run_dir).read_split("scored")
    reasons = np.array(table.column("drop_reason").to_pylist(), dtype=object)
    stats = RunFolder(run_dir).stats()
    metric = stats["metric"]
    usable = rows.pool & np.array([r is None or r not in PRE_FILTERS for r in reasons], dtype=bool)
    uncertainty, tiebreak = selection_keys(metric, rows.values)
    usable &= np.isfinite(uncertainty)
    index = np.flatnonzero(usable)
    return {
        "metric": metric,
        "scores": conformal.order_scores(uncertainty[index], None if tiebreak is None else tiebreak[index]),
        "predicted": rows.answers[index].astype(str).astype(object),
        "wrong": ~rows.correct[index],
        "features": {name: values[index] for name, values in rows.values.items() if name != "critic"},
        "n": len(index),
    }


def fixed_fraction(scores, predicted, pool) -> np.ndarray:
    kept = np.zeros(len(scores), dtype=bool)
    for label in set(predicted[pool]):
        rows = np.flatnonzero(pool & (predicted == label))
        ordered = rows[np.argsort(scores[rows], kind="stable")]
        kept[ordered[: int(np.ceil(FIXED_FRACTION * len(rows)))]] = True
    return kept


def fdp(kept, wrong) -> float:
    return float(wrong[kept].mean()) if kept.any() else 0.0


def one_setting(data: dict, n_cal: int, level: float, scope: str, draws: int, learned: bool, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    n, wrong, predicted = data["n"], data["wrong"], data["predicted"]
    fdps, kept_counts, fixed_fdps, fixed_counts, used_learned = [], [], [], [], 0
    classes = sorted(set(predicted))
    class_fdps = {label: [] for label in classes}
    for _ in range(draws):
        order = rng.permutation(n)
        calibration = np.zeros(n, dtype=bool)
        calibration[order[:n_cal]] = True
        pool = ~calibration
        scores = data["scores"]
        if learned:  # half the labels fit the score (only where it beats the metric in CV on them), half calibrate
            fit = np.zeros(n, dtype=bool)
            fit[order[: n_cal // 2]] = True
            calibration &= ~fit
            features = {k: v[fit] for k, v in data["features"].items()}
            cv = conformal.cross_validated_auroc(features, wrong[fit], seed)
            metric_auroc = conformal.auroc(scores[fit], wrong[fit]) if fit.any() else None
            if cv is not None and metric_auroc is not None and cv > metric_auroc:
                model = conformal.fit_learned(features, wrong[fit], seed)
                if model is not None:
                    scores, used_learned = model.predict(data["features"]), used_learned + 1
        kept, _, _ = conformal.select_by_class(scores, predicted, pool, calibration, wrong, level, scope)
        fdps.append(fdp(kept, wrong))
        kept_counts.append(int(kept.sum()))
        for label in classes:
            class_fdps[label].append(fdp(kept & (predicted == label), wrong))
        baseline = fixed_fraction(data["scores"], predicted, pool)
        fixed_fdps.append(fdp(baseline, wrong))
        fixed_counts.append(int(baseline.sum()))
    fdps = np.array(fdps)
    return {
        "n_cal": n_cal, "level": level, "scope": scope, "score": "learned" if learned else "metric", "draws": draws,
        "mean_fdp": float(fdps.mean()), "mc_se": float(fdps.std(ddof=1) / np.sqrt(draws)),
        "share_of_draws_over_level": float((fdps > level).mean()),
        # the per_class scope bounds each class's mean FDP: the worst class's mean, with its MC error
        "worst_class_mean_fdp": max(((float(np.mean(v)), float(np.std(v, ddof=1) / np.sqrt(draws)), label) for label, v in class_fdps.items()), default=(0.0, 0.0, None)),
        "mean_kept": float(np.mean(kept_counts)), "share_of_draws_keeping_any": float(np.mean(np.array(kept_counts) > 0)),
        "fixed_fraction_mean_fdp": float(np.mean(fixed_fdps)), "fixed_fraction_mean_kept": float(np.mean(fixed_counts)),
        **({"share_of_draws_using_learned": used_learned / draws} if learned else {}),
    }


def study(run_dir: Path, draws: int, seed: int) -> dict:
    data = ranked_rows(run_dir)
    out = {"run": run_dir.name, "metric": data["metric"], "ranked_labelled": data["n"], "pool_wrong_share": float(data["wrong"].mean()),
           "auroc": conformal.auroc_with_interval(data["scores"], data["wrong"]), "settings": []}
    for n_cal in SIZES:
        if n_cal >= data["n"] - 10:
            continue
        for level in LEVELS:
            for scope in ("per_class", "overall"):
                out["settings"].append(one_setting(data, n_cal, level, scope, draws, False, seed))
            if n_cal >= 50:  # half of 25 labels leaves too few to calibrate a class at these levels
                for scope in ("per_class", "overall"):
                    out["settings"].append(one_setting(data, n_cal, level, scope, max(200, draws // 2), True, seed))
    return out


def plot(results: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * len(results), 3.6))
    axes = fig.subplots(1, len(results), squeeze=False)[0]
    for axis, task in zip(axes, results):
        for n_cal, colour in zip(SIZES, ("tab:blue", "tab:orange", "tab:green")):
            # per_class: what it bounds, each class's mean FDP (the worst class); overall: the whole split's
            for scope, style, key in (("per_class", "-", "worst_class_mean_fdp"), ("overall", "--", None)):
                rows = [s for s in task["settings"] if s["n_cal"] == n_cal and s["scope"] == scope and s["score"] == "metric"]
                if rows:
                    means = [s[key][0] if key else s["mean_fdp"] for s in rows]
                    errors = [1.96 * (s[key][1] if key else s["mc_se"]) for s in rows]
                    axis.errorbar([s["level"] for s in rows], means, yerr=errors, marker="o", linestyle=style, color=colour, capsize=3,
                                  label=f"n = {n_cal}, {'worst class' if key else 'overall'}")
        axis.plot([0, 0.35], [0, 0.35], color="grey", linestyle=":", label="level")
        axis.axhline(task["pool_wrong_share"], color="red", linewidth=0.8, linestyle="--", label="pool's wrong share")
        axis.set_title(f"{TASKS.get(task['run'], task['run'])}\n{task['metric']}: per_class (solid, worst class) and overall (dashed)", fontsize=8)
        axis.set_xlabel("FDR level asked")
        axis.set_ylabel("mean realized share wrong among kept")
        axis.set_xlim(0, 0.35)
        axis.set_ylim(0, max(0.4, task["pool_wrong_share"] + 0.05))
        axis.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(results: list[dict], draws: int, seconds: float, picture: str = "conformal_study.png") -> str:
    lines = [
        "# Conformal selection on the study's tasks: does the guarantee hold, and what does it keep?",
        "",
        f"`scripts/conformal_study.py` ({draws} random calibration/pool splits per setting, {max(200, draws // 2)} with the learned score; "
        f"{seconds:.0f} s, no generation). Each split holds out n labelled questions as calibration and selects from the rest with "
        "`select.strategy: conformal`'s code; the rest's labels give the split's realized share of wrong answers among the kept (0 when "
        "nothing is kept). The guarantee bounds the **mean** over splits: with scope `overall` the whole split's, with `per_class` each "
        "class's (the worst class is shown; the whole split's mean may exceed the level there, as documented). `± ` is 1.96 Monte Carlo standard errors. "
        f"`fixed 25%` is today's default selection (the most certain 25% of each predicted class of the same pool).",
        "",
        f"![realized FDR against the level]({picture})",
        "",
    ]
    for task in results:
        a = task["auroc"]
        ci = f" [{a['interval'][0]:.3f}, {a['interval'][1]:.3f}]" if a["interval"] else ""
        lines += [
            f"## {TASKS.get(task['run'], task['run'])} (`{task['run']}`)",
            "",
            f"{task['ranked_labelled']} ranked labelled questions, {task['pool_wrong_share']:.3f} of them wrong; `{task['metric']}` AUROC "
            f"{a['auroc']:.3f}{ci} over all of them.",
            "",
            "| n cal | level | scope | score | mean realized FDP ± MC (whole split) | worst class: mean FDP ± MC | mean kept | splits keeping any | fixed 25%: mean FDP, kept |",
            "|---:|---:|---|---|---|---|---:|---:|---|",
        ]
        for s in task["settings"]:
            learned = f" ({s['share_of_draws_using_learned']:.0%} used it)" if "share_of_draws_using_learned" in s else ""
            lines.append(
                f"| {s['n_cal']} | {s['level']} | {s['scope']} | {s['score']}{learned} | {s['mean_fdp']:.3f} ± {1.96 * s['mc_se']:.3f} "
                f"| {s['worst_class_mean_fdp'][0]:.3f} ± {1.96 * s['worst_class_mean_fdp'][1]:.3f} ({s['worst_class_mean_fdp'][2]}) | {s['mean_kept']:.1f} | {s['share_of_draws_keeping_any']:.2f} "
                f"| {s['fixed_fraction_mean_fdp']:.3f}, {s['fixed_fraction_mean_kept']:.0f} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="*", type=Path, default=[REPO / "runs" / name for name in TASKS])
    parser.add_argument("--draws", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "results" / "conformal_study")
    parser.add_argument("--replot", action="store_true", help="redraw OUT.png from OUT.json; computes nothing")
    args = parser.parse_args()
    if args.replot:
        plot(json.loads(Path(f"{args.out}.json").read_text())["tasks"], Path(f"{args.out}.png"))
        return 0
    begun = time.monotonic()
    runs = [r for r in args.runs if (r / "stats.json").exists()]
    if not runs:
        raise SystemExit("no scored run folder found: run `make study` and `make mini-study` first (runs/ is not committed)")
    results = [study(run, args.draws, args.seed) for run in runs]
    seconds = time.monotonic() - begun
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps({"draws": args.draws, "seed": args.seed, "tasks": results}, indent=1) + "\n")
    plot(results, Path(f"{args.out}.png"))
    Path(f"{args.out}.md").write_text(markdown(results, args.draws, seconds, f"{args.out.name}.png") + "\n")
    print(f"wrote {args.out}.md, .json, .png in {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
