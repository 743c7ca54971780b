"""Benchmark: `curate run` and `curate score` at paper scale on one machine, peak RSS and seconds.

    .venv/bin/python bench/scale.py                                  # 500, 2,000 and 8,000 questions x 9 traces
    .venv/bin/python bench/scale.py --sizes 500 2000                 # chosen sizes
    .venv/bin/python bench/scale.py --sizes 500 --baseline /path/to/old/checkout   # the same run with other code
    .venv/bin/python bench/scale.py --sizes 500 2000 --verify       # and `curate verify` of each run folder

A TGI-protocol server (``tests/servers/tgi_server.py``'s, in its own process on 127.0.0.1)
answers every ``/generate`` with a 1,000-token trace and top-5 logprobs, as Qwen3-class thinking
traces run. Its answers are built once at start-up (12 traces: 3 answers x 4 logprob patterns,
checked against TGI's OpenAPI schema) and the one sent is picked by a hash of the prompt and
seed, so the server costs little CPU and what is measured is the client. Logprobs carry about 7
significant digits, as TGI's JSON does.

For each size the recipe is ``recipes/perturbqa.yaml``'s generator, answer, score and select
sections (8 samples + the greedy reference, cocoa_ppl, 10% per class) on a synthetic source of
that many questions. ``curate run`` then ``curate score`` each run under ``/usr/bin/time -v``:
peak RSS is the curate process's maximum resident set, CPU its user + system seconds.
``--baseline DIR`` runs the same with ``PYTHONPATH=DIR`` (e.g. an older checkout) for a ratio
in the same run. Results are appended to ``bench/out/scale.jsonl`` (ignored by git).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TOKENS = 1000
VERIFY = False  # --verify
LABELS = ["upregulated", "downregulated", "not differentially expressed"]
WORDS = [" the", " gene", " knockdown", " of", " reduces", " expression", " pathway", " complex", " so", " target", " is", " likely", " regulated", " by", " transcription", " factor"]


# --------------------------------------------------------------------------- the server
def _trace_body(label: str, pattern: int) -> dict[str, Any]:
    """One /generate response with details: <think> words </think><answer>label</answer> then EOS, TOKENS tokens."""
    rng = random.Random(f"{label}/{pattern}")
    closing = ["</think>", "<answer>", *[(" " if i else "") + w for i, w in enumerate(label.split())], "</answer>"]
    texts = ["<think>"] + [WORDS[rng.randrange(len(WORDS))] for _ in range(TOKENS - 2 - len(closing))] + closing + ["</s>"]
    tokens, top_tokens = [], []
    for position, text in enumerate(texts):
        # ~7 significant digits, as TGI writes float32 logprobs as decimal text
        logprob = float(f"{-rng.expovariate(4.0 if pattern % 2 else 2.0):.7g}")
        special = text == "</s>"
        tokens.append({"id": 1000 + position % 500, "text": text, "logprob": logprob, "special": special})
        alternatives = [logprob] + sorted((float(f"{logprob - rng.expovariate(0.7) - 0.01 * k:.7g}") for k in range(4)), reverse=True)
        top_tokens.append([{"id": 2000 + k, "text": WORDS[k], "logprob": value, "special": False} for k, value in enumerate(alternatives)])
    return {
        "generated_text": "".join(t for t in texts if t != "</s>"),
        "details": {"finish_reason": "eos_token", "generated_tokens": len(texts), "prefill": [], "seed": 1, "tokens": tokens, "top_tokens": top_tokens},
    }


def serve(port: int) -> None:
    """Serve TGI's protocol with the prebuilt traces (run in its own process by the benchmark)."""
    from aiohttp import web

    from tests.servers.tgi_server import TGIError, TGITestServer, validate_generate_request

    class PrebuiltTGIServer(TGITestServer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.bodies = {}
            for label in LABELS:
                for pattern in range(4):
                    body = _trace_body(label, pattern)
                    self.spec.check_response("GenerateResponse", body, what="/generate")
                    # the seed is written per request; the rest of the body is encoded once
                    self.bodies[(label, pattern)] = json.dumps(body, separators=(",", ":")).replace('"seed":1', '"seed":__SEED__').encode()

        async def _generate(self, request, body, fault, compat):
            try:
                valid = validate_generate_request(body, self.model, self.limits, compat_full_text=False)
            except TGIError as err:
                return self._error(err, request.path)
            parameters = body.get("parameters") or {}
            seed = parameters.get("seed")
            digest = hashlib.sha256(f"{body.get('inputs')}|{seed}".encode()).digest()
            # the greedy reference and most samples agree on a per-prompt answer; some samples differ
            favoured = hashlib.sha256(str(body.get("inputs")).encode()).digest()[0] % 3
            label = LABELS[favoured if seed is None or digest[0] < 190 else digest[1] % 3]
            payload = self.bodies[(label, digest[2] % 4)].replace(b"__SEED__", str(seed if seed is not None else 0).encode())
            if seed is None:
                payload = payload.replace(b'"seed":0', b'"seed":null')
            self.generations += 1
            del valid
            return web.Response(body=payload, content_type="application/json")

        def build_app(self):
            app = super().build_app()
            app.router.add_post("/chat_tokenize", self._chat_tokenize)
            return app

        async def _chat_tokenize(self, request):
            from curation.backends.templates import local_renderer

            body = await request.json()
            text = local_renderer("chatml")(body["messages"])
            return web.json_response({"templated_text": text, "tokenize_response": []})

    import asyncio

    server = PrebuiltTGIServer(host="127.0.0.1", port=port, max_concurrent_requests=256, max_total_tokens=8192, max_input_tokens=4096)

    async def main() -> None:
        runner = server.make_runner()
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


# --------------------------------------------------------------------------- one size
RECIPE = """\
name: scale-{n}
source:
  path: questions.csv
  id_column: qid
  label_column: label
prompt:
  system: You are an expert in molecular and cell biology. End with <answer>upregulated</answer>, <answer>downregulated</answer> or <answer>not differentially expressed</answer>.
  user: "Perturbation: CRISPRi knockdown of {{{{ pert }}}}. Is {{{{ gene }}}} upregulated, downregulated, or not differentially expressed?"
generator:
  backend: tgi
  url: {url}
  chat_template: chatml
  samples: 8
  reference: true
  temperature: 1.0
  top_p: 1.0
  max_new_tokens: 1024
  top_logprobs: 5
  seed: 0
  concurrency: 32
  timeout: 600
answer:
  tag: answer
  labels: [upregulated, downregulated, not differentially expressed]
score:
  metric: cocoa_ppl
  similarity: answer
select:
  strategy: per_class
  fraction: 0.1
  completion: reference
  drop_truncated: true
"""


def timed(command: list[str], env: dict, cwd: Path) -> dict:
    """Run under /usr/bin/time -v: wall seconds, user+sys CPU seconds, peak RSS in MB.

    ``cwd`` must not hold a ``curation`` package: ``python -m`` puts the working directory ahead of
    PYTHONPATH, so running from a checkout would measure that checkout instead of ``--baseline``.
    """
    started = time.perf_counter()
    result = subprocess.run(["/usr/bin/time", "-v", *command], env=env, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    fields = dict(re.findall(r"^\s*(.+?): (.+)$", result.stderr, re.MULTILINE))
    return {
        "seconds": round(wall, 1),
        "user_s": float(fields["User time (seconds)"]),
        "sys_s": float(fields["System time (seconds)"]),
        "peak_rss_mb": round(int(fields["Maximum resident set size (kbytes)"]) / 1024, 1),
    }


def one_size(n: int, url: str, work: Path, code: Path, label: str) -> dict:
    folder = work / f"{label}-{n}"
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    with open(folder / "questions.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["qid", "pert", "gene", "label"])
        for i in range(n):
            writer.writerow([f"k562__P{i // 50}__G{i}", f"P{i // 50}", f"G{i}", LABELS[i % 7 % 3]])
    (folder / "recipe.yaml").write_text(RECIPE.format(n=n, url=url))
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    curate = [sys.executable, "-m", "curation.cli"]
    run_dir = folder / "run"
    measured = {"size": n, "code": label, "questions": n, "traces": n * 9}
    measured["run"] = timed([*curate, "run", str(folder / "recipe.yaml"), "-o", str(run_dir), "-q"], env, folder)
    measured["score"] = timed([*curate, "score", str(run_dir)], env, folder)
    if VERIFY:  # curate verify recomputes what curate score does, from the published traces instead of the journal
        measured["verify"] = timed([*curate, "verify", str(run_dir)], env, folder)
        measured["verify"]["vs_score"] = round(measured["verify"]["seconds"] / measured["score"]["seconds"], 2)
    measured["curation_from"] = subprocess.run([*curate[:1], "-c", "import curation; print(curation.__file__)"], env=env, cwd=folder, capture_output=True, text=True).stdout.strip()
    stats = json.loads((run_dir / "stats.json").read_text())
    import sqlite3

    db = sqlite3.connect(run_dir / "journal.sqlite")
    tokens = db.execute("SELECT SUM(LENGTH(arrays)) FROM traces").fetchone()[0]
    db.close()
    measured["journal_mb"] = round((run_dir / "journal.sqlite").stat().st_size / 1e6, 1)
    measured["kept"] = stats["kept"]
    measured["tokens"] = n * 9 * TOKENS
    measured["array_bytes"] = tokens
    measured["run"]["client_cpu_us_per_token"] = round(1e6 * (measured["run"]["user_s"] + measured["run"]["sys_s"]) / measured["tokens"], 2)
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[500, 2000, 8000], help="sizes for this checkout (none: only --baseline)")
    parser.add_argument("--baseline", type=Path, help="another checkout to run the same sizes with (PYTHONPATH)")
    parser.add_argument("--baseline-sizes", type=int, nargs="+", help="sizes for the baseline (default: --sizes)")
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "out" / "scale")
    parser.add_argument("--port", type=int, default=18089)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--verify", action="store_true", help="also time `curate verify RUN_DIR` after `curate score` (its ratio to score in the same run)")
    args = parser.parse_args()
    global VERIFY
    VERIFY = args.verify
    if args.serve:
        serve(args.port)
        return
    server = subprocess.Popen([sys.executable, __file__, "--serve", "--port", str(args.port)], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        if server.stdout.readline().strip() != "ready":
            raise RuntimeError("the TGI-protocol server did not start")
        url = f"http://127.0.0.1:{args.port}"
        out = ROOT / "bench" / "out" / "scale.jsonl"
        out.parent.mkdir(parents=True, exist_ok=True)
        plan = [(n, ROOT, "this") for n in args.sizes]
        if args.baseline:
            plan = [(n, args.baseline.resolve(), "baseline") for n in (args.baseline_sizes or args.sizes)] + plan
        for n, code, label in plan:
            result = one_size(n, url, args.work, code, label)
            result["load_avg"] = os.getloadavg()[0]
            print(json.dumps(result), flush=True)
            with open(out, "a") as handle:
                handle.write(json.dumps(result) + "\n")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
