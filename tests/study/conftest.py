"""Builders for the study tests: a script of scripts/ loaded as a module, and a small study result to render.

The scripts are not a package (they are run as files, `make study`), so a test loads one by path.
"""

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _load(name: str):
    module_name = f"study_script_{name}"  # not the bare name: scripts/study.py must not shadow anything
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, REPO / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # before exec: the scripts' dataclasses look their module up
        spec.loader.exec_module(module)
    return sys.modules[module_name]


@pytest.fixture
def load_script():
    """``load_script("study_summary")``: scripts/study_summary.py as a module."""
    return _load


def _model(mean, rows=None, labels=False, seeds=1):
    return {"mean": mean, "per_seed": [mean] * seeds, "sd": 0.0, "seed_ci": None, "question_ci": [mean - 0.05, mean + 0.05],
            "trained_rows": rows, "uses_labels": labels, "unparsed": [1] * seeds, "macro_f1": [mean - 0.1] * seeds}


def _metric(auroc, prr):
    per_class = {"accuracy": 0.9, "accuracy_ci": [0.8, 1.0]}
    return {"auroc": auroc, "auroc_ci": [auroc - 0.1, auroc + 0.1], "prr": prr, "prr_ci": [prr - 0.2, prr + 0.2], "selection": {"0.25": {"per_class": per_class}}}


@pytest.fixture
def study_results():
    """One task's results JSON as scripts/study.py writes it, two metrics and three models small."""
    kept = {"n": 10, "accuracy": 0.8, "accuracy_ci": [0.6, 1.0], "macro_f1": 0.75}
    report = {
        "rows": 60, "similarity": "answer", "selection_metric": "cocoa_ppl",
        "pool": {"n": 50, "accuracy": 0.6, "accuracy_ci": [0.5, 0.7]},
        "bootstrap": {"draws": 2000},
        "kept_vs_all": {"kept": kept, "pool": {"n": 50, "accuracy": 0.6, "accuracy_ci": [0.5, 0.7]}},
        "metrics": {"cocoa_ppl": _metric(0.7, 0.4), "msp": _metric(0.5, 0.0)},
        "comparisons": [{"a": "cocoa_ppl", "b": "random", "delta_prr": 0.4, "delta_prr_ci": [0.2, 0.6], "delta_auroc": 0.2, "delta_auroc_ci": [0.1, 0.3], "verdict": "cocoa_ppl better"}],
    }
    return {
        "task": "m49", "created": "2026-12-06 06:20 UTC", "command": "make study", "host": "x86_64, 2 cores", "json": "results/m49_study.json",
        "seconds": 600.0, "main_run": "m49", "reports": {"m49": report, "m49-global": {**report, "selection_metric": "cocoa_ppl"}},
        "strategies": {"m49": "per_class", "m49-global": "global"},
        "kept_per_class": {"m49": {"Africa": 6, "Asia": 4}, "m49-global": {"Africa": 10}},
        "per_class": {"Africa": {"all": {"n": 30, "accuracy": 0.5, "ci": [0.3, 0.7]}, "kept": {"n": 6, "accuracy": 1.0, "ci": [1.0, 1.0]}}},
        "compute_seconds": {"generation": 600.0, "training": 300.0, "sum": 900.0},
        "load_average": 3.0,
        "adapters": {
            "questions": 20, "seeds": 2,
            "models": {"base": _model(0.4), "filtered": _model(0.6, 10, seeds=2), "label-correct": _model(0.7, 10, True, seeds=2)},
            "comparisons": [{"a": "filtered", "b": "label-correct", "delta_accuracy": -0.1, "ci": [-0.2, 0.0], "verdict": "not distinguishable"}],
        },
    }
