"""Runner overhead: CPU cost per trace against an endpoint that answers instantly.

    .venv/bin/python bench/runner_overhead.py                      # all backends, MockTransport
    .venv/bin/python bench/runner_overhead.py --backend tgi --traces 20000
    .venv/bin/python bench/runner_overhead.py --socket             # real HTTP to an instant server in another process
    .venv/bin/python bench/runner_overhead.py --backend openai-think   # a reasoning teacher's answers (thinking + answer, n=4)

The whole client path is measured: planning (fingerprints), the runner (workers, endpoint
choice, retries bookkeeping, progress ticker), the backend (request body, httpx, response
parsing, Trace), and the journal (batched sqlite commits of binary arrays). The endpoint is an
httpx.MockTransport handing back a canned response (a realistic one: 64 tokens with top-5
alternatives, in TGI's or llama-server's shape), so no server work is counted; with --socket
the server is an aiohttp app in a separate process and only this process's CPU is counted.
The process is pinned to one core and the figure is traces per CPU-second of this process.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from curation.generate import plan_requests, run_generation  # noqa: E402
from curation.journal import Journal  # noqa: E402
from curation.recipe.sections import GeneratorConfig  # noqa: E402
from curation.types import Question

TOKENS = 64
TOP = 5
SAMPLES = 4


def tgi_response() -> bytes:
    rng = random.Random(0)
    tokens = [{"id": rng.randrange(49152), "text": " word", "logprob": -rng.random() * 3, "special": False} for _ in range(TOKENS)]
    top = [[{"id": rng.randrange(49152), "text": " alt", "logprob": -j - rng.random(), "special": False} for j in range(TOP)] for _ in range(TOKENS)]
    details = {"finish_reason": "eos_token", "generated_tokens": TOKENS, "seed": 42, "prefill": [], "tokens": tokens, "top_tokens": top}
    return json.dumps({"generated_text": " word" * TOKENS, "details": details}).encode()


def openai_response(n: int) -> bytes:
    rng = random.Random(n)

    def entry():
        return {"id": rng.randrange(49152), "token": " word", "bytes": [32, 119, 111, 114, 100], "logprob": -rng.random() * 3}

    choices = []
    for index in range(n):
        content = [{**entry(), "top_logprobs": [entry() for _ in range(TOP)]} for _ in range(TOKENS)]
        choices.append({"index": index, "message": {"role": "assistant", "content": " word" * TOKENS}, "logprobs": {"content": content}, "finish_reason": "stop"})
    return json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": choices, "usage": {"prompt_tokens": 40, "completion_tokens": TOKENS, "total_tokens": 40 + TOKENS}}).encode()


def thinking_response(n: int) -> bytes:
    """A vLLM reasoning-parser answer: 48 tokens of thinking (markers included) in `reasoning`, 16 of answer in `content`."""
    rng = random.Random(n + 100)
    pieces = ["<think>"] + [" word"] * 46 + ["</think>"] + [" word"] * 12 + ["<answer>", "up", "</answer>", "<|im_end|>"]

    def entry(token):
        return {"token": token, "bytes": list(token.encode()), "logprob": -rng.random() * 3}

    choices = []
    for index in range(n):
        content = [{**entry(t), "top_logprobs": [entry(" alt") for _ in range(TOP)]} for t in pieces]
        message = {"role": "assistant", "reasoning": " word" * 46, "content": " word" * 12 + "<answer>up</answer>"}
        choices.append({"index": index, "message": message, "logprobs": {"content": content}, "finish_reason": "stop"})
    return json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "bench/think", "choices": choices, "usage": {"prompt_tokens": 40, "completion_tokens": TOKENS, "total_tokens": 40 + TOKENS}}).encode()


def instant_transport(backend: str) -> httpx.MockTransport:
    info = json.dumps({"model_id": "bench/model", "model_sha": "abc", "max_concurrent_requests": 128, "max_best_of": 2, "max_stop_sequences": 4,
                       "max_input_tokens": 4095, "max_total_tokens": 4096, "validation_workers": 2, "max_client_batch_size": 4, "router": "text-generation-router", "version": "3.3.6"}).encode()
    models = json.dumps({"object": "list", "data": [{"id": m, "object": "model", "owned_by": "vllm"} for m in ("bench/model", "bench/think")]}).encode()
    canned = {"tgi": tgi_response(), "one": openai_response(1), "n": openai_response(SAMPLES), "think-one": thinking_response(1), "think-n": thinking_response(SAMPLES)}
    headers = {"content-type": "application/json"}

    def handle(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/generate":
            return httpx.Response(200, content=canned["tgi"], headers=headers)
        if path == "/v1/chat/completions":
            prefix = "think-" if b'"bench/think"' in request.content else ""
            return httpx.Response(200, content=canned[prefix + ("n" if b'"n":' in request.content else "one")], headers=headers)
        if path == "/info":
            return httpx.Response(200, content=info, headers=headers)
        if path == "/v1/models":
            return httpx.Response(200, content=models, headers=headers)
        return httpx.Response(404, json={"error": "no"})

    return httpx.MockTransport(handle)


def config_for(kind: str, url: str) -> GeneratorConfig:
    common = dict(url=url, samples=SAMPLES, max_new_tokens=TOKENS, top_logprobs=TOP, temperature=0.8, concurrency=8)
    if kind == "tgi":
        return GeneratorConfig(backend="tgi", chat_template="chatml", **common)
    if kind == "openai-think":  # a reasoning teacher's answers, n=4: the span search and the token strings at work
        return GeneratorConfig(backend="openai", model="bench/think", use_n=True, **common)
    return GeneratorConfig(backend="openai", model="bench/model", use_n=(kind == "openai-n"), **common)


def make_backend(kind: str, config: GeneratorConfig, transport):
    if kind == "tgi":
        from curation.backends.tgi import TGIBackend

        return TGIBackend(config, transport=transport)
    from curation.backends.openai import OpenAIBackend

    return OpenAIBackend(config, transport=transport)


def questions(n: int) -> list[Question]:
    return [Question(id=f"K562__GENE{i}__TARGET{i}", messages=[{"role": "system", "content": "You are a molecular biologist. Think, then answer."},
            {"role": "user", "content": f"In K562 cells, GENE{i} was knocked down with CRISPRi. What happens to TARGET{i}?"}], columns={}) for i in range(n)]


def measure(kind: str, traces: int, url: str, transport, show_progress: bool) -> dict:
    config = config_for(kind, url)
    backend = make_backend(kind, config, transport)
    qs = questions(traces // (SAMPLES + 1))
    backend.model_identity()  # start-up probe (/info, /v1/models) is not per-trace work
    with tempfile.TemporaryDirectory() as folder:
        with Journal(Path(folder) / "journal.sqlite") as journal:
            cpu, wall = time.process_time(), time.perf_counter()
            requests = plan_requests(qs, config, backend)
            stats = run_generation(requests, backend, journal, show_progress=show_progress)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            assert journal.count() == len(requests) == stats.generated, stats
    return {"backend": kind, "traces": stats.generated, "requests": stats.attempts, "cpu_s": cpu, "wall_s": wall,
            "traces_per_cpu_s": stats.generated / cpu, "traces_per_s": stats.generated / wall}


def start_socket_server() -> tuple[subprocess.Popen, str]:
    code = f"""
