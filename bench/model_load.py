"""Loading the embedded model: from the GGUF (dequantized on every load, the code before) vs the cached checkpoint.

    .venv/bin/python bench/model_load.py --rounds 2

Each load runs in a fresh process (imports not counted: torch and transformers are imported
first), alternating GGUF and cache. The cache is warmed first and not timed. Wall seconds, with
the load average, since the machine may be shared. Results are appended to bench/out/results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import results_log  # bench/results_log.py: this script's folder is first on sys.path

ROOT = Path(__file__).resolve().parents[1]

TIMED = r"""
import sys, time
import torch, transformers
from curation.backends.local import embedded_model_location
started = time.monotonic()
if sys.argv[1] == "gguf":
    folder, gguf = embedded_model_location()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, quantization_config=transformers.GgufConfig(dequantize=True))
else:
    from curation.backends.local import load_model_and_tokenizer
    model, tokenizer = load_model_and_tokenizer("embedded", device="cpu")
print(time.monotonic() - started)
"""


def timed(kind: str) -> float:
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", TIMED, kind], env=env, capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    timed("cache")  # warm
    rows = []
    for _ in range(args.rounds):
        for kind in ("gguf", "cache"):
            load = os.getloadavg()[0]
            rows.append({"kind": kind, "seconds": round(timed(kind), 1), "load_before": round(load, 2)})
            print(rows[-1], flush=True)
    gguf = [r["seconds"] for r in rows if r["kind"] == "gguf"]
    cache = [r["seconds"] for r in rows if r["kind"] == "cache"]
    record = {"bench": "model_load", "cores": len(os.sched_getaffinity(0)), "rows": rows, "ratio_of_means": round(sum(gguf) / sum(cache), 1)}
    print(json.dumps(record), flush=True)
    results_log.append(record)


if __name__ == "__main__":
    main()
