"""Benchmark: score a synthetic run of N reference traces of T tokens with K samples each.

    .venv/bin/python bench/score_bench.py                      # 1,000,000 traces x 256 tokens, K = 8, top-5
    .venv/bin/python bench/score_bench.py --traces 125000      # one size
    .venv/bin/python bench/score_bench.py --sweep              # 125k, 250k, 500k, 1M, each in a fresh process
    .venv/bin/python bench/score_bench.py --whole              # the whole run in memory at once (before streaming)
    .venv/bin/python bench/score_bench.py --all-measures       # + every measure that needs no model (the samples carry tokens)

By default the run is scored as the pipeline scores it: in chunks of whole questions
(``--chunk`` traces, made one chunk at a time), so memory is one chunk's, whatever N is; only
the per-question outputs are kept. ``--whole`` builds all N traces first and scores them in one
call, as the pipeline did before it streamed.

The traces are built the way the traces parquet holds them (pyarrow list<float32> logprobs and
list<list<float32>> top-k rows), so the timing includes building the token arrays from arrow
(zero-copy) and every float32 -> float64 conversion. Timed: every confidence metric (msp,
perplexity, mean_token_entropy), self_consistency, semantic_consistency and CoCoA (msp, ppl, mte)
with answer similarity. ``--all-measures`` adds every measure that needs no model (semantic entropy in
both estimates, eccentricity, degree matrix, Laplacian eigenvalue sum, number of semantic sets,
sentence SAR, self-certainty, trace length, verbalized confidence): the K samples then carry
``--sample-tokens`` logprobs each (default ``--tokens``), read for their likelihoods, and every
reference has a text whose ``<confidence>`` tag is read; ``--sample-tokens 0`` leaves out the two
measures that read the samples' logprobs (semantic entropy's sum estimate, sentence SAR). Not timed: making the synthetic data. Peak RSS is the process's maximum
resident set (ru_maxrss), input data included; `input_rss` is the RSS once the data exists.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from curation.score import ScoringInputs, TokenArrays, compute_scores  # noqa: E402

TIMED_METRICS = ["msp", "perplexity", "mean_token_entropy", "self_consistency", "semantic_consistency", "cocoa_msp", "cocoa_ppl", "cocoa_mte"]
# --all-measures: every measure that needs no model (issue 31) on top; the samples then carry tokens
NO_MODEL_MEASURES = [
    "semantic_entropy", "semantic_entropy_frequency", "eccentricity", "degree_matrix", "laplacian_eigenvalue_sum",
    "num_semantic_sets", "sentence_sar", "self_certainty", "trace_length", "verbalized_confidence",
]
READ_SAMPLE_TOKENS = ["semantic_entropy", "sentence_sar"]  # the measures that read every sample's logprobs


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def synthetic(n: int, tokens: int, k: int, top_k: int, seed: int = 0):
    """Arrow columns of n reference traces and the [n, K] sample answer codes (3 classes, some unparsed)."""
    rng = np.random.default_rng(seed)
    values = rng.standard_exponential(n * tokens, dtype=np.float32)
    np.negative(values, out=values)
    # list<> with int32 offsets, as the traces parquet is read back (they fit: 1.28e9 < 2**31 values at 1M)
    offsets = np.arange(0, (n + 1) * tokens, tokens, dtype=np.int32)
    logprobs = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))
    # top-k rows: the chosen token's logprob then k-1 lower alternatives, best first
    steps = np.cumsum(rng.standard_exponential((1, top_k), dtype=np.float32), axis=1) - rng.standard_exponential((1, 1), dtype=np.float32)
    top = (values[:, None] - np.maximum(steps, 0)).reshape(-1)
    rows = pa.ListArray.from_arrays(pa.array(np.arange(0, n * tokens * top_k + 1, top_k, dtype=np.int32)), pa.array(top))
    del top
    top_lists = pa.ListArray.from_arrays(pa.array(offsets), rows)
    reference_answers = rng.integers(-1, 3, n)
    agree = rng.random((n, k)) < 0.7
    sample_answers = np.where(agree, reference_answers[:, None], rng.integers(-1, 3, (n, k)))
    return logprobs, top_lists, reference_answers, sample_answers


def record(mode: str, n: int, tokens: int, k: int, top_k: int, timings: dict, seconds_total: float, made: float, load: tuple, finite: dict, **mode_keys) -> dict:
    """One benchmark result line; the streamed and the whole mode differ only in ``mode_keys``."""
    return {
        "mode": mode,
        "traces": n,
        "tokens_per_trace": tokens,
        "k": k,
        "top_k": top_k,
        "seconds_total": round(seconds_total, 2),
        "seconds": {key: round(value, 2) for key, value in timings.items()},
        "make_data_seconds": round(made, 1),
        **mode_keys,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "loadavg_at_start": [round(x, 2) for x in load],
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        "finite_values": finite,
        "cpus": os.cpu_count(),
    }


def synthetic_samples(n: int, k: int, tokens: int, seed: int):
    """The K samples' logprobs (list<float32>, n*K traces of ``tokens``) and the references' texts with a stated confidence."""
    rng = np.random.default_rng(seed + 1)
    values = rng.standard_exponential(n * k * tokens, dtype=np.float32)
    np.negative(values, out=values)
    offsets = np.arange(n * k + 1, dtype=np.int64) * tokens
    texts = [f"... so the answer is <answer>up</answer> <confidence>{c}</confidence>" for c in rng.integers(0, 101, n)]
    return pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values)), texts


def run_streamed(n: int, tokens: int, k: int, top_k: int, chunk: int, all_measures: bool = False, sample_tokens: int = 0) -> dict:
    """Score chunk by chunk; the synthetic chunk is made (untimed) right before it is scored."""
    from curation.parse import read_confidence

    names = TIMED_METRICS + (NO_MODEL_MEASURES if all_measures else [])
    if all_measures and not sample_tokens:  # --sample-tokens 0: the two measures that read the samples' logprobs are left out
        names = [name for name in names if name not in READ_SAMPLE_TOKENS]
    timings = {"token_arrays_from_arrow": 0.0, "metrics": 0.0}
    if all_measures:
        timings["read_confidence"] = 0.0
    made = 0.0
    outputs = {name: np.empty(n) for name in names}
    baseline_rss = rss_mb()
    load = os.getloadavg()
    for start in range(0, n, chunk):
        size = min(chunk, n - start)
        t = time.perf_counter()
        logprobs, top, reference_answers, sample_answers = synthetic(size, tokens, k, top_k, seed=start)
        sample_logprobs, texts = synthetic_samples(size, k, sample_tokens, seed=start) if all_measures else (None, None)
        if not sample_tokens:
            sample_logprobs = None
        made += time.perf_counter() - t
        t = time.perf_counter()
        arrays = TokenArrays.from_arrow(logprobs, top)
        samples = TokenArrays.from_arrow(sample_logprobs) if sample_logprobs is not None else None
        timings["token_arrays_from_arrow"] += time.perf_counter() - t
        extra = {}
        if all_measures:
            t = time.perf_counter()
            extra = {"samples": samples, "verbalized": read_confidence(texts)} if samples is not None else {"verbalized": read_confidence(texts)}
            timings["read_confidence"] += time.perf_counter() - t
        t = time.perf_counter()
        scores = compute_scores(ScoringInputs(arrays, reference_answers, sample_answers, **extra), names)
        timings["metrics"] += time.perf_counter() - t
        assert not scores.skipped, scores.skipped
        for name, values in scores.values.items():
            outputs[name][start : start + size] = values
        del logprobs, top, arrays, scores, samples, sample_logprobs
    finite = {name: int(np.isfinite(v).sum()) for name, v in outputs.items()}
    return record(
        "streamed", n, tokens, k, top_k, timings, sum(timings.values()), made, load, finite, chunk_traces=chunk, baseline_rss_mb=round(baseline_rss),
        all_measures=all_measures, sample_tokens_per_trace=sample_tokens if all_measures else 0,
    )


def run_one(n: int, tokens: int, k: int, top_k: int) -> dict:
    started = time.perf_counter()
    logprobs, top, reference_answers, sample_answers = synthetic(n, tokens, k, top_k)
    made = time.perf_counter() - started
    input_rss = rss_mb()
    load = os.getloadavg()

    timings = {}
    t0 = time.perf_counter()
    arrays = TokenArrays.from_arrow(logprobs, top)
    timings["token_arrays_from_arrow"] = time.perf_counter() - t0
    inputs = ScoringInputs(arrays, reference_answers, sample_answers)  # similarity None: answer similarity
    t = time.perf_counter()
    _ = arrays.logprob_sums
    timings["logprob_sums"] = time.perf_counter() - t
    t = time.perf_counter()
    _ = arrays.entropy_sums
    timings["entropy_sums"] = time.perf_counter() - t
    t = time.perf_counter()
    scores = compute_scores(inputs, TIMED_METRICS)
    timings["metrics_after_sums"] = time.perf_counter() - t
    total = time.perf_counter() - t0
    assert set(scores.values) == set(TIMED_METRICS), scores.skipped
    finite = {name: int(np.isfinite(v).sum()) for name, v in scores.values.items()}
    return record("whole", n, tokens, k, top_k, timings, total, made, load, finite, input_rss_mb=round(input_rss))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=int, default=1_000_000)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--sweep", action="store_true", help="125k, 250k, 500k and 1M traces, each in a fresh process")
    parser.add_argument("--whole", action="store_true", help="score the whole run at once (the unstreamed way)")
    parser.add_argument("--chunk", type=int, default=8192, help="traces per streamed chunk")
    parser.add_argument("--all-measures", action="store_true", help="also every measure that needs no model (semantic entropy, graph measures, SAR, self-certainty, ...)")
    parser.add_argument("--sample-tokens", type=int, default=None, help="--all-measures: tokens per sample trace (default: --tokens)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "out" / "results.jsonl"))
    args = parser.parse_args()
    if args.sweep:
        for n in (125_000, 250_000, 500_000, 1_000_000):
            extra = ["--whole"] if args.whole else ["--chunk", str(args.chunk)]
            subprocess.run([sys.executable, __file__, "--traces", str(n), "--tokens", str(args.tokens), "--k", str(args.k), "--top-k", str(args.top_k), "--out", args.out, *extra], check=True)
        return 0
    sample_tokens = args.tokens if args.sample_tokens is None else args.sample_tokens
    if args.whole:
        result = run_one(args.traces, args.tokens, args.k, args.top_k)
    else:
        result = run_streamed(args.traces, args.tokens, args.k, args.top_k, args.chunk, args.all_measures, sample_tokens)
    print(json.dumps(result))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as handle:
        handle.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
