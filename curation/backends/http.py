"""What the `tgi` and `openai` backends share: one httpx client per event loop, error mapping, JSON.

Why plain httpx rather than `huggingface_hub.AsyncInferenceClient` or `text-generation`: the
runner needs the exact request body (TGI validates every field, and a misspelt one is silently
ignored), the raw status and error body to decide what is worth retrying, and a cheap path per
request (the client library's dataclass parsing costs more CPU than the HTTP call). httpx is
already a dependency, and its MockTransport lets tests and benchmarks run without sockets.

Errors are sorted into two kinds the runner understands:
- `RetryableError`: 408, 424 (TGI generation error), 425, 429, 5xx, connection errors,
  timeouts, and bodies that end early or do not parse; `retry_after` carries the server's
  Retry-After, and `overload` marks 429/503 so the runner can ease off that endpoint.
- `GenerationError`: everything a retry cannot fix (422 validation, 400, 401, 404, quota).
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from typing import Any

import httpx
import msgspec

from curation import __version__
from curation.types import GenerationError, RetryableError

# msgspec: the response schemas below each backend are decoded straight into typed structs,
# skipping what curate does not keep (token strings, UTF-8 byte lists), which is 1.5-2.5x
# cheaper than building the generic dicts; generic JSON goes through it too.
_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode


def loads(data: bytes | str) -> Any:
    return _decode(data)


def dumps(value: Any) -> bytes:
    return _encode(value)


def decode_response(response: httpx.Response, decoder: msgspec.json.Decoder) -> Any:
    """The body of a 200 decoded into the backend's response struct.

    A body that is not JSON (cut short, say) is worth a retry; JSON of the wrong shape is not.
    """
    try:
        return decoder.decode(response.content)
    except msgspec.ValidationError as exc:
        raise GenerationError(f"unexpected response: {exc}") from None
    except msgspec.DecodeError as exc:
        raise RetryableError(f"malformed response body ({len(response.content)} bytes): {exc}") from None


JSON_HEADERS = {"content-type": "application/json"}
RETRYABLE_STATUS = {408, 409, 424, 425, 429, 500, 502, 503, 504}
MAX_RETRY_AFTER = 120.0
USER_AGENT = f"curate/{__version__}"


def normalise_url(url: str) -> str:
    """Endpoint root without a trailing slash (and without a trailing /v1 for OpenAI-style URLs)."""
    url = url.strip().rstrip("/")
    if url.endswith("/v1"):
        url = url[: -len("/v1")]
    return url


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {api_key}"} if api_key else {}


def retry_after(headers: httpx.Headers) -> float | None:
    """Seconds the server asks us to wait (Retry-After: seconds or HTTP date; retry-after-ms)."""
    value = headers.get("retry-after-ms")
    if value:
        try:
            return min(float(value) / 1000.0, MAX_RETRY_AFTER)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return min(max(float(value), 0.0), MAX_RETRY_AFTER)
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        if parsed is None:
            return None
        return min(max(parsed.timestamp() - time.time(), 0.0), MAX_RETRY_AFTER)


def error_message(body: bytes) -> tuple[str, str | None]:
    """(message, type) from TGI's {error, error_type}, OpenAI's {error: {message, type, code}},
    vLLM's {object: error, message} or FastAPI's {detail}; else the start of the body."""
    try:
        data = loads(body)
    except Exception:  # noqa: BLE001 - an HTML page from a proxy, say
        text = body.decode("utf-8", "replace").strip()
        return (text[:200] or "(empty body)"), None
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict):
            kind = error.get("code") or error.get("type")
            return str(error.get("message") or error), (str(kind) if kind is not None else None)
        if isinstance(error, str):
            kind = data.get("error_type") or data.get("type")
            return error, (str(kind) if kind is not None else None)
        if "message" in data:
            return str(data["message"]), (str(data["type"]) if data.get("type") else None)
        if "detail" in data:
            return str(data["detail"])[:300], None
    return str(data)[:200], None


def status_error(status: int, body: bytes, headers: httpx.Headers) -> GenerationError:
    message, kind = error_message(body)
    reason = f"HTTP {status}{' ' + kind if kind else ''}: {message}"
    if kind == "insufficient_quota":  # OpenAI's 429 for an empty account: waiting will not help
        return GenerationError(reason)
    if status in RETRYABLE_STATUS or status >= 500:
        return RetryableError(reason, retry_after=retry_after(headers), overload=status in (429, 503), endpoint_fault=status >= 500 and status != 503)
    return GenerationError(reason)


# what OpenAI's reasoning models (and servers copying its errors) refuse, by the `param` of the 400, and the
# recipe key that changes it (SECTION is generator, critic or scorer)
PARAMETER_FIXES = {
    "max_tokens": "set SECTION.max_tokens_param: max_completion_tokens",
    "max_completion_tokens": "set SECTION.max_tokens_param: max_tokens",
    "temperature": "set SECTION.send_sampling: false (the model takes only its default temperature)",
    "top_p": "set SECTION.send_sampling: false (the model takes only its default top_p)",
    "logprobs": "set SECTION.logprobs: false (token metrics then need a scorer: section)",
    "top_logprobs": "set SECTION.logprobs: false (token metrics then need a scorer: section)",
    "reasoning_effort": "remove SECTION.reasoning_effort (the model does not reason, or takes other values)",
    "seed": "the model refuses `seed`; it cannot be left out yet (report it)",
    "n": "set SECTION.use_n: false",
}


def request_rejected(status: int, body: bytes, headers: httpx.Headers, section: str) -> GenerationError:
    """status_error, except that a 400 naming a request parameter the model refuses stops the run with the
    server's own message and the recipe key to change (every other request would be refused the same way)."""
    error = status_error(status, body, headers)
    if status != 400:
        return error
    try:
        data = loads(body)
    except Exception:  # noqa: BLE001
        return error
    detail = data.get("error") if isinstance(data, dict) else None
    if not isinstance(detail, dict):
        return error
    param, code = detail.get("param"), detail.get("code")
    if code not in ("unsupported_parameter", "unsupported_value") and not (param in PARAMETER_FIXES and code is None):
        return error
    fix = PARAMETER_FIXES.get(str(param), f"the model refuses `{param}`")
    from curation.types import RequestRejected

    return RequestRejected(f"{error}: {fix.replace('SECTION', section)}")


