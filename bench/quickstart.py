"""`curate run recipes/quickstart.yaml`, wall time, against another checkout of curate in the same run.

    .venv/bin/python bench/quickstart.py --baseline ../curate-c20788b          # c20788b checked out there (git worktree add)
    .venv/bin/python bench/quickstart.py --baseline ../curate-c20788b --rounds 2 --baseline-env OMP_NUM_THREADS=1

Each round runs the baseline checkout's code, then this checkout's, one after the other (same
interpreter and packages: PYTHONPATH picks whose `curation` is imported), each into a fresh run
folder with the embedded model. This checkout's model cache (``~/.cache/curate/models``) is warmed
first and not timed: the target is a warm cache. The figure is the ratio of wall times, with the
load average around each run, since the machine may be shared. The two runs' traces are then
compared through their journals: the same fingerprints and token ids, and the logprobs' largest difference.

Results are appended to bench/out/results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import results_log  # bench/results_log.py: this script's folder is first on sys.path

ROOT = Path(__file__).resolve().parents[1]


def curate_run(checkout: Path, out: Path, extra_env: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": str(checkout), "HF_HUB_OFFLINE": "1", **extra_env}
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "curation.cli", "run", str(checkout / "recipes" / "quickstart.yaml"), "-o", str(out), "--no-push"],
        env=env, capture_output=True, text=True, cwd=checkout,
    )
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"{checkout}: curate run failed:\n{done.stderr[-3000:]}")
    said = [line.strip() for line in done.stdout.splitlines() if "generated in" in line or line.strip().startswith("traces:")]
    return {"wall_s": round(wall, 1), "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2), "stderr": done.stderr, "said": said}


def traces_of(run_dir: Path) -> dict:
    """The run's journal, by fingerprint: what a resumed run would count as already generated."""
    from curation import run_folder
    from curation.journal import Journal

    with Journal(run_dir / run_folder.JOURNAL_FILE) as journal:
        return {trace.fingerprint: trace for trace in journal.iter_all()}


def compare(a: dict, b: dict) -> dict:
    """Same fingerprints, same token ids and text, logprobs (and top-k) within float tolerance."""
    same = 0
    worst = 0.0
    for fingerprint, trace in a.items():
        other = b.get(fingerprint)
        if other is None or list(trace.token_ids) != list(other.token_ids) or trace.text != other.text:
            continue
        same += 1
        pairs = list(zip(trace.token_logprobs, other.token_logprobs))
        pairs += [(x, y) for row, other_row in zip(trace.top_logprobs, other.top_logprobs) for x, y in zip(row, other_row)]
        worst = max([worst] + [abs(x - y) for x, y in pairs])
    return {"traces": len(a), "fingerprints_in_both": len(a.keys() & b.keys()), "same_tokens": same, "max_logprob_diff": worst}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True, help="another checkout of curate (e.g. `git worktree add ../curate-c20788b c20788b`)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--baseline-env", action="append", default=[], help="KEY=VALUE for the baseline's runs only (e.g. OMP_NUM_THREADS=1)")
    args = parser.parse_args()
    baseline_env = dict(item.split("=", 1) for item in args.baseline_env)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        subprocess.run([sys.executable, "-c", "from curation.backends.local import load_model_and_tokenizer as l; l('embedded', device='cpu')"],
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True, capture_output=True)  # warm this checkout's cache
        for round_ in range(args.rounds):
            base = curate_run(args.baseline.resolve(), scratch / f"base{round_}", baseline_env)
            new = curate_run(ROOT, scratch / f"new{round_}", {})
            same = compare(traces_of(scratch / f"base{round_}"), traces_of(scratch / f"new{round_}"))
            record = {
                "bench": "quickstart", "round": round_, "cores": len(os.sched_getaffinity(0)), "baseline": str(args.baseline), "baseline_env": baseline_env,
                "baseline_wall_s": base["wall_s"], "new_wall_s": new["wall_s"], "ratio": round(base["wall_s"] / new["wall_s"], 2),
                "load": [base["load_before"], base["load_after"], new["load_before"], new["load_after"]], "traces": same,
                "carriage_returns_in_log": {"baseline": base["stderr"].count("\r"), "new": new["stderr"].count("\r")},
                "generation": {"baseline": base["said"], "new": new["said"]},
            }
            print(json.dumps(record), flush=True)
            results_log.append(record)


if __name__ == "__main__":
    main()
