"""The study's answer across tasks: results/study_summary.md and results/study_answer.png.

    python scripts/study_summary.py        # rebuild from results/*_study.json and results/mini_study.json

scripts/study.py calls it after every task it writes, so the summary always matches the per-task
reports it is made from. Two tables and one plot:

- held-out test accuracy of every model (base, the teacher's own greedy answers, and each SFT split:
  filtered, like-for-like random, the label-using reference, global, random, scored) per task, with
  the question-bootstrap intervals, and the paired differences the question turns on;
- every metric × similarity on every task: AUROC, PRR and the accuracy of the 25% kept per class,
  with 95% bootstrap intervals (the PerturbQA mini study's report has point estimates only).
"""

from __future__ import annotations

import json
from pathlib import Path

from curation.eval.study import REPO, f3, render

TEMPLATE = Path(__file__).parent / "templates" / "study_summary.md.j2"
# (stem, label) of the per-task study reports, in the order they are shown
TASK_REPORTS = (("m49_study", "UN M49 regions"), ("elements_study", "element families"))
MODELS = ("base", "teacher", "filtered", "random-readable", "label-correct", "global", "random", "scored")
MODEL_TEXT = {
    "base": "base model (transformers, greedy)", "teacher": "teacher's own greedy answers (llama-server)",
    "filtered": "SFT on kept, per class (label-free)", "random-readable": "SFT on random readable, same counts per class",
    "label-correct": "SFT on right answers, same counts (**uses labels**)", "global": "SFT on kept, global threshold",
    "random": "SFT on random from every row", "scored": "SFT on every trace",
}
KEY_COMPARISONS = (("filtered", "random-readable"), ("filtered", "label-correct"), ("filtered", "global"), ("filtered", "teacher"), ("label-correct", "random-readable"))
SIMILARITY_DEPENDENT = {"semantic_consistency", "cocoa_msp", "cocoa_ppl", "cocoa_mte"}


def _ci(values, signed=False) -> str:
    if not values:
        return ""
    return f" [{values[0]:+.3f}, {values[1]:+.3f}]" if signed else f" [{values[0]:.3f}, {values[1]:.3f}]"


def load(results: Path) -> dict:
    out = {}
    for stem, label in TASK_REPORTS:
        path = results / f"{stem}.json"
        if path.exists():
            out[stem] = {"label": label, **json.loads(path.read_text())}
    return out


def metric_rows(studies: dict, results: Path) -> list[dict]:
    """One row per (task, metric, similarity) with AUROC, PRR and kept accuracy (25% per class)."""
    rows = []
    for stem, study in studies.items():
        for run, report in study["reports"].items():
            similarity = report.get("similarity") or "answer"
            main = run == study["main_run"]
            if not main and similarity == "answer":
                continue  # the other ablations share the main run's metric columns
            for name, entry in report["metrics"].items():
                if not main and name not in SIMILARITY_DEPENDENT:
                    continue
                selection = (entry.get("selection") or {}).get("0.25", {}).get("per_class", {})
                rows.append({
                    "task": study["label"], "metric": name, "similarity": similarity if name in SIMILARITY_DEPENDENT else "–",
                    "auroc": entry.get("auroc"), "auroc_ci": entry.get("auroc_ci"), "prr": entry.get("prr"), "prr_ci": entry.get("prr_ci"),
                    "kept": selection.get("accuracy"), "kept_ci": selection.get("accuracy_ci"), "n": report["pool"]["n"],
                })
    mini = results / "mini_study.json"
    if mini.exists():
        for run in json.loads(mini.read_text()).get("runs", []):
            report = run.get("eval") or {}
            for name, entry in (report.get("metrics") or {}).items():
                selection = (entry.get("selection") or {}).get("0.25", {}).get("per_class", {})
                rows.append({
                    "task": f"PerturbQA ({run['run']})", "metric": name,
                    "similarity": (report.get("similarity") or "answer") if name in SIMILARITY_DEPENDENT else "–",
                    "auroc": entry.get("auroc"), "auroc_ci": None, "prr": entry.get("prr"), "prr_ci": None,
                    "kept": selection.get("accuracy"), "kept_ci": None, "n": (report.get("pool") or {}).get("n"),
                })
    return rows


