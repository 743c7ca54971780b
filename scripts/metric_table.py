"""Which uncertainty measure separates right answers from wrong ones, on every study task, for every measure curate has.

    .venv/bin/python scripts/metric_table.py          # rescore + evaluate every study run folder that exists
    .venv/bin/python scripts/metric_table.py --no-rescore

For each scored run folder (`make study`, `make mini-study`; runs/ is not committed) it rescores
the journal with every measure that needs no extra model (`pipeline.rescore` with `score.metrics`
listing them; no generation; `p_true` needs a `scorer:` model and the critic a judge, so they are left out) and `curate eval` (1,000 bootstrap resamples), then tabulates per measure the AUROC for
finding wrong answers, the PRR, and the accuracy of the most certain 25% of each predicted class,
each with its 95% interval. Writes results/metric_table.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from curation.eval.study import REPO

TASKS = {
    "m49-study": "UN M49 regions",
    "elements-study": "element families",
    "mini-study-k562": "PerturbQA K562 (mini study)",
    "mini-study-rpe1": "PerturbQA RPE1 (mini study)",
}


def ci(value, interval) -> str:
    if value is None:
        return "—"
    return f"{value:.3f}" + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")


def table(report: dict) -> list[str]:
    pool = report["pool"]
    lines = [
        f"{pool['n']} ranked labelled questions, accuracy {pool['accuracy']:.3f}{' [%.3f, %.3f]' % tuple(pool['accuracy_ci']) if pool.get('accuracy_ci') else ''}; "
        f"selection metric `{report['selection_metric']}`.",
        "",
        "| measure | AUROC [95% CI] | PRR [95% CI] | kept 25% per class: accuracy [95% CI] | separates? |",
        "|---|---|---|---|---|",
    ]
    # a measure undefined on every question (verbalized_confidence where no trace states a confidence) ranks nothing
    undefined = sorted(name for name, entry in report["metrics"].items() if entry.get("undefined") == entry.get("n"))
    rows = sorted(((n, e) for n, e in report["metrics"].items() if n not in undefined), key=lambda item: -(item[1]["auroc"] if item[1]["auroc"] is not None else 0))
    for name, entry in rows:
        sel = entry.get("selection", {}).get("0.25", {}).get("per_class", {})
        low = (entry.get("auroc_ci") or [None])[0]
        verdict = "yes" if low is not None and low > 0.5 else ("inverted" if entry.get("auroc_ci") and entry["auroc_ci"][1] < 0.5 else "no (interval contains 0.5)")
        lines.append(f"| `{name}` | {ci(entry['auroc'], entry.get('auroc_ci'))} | {ci(entry['prr'], entry.get('prr_ci'))} | {ci(sel.get('accuracy'), sel.get('accuracy_ci'))} | {verdict} |")
    if undefined:
        lines += ["", "Undefined on every question, so not ranked: " + ", ".join(f"`{n}`" for n in undefined)
                  + " (these prompts ask for no stated confidence, so no trace carries one)."]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="*", type=Path, default=[REPO / "runs" / name for name in TASKS])
    parser.add_argument("--no-rescore", action="store_true")
    args = parser.parse_args()
    cli = [sys.executable, "-m", "curation.cli"]
    out, lines = {}, ["# Which measure separates right from wrong answers (every measure, every study task)", "",
                      "`scripts/metric_table.py`: `curate score` (no generation) then `curate eval` (1,000 bootstrap resamples) on each run "
                      "folder. AUROC: finding wrong answers (0.5 = chance). PRR: LM-Polygraph's prediction-rejection ratio (0 = random, 1 = oracle). "
                      "A measure separates only if its AUROC interval excludes 0.5.", ""]
    for run in args.runs:
        if not (run / "stats.json").exists():
            continue
        if not args.no_rescore:
            # every measure that needs no model beyond the run's own similarity (p_true needs a scorer: model; the critic a judge)
            from curation.pipeline import rescore
            from curation.score import METRICS

            rescore(run, {"score": {"metrics": [name for name in METRICS if name not in ("critic", "p_true")]}}, show_progress=False)
        subprocess.run([*cli, "eval", str(run), "--fractions", "0.25"], check=True, stdout=subprocess.DEVNULL)
        report = json.loads((run / "eval" / "report.json").read_text())
        out[run.name] = {name: {k: entry.get(k) for k in ("auroc", "auroc_ci", "prr", "prr_ci")} for name, entry in report["metrics"].items()}
        lines += [f"## {TASKS.get(run.name, run.name)} (`{run.name}`)", "", *table(report), ""]
    (REPO / "results" / "metric_table.json").write_text(json.dumps(out, indent=1) + "\n")
    (REPO / "results" / "metric_table.md").write_text("\n".join(lines) + "\n")
    print("wrote results/metric_table.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