def transport_error(exc: Exception) -> RetryableError:
    if isinstance(exc, httpx.TimeoutException):
        return RetryableError(f"timeout ({type(exc).__name__})", endpoint_fault=True)
    detail = str(exc) or type(exc).__name__
    return RetryableError(f"connection error ({type(exc).__name__}: {detail})", endpoint_fault=True)


def parse_json(response: httpx.Response) -> Any:
    """The body of a 200 as generic JSON; a body that does not parse (cut short) is worth a retry."""
    try:
        return loads(response.content)
    except msgspec.DecodeError as exc:
        raise RetryableError(f"malformed response body ({len(response.content)} bytes): {exc}") from None


class ClientPool:
    """One httpx.AsyncClient per event loop.

    `curate run` calls asyncio.run more than once (generate, then close), and an httpx client is
    tied to the loop that opened its connections, so the client is made lazily in the loop
    that uses it and closed there.
    """

    def __init__(self, headers: dict[str, str], timeout: float, max_connections: int, transport: httpx.AsyncBaseTransport | None = None):
        self._headers = {"user-agent": USER_AGENT, **headers}
        self._timeout = httpx.Timeout(timeout, connect=min(timeout, 30.0))
        self.max_connections = max_connections  # all endpoints together; read when a client is made
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # post_json builds its requests itself: client.post's URL and header merging costs
        # more CPU than the rest of the request
        self._post_headers = httpx.Headers({**self._headers, **JSON_HEADERS})
        self._extensions = {"timeout": self._timeout.as_dict()}
        self._urls: dict[str, httpx.URL] = {}

    def get(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            # a client left over from a closed loop cannot be closed from here; drop it
            limits = httpx.Limits(max_connections=self.max_connections, max_keepalive_connections=self.max_connections)
            self._client = httpx.AsyncClient(headers=self._headers, timeout=self._timeout, limits=limits, transport=self._transport, trust_env=False)
            self._loop = loop
        return self._client

    async def post_json(self, url: str, body: bytes) -> httpx.Response:
        """POST a JSON body; the client's headers and timeout apply, as with client.post."""
        target = self._urls.get(url)
        if target is None:
            target = self._urls[url] = httpx.URL(url)
        request = httpx.Request("POST", target, content=body, headers=self._post_headers, extensions=self._extensions)
        return await self.get().send(request)

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None and self._loop is asyncio.get_running_loop():
            await client.aclose()
        self._loop = None


def endpoint_setup(config, backend: str, transport: Any = None) -> tuple[list[str], dict[str, str], "ClientPool"]:
    """Endpoints, auth headers and the async client pool of an HTTP backend, from the recipe.

    `${ENV}` references are resolved here, at the moment of use; the key lives only in the headers.
    """
    from curation.recipe.env import endpoint_url_problem, expand_env

    endpoints = [normalise_url(expand_env(url, what="generator.url")) for url in config.urls]
    for raw, url in zip(config.urls, endpoints):
        problem = endpoint_url_problem(url)
        if problem:  # a URL from ${ENV}: the recipe's literal ones were refused at validation
            raise ValueError(f"generator.url ({raw.strip()}): {problem}")
    if not endpoints:
        raise ValueError(f"backend {backend} needs generator.url")
    api_key = expand_env(config.api_key, what="generator.api_key") if config.api_key else None
    headers = auth_headers(api_key)
    clients = ClientPool(headers, config.timeout, max_connections=config.concurrency * len(endpoints) + 4, transport=transport)
    return endpoints, headers, clients


def sync_client(headers: dict[str, str], timeout: float, transport: httpx.BaseTransport | None = None) -> httpx.Client:
    """For the few calls made before generation starts (/info, /v1/models)."""
    return httpx.Client(headers={"user-agent": USER_AGENT, **headers}, timeout=httpx.Timeout(timeout, connect=min(timeout, 30.0)), transport=transport, trust_env=False)


def probe(client: httpx.Client, method: str, url: str, *, attempts: int = 4, backoff: float = 0.5, **kwargs) -> httpx.Response:
    """A start-up request, retried a few times on connection errors, 429 and 5xx (a server still loading)."""
    from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

    def once() -> httpx.Response:
        try:
            response = client.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            raise transport_error(exc) from None
        if response.status_code in RETRYABLE_STATUS or response.status_code >= 500:
            raise status_error(response.status_code, response.content, response.headers)
        return response

    retrying = Retrying(
        stop=stop_after_attempt(attempts), wait=wait_random_exponential(multiplier=backoff, max=10), retry=retry_if_exception_type(RetryableError), reraise=True
    )
    return retrying(once)