def plot(studies: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    with_adapters = {stem: s for stem, s in studies.items() if s.get("adapters")}
    if not with_adapters:
        return
    colours = {"base": "#868e96", "teacher": "#adb5bd", "filtered": "#e8590c", "random-readable": "#1c7ed6", "label-correct": "#2f9e44",
               "global": "#f59f00", "random": "#74c0fc", "scored": "#7048e8"}
    fig, axes = plt.subplots(1, len(with_adapters), figsize=(5.2 * len(with_adapters), 4.4), squeeze=False)
    for axis, (stem, study) in zip(axes[0], with_adapters.items()):
        models = study["adapters"]["models"]
        names = [n for n in MODELS if n in models]
        for x, name in enumerate(names):
            m = models[name]
            low, high = m["question_ci"]
            axis.bar(x, m["mean"], color=colours[name], width=0.65, hatch="//" if m.get("uses_labels") else None, edgecolor="white")
            axis.errorbar(x, m["mean"], yerr=[[m["mean"] - low], [high - m["mean"]]], color="black", capsize=4, linewidth=1)
            axis.scatter(np.full(len(m["per_seed"]), x), m["per_seed"], color="black", s=10, zorder=3)
            axis.text(x, high + 0.015, f"{m['mean']:.2f}", ha="center", fontsize=7.5)
        axis.set_xticks(range(len(names)), [n.replace("-", "-\n", 1) if n in ("random-readable", "label-correct") else n for n in names], fontsize=7.5, rotation=0)
        axis.set_ylim(0, 1.05)
        axis.set_title(f"{study['label']}: {study['adapters']['questions']} test questions, {study['adapters']['seeds']} seed(s)", fontsize=9)
        axis.set_ylabel("held-out test accuracy (95% CI over questions)")
    fig.suptitle("SFT on label-free filtered traces vs like-for-like random, the label-using reference (hatched) and the base model", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(studies: dict, rows: list[dict]) -> str:
    """results/study_summary.md, through scripts/templates/study_summary.md.j2."""
    with_adapters = {stem: s for stem, s in studies.items() if s.get("adapters")}
    model_rows = []
    for name in MODELS:
        cells = []
        for s in with_adapters.values():
            m = s["adapters"]["models"].get(name)
            cells.append("not run" if m is None else f"{f3(m['mean'])}{_ci(m['question_ci'])}" + (f" ({m['trained_rows']} rows)" if m.get("trained_rows") else ""))
        model_rows.append((MODEL_TEXT[name], cells))
    comparison_rows = []
    for a, b in KEY_COMPARISONS:
        cells = []
        for s in with_adapters.values():
            row = next((r for r in s["adapters"]["comparisons"] if r["a"] == a and r["b"] == b), None)
            cells.append("not run" if row is None else f"{f3(row['delta_accuracy'], True)}{_ci(row['ci'], True)}: {row['verdict']}")
        comparison_rows.append((f"{a} − {b}", cells))
    return render(
        TEMPLATE, filters={"f": f3, "ci": _ci}, studies=studies, with_adapters=with_adapters,
        model_rows=model_rows, comparison_rows=comparison_rows, rows=rows, reading=reading(rows),
    )


def reading(rows: list[dict]) -> list[str]:
    """Which (metric, similarity) is above chance on every task with intervals, and which ranks first where."""
    tasks = sorted({r["task"] for r in rows if r["auroc_ci"]})
    out = []
    if not tasks:
        return ["- No task with intervals yet."]
    keys = sorted({(r["metric"], r["similarity"]) for r in rows})
    above = [k for k in keys if all(any(r["task"] == t and (r["metric"], r["similarity"]) == k and r["auroc_ci"] and r["auroc_ci"][0] > 0.5 for r in rows) for t in tasks)]
    out.append(f"- Above chance (AUROC interval above 0.5) on every task with intervals ({', '.join(tasks)}): "
               + (", ".join(f"`{m}` ({s})" if s != "–" else f"`{m}`" for m, s in above) or "none") + ".")
    for t in tasks:
        best = max((r for r in rows if r["task"] == t and r["auroc"] is not None), key=lambda r: r["auroc"])
        out.append(f"- {t}: highest AUROC `{best['metric']}`{' (' + best['similarity'] + ')' if best['similarity'] != '–' else ''} {f3(best['auroc'])}{_ci(best['auroc_ci'])}.")
    perturb = [r for r in rows if r["task"].startswith("PerturbQA") and r["auroc"] is not None]
    if perturb:
        out.append(f"- PerturbQA mini study (no intervals): the highest AUROC is {max(r['auroc'] for r in perturb):.3f}; no metric separates there.")
    return out


def write(results: Path = REPO / "results") -> None:
    studies = load(results)
    if not studies:
        return
    rows = metric_rows(studies, results)
    plot(studies, results / "study_answer.png")
    (results / "study_summary.md").write_text(markdown(studies, rows))


if __name__ == "__main__":
    write()
