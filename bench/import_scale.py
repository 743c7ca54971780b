"""Benchmark: importing traces made elsewhere (source.traces) in bounded memory, peak RSS and seconds.

    .venv/bin/python bench/import_scale.py                          # 10,000 and 100,000 traces x 1,000 tokens
    .venv/bin/python bench/import_scale.py --sizes 10000 --tokens 200
    .venv/bin/python bench/import_scale.py --format jsonl --sizes 1000 10000 --modes import   # the same rows as JSON lines

A parquet file of that many traces is written first, streamed (one row per trace: question id,
prompt, sample index, reference flag, ``<think>`` text with an ``<answer>``, 1,000 float32 token
logprobs), 9 traces per question (the greedy reference and 8 samples) as a paper-scale run has.
Then, each in its own process under ``/usr/bin/time -v``:

- ``import``: ``trace_import.import_traces`` alone, the file into a fresh journal;
- ``run``: ``curate run`` on the same file (import, parse, score, select, write).

Peak RSS is that process's maximum resident set. The figure to read is the ratio between sizes
in the same run: 10x the traces (10x the tokens, 10x the file) should not mean 10x the memory.
Results are appended to ``bench/out/import_scale.jsonl`` (ignored by git).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LABELS = ["up", "down", "none"]
PER_QUESTION = 9  # reference + 8 samples


def write_jsonl(parquet: Path, path: Path) -> None:
    """The same rows as JSON lines (Python floats: about 20 bytes a logprob instead of 4)."""
    import msgspec
    import pyarrow.parquet as pq

    encode = msgspec.json.Encoder().encode
    with open(path, "wb") as handle:
        for batch in pq.ParquetFile(parquet, pre_buffer=False).iter_batches(batch_size=500):
            for row in batch.to_pylist():
                handle.write(encode(row) + b"\n")


def write_traces(path: Path, traces: int, tokens: int, batch: int = 900) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    schema = pa.schema([
        ("qid", pa.string()), ("question", pa.string()), ("sample", pa.int32()), ("is_reference", pa.bool_()),
        ("text", pa.string()), ("logprobs", pa.list_(pa.float32())),
    ])
    filler = " ".join(["the gene knockdown reduces expression"] * (tokens // 5))
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        for start in range(0, traces, batch):
            rows = range(start, min(start + batch, traces))
            q = [r // PER_QUESTION for r in rows]
            s = [r % PER_QUESTION for r in rows]
            answers = [LABELS[(qi + (si > 6)) % 3] for qi, si in zip(q, s)]
            values = -rng.exponential(0.5, size=len(rows) * tokens).astype(np.float32)
            offsets = np.arange(0, len(rows) * tokens + 1, tokens, dtype=np.int32)
            writer.write_table(pa.table({
                "qid": [f"q{qi:07d}" for qi in q],
                "question": [f"What happens to gene G{qi}?" for qi in q],
                "sample": pa.array(s, pa.int32()),
                "is_reference": [si == 0 for si in s],
                "text": [f"<think>{filler}</think><answer>{a}</answer>" for a in answers],
                "logprobs": pa.ListArray.from_arrays(pa.array(offsets), pa.array(values)),
            }, schema=schema))


RECIPE = """name: import-bench
source:
  path: {path}
  traces:
    id: qid
    prompt: question
    completion: text
    sample_index: sample
    reference: is_reference
    token_logprobs: logprobs
answer:
  labels: [up, down, none]
score:
  metric: cocoa_ppl
select:
  strategy: per_class
  fraction: 0.1
"""

IMPORT_ONLY = """
import sys
from pathlib import Path
from curation.recipe.load import load_recipe
from curation.trace_import import import_traces
result = import_traces(load_recipe(sys.argv[1]), Path(sys.argv[2]))
print("traces", result.traces, "questions", len(result.questions))
"""


def timed(command: list[str], env: dict) -> dict:
    started = time.monotonic()
    result = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True, env=env)
    seconds = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr).group(1))
    user = float(re.search(r"User time \(seconds\): ([\d.]+)", result.stderr).group(1))
    system = float(re.search(r"System time \(seconds\): ([\d.]+)", result.stderr).group(1))
    return {"peak_rss_mb": round(peak_kb / 1024, 1), "seconds": round(seconds, 1), "cpu_seconds": round(user + system, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000], help="traces per file")
    parser.add_argument("--tokens", type=int, default=1000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/curate-import-bench"))
    parser.add_argument("--modes", nargs="+", default=["import", "run"], choices=["import", "run"])
    parser.add_argument("--format", default="parquet", choices=["parquet", "jsonl"])
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for size in args.sizes:
        folder = args.work / f"{size}x{args.tokens}"
        folder.mkdir(parents=True, exist_ok=True)
        data = folder / "traces.parquet"
        if not data.exists():
            started = time.monotonic()
            write_traces(data, size, args.tokens)
            print(f"wrote {data} ({data.stat().st_size / 2**20:.0f} MB) in {time.monotonic() - started:.0f}s", flush=True)
        if args.format == "jsonl":
            parquet, data = data, folder / "traces.jsonl"
            if not data.exists():
                write_jsonl(parquet, data)
        recipe = folder / f"recipe-{args.format}.yaml"
        recipe.write_text(RECIPE.format(path=data), encoding="utf-8")
        for mode in args.modes:
            journal = folder / f"{mode}-journal.sqlite"
            run_dir = folder / "run"
            for stale in (journal, Path(f"{journal}-wal"), Path(f"{journal}-shm")):
                stale.unlink(missing_ok=True)
            subprocess.run(["rm", "-rf", str(run_dir)], check=True)
            if mode == "import":
                command = [sys.executable, "-c", IMPORT_ONLY, str(recipe), str(journal)]
            else:
                command = [sys.executable, "-m", "curation.cli", "run", str(recipe), "-o", str(run_dir), "-q"]
            measured = timed(command, env)
            row = {"mode": mode, "format": args.format, "traces": size, "tokens": args.tokens, "file_mb": round(data.stat().st_size / 2**20, 1), **measured}
            results.append(row)
            print(json.dumps(row), flush=True)
            with open(out / "import_scale.jsonl", "a", encoding="utf-8") as handle:
                handle.write(json.dumps({**row, "date": time.strftime("%Y-%m-%d %H:%M")}) + "\n")
            journal.unlink(missing_ok=True)
    for mode in args.modes:
        rows = [r for r in results if r["mode"] == mode]
        if len(rows) >= 2:
            small, large = rows[0], rows[-1]
            print(f"{mode}: {large['traces'] // small['traces']}x the traces -> {large['peak_rss_mb'] / small['peak_rss_mb']:.2f}x the peak RSS, "
                  f"{large['seconds'] / max(small['seconds'], 0.1):.1f}x the seconds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
