"""Size of `curate view`'s page against the run's size: is it bounded?

Writes synthetic run folders in the run contract's schema (the `scored` split sharded by 2,500 questions as
data/scored-0000i-of-0000N.parquet, the `traces` config under traces/) with N questions, three
classes, K=8 samples plus a reference per question and T tokens per trace, then times
`view.write_report` in a fresh process and records the page size and peak RSS. The baseline is the
same run at 1,000 questions: a bounded page has the same size at 10,000.

    .venv/bin/python bench/report_size.py                    # 1,000 and 10,000 questions, 256 tokens
    .venv/bin/python bench/report_size.py --questions 10000 --tokens 512
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

CLASSES = ["upregulated", "downregulated", "not differentially expressed"]
MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])


def write_run(run_dir: Path, n: int, k: int, tokens: int, per_shard: int = 2500) -> None:
    shards = -(-n // per_shard)  # fixed-size shards, as the streaming writer makes them
    rng = np.random.default_rng(0)
    (run_dir / "data").mkdir(parents=True)
    (run_dir / "traces").mkdir()
    ids = [f"q{i:06d}" for i in range(n)]
    answers = [CLASSES[i % 3] for i in range(n)]
    unc = rng.random(n)
    kept = np.zeros(n, bool)
    for c in range(3):  # keep the most certain 10% of each class
        idx = np.arange(c, n, 3)
        kept[idx[np.argsort(unc[idx])[: max(1, len(idx) // 10)]]] = True
    words = "the gene is knocked down so expression of the target falls because the pathway".split()
    for s in range(shards):
        part = slice(s * n // shards, (s + 1) * n // shards)
        m = len(ids[part])
        prompt = [[{"role": "user", "content": f"In K562 cells, gene {i} was knocked down. What happens to its target?"}] for i in ids[part]]
        scored = pa.table({
            "id": ids[part], "label": answers[part], "prompt": pa.array(prompt, type=pa.list_(MESSAGE)),
            "completion": pa.array([[{"role": "assistant", "content": "x" * 4 * tokens}]] * m, type=pa.list_(MESSAGE)),
            "answer": answers[part], "majority_answer": answers[part], "agreement": rng.random(m),
            "uncertainty": unc[part], "cocoa_ppl": unc[part], "perplexity": rng.random(m), "msp": rng.random(m) * 100,
            "kept": kept[part], "drop_reason": [None if k_ else "over_class_budget" for k_ in kept[part]],
        })
        pq.write_table(scored, run_dir / "data" / f"scored-{s:05d}-of-{shards:05d}.parquet")
        rows = m * (k + 1)
        text = " ".join(words[j % len(words)] for j in range(tokens))
        traces = pa.table({
            "id": np.repeat(np.array(ids[part]), k + 1),
            "sample_index": np.tile(np.arange(-1, k, dtype=np.int32), m),
            "is_reference": np.tile(np.arange(-1, k) == -1, m),
            "text": [text] * rows,
            "answer": np.repeat(np.array(answers[part]), k + 1),
            "token_logprobs": pa.FixedSizeListArray.from_arrays(-rng.random(rows * tokens, dtype=np.float32), tokens).cast(pa.list_(pa.float32())),
        })
        pq.write_table(traces, run_dir / "traces" / f"train-{s:05d}-of-{shards:05d}.parquet")


def measure(run_dir: Path, per_class: int) -> dict:
    code = (
        "import json,resource,sys,time; from curation import view; t=time.perf_counter();"
        f"p=view.write_report({str(run_dir)!r}, per_class={per_class});"
        "print(json.dumps({'seconds': time.perf_counter()-t, 'bytes': p.stat().st_size,"
        "'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--per-class", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.questions:
            run_dir = Path(tmp) / f"run{n}"
            write_run(run_dir, n, args.samples, args.tokens)
            parquet = sum(p.stat().st_size for p in run_dir.rglob("*.parquet"))
            result = measure(run_dir, args.per_class)
            print(json.dumps({"questions": n, "samples": args.samples, "tokens": args.tokens, "per_class": args.per_class,
                              "run_parquet_mb": round(parquet / 1e6, 1), "page_mb": round(result["bytes"] / 1e6, 2),
                              "seconds": round(result["seconds"], 2), "peak_rss_mb": round(result["peak_rss_mb"])}), flush=True)


if __name__ == "__main__":
    main()
