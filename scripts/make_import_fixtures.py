"""Regenerate tests/data/imports/: what distilabel and bespokelabs curator really write, for the import presets.

The files are produced by the tools themselves, run offline against a local OpenAI-compatible
server (llama.cpp's llama-server serving the embedded SmolLM2-135M-Instruct GGUF), so the presets
in curation.recipe.traces.TRACE_PRESETS are tested on their real output shapes, not on guesses.

The tools are not curate dependencies: install them into a separate venv and run this script there
(it imports nothing from curate)::

    python -m venv /tmp/tools && /tmp/tools/bin/pip install "distilabel[openai]==1.5.3" "bespokelabs-curator==0.1.31"
    /tmp/tools/bin/python scripts/make_import_fixtures.py \\
        --llama-server "$(scripts/build_llama_server.sh)" \\
        --gguf "$(.venv/bin/python -c 'import os; from curation.backends.local import embedded_model_location as e; print(os.path.join(*e()))')"

or against any running server: ``--url http://127.0.0.1:8080 --model NAME``.

Written (small, committed):
- distilabel_text_generation.jsonl: TextGeneration, 3 generations per instruction, one row each
  (`instruction`, `generation`, `model_name`, `distilabel_metadata`; with logprobs asked for, also
  `llm_text_generation_0_logprobs`, only each token's top alternatives as {token, logprob}).
- distilabel_grouped.jsonl: the same with group_generations=True (`generation` becomes a list per row,
  and so do `distilabel_metadata` and `llm_text_generation_0_logprobs`).
- curator_responses.parquet: a curator.LLM whose parse() keeps the question and the response with
  the chat completion's token logprobs and top-3 (return_completions_object=True), 3 samples per
  question, one row per sample.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "imports"
ANIMALS = ["cat", "eagle", "salmon", "dog", "sparrow", "shark", "horse", "owl"]
PROMPT = "Is a {animal} a mammal, a bird or a fish? Answer with one word inside <answer></answer> tags."
SAMPLES = 3
MAX_TOKENS = 48


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_llama_server(binary: str, gguf: str, log: Path) -> tuple[str, subprocess.Popen]:
    port = free_port()
    command = [binary, "-m", gguf, "--host", "127.0.0.1", "--port", str(port), "-np", "4", "-t", "1", "-tb", "1", "--no-webui", "-c", "4096", "--alias", "SmolLM2-135M-Instruct"]
    process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return url, process
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise SystemExit(f"llama-server did not start; see {log}")


def run_distilabel(url: str, model: str, grouped: bool, path: Path) -> None:
    from distilabel.models import OpenAILLM
    from distilabel.pipeline import Pipeline
    from distilabel.steps import LoadDataFromDicts
    from distilabel.steps.tasks import TextGeneration

    with Pipeline(name=f"curate-fixture-{'grouped' if grouped else 'rows'}") as pipeline:
        load = LoadDataFromDicts(data=[{"instruction": PROMPT.format(animal=a)} for a in ANIMALS])
        generate = TextGeneration(
            llm=OpenAILLM(model=model, base_url=f"{url}/v1", api_key="unused", generation_kwargs={"temperature": 1.0, "max_new_tokens": MAX_TOKENS}),
            num_generations=SAMPLES,
            group_generations=grouped,
        )
        load >> generate
    distiset = pipeline.run(use_cache=False)
    distiset["default"]["train"].to_json(str(path))


def offline_tiktoken() -> None:
    """curator counts input tokens with tiktoken's cl100k_base (only to pace requests under rate
    limits), which tiktoken downloads on first use; offline, give it a byte-level encoding instead.
    The counts are estimates either way, and nothing of them reaches the output."""
    import tiktoken

    byte_level = tiktoken.Encoding(name="byte-level", pat_str=r"[\s\S]", mergeable_ranks={bytes([i]): i for i in range(256)}, special_tokens={})
    tiktoken.get_encoding = lambda name: byte_level


def run_curator(url: str, model: str, path: Path) -> None:
    from bespokelabs import curator
    from datasets import Dataset

    offline_tiktoken()

    class Animals(curator.LLM):
        return_completions_object = True

        def prompt(self, row):
            return row["question"]

        def parse(self, row, response):
            choice = response["choices"][0]
            content = choice["logprobs"]["content"]
            return {
                "question": row["question"],
                "sample": row["sample"],
                "response": choice["message"]["content"],
                "token_logprobs": [entry["logprob"] for entry in content],
                "top_logprobs": [[alt["logprob"] for alt in entry["top_logprobs"]] for entry in content],
                "finish_reason": choice["finish_reason"],
                "model": response.get("model"),
            }

    rows = [{"question": PROMPT.format(animal=a), "sample": s} for a in ANIMALS for s in range(1, SAMPLES + 1)]
    llm = Animals(
        model_name=model,
        backend="openai",
        # distinct seeds: curator caches by request, and the samples must differ
        generation_params={"temperature": 1.0, "max_tokens": MAX_TOKENS, "logprobs": True, "top_logprobs": 3},
        backend_params={"base_url": f"{url}/v1", "api_key": "unused", "max_retries": 1, "require_all_responses": False},
    )
    with tempfile.TemporaryDirectory() as cache:
        result = llm(Dataset.from_list(rows), working_dir=cache)
        dataset = result.dataset if hasattr(result, "dataset") else result
        dataset.to_parquet(str(path))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running OpenAI-compatible server (default: start --llama-server)")
    parser.add_argument("--model", default="SmolLM2-135M-Instruct", help="model name sent to the server (llama-server is started with it as --alias)")
    parser.add_argument("--llama-server", help="llama-server binary")
    parser.add_argument("--gguf", help="GGUF model file for llama-server")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("CURATOR_DISABLE_CACHE", "1")
    os.environ.setdefault("TELEMETRY_ENABLED", "false")  # curator's posthog telemetry: offline it only logs errors
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
    os.environ.setdefault("DISTILABEL_CACHE_DIR", tempfile.mkdtemp(prefix="distilabel-"))
    os.environ.setdefault("CURATOR_CACHE_DIR", tempfile.mkdtemp(prefix="curator-"))
    process = None
    url = args.url
    if url is None:
        if not (args.llama_server and args.gguf):
            parser.error("give --url, or --llama-server and --gguf")
        url, process = start_llama_server(args.llama_server, args.gguf, Path(tempfile.gettempdir()) / "import-fixtures-llama.log")
    try:
        run_distilabel(url, args.model, False, OUT / "distilabel_text_generation.jsonl")
        run_distilabel(url, args.model, True, OUT / "distilabel_grouped.jsonl")
        run_curator(url, args.model, OUT / "curator_responses.parquet")
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=30)
    for path in sorted(OUT.iterdir()):
        print(f"{path.relative_to(OUT.parent.parent.parent)}: {path.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
