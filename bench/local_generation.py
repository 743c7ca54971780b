"""The local backend's decode loop on the quickstart's questions: where a step's time goes, and workers × threads.

    .venv/bin/python bench/local_generation.py                  # the first 4 questions, each layout once
    .venv/bin/python bench/local_generation.py --questions 6 --profile

Layouts, in this order, in one process on the same questions (one question = one batch of
reference + K samples, as `curate run` sends it):
- `1 worker x N threads`: one question at a time, torch's intra-op pool at N (the cores): the code before;
- `1 worker x 1 thread`: one question at a time on one thread;
- `W workers x 1 thread`: W questions at once, one thread each (the backend's default on a CPU).
The figure is traces per second of wall time, with the load average, since the machine may be
shared. The 1-thread layouts must give the same traces, token for token and bit for bit; the
N-thread layout may differ in low-order bits (a split matrix product adds in another order).
--profile adds the share of a step spent in the model's forward, the row sampler and the rest.

Results are appended to bench/out/results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import results_log  # bench/results_log.py: this script's folder is first on sys.path

ROOT = Path(__file__).resolve().parents[1]


def quickstart_groups(n: int):
    from curation.generate import make_backend, plan_requests
    from curation.recipe.load import load_recipe
    from curation.source import load_questions

    loaded = load_recipe(str(ROOT / "recipes" / "quickstart.yaml"))
    source = load_questions(loaded)
    questions = getattr(source, "questions", source)
    backend = make_backend(loaded.recipe.generator)
    by_prompt: dict[str, list] = {}
    for request in plan_requests(questions, loaded.recipe.generator, backend):
        by_prompt.setdefault(request.prompt_id, []).append(request)
    return backend, list(by_prompt.values())[:n]


def run_layout(backend, groups, workers: int, threads: int) -> tuple[float, list]:
    import torch

    loaded = backend._ensure_loaded()
    backend._ensure_loaded = lambda: loaded  # it would set 1 thread again: here the layout decides
    torch.set_num_threads(threads)
    started = time.monotonic()
    try:
        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(backend.generate_sync, groups))
    finally:
        del backend._ensure_loaded
    return time.monotonic() - started, [trace for traces in results for trace in traces]


def profile_step(backend, group) -> dict:
    """Time spent in the model's forward and in the row sampler during one question's generation."""
    import torch

    from curation.backends import local

    spent = {"forward": 0.0, "sampler": 0.0}
    model, _ = backend._ensure_loaded()
    torch.set_num_threads(1)
    original_forward, original_call = model.forward, local._SeededRowSampler.__call__

    def timed_forward(*args, **kwargs):
        started = time.perf_counter()
        try:
            return original_forward(*args, **kwargs)
        finally:
            spent["forward"] += time.perf_counter() - started

    def timed_sampler(self, *args):
        started = time.perf_counter()
        try:
            return original_call(self, *args)
        finally:
            spent["sampler"] += time.perf_counter() - started

    model.forward, local._SeededRowSampler.__call__ = timed_forward, timed_sampler
    try:
        started = time.perf_counter()
        traces = backend.generate_sync(group)
        total = time.perf_counter() - started
    finally:
        model.forward, local._SeededRowSampler.__call__ = original_forward, original_call
    steps = max(len(t.token_ids) for t in traces)
    return {"rows": len(group), "steps": steps, "total_s": round(total, 2), "per_step_s": round(total / steps, 3),
            "forward": round(spent["forward"] / total, 3), "sampler": round(spent["sampler"] / total, 3),
            "rest": round(1 - (spent["forward"] + spent["sampler"]) / total, 3)}


def same(a: list, b: list) -> dict:
    by_fp = {t.fingerprint: t for t in b}
    tokens = sum(list(t.token_ids) == list(by_fp[t.fingerprint].token_ids) for t in a)
    bits = sum(list(t.token_ids) == list(by_fp[t.fingerprint].token_ids) and list(t.token_logprobs) == list(by_fp[t.fingerprint].token_logprobs) for t in a)
    return {"traces": len(a), "same_tokens": tokens, "same_logprob_bits": bits}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=4)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--without-before", action="store_true", help="leave out the N-thread layout (minutes on a busy machine)")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    backend, groups = quickstart_groups(args.questions)
    backend._ensure_loaded()
    record = {"bench": "local_generation", "cores": cores, "questions": len(groups), "load_before": round(os.getloadavg()[0], 2)}
    if args.profile:
        record["profile_1_thread"] = profile_step(backend, groups[0])
    layouts = {}
    traces = {}
    plan = [(f"1 worker x {cores} threads", 1, cores), ("1 worker x 1 thread", 1, 1), (f"{cores} workers x 1 thread", cores, 1)]
    for name, workers, threads in plan[1:] if args.without_before else plan:
        wall, traces[name] = run_layout(backend, groups, workers, threads)
        layouts[name] = {"wall_s": round(wall, 1), "traces_per_s": round(len(traces[name]) / wall, 3), "load_after": round(os.getloadavg()[0], 2)}
        print(name, layouts[name], flush=True)
    names = [name for name, _, _ in plan if name in layouts]
    record["layouts"] = layouts
    record["1 thread: 1 worker vs workers"] = same(traces[plan[1][0]], traces[plan[2][0]])
    record["workers_vs_1_thread"] = round(layouts[plan[1][0]]["wall_s"] / layouts[plan[2][0]]["wall_s"], 2)
    if len(names) == 3:
        record["N threads vs 1 thread"] = same(traces[names[0]], traces[names[1]])
        record["speedup_vs_before"] = round(layouts[names[0]]["wall_s"] / layouts[names[2]]["wall_s"], 2)
    print(json.dumps(record), flush=True)
    results_log.append(record)


if __name__ == "__main__":
    main()