import sys; sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(ROOT / 'bench')!r})
from aiohttp import web
import runner_overhead as b
t = b.instant_transport("all")
async def any_route(request):
    body = await request.read()
    r = t.handler(b.httpx.Request(request.method, "http://x" + request.path, content=body))
    return web.Response(body=r.content, status=r.status_code, content_type="application/json")
app = web.Application(); app.router.add_route("*", "/{{tail:.*}}", any_route)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-c", code, str(port)])
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            httpx.get(url + "/info", timeout=1)
            return process, url
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError("instant server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["tgi", "openai", "openai-n", "openai-think", "all"], default="all")
    parser.add_argument("--traces", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--socket", action="store_true", help="real HTTP to an instant server in another process")
    parser.add_argument("--cpu", type=int, default=None, help="core to pin to (default: the last one)")
    parser.add_argument("--progress", action="store_true", help="draw the progress bar (to stderr)")
    args = parser.parse_args()
    cpu = args.cpu if args.cpu is not None else max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    server = None
    if args.socket:
        server, url = start_socket_server()
        transport = None
    else:
        url, transport = "http://instant.test", instant_transport("all")
    kinds = ["tgi", "openai", "openai-n", "openai-think"] if args.backend == "all" else [args.backend]
    try:
        for kind in kinds:
            measure(kind, min(args.traces, 1000), url, transport, False)  # warm-up
            runs = [measure(kind, args.traces, url, transport, args.progress) for _ in range(args.repeats)]
            best = statistics.median(r["traces_per_cpu_s"] for r in runs)
            print(json.dumps({**runs[0], "traces_per_cpu_s_runs": [round(r["traces_per_cpu_s"]) for r in runs],
                              "traces_per_cpu_s": round(best), "transport": "socket" if args.socket else "mock", "pinned_cpu": cpu}))
    finally:
        if server is not None:
            server.terminate()


if __name__ == "__main__":
    main()
