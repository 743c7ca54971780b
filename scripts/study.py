"""The self-improvement study: does label-free uncertainty filtering keep better traces, on more than one task?

    make study                        # = .venv/bin/python scripts/study.py (after make setup llama-server): both tasks
    scripts/study.py --task elements  # one task
    scripts/study.py --skip-train     # curation, ablations, the teacher on the test set and `curate eval` only
    scripts/study.py --seeds 1 --splits filtered,random-readable,label-correct   # fewer adapters

Tasks (each a curated `pool` and a held-out `test` split, never curated, never trained on):
- `m49`: which UN M49 region is a country in (recipes/data/m49-continents.csv, recipes/study/m49.yaml);
- `elements`: which family of the periodic table is an element in (recipes/data/elements-categories.csv,
  recipes/study/elements.yaml), chosen and planned before its results were seen (results/elements_plan.md).

The embedded SmolLM2-135M-Instruct, served by llama-server, answers each pool question with one
greedy reference and K = 8 samples; every metric is computed, and the most certain 25% of each
predicted class are kept. The ablations (global threshold, random, perplexity only, self-consistency
only, embedding similarity) reuse the same journal, so they generate nothing. The teacher also
answers the test questions greedily (its zero-shot accuracy). `curate eval` measures each metric
against the labels, with bootstrap intervals.

Then the self-improvement check (Huang et al. 2022; Stoisser et al. 2025): LoRA adapters on the
embedded model, trained on the kept traces (`filtered`), on the like-for-like random baseline
(`random-readable`: readable answers, the filtered split's count per predicted class), on right
answers only (`label-correct`: uses the labels, the upper reference), on the global ablation's kept
traces (`global`), on a random split from every row (`random`) and on every trace (`scored`), each
with several seeds; every adapter and the base model answer the test questions greedily, as
`curate eval --model ADAPTER --split test` does.

Writes results/<task>_study.{md,json}, the plots under results/, and the cross-task summary
results/study_summary.md with results/study_answer.png (scripts/study_summary.py). Resumes: traces
are journaled, adapters and their answers are reused when present, so rerunning after an
interruption continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from curation.eval import study
from curation.eval.study import REPO, ci, f3

TEMPLATE = Path(__file__).parent / "templates" / "study_task.md.j2"


@dataclass(frozen=True)
class Task:
    """One study task: its curated pool, ablations on the same journal, and how the report names things."""

    key: str
    main_recipe: str
    ablations: tuple[str, ...]  # the first is the global-threshold run (trained on as `global`)
    stem: str  # results/<stem>.{md,json} and the plots' prefix
    title: str
    task_text: str  # the report's **Task.** paragraph
    class_noun: str  # "region", "family"
    class_plural: str  # "regions", "families"
    plan: str | None = None  # the analysis plan committed before the task's results were seen


TASKS = {
    "m49": Task(
        key="m49",
        main_recipe="recipes/study/m49.yaml",
        ablations=("recipes/study/m49-global.yaml", "recipes/study/m49-random.yaml", "recipes/study/m49-perplexity.yaml",
                   "recipes/study/m49-self-consistency.yaml", "recipes/study/m49-embedding.yaml"),
        stem="m49_study",
        title="UN M49 regions",
        task_text="Which UN M49 region (Africa, Americas, Asia, Europe, Oceania) is a country in, asked by its short name and by its "
        "official name (`recipes/data/m49-continents.csv`, 434 questions about 247 countries and areas, from the UN M49 standard).",
        class_noun="region",
        class_plural="regions",
    ),
    "elements": Task(
        key="elements",
        main_recipe="recipes/study/elements.yaml",
        ablations=("recipes/study/elements-global.yaml", "recipes/study/elements-random.yaml", "recipes/study/elements-perplexity.yaml",
                   "recipes/study/elements-self-consistency.yaml", "recipes/study/elements-embedding.yaml"),
        stem="elements_study",
        title="element families",
        task_text="Which family of the periodic table (10 classes, from transition metals to halogens) is a chemical element in, asked by "
        "its name and by its symbol (`recipes/data/elements-categories.csv`, 236 questions about 118 elements, from the `mendeleev` "
        "package's element table), split by element.",
        class_noun="family",
        class_plural="families",
        plan="results/elements_plan.md",
    ),
}
STUDY_TASKS = ("m49", "elements")  # what `make study` runs, in order
TASK = TASKS["m49"]  # the task being run (set by main for each task in turn)
# What the adapters are trained on: (run folder: "main" or "global", `curate train --split`).
# random-readable is the like-for-like baseline (readable answers, filtered's count per predicted
# class); label-correct uses the labels (the ground-truth upper reference); global is the filtered
# split of the global-threshold ablation (per-class vs global selection).
TRAINED = {
    "filtered": ("main", "filtered"),
    "random-readable": ("main", "random-readable"),
    "label-correct": ("main", "label-correct"),
    "global": ("global", "filtered"),
    "random": ("main", "random"),
    "scored": ("main", "scored"),
}
SPLITS = tuple(TRAINED)
LABEL_USING = {"label-correct"}
DEFAULT_PORT = 18911
DRAWS = 2000
RESULTS = REPO / "results"
# Paired comparisons on the held-out test set; the first is the one the question is about.
COMPARISONS = (
    ("filtered", "random-readable"), ("filtered", "label-correct"), ("filtered", "global"), ("filtered", "random"),
    ("filtered", "scored"), ("filtered", "base"), ("filtered", "teacher"), ("label-correct", "random-readable"),
    ("random-readable", "base"), ("random", "base"), ("scored", "base"),
)


def log(message: str) -> None:
    print(f"[study {time.strftime('%H:%M:%S')}] {message}", flush=True)


def curate(*args: str, failed_traces_ok: bool = False) -> None:
    """Run the CLI; with ``failed_traces_ok``, a run that wrote its splits but had some traces fail goes on.

    (`curate run` exits 1 when any trace failed, after writing everything else. llama-server
    answered one question's request without logprobs in every retry; that question is dropped
    as `generation_failed` and counted in the results, not hidden.)
    """
    command = [str(REPO / ".venv" / "bin" / "curate"), *args]
    if not Path(command[0]).exists():
        command = [sys.executable, "-m", "curation.cli", *args]
    log("$ curate " + " ".join(args))
    begun = time.time()
    if subprocess.run(command, cwd=REPO).returncode != 0:
        if failed_traces_ok:
            from curation.run_folder import RunFolder

            out = RunFolder(REPO / args[args.index("-o") + 1])
            stats_file = out.stats_file
            fresh = stats_file.exists() and stats_file.stat().st_mtime >= begun  # written by this run, not left by an earlier one
            stats = json.loads(stats_file.read_text()) if fresh else {}
            if stats.get("failed_traces") and out.has_split("scored"):
                log(f"{stats['failed_traces']} traces failed; going on with the questions that have all theirs")
                return
        raise SystemExit(f"curate {' '.join(args)} failed")


def run_dir_of(recipe: str) -> Path:
    from curation.recipe.load import load_recipe

    return REPO / "runs" / load_recipe(str(REPO / recipe)).recipe.name


# --------------------------------------------------------------------------- llama-server
def start_llama_server(threads: int) -> tuple[str, subprocess.Popen | None]:
    """The embedded GGUF behind llama-server: CURATE_STUDY_URL if it is set, else one started here."""
    return study.start_llama_server(threads, port=DEFAULT_PORT, log_name="study-llama-server.log", log=log)


# --------------------------------------------------------------------------- curation
def curate_pool(timings: dict) -> list[Path]:
    """The main run (generates) and the ablations (the main journal copied in: nothing generated)."""
    from curation.run_folder import RunFolder

    main_dir = run_dir_of(TASK.main_recipe)
    begun = time.monotonic()
    curate("run", TASK.main_recipe, "-o", str(main_dir.relative_to(REPO)), "--no-push", "-q", failed_traces_ok=True)
    timings["curate_run_main"] = round(time.monotonic() - begun, 1)
    # the generation's own time, kept across resumes (a rerun that finds every trace takes seconds)
    record = main_dir / "study_generation_seconds.json"
    previous = json.loads(record.read_text())["seconds"] if record.exists() else 0
    timings["generated_here"] = timings["curate_run_main"] > 0.5 * previous
    if timings["generated_here"]:
        record.write_text(json.dumps({"seconds": timings["curate_run_main"]}) + "\n")
    timings["generation"] = max(previous, timings["curate_run_main"])
    dirs = [main_dir]
    for recipe in TASK.ablations:
        run_dir = run_dir_of(recipe)
        run_dir.mkdir(parents=True, exist_ok=True)
        if not RunFolder(run_dir).journal.exists():
            shutil.copy2(RunFolder(main_dir).journal, RunFolder(run_dir).journal)
        curate("run", recipe, "-o", str(run_dir.relative_to(REPO)), "--no-push", "-q", failed_traces_ok=True)
        dirs.append(run_dir)
    return dirs


def teacher_on_test(timings: dict) -> dict:
    """The teacher's own greedy answers to the held-out test questions (zero-shot, through the same server and parser).

    A recipe extending the main one on the `test` split, with one sample (the minimum; only the greedy
    reference is read). Unreadable answers count as wrong, as for the adapters.
    """
    import yaml

    folder = REPO / "runs" / "study-recipes"
    folder.mkdir(parents=True, exist_ok=True)
    recipe = folder / f"{TASK.key}-teacher-test.yaml"
    name = f"{run_dir_of(TASK.main_recipe).name}-teacher-test"
    recipe.write_text(yaml.safe_dump({
        "extends": str(REPO / TASK.main_recipe), "name": name, "source": {"filter": {"split": "test"}},
        "generator": {"samples": 1}, "select": {"strategy": "per_class", "fraction": 1.0},
    }, sort_keys=False))
    out = REPO / "runs" / name
    begun = time.monotonic()
    curate("run", str(recipe.relative_to(REPO)), "-o", str(out.relative_to(REPO)), "--no-push", "-q", failed_traces_ok=True)
    timings["teacher_test"] = round(time.monotonic() - begun, 1)
    return study.answers_by_id(out)


def evaluate_runs(dirs: list[Path]) -> dict:
    from curation.eval.run import evaluate_run

    reports = {}
    for run_dir in dirs:
        log(f"curate eval {run_dir.relative_to(REPO)} (bootstrap {DRAWS})")
        reports[run_dir.name] = evaluate_run(run_dir, fractions=[0.1, 0.25, 0.5], bootstrap=DRAWS)
    return reports


# --------------------------------------------------------------------------- training
def seed_recipe(seed: int, dataset_dir: Path) -> str:
    """The main recipe with train.seed = seed and ``dataset_dir`` (a run folder) as the training data."""
    import yaml

    folder = REPO / "runs" / "study-recipes"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{TASK.key}-train-{dataset_dir.name}-seed{seed}.yaml"
    path.write_text(yaml.safe_dump({"extends": str(REPO / TASK.main_recipe), "train": {"seed": seed, "dataset": str(dataset_dir)}}, sort_keys=False))
    return str(path.relative_to(REPO))


def adapter_dir(main_dir: Path, name: str, seed: int) -> Path:
    return main_dir / "adapters" / f"{name}-seed{seed}"


def train_adapters(dirs: list[Path], seeds: int, names: tuple[str, ...], timings: dict) -> None:
    begun = time.monotonic()
    folders = {"main": dirs[0], "global": run_dir_of(TASK.ablations[0])}
    for seed in range(seeds):
        for name in names:
            which, split = TRAINED[name]
            out = adapter_dir(dirs[0], name, seed)
            if not (out / "adapter_model.safetensors").exists():
                curate("train", seed_recipe(seed, folders[which]), "--split", split, "-o", str(out.relative_to(REPO)), "-q")
    timings["train"] = round(timings.get("train", 0) + time.monotonic() - begun, 1)


def answer_test(main_dir: Path, seeds: int, names: tuple[str, ...], timings: dict) -> dict:
    """Every adapter's (and once the base model's) greedy answers to the held-out test questions.

    This is `curate eval --model ADAPTER --split test`'s function (curation.eval.model), called
    here with a larger batch; its report is reused when it is newer than the adapter.
    """
    from curation.eval.model import evaluate_model
    from curation.run_folder import RunFolder

    begun = time.monotonic()
    out: dict = {"adapters": {}}
    for seed in range(seeds):
        for name in names:
            adapter = adapter_dir(main_dir, name, seed)
            previous, predictions = RunFolder(adapter).model_eval_files("test")
            want_base = seed == 0 and name == names[0]
            if previous.exists() and previous.stat().st_mtime > (adapter / "adapter_model.safetensors").stat().st_mtime:
                report = json.loads(previous.read_text())
                rows = [json.loads(line) for line in predictions.read_text().splitlines()]
                if want_base and "baseline" not in report:
                    report = None
            else:
                report = None
            if report is None:
                log(f"answering the test questions with {adapter.relative_to(REPO)}" + (" and the base model" if want_base else ""))
                report = evaluate_model(adapter, split="test", recipe=str(REPO / TASK.main_recipe), batch_size=32, baseline=want_base, show_progress=False)
                rows = report.pop("predictions")
            if want_base:
                out["base"] = {"scores": report["baseline"]["scores"], "unparsed": report["baseline"]["unparsed"], "correct": study.adapter_correct(rows, base=True)}
            out["adapters"][f"{name}-seed{seed}"] = {
                "split": name, "seed": seed, "trained_rows": report["trained_on"]["rows"], "scores": report["scores"],
                "unparsed": report["unparsed"], "correct": study.adapter_correct(rows),
            }
    timings["answer_test"] = round(timings.get("answer_test", 0) + time.monotonic() - begun, 1)
    return out


def summarise_adapters(answers: dict, seeds: int, names: tuple[str, ...], teacher: dict | None) -> dict:
    """Mean test accuracy per model: over seeds (t interval) and over questions (bootstrap), plus paired Δ."""
    from curation.eval.bootstrap import Resamples

    ids = sorted(answers["base"]["correct"])
    resamples = Resamples.draw(len(ids), DRAWS, seed=0)
    matrix = {"base": np.array([answers["base"]["correct"][i] for i in ids], dtype=float)[None, :]}
    if teacher is not None:
        missing = set(ids) - set(teacher["correct"])
        if missing:
            raise SystemExit(f"the teacher's test run lacks {len(missing)} of the test questions (e.g. {sorted(missing)[0]})")
        matrix["teacher"] = np.array([teacher["correct"][i] for i in ids], dtype=float)[None, :]
    for name in names:
        matrix[name] = np.array([[answers["adapters"][f"{name}-seed{s}"]["correct"][i] for i in ids] for s in range(seeds)], dtype=float)
    summary: dict = {"questions": len(ids), "seeds": seeds, "models": {}, "comparisons": []}
    for name, m in matrix.items():
        fixed = name in ("base", "teacher")
        summary["models"][name] = {
            **study.model_accuracy(m, resamples),
            "trained_rows": None if fixed else answers["adapters"][f"{name}-seed0"]["trained_rows"],
            "uses_labels": name in LABEL_USING,
            "unparsed": [answers["base"]["unparsed"]] if name == "base" else [teacher["unparsed"]] if name == "teacher"
            else [answers["adapters"][f"{name}-seed{s}"]["unparsed"] for s in range(seeds)],
            "macro_f1": [answers["base"]["scores"]["macro_f1"]] if name == "base" else [] if name == "teacher"
            else [answers["adapters"][f"{name}-seed{s}"]["scores"]["macro_f1"] for s in range(seeds)],
        }
    for a, b in COMPARISONS:
        if a in matrix and b in matrix:
            summary["comparisons"].append(study.paired_accuracy(a, b, matrix, resamples))
    return summary


# --------------------------------------------------------------------------- plots
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_selective(report: dict, path: Path) -> None:
    """The selection metric's selective-accuracy curve with its band, against random and oracle and two ablated metrics."""
    plt = _pyplot()
    fig, axis = plt.subplots(figsize=(6.4, 4.2))
    chosen = report["selection_metric"]
    colours = {chosen: "#e8590c", "perplexity": "#1c7ed6", "self_consistency": "#2f9e44"}
    for name, colour in colours.items():
        curve = report["metrics"][name]["selective_accuracy"]
        entry = report["metrics"][name]
        label = f"{name}: PRR {entry['prr']:.2f} [{entry['prr_ci'][0]:.2f}, {entry['prr_ci'][1]:.2f}]"
        axis.plot(curve["fraction"], curve["accuracy"], color=colour, linewidth=2.2 if name == chosen else 1.3, label=label)
        if name == chosen:
            axis.fill_between(curve["fraction"], curve["low"], curve["high"], color=colour, alpha=0.2, linewidth=0, label="95% bootstrap band")
    oracle = report["oracle_selective_accuracy"]
    axis.plot(np.linspace(0, 1, len(oracle) + 1)[1:], oracle, color="black", linestyle="--", linewidth=1, label="oracle")
    axis.axhline(report["pool"]["accuracy"], color="grey", linestyle=":", linewidth=1.2, label=f"random (all rows): {report['pool']['accuracy']:.2f}")
    axis.axvline(0.25, color="grey", linewidth=0.6, alpha=0.5)
    axis.set_xlabel("fraction of the readable pool answers kept (least uncertain first)")
    axis.set_ylabel("accuracy of the kept answers")
    axis.set_ylim(0, 1.02)
    axis.set_xlim(0, 1)
    axis.set_title(f"SmolLM2-135M on {TASK.title}: selective accuracy (n={report['pool']['n']})", fontsize=10)
    axis.legend(fontsize=7.5, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


MODEL_LABELS = {
    "base": "base model", "teacher": "teacher\n(greedy, server)", "filtered": "SFT on kept\n(per class)",
    "random-readable": "SFT on random\nreadable, same\ncounts per class", "label-correct": "SFT on right\nanswers (uses\nlabels)",
    "global": "SFT on kept\n(global)", "random": "SFT on random\n(any row)", "scored": "SFT on all\nscored traces",
}
MODEL_COLOURS = {
    "base": "#868e96", "teacher": "#adb5bd", "filtered": "#e8590c", "random-readable": "#1c7ed6", "label-correct": "#2f9e44",
    "global": "#f59f00", "random": "#74c0fc", "scored": "#7048e8",
}


def plot_adapters(summary: dict, path: Path) -> None:
    """Held-out test accuracy per model: mean over seeds with the question-bootstrap interval, seeds as dots."""
    plt = _pyplot()
    names = list(summary["models"])
    fig, axis = plt.subplots(figsize=(1.0 * len(names) + 1.5, 4.2))
    for x, name in enumerate(names):
        m = summary["models"][name]
        low, high = m["question_ci"]
        axis.bar(x, m["mean"], color=MODEL_COLOURS[name], alpha=0.8, width=0.6, hatch="//" if m.get("uses_labels") else None)
        axis.errorbar(x, m["mean"], yerr=[[m["mean"] - low], [high - m["mean"]]], color="black", capsize=5, linewidth=1.2)
        axis.scatter(np.full(len(m["per_seed"]), x) + np.linspace(-0.12, 0.12, len(m["per_seed"])), m["per_seed"], color="black", s=14, zorder=3)
        axis.text(x, high + 0.01, f"{m['mean']:.3f}", ha="center", fontsize=8)
    axis.set_xticks(range(len(names)), [MODEL_LABELS[n] + (f"\n{summary['models'][n]['trained_rows']} rows" if summary["models"][n]["trained_rows"] else "") for n in names], fontsize=7)
    axis.set_ylabel(f"accuracy on {summary['questions']} held-out test questions")
    axis.set_ylim(0, 1)
    axis.set_title(f"{TASK.title}: LoRA on the embedded model, {summary['seeds']} seed(s) (dots); bars: 95% bootstrap over questions", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_per_class(per_class: dict, path: Path) -> None:
    plt = _pyplot()
    classes = list(per_class)
    x = np.arange(len(classes))
    fig, axis = plt.subplots(figsize=(6.4, 3.6))
    for offset, part, colour in ((-0.2, "all", "#868e96"), (0.2, "kept", "#e8590c")):
        means = [per_class[c][part]["accuracy"] or 0 for c in classes]
        cis = [per_class[c][part]["ci"] or [m, m] for c, m in zip(classes, means)]
        axis.bar(x + offset, means, width=0.4, color=colour, label={"all": "all pool answers", "kept": "kept (25% most certain)"}[part])
        axis.errorbar(x + offset, means, yerr=[[m - c[0] for m, c in zip(means, cis)], [c[1] - m for m, c in zip(means, cis)]], fmt="none", color="black", capsize=3, linewidth=1)
    axis.set_xticks(x, [f"{c}\n(n={per_class[c]['all']['n']}/{per_class[c]['kept']['n']})" for c in classes], fontsize=8)
    axis.set_ylabel("accuracy within predicted class")
    axis.set_ylim(0, 1.05)
    axis.legend(fontsize=8, loc="lower right")
    axis.set_title(f"kept vs all, per predicted {TASK.class_noun} (95% bootstrap intervals)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- report
def markdown(results: dict) -> str:
    """results/<task>_study.md from its JSON, through scripts/templates/study_task.md.j2."""
    main = results["reports"][results["main_run"]]
    cost = results.get("compute_seconds", {})
    load = results.get("load_average")
    return study.render(
        TEMPLATE,
        task=TASK,
        results=results,
        main=main,
        chosen=main["selection_metric"],
        kept=main["kept_vs_all"]["kept"],
        pool=main["kept_vs_all"]["pool"],
        adapters=results.get("adapters"),
        test_questions=results.get("adapters", {}).get("questions", "other"),
        load_text=f"load average {load:.0f} when this report was written" if load else "load average 6–12 during the runs",
        cost_text=", ".join(f"{name.replace('_', ' ')} {seconds / 60:.1f} min" for name, seconds in cost.items()),
        cost_sum=cost.get("sum", 0),
        rerun=rerun_text(),
    )


def reading(results: dict) -> list[str]:
    """What the tables say, by rule, so that the text stays true when the study is rerun."""
    main = results["reports"][results["main_run"]]
    chosen = main["selection_metric"]
    out = []
    vs_random = next(r for r in main["comparisons"] if r["a"] == chosen and r["b"] == "random")
    out.append(
        f"- **Separation:** `{chosen}` ranks right above wrong answers with AUROC {f3(main['metrics'][chosen]['auroc'])} "
        f"{ci(main['metrics'][chosen].get('auroc_ci'))}; against random ΔPRR = {f3(vs_random['delta_prr'], True)} {ci(vs_random['delta_prr_ci'], signed=True)}: "
        + ("better than random beyond the bootstrap noise." if vs_random["verdict"].endswith("better") and vs_random["verdict"].startswith(chosen) else "not distinguishable from random at this size.")
    )
    better = [r["b"] for r in main["comparisons"] if r["a"] == chosen and r["b"] != "random" and r["verdict"] == f"{chosen} better"]
    worse = [r["b"] for r in main["comparisons"] if r["a"] == chosen and r["b"] != "random" and r["verdict"] == f"{r['b']} better"]
    out.append(
        f"- **Against the other metrics:** `{chosen}` is better than {', '.join(f'`{b}`' for b in better) or 'none of them'} and worse than "
        f"{', '.join(f'`{w}`' for w in worse) or 'none of them'} beyond the noise; every other pair is not distinguishable with {main['pool']['n']} questions."
    )
    classes_up = [c for c, v in results["per_class"].items() if v["kept"]["accuracy"] is not None and v["kept"]["accuracy"] > v["all"]["accuracy"]]
    out.append(f"- **Per class:** the kept answers are more accurate than all answers in {len(classes_up)} of {len(results['per_class'])} predicted {TASK.class_plural} ({', '.join(classes_up) or 'none'}); the small classes' intervals are wide.")
    adapters = results.get("adapters")
    if adapters:
        m = adapters["models"]
        delta = {(r["a"], r["b"]): r for r in adapters["comparisons"]}

        def said(a: str, b: str) -> str:
            r = delta.get((a, b))
            return "not run" if r is None else f"Δ = {f3(r['delta_accuracy'], True)} {ci(r['ci'], signed=True)}, {r['verdict']}"

        scores = ", ".join(f"{name} {f3(v['mean'])}" for name, v in m.items())
        out.append(f"- **Self-improvement (held-out test accuracy):** {scores}.")
        out.append(f"  The question this study asks, filtered vs like-for-like random (readable, same counts per class): {said('filtered', 'random-readable')}.")
        out.append(f"  Filtered vs the label-using reference (right answers, same counts): {said('filtered', 'label-correct')}; "
                   f"that reference vs like-for-like random: {said('label-correct', 'random-readable')}.")
        out.append(f"  Per-class vs global selection: {said('filtered', 'global')}. Filtered vs random from every row (the first study's baseline): "
                   f"{said('filtered', 'random')}. Filtered vs the teacher's own greedy answers: {said('filtered', 'teacher')}.")
        if "filtered" in m and "random-readable" in m and adapters["seeds"] > 1:
            out.append(
                f"  Seed spread (the question interval above does not include it): filtered {', '.join(f'{x:.3f}' for x in m['filtered']['per_seed'])}, "
                f"random-readable {', '.join(f'{x:.3f}' for x in m['random-readable']['per_seed'])}."
            )
        if adapters["seeds"] < 3:
            out.append(f"  Only {adapters['seeds']} training seed(s) finished in this run; `make study` resumes and adds the rest.")
    return out


def rerun_text() -> str:
    run = run_dir_of(TASK.main_recipe).name
    builder = {"m49": "scripts/build_m49_task.py", "elements": "scripts/build_elements_task.py"}[TASK.key]
    return f"""\
```bash
make study                                  # everything, both tasks: llama-server, curation, ablations, eval, adapters, test answers
.venv/bin/python scripts/study.py --task {TASK.key} --skip-train   # this task's curation and `curate eval` only
curate eval runs/{run}              # the metric table with intervals again (free: everything is journaled)
curate eval --model runs/{run}/adapters/filtered-seed0 --split test {TASK.main_recipe}
```
The task file is rebuilt from its source with `{builder}` (see `recipes/data/README.md`). A rerun resumes:
the journal keeps every trace and adapters with their test answers are reused, so only what is missing is computed. Seeds are
fixed (samples, bootstrap, training), but llama-server batches parallel requests, which changes low-order bits, so a run from an
empty journal need not reproduce every trace exactly; that was not measured for this study."""


def write_summary() -> None:
    """results/study_summary.md from every task's JSON: scripts/study_summary.py, run as its own script (scripts import no script)."""
    subprocess.run([sys.executable, str(REPO / "scripts" / "study_summary.py")], cwd=REPO, check=True)


def main() -> int:
    global TASK
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=[*TASKS, "all"], default="all", help="which task (default: all, in order: " + ", ".join(STUDY_TASKS) + ")")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per split (default 3)")
    parser.add_argument("--splits", default=",".join(SPLITS), help=f"adapters to train, comma-separated, in order (default: {','.join(SPLITS)})")
    parser.add_argument("--skip-train", action="store_true", help="no adapters: curation, ablations and eval only")
    parser.add_argument("--threads", type=int, default=1, help="llama-server threads (1 on a small shared machine: its threads spin-wait)")
    parser.add_argument("--report-only", action="store_true", help="rebuild results/*.md and the summary from results/*.json; runs nothing")
    args = parser.parse_args()
    if args.report_only:
        for task in (TASKS[k] for k in STUDY_TASKS if (RESULTS / f"{TASKS[k].stem}.json").exists()):
            TASK = task
            results = json.loads((RESULTS / f"{task.stem}.json").read_text())
            cost = results.get("compute_seconds", {})
            if results.get("timings", {}).get("curate_run_main") == cost.get("generation"):  # written before the double count was fixed
                cost["curation_and_eval_this_invocation"] = results["timings"].get("eval", 0)
                cost["sum"] = sum(v for k, v in cost.items() if k != "sum")
            results["reading"] = reading(results)
            (RESULTS / f"{task.stem}.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
            (RESULTS / f"{task.stem}.md").write_text(markdown(results))
            log(f"rebuilt results/{task.stem}.md")
        write_summary()
        return 0
    names = tuple(n.strip() for n in args.splits.split(",") if n.strip())
    unknown = [n for n in names if n not in TRAINED]
    if unknown or not names:
        parser.error(f"unknown --splits {', '.join(unknown) or '(none)'}; choose from {', '.join(SPLITS)}")
    tasks = [TASKS[k] for k in (STUDY_TASKS if args.task == "all" else (args.task,))]
    (REPO / "runs").mkdir(exist_ok=True)
    RESULTS.mkdir(exist_ok=True)
    started = time.monotonic()
    timings: dict = {t.key: {} for t in tasks}
    env_backup = dict(os.environ)
    server = None
    dirs: dict = {}
    teachers: dict = {}
    try:  # everything that needs the teacher's server first, then the server goes and frees its core
        url, server = start_llama_server(args.threads)
        os.environ["CURATE_STUDY_URL"] = url
        for task in tasks:
            TASK = task
            dirs[task.key] = curate_pool(timings[task.key])
            teachers[task.key] = teacher_on_test(timings[task.key])
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
        os.environ.clear()
        os.environ.update(env_backup)
    from curation.run_folder import RunFolder

    all_results: dict = {}
    for task in tasks:
        TASK = task
        begun = time.monotonic()
        reports = evaluate_runs(dirs[task.key])
        timings[task.key]["eval"] = round(time.monotonic() - begun, 1)
        main_dir = dirs[task.key][0]
        all_results[task.key] = {
            "task": task.key,
            "created": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": "make study" + ("" if args.seeds == 3 else f" (scripts/study.py --seeds {args.seeds})") + (" --skip-train" if args.skip_train else ""),
            "host": f"{platform.machine()}, {os.cpu_count()} cores shared with other jobs",
            "json": f"results/{task.stem}.json",
            "main_run": main_dir.name,
            "reports": reports,
            "strategies": {d.name: (RunFolder(d).raw_recipe().get("select") or {}).get("strategy") for d in dirs[task.key]},
            "kept_per_class": {d.name: study.kept_per_class(d) for d in dirs[task.key]},
            "per_class": study.per_predicted_class(main_dir, DRAWS),
            "teacher_test": {k: v for k, v in teachers[task.key].items() if k != "correct"},
            "timings": timings[task.key],
        }
        plot_selective(reports[main_dir.name], RESULTS / f"{task.stem}_selective_accuracy.png")
        plot_per_class(all_results[task.key]["per_class"], RESULTS / f"{task.stem}_per_class.png")

    def compute_seconds(task: Task) -> dict:
        """Generation, training and test answering as each step measured itself (independent of resumes)."""
        main_dir = dirs[task.key][0]
        record = main_dir / "study_generation_seconds.json"
        out = {"generation": json.loads(record.read_text())["seconds"] if record.exists() else None}
        adapters = sorted((main_dir / "adapters").glob("*-seed*/curate_train.json"))
        out["training"] = sum(json.loads(f.read_text()).get("seconds", 0) for f in adapters)
        out["answering_test"] = sum(json.loads(f.read_text()).get("seconds", 0) for f in sorted((main_dir / "adapters").glob("*-seed*/eval/test.json")))
        out["teacher_on_test_this_invocation"] = timings[task.key].get("teacher_test")
        # the main run's time is the generation when this invocation generated; counting it again would double it
        main_run = 0 if timings[task.key].get("generated_here") else timings[task.key].get("curate_run_main", 0)
        out["curation_and_eval_this_invocation"] = timings[task.key].get("eval", 0) + main_run
        out = {k: v for k, v in out.items() if v is not None}
        out["sum"] = sum(out.values())
        return out

    def write(task: Task, seeds_done: int) -> None:
        results = all_results[task.key]
        results["compute_seconds"] = compute_seconds(task)
        results["seconds"] = time.monotonic() - started
        timings[task.key]["total"] = round(results["seconds"], 1)
        results["seeds_done"] = seeds_done
        results["reading"] = reading(results)
        results["load_average"] = os.getloadavg()[0]
        (RESULTS / f"{task.stem}.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
        (RESULTS / f"{task.stem}.md").write_text(markdown(results))
        log(f"wrote results/{task.stem}.md ({seeds_done} of {args.seeds} training seeds) after {results['seconds'] / 60:.1f} min")
        write_summary()

    for task in tasks:
        TASK = task
        write(task, 0)
    # seed by seed, every task, each written out when done: an interrupted study still reports whole seeds
    for seeds in range(1, 0 if args.skip_train else args.seeds + 1):
        for task in tasks:
            TASK = task
            train_adapters(dirs[task.key], seeds, names, timings[task.key])
            answers = answer_test(dirs[task.key][0], seeds, names, timings[task.key])
            all_results[task.key]["adapters"] = summarise_adapters(answers, seeds, names, teachers[task.key])
            plot_adapters(all_results[task.key]["adapters"], RESULTS / f"{task.stem}_adapters.png")
            write(task, seeds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
