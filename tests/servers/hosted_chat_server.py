"""A hosted chat API without logprobs, as OpenAI serves its reasoning models (o1, o3, o4-mini, gpt-5), for tests.

In-process through httpx.MockTransport, as `openai_server.FakeOpenAIServer`, whose generation it reuses
(a pure function of prompt, seed and choice index). What differs is what OpenAI's reasoning models
refuse, each with the real error shape (HTTP 400, `{"error": {message, type, param, code}}`), as
users have quoted them from the API:

- `max_tokens`: `unsupported_parameter`, "Unsupported parameter: 'max_tokens' is not supported with this
  model. Use 'max_completion_tokens' instead.";
- a `temperature` or `top_p` other than the default 1: `unsupported_value`, "Unsupported value:
  'temperature' does not support 0 with this model. Only the default (1) value is supported.";
- `logprobs` / `top_logprobs`, and `stop`: `unsupported_parameter`, "Unsupported parameter: 'logprobs' is
  not supported with this model.".

The first refused parameter is reported, as the API does. It accepts `max_completion_tokens`,
`reasoning_effort` (minimal, low, medium, high), `seed` and `n`; every choice has `logprobs: null`;
`usage.completion_tokens_details.reasoning_tokens` counts hidden reasoning (a fixed share here). The
models list says `owned_by: "system"`, as api.openai.com does.

`reply(body) -> str | None` overrides a choice's text (a judge's `<evaluation>` reply, say);
`append(body, text) -> str` adds to each choice's text (a stated `<confidence>`, say).
"""

from __future__ import annotations

from typing import Any, Callable

import httpx

from tests.servers.openai_server import FakeOpenAIServer, _error

REFUSED_PARAMETERS = ("max_tokens", "logprobs", "top_logprobs", "stop")
DEFAULT_ONLY = ("temperature", "top_p")
ACCEPTED = {"model", "messages", "max_completion_tokens", "reasoning_effort", "seed", "n", "temperature", "top_p", "stream", "stream_options"}
EFFORTS = ("minimal", "low", "medium", "high")


class HostedReasoningChatServer(FakeOpenAIServer):
    def __init__(
        self, *, models: tuple[str, ...] = ("o4-mini",), reply: Callable[[dict], str | None] | None = None,
        append: Callable[[dict, str], str] | None = None, **kwargs: Any,
    ):
        super().__init__(owned_by="system", models=models, **kwargs)
        self.reply = reply
        self.append = append
        self.refused: list[dict] = []  # the 400s sent: {"param", "code"}
        self.transport = httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path == "/v1/completions":
            self.requests.append({"method": "POST", "path": request.url.path, "headers": dict(request.headers), "body": None})
            return _error(404, "This is a chat model and not supported in the v1/completions endpoint. Did you mean to use v1/chat/completions?", "invalid_request_error", None)
        if request.method == "POST" and request.url.path == "/v1/chat/completions":
            import json

            body = json.loads(request.content) if request.content else {}
            refusal = self.refusal(body)
            if refusal is not None:
                self.requests.append({"method": "POST", "path": request.url.path, "headers": dict(request.headers), "body": body})
                return refusal
        return super().handle(request)

    def refusal(self, body: dict) -> httpx.Response | None:
        for param in body:
            if param in REFUSED_PARAMETERS:
                message = f"Unsupported parameter: '{param}' is not supported with this model."
                if param == "max_tokens":
                    message += " Use 'max_completion_tokens' instead."
                return self._refuse(param, "unsupported_parameter", message)
            if param in DEFAULT_ONLY and body[param] != 1:
                value = body[param]
                shown = int(value) if float(value).is_integer() else value
                message = f"Unsupported value: '{param}' does not support {shown} with this model. Only the default (1) value is supported."
                return self._refuse(param, "unsupported_value", message)
            if param not in ACCEPTED:
                return self._refuse(param, "unknown_parameter", f"Unrecognized request argument supplied: {param}")
        effort = body.get("reasoning_effort")
        if effort is not None and effort not in EFFORTS:
            return self._refuse("reasoning_effort", "unsupported_value", f"Unsupported value: 'reasoning_effort' does not support '{effort}' with this model. Supported values are: 'low', 'medium', and 'high'.")
        return None

    def _refuse(self, param: str, code: str, message: str) -> httpx.Response:
        self.refused.append({"param": param, "code": code})
        return httpx.Response(400, json={"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}})

    def check(self, body: Any, *, chat: bool) -> list[str]:
        # the base server's rules, with the reasoning API's token field in place of max_tokens
        shaped = dict(body)
        if "max_completion_tokens" in shaped:
            shaped["max_tokens"] = shaped.pop("max_completion_tokens")
        shaped.pop("reasoning_effort", None)
        return super().check(shaped, chat=chat)

    def complete(self, body: dict, *, chat: bool) -> dict:
        shaped = dict(body)
        shaped["max_tokens"] = shaped.pop("max_completion_tokens", 16)
        answer = super().complete(shaped, chat=chat)
        total = 0
        for choice in answer["choices"]:
            choice["logprobs"] = None
            if self.reply is not None:
                text = self.reply(body)
                if text is not None:
                    choice["message"]["content"] = text
            if self.append is not None:  # per choice: e.g. a stated <confidence>
                choice["message"]["content"] += self.append(body, choice["message"]["content"])
        total = answer["usage"]["completion_tokens"]
        reasoning = 3 * total  # hidden reasoning, billed as output
        answer["usage"] = {
            "prompt_tokens": answer["usage"]["prompt_tokens"],
            "completion_tokens": total + reasoning,
            "total_tokens": 0,
            "completion_tokens_details": {"reasoning_tokens": reasoning},
        }
        return answer
