"""Saturation: the runner against llama-server (8 slots), as a fraction of a bare asyncio load generator.

    scripts/build_llama_server.sh                       # once (cached)
    .venv/bin/python bench/runner_saturation.py         # n=4 requests and one request per trace, 3 rounds
    .venv/bin/python bench/runner_saturation.py --mode n --rounds 5 --max-tokens 96

Workload (as in DESIGN.md): 48 PerturbQA prompts (the quickstart prompt over
recipes/data/perturbqa-k562-sample.csv) x 4 samples, embedded SmolLM2-135M-Instruct Q4_1,
llama-server -np 8 on 127.0.0.1. For each round and mode, the two clients run back to back
(in alternating order) against the same server on the same requests (same prompts, same
seeds, so the same tokens), each on a cold prompt cache: the server runs with --cache-ram 0,
every slot is erased before each client starts, and each round has its own nonce at the head
of the system prompt.

- runner: plan_requests + run_generation through the `openai` backend into a fresh journal:
  the real `curate run` generation path (retries, journal commits, progress ticker).
- bare: the very same request bodies (taken from the backend), posted with one httpx client
  and asyncio.gather, all at once; the server queues what its 8 slots cannot take.

traces/s = traces / wall time; tokens/s counts completion tokens from the logprob arrays. The
figure of merit is runner / bare per round; the median over rounds is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import msgspec  # noqa: E402

from curation.backends.openai import OpenAIBackend  # noqa: E402
from curation.generate import plan_requests, run_generation  # noqa: E402
from curation.journal import Journal  # noqa: E402
from curation.recipe.load import load_recipe  # noqa: E402
from curation.recipe.sections import GeneratorConfig
from curation.source import load_questions  # noqa: E402
from tests.builders.llama_server import LlamaServer, llama_server_binary  # noqa: E402

PROMPTS, SAMPLES = 48, 4


def questions(nonce: str):
    loaded = load_recipe(str(ROOT / "recipes" / "quickstart.yaml"))
    source = loaded.recipe.source.model_copy(update={"limit": PROMPTS})
    loaded.recipe = loaded.recipe.model_copy(update={"source": source})
    qs = load_questions(loaded).questions
    for q in qs:
        q.messages = [dict(m) for m in q.messages]
        q.messages[0]["content"] = f"[{nonce}] " + q.messages[0]["content"]
    return qs


def config_for(url: str, mode: str, max_tokens: int, concurrency: int) -> GeneratorConfig:
    return GeneratorConfig(
        backend="openai", url=url, samples=SAMPLES, reference=False, temperature=1.0, max_new_tokens=max_tokens,
        top_logprobs=5, stop=["</answer>"], use_n=(mode == "n"), concurrency=concurrency, timeout=600,
    )


def run_runner(url: str, mode: str, nonce: str, max_tokens: int, concurrency: int) -> dict:
    config = config_for(url, mode, max_tokens, concurrency)
    backend = OpenAIBackend(config)
    backend.model_identity()
    qs = questions(nonce)
    with tempfile.TemporaryDirectory() as folder, Journal(Path(folder) / "journal.sqlite") as journal:
        start = time.perf_counter()
        requests = plan_requests(qs, config, backend)
        stats = run_generation(requests, backend, journal, show_progress=False)
        wall = time.perf_counter() - start
    assert stats.generated == PROMPTS * SAMPLES and not stats.failed, stats
    return {"client": "runner", "traces": stats.generated, "tokens": stats.tokens, "requests": stats.attempts, "wall_s": wall}


def run_bare(url: str, mode: str, nonce: str, max_tokens: int) -> dict:
    config = config_for(url, mode, max_tokens, 8)
    backend = OpenAIBackend(config)
    backend.model_identity()
    requests = plan_requests(questions(nonce), config, backend)
    by_prompt: dict[str, list] = {}
    for r in requests:
        by_prompt.setdefault(r.prompt_id, []).append(r)
    bodies = [msgspec.json.encode(backend.body(group)[0]) for rs in by_prompt.values() for group in backend.group(rs)]

    async def go() -> tuple[int, int]:
        async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=len(bodies))) as client:
            async def one(body: bytes) -> tuple[int, int]:
                response = await client.post(url + "/v1/chat/completions", content=body, headers={"content-type": "application/json"})
                choices = response.json()["choices"]
                return len(choices), sum(len(c["logprobs"]["content"]) for c in choices)

            results = await asyncio.gather(*(one(b) for b in bodies))
        return sum(r[0] for r in results), sum(r[1] for r in results)

    start = time.perf_counter()
    traces, tokens = asyncio.run(go())
    wall = time.perf_counter() - start
    assert traces == PROMPTS * SAMPLES
    return {"client": "bare", "traces": traces, "tokens": tokens, "requests": len(bodies), "wall_s": wall}


def erase_slots(url: str, slots: int) -> None:
    for slot in range(slots):
        httpx.post(f"{url}/slots/{slot}?action=erase", timeout=30).raise_for_status()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["n", "single", "both"], default="both", help="n: one n=4 request per prompt; single: one request per trace")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--concurrency", type=int, default=8, help="runner requests in flight (generator.concurrency)")
    parser.add_argument("--threads", type=int, default=1, help="llama-server -t (spin-waiting threads make -t 2 slower on a shared 2-core machine)")
    args = parser.parse_args()
    binary = llama_server_binary()
    if not binary.exists():
        sys.exit(f"{binary} is missing: run scripts/build_llama_server.sh")
    modes = ["n", "single"] if args.mode == "both" else [args.mode]
    results = []
    folder = tempfile.mkdtemp(prefix="saturation-")
    # --slot-save-path enables the slot actions (erase); --cache-ram 0: no host-side prompt cache
    server_args = ("--cache-ram", "0", "--slots", "--slot-save-path", folder)
    with LlamaServer(binary, Path(folder) / "server.log", slots=8, threads=args.threads, extra_args=server_args) as server:
        run_bare(server.url, "n", "warm-up", 8)  # load the model into memory
        for round_ in range(args.rounds):
            for mode in modes:
                order = ["runner", "bare"] if round_ % 2 == 0 else ["bare", "runner"]
                row = {}
                for client in order:
                    nonce = f"{mode}-{round_}"
                    erase_slots(server.url, 8)
                    if client == "runner":
                        row[client] = run_runner(server.url, mode, nonce, args.max_tokens, args.concurrency)
                    else:
                        row[client] = run_bare(server.url, mode, nonce, args.max_tokens)
                r, b = row["runner"], row["bare"]
                result = {
                    "mode": mode, "round": round_,
                    "runner_traces_s": r["traces"] / r["wall_s"], "bare_traces_s": b["traces"] / b["wall_s"],
                    "runner_tokens_s": r["tokens"] / r["wall_s"], "bare_tokens_s": b["tokens"] / b["wall_s"],
                }
                result["traces_ratio"] = result["runner_traces_s"] / result["bare_traces_s"]
                result["tokens_ratio"] = result["runner_tokens_s"] / result["bare_tokens_s"]
                results.append(result)
                print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}), flush=True)
    for mode in modes:
        rows = [r for r in results if r["mode"] == mode]
        summary = {key: round(statistics.median(r[key] for r in rows), 3) for key in rows[0] if key not in ("mode", "round")}
        print(json.dumps({"mode": mode, "rounds": len(rows), "median": summary}))


if __name__ == "__main__":
    main()
