"""Does SFT on a conformal split beat the fixed fraction on M49? (issue 30; results/conformal_sft.{md,json})

    .venv/bin/python scripts/conformal_sft.py             # after `make study` (runs/m49-study must exist)
    .venv/bin/python scripts/conformal_sft.py --seeds 1

The conformal run (recipes/study/m49-conformal.yaml's calibrate and select on m49-study's folder,
rescored by `curate score`) generates nothing: 100 labelled pool questions are held out at random as calibration, and the conformal
selection keeps what FDR 0.2 per predicted region allows. LoRA adapters (the study's CPU-sized
`train:` settings) are trained on:
- `conformal`: its filtered split;
- `conformal-random`: a like-for-like random split of the same run (readable answers, the same count
  per predicted class, never a calibration question);
- `fixed-25%`: m49-study's filtered split (the most certain 25% of each predicted region, the default);
and every adapter answers the 176 held-out test questions greedily, as `curate eval --model` does.
Accuracy is the mean over seeds with a bootstrap interval over test questions; differences are paired.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from curation.eval.bootstrap import Resamples
from curation.eval.study import REPO, adapter_correct, model_accuracy, paired_accuracy

MAIN = REPO / "runs" / "m49-study"
CONFORMAL = REPO / "runs" / "m49-study-conformal"
RECIPE = "recipes/study/m49.yaml"
# name -> (run folder, split)
ADAPTERS = {"conformal": (CONFORMAL, "filtered"), "conformal-random": (CONFORMAL, "random-readable"), "fixed-25%": (MAIN, "filtered")}


def curate(*args: str) -> None:
    print(f"$ curate {' '.join(args)}", flush=True)
    if subprocess.run([sys.executable, "-m", "curation.cli", *args], cwd=REPO).returncode not in (0, 3):  # 3: the study's one failed question
        raise SystemExit(f"curate {' '.join(args)} failed")


def conformal_run() -> None:
    """m49-study's folder, rescored with the conformal recipe (`curate score`: no generator, nothing generated)."""
    if not (CONFORMAL / "stats.json").exists():
        shutil.copytree(MAIN, CONFORMAL, ignore=shutil.ignore_patterns("eval", "adapters", "*.sqlite-*"))
        recipe = yaml.safe_load((MAIN / "recipe.yaml").read_text())
        conformal = yaml.safe_load((REPO / "recipes" / "study" / "m49-conformal.yaml").read_text())
        recipe.update(name=conformal["name"], calibrate=conformal["calibrate"], select={**recipe["select"], **conformal["select"]})
        recipe["select"] = {k: v for k, v in recipe["select"].items() if v is not None}
        (CONFORMAL / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    curate("score", str(CONFORMAL.relative_to(REPO)))


def train(name: str, seed: int) -> Path:
    folder, split = ADAPTERS[name]
    out = REPO / "runs" / "conformal-sft" / f"{name}-seed{seed}"
    if not (out / "adapter_model.safetensors").exists():
        recipe = REPO / "runs" / "conformal-sft" / f"train-{name}-seed{seed}.yaml"
        recipe.parent.mkdir(parents=True, exist_ok=True)
        recipe.write_text(yaml.safe_dump({"extends": str(REPO / RECIPE), "train": {"seed": seed, "dataset": str(folder)}}, sort_keys=False))
        curate("train", str(recipe.relative_to(REPO)), "--split", split, "-o", str(out.relative_to(REPO)), "-q")
    return out


def answers(adapter: Path, base: bool) -> tuple[dict, dict | None, int]:
    from curation.eval.model import evaluate_model

    report = evaluate_model(adapter, split="test", recipe=str(REPO / RECIPE), batch_size=32, baseline=base, show_progress=False)
    rows = report.pop("predictions")
    return adapter_correct(rows), adapter_correct(rows, base=True) if base else None, report["trained_on"]["rows"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()
    begun = time.monotonic()
    conformal_run()
    quality = json.loads((CONFORMAL / "stats.json").read_text())["quality"]
    correct, rows, base = {}, {}, None
    for seed in range(args.seeds):
        for name in ADAPTERS:
            right, base_right, trained = answers(train(name, seed), base=base is None)
            base = base if base is not None else base_right
            correct.setdefault(name, []).append(right)
            rows[name] = trained
    ids = sorted(base)
    matrix = {name: np.array([[c[i] for i in ids] for c in runs], dtype=float) for name, runs in correct.items()}
    matrix["base"] = np.array([[base[i] for i in ids]], dtype=float)
    resamples = Resamples.draw(len(ids), 2000, seed=0)
    result = {
        "seeds": args.seeds, "test_questions": len(ids), "trained_rows": rows,
        "conformal_selection": {"kept": json.loads((CONFORMAL / "stats.json").read_text())["kept"], "labels": quality["labels"],
                                "per_class": {k: {"kept": v["kept"], "calibration": v["calibration"]} for k, v in quality["per_class"].items()}},
        "accuracy": {name: model_accuracy(m, resamples) for name, m in matrix.items()},
        "comparisons": [paired_accuracy(a, b, matrix, resamples) for a, b in
                        (("conformal", "fixed-25%"), ("conformal", "conformal-random"), ("fixed-25%", "base"), ("conformal", "base"))],
        "seconds": round(time.monotonic() - begun, 1),
    }
    (REPO / "results" / "conformal_sft.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = ["# SFT on a conformal split against the fixed 25% on M49 (`scripts/conformal_sft.py`)", "",
             f"{args.seeds} training seeds per split; {len(ids)} held-out test questions answered greedily; brackets: 95% bootstrap over "
             f"test questions (2,000 resamples), seed-averaged; {result['seconds']:.0f} s. The conformal run kept "
             f"{result['conformal_selection']['kept']} rows with {quality['labels']['calibration']} calibration labels (FDR 0.2, per region).", "",
             "| model | trained rows | test accuracy [95% CI] | per seed |", "|---|---:|---|---|"]
    for name, acc in result["accuracy"].items():
        ci = acc["question_ci"]
        lines.append(f"| {name} | {rows.get(name, '—')} | {acc['mean']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "") + f" | {', '.join(f'{v:.3f}' for v in acc['per_seed'])} |")
    lines += ["", "| comparison | Δ accuracy [95% CI] | verdict |", "|---|---|---|"]
    for c in result["comparisons"]:
        ci = c["ci"]
        lines.append(f"| {c['a']} − {c['b']} | {c['delta_accuracy']:+.3f}" + (f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "") + f" | {c['verdict']} |")
    (REPO / "results" / "conformal_sft.md").write_text("\n".join(lines) + "\n")
    print("wrote results/conformal_sft.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
