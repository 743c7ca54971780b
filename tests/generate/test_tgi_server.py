"""Tests of the TGI-protocol test server itself (tests/servers/tgi_server.py).

The `tgi` backend's tests trust this server to behave like text-generation-inference, so
these pin down that it speaks TGI's spec, generates deterministically, enforces TGI's
limits with TGI's errors, and injects faults reproducibly.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import httpx
import pytest
from huggingface_hub import AsyncInferenceClient
from huggingface_hub.errors import GenerationError, OverloadedError, ValidationError

from tests.servers.tgi_server import (
    DEFAULT_LABELS,
    FakeReasoningModel,
    OpenAPISpec,
    SamplingParams,
    SpecViolation,
    TGITestServer,
    openapi_schema_to_json_schema,
)

PROMPT = "Question: does CRISPRi knockdown of TP53 change the expression of MDM2 in K562 cells?"
ANSWER = re.compile(r"<answer>(.*?)</answer>")


@pytest.fixture(scope="module")
def spec() -> OpenAPISpec:
    # An independent, lenient copy of the spec: the tests check responses themselves
    # rather than trusting the server's own check.
    return OpenAPISpec(strict_fields=False)


@pytest.fixture(scope="module")
def server() -> Any:
    with TGITestServer() as tgi:
        yield tgi


@pytest.fixture
def tgi(server: TGITestServer) -> TGITestServer:
    server.reset_counters()
    return server


def generate(tgi: TGITestServer, inputs: str = PROMPT, **parameters: Any) -> httpx.Response:
    return httpx.post(f"{tgi.url}/generate", json={"inputs": inputs, "parameters": parameters}, timeout=10)


def sse_events(raw: str) -> list[dict[str, Any]]:
    events = []
    for block in raw.split("\n\n"):
        if block.strip():
            assert block.startswith("data:"), block
            events.append(json.loads(block[len("data:") :]))
    return events


# ---- spec conversion


def test_nullable_becomes_a_type_union_and_integers_are_strict(spec: OpenAPISpec) -> None:
    assert openapi_schema_to_json_schema({"type": "integer", "nullable": True, "format": "int64"}) == {
        "type": ["integer", "null"],
        "format": "int64",
        "minimum": -(2**63),
        "maximum": 2**63 - 1,
    }
    token = {"id": 1, "text": "a", "logprob": None, "special": False}
    assert spec.errors("Token", token) == []  # nullable logprob
    event = {"index": 1, "token": token, "generated_text": None, "details": None}
    assert spec.errors("StreamResponse", event) == []
    assert spec.errors("Token", {**token, "id": 1.0})  # serde rejects floats for u32
    assert spec.errors("Token", {**token, "id": 2**31})  # int32 range
    assert spec.errors("GenerateParameters", {"seed": 0})  # the spec's exclusiveMinimum
    assert spec.errors("GenerateParameters", {"top_n_tokens": 0})
    assert spec.errors("GenerateParameters", {"stop": ["a"] * 5})  # maxItems
    assert spec.errors("GenerateParameters", {"max_tokens": 5}) == []  # unknown fields: allowed by the spec
    assert OpenAPISpec().errors("GenerateParameters", {"max_tokens": 5})  # ... but not in strict mode


# ---- routes and response shapes


def test_info_and_health(tgi: TGITestServer, spec: OpenAPISpec) -> None:
    info = httpx.get(f"{tgi.url}/info").json()
    assert spec.errors("Info", info) == []
    assert info["version"] == "3.3.6-dev0"
    assert (info["max_best_of"], info["max_stop_sequences"], info["max_concurrent_requests"]) == (2, 4, 128)
    health = httpx.get(f"{tgi.url}/health")
    assert health.status_code == 200 and health.text == ""


def test_generate_details_and_top_tokens(tgi: TGITestServer, spec: OpenAPISpec) -> None:
    response = generate(tgi, details=True, top_n_tokens=5, max_new_tokens=200)
    assert response.status_code == 200
    body = response.json()
    assert spec.errors("GenerateResponse", body) == []
    details = body["details"]
    tokens = details["tokens"]
    assert details["finish_reason"] == "eos_token"
    assert details["generated_tokens"] == len(tokens) == len(details["top_tokens"])
    assert details["seed"] is None  # greedy: TGI reports no seed
    assert details["prefill"] == []  # only with decoder_input_details
    assert "best_of_sequences" not in details
    # The text is the tokens' text, less the special EOS; it reads as a reasoning trace.
    assert tokens[-1]["special"] and tokens[-1]["text"] == "</s>"
    assert body["generated_text"] == "".join(t["text"] for t in tokens if not t["special"])
    assert body["generated_text"].startswith("<think>")
    assert ANSWER.search(body["generated_text"]).group(1) in DEFAULT_LABELS
    for token, top in zip(tokens, details["top_tokens"]):
        assert token["logprob"] <= 0
        assert len(top) == 5
        logprobs = [t["logprob"] for t in top]
        assert logprobs == sorted(logprobs, reverse=True) and all(lp <= 0 for lp in logprobs)
        assert top[0] == token  # greedy picks the most likely token
    # Token ids are stable per text.
    ids = {}
    for t in tokens + [t for row in details["top_tokens"] for t in row]:
        assert ids.setdefault(t["text"], t["id"]) == t["id"]


def test_details_are_off_unless_asked_and_prefill_needs_decoder_input_details(tgi: TGITestServer) -> None:
    # TGI deserialises an absent `details` as false, whatever the spec's "default" says.
    assert "details" not in generate(tgi, max_new_tokens=20).json()
    body = generate(tgi, max_new_tokens=20, decoder_input_details=True).json()
    prefill = body["details"]["prefill"]
    assert prefill[0] == {"id": 1, "text": "<s>", "logprob": None}
    assert all(p["logprob"] <= 0 for p in prefill[1:])
    assert "".join(p["text"] for p in prefill[1:]) == PROMPT
    assert "top_tokens" not in body["details"]  # serde skips an empty list


def test_greedy_is_deterministic_without_a_seed(tgi: TGITestServer) -> None:
    first = generate(tgi, details=True, max_new_tokens=200).json()
    second = generate(tgi, details=True, max_new_tokens=200).json()
    assert first == second
    # A seed alone does not turn sampling on (TGI samples only with do_sample or a warper).
    assert generate(tgi, details=True, max_new_tokens=200, seed=7).json() == first


def test_sampling_is_a_function_of_the_seed(tgi: TGITestServer) -> None:
    params = {"details": True, "do_sample": True, "temperature": 0.9, "top_p": 0.95, "max_new_tokens": 200}
    with TGITestServer() as other:
        for seed in (1, 2, 3):
            mine = generate(tgi, seed=seed, **params).json()
            assert mine == generate(other, seed=seed, **params).json()
            assert mine["details"]["seed"] == seed
    texts = {generate(tgi, seed=seed, **params).json()["generated_text"] for seed in range(1, 9)}
    assert len(texts) > 1
    # max_new_tokens only cuts: a shorter budget gives a prefix of the longer generation.
    full = generate(tgi, seed=5, **params).json()["details"]["tokens"]
    short = generate(tgi, seed=5, **{**params, "max_new_tokens": 7}).json()["details"]
    assert short["finish_reason"] == "length" and short["tokens"] == full[:7]


def test_sampled_answers_mostly_agree_with_greedy() -> None:
    model = FakeReasoningModel()

    def answer(prompt: str, **sampling: Any) -> str | None:
        match = ANSWER.search(model.generate(prompt, SamplingParams(max_new_tokens=256, **sampling)).text)
        return match.group(1) if match else None

    agreement = []
    for q in range(12):
        prompt = f"{PROMPT} (pair {q})"
        greedy = answer(prompt)
        sampled = [answer(prompt, do_sample=True, seed=s + 1) for s in range(8)]
        agreement.append(sampled.count(greedy) / len(sampled))
    assert sum(agreement) / len(agreement) > 0.6
    # Confidence varies by prompt, which is what uncertainty scoring needs.
    assert min(agreement) < 1.0 and max(agreement) == 1.0


def test_logprobs_are_taken_after_temperature_and_top_p(tgi: TGITestServer) -> None:
    params = {"details": True, "top_n_tokens": 5, "max_new_tokens": 200, "do_sample": True, "seed": 3}
    raw = generate(tgi, temperature=1.0, **params).json()["details"]
    sharp = generate(tgi, temperature=0.3, top_p=0.5, **params).json()["details"]
    # A sharper distribution puts more mass on the chosen tokens.
    mean = lambda d: sum(t["logprob"] for t in d["tokens"]) / len(d["tokens"])  # noqa: E731
    assert mean(sharp) > mean(raw)
    # Tokens removed by top-p have probability 0 and are left out of top_tokens.
    assert any(len(row) < 5 for row in sharp["top_tokens"])
    for token, row in zip(sharp["tokens"], sharp["top_tokens"]):
        assert token in row  # the sampled token is always inside the nucleus


def test_every_parameter_is_honoured(tgi: TGITestServer, spec: OpenAPISpec) -> None:
    parameters = {
        "details": True, "top_n_tokens": 5, "max_new_tokens": 200, "do_sample": True, "seed": 9,
        "top_k": 3, "typical_p": 0.9, "repetition_penalty": 1.3, "frequency_penalty": 0.5,
        "watermark": False, "return_full_text": True, "truncate": 4,
    }
    body = generate(tgi, **parameters).json()
    assert spec.errors("GenerateResponse", body) == []
    assert body["generated_text"].startswith(PROMPT + "<think>")
    assert all(1 <= len(row) <= 3 for row in body["details"]["top_tokens"])  # top-k removed the rest
    # Truncation keeps the prompt's last tokens, so prompts that differ only earlier on
    # generate the same thing (and the full, untruncated input is prepended).
    first = generate(tgi, "one two three four five six", **parameters).json()
    second = generate(tgi, "seven eight three four five six", **parameters).json()
    assert first["details"]["tokens"] == second["details"]["tokens"]
    assert second["generated_text"].startswith("seven eight three four five six<think>")


def test_stop_sequences_and_length(tgi: TGITestServer) -> None:
    body = generate(tgi, details=True, max_new_tokens=200, stop=["</think>"]).json()
    assert body["details"]["finish_reason"] == "stop_sequence"
    assert body["generated_text"].endswith("</think>")  # TGI keeps the stop sequence
    body = generate(tgi, details=True, max_new_tokens=3).json()
    assert body["details"]["finish_reason"] == "length" and body["details"]["generated_tokens"] == 3


def test_best_of_returns_the_other_sequences_and_takes_a_slot_each(tgi: TGITestServer) -> None:
    body = generate(tgi, details=True, best_of=2, do_sample=True, max_new_tokens=200).json()
    (other,) = body["details"]["best_of_sequences"]
    assert other["seed"] != body["details"]["seed"]
    with TGITestServer(max_concurrent_requests=1) as small:
        response = generate(small, best_of=2, do_sample=True, max_new_tokens=20)
        assert response.status_code == 429 and response.json()["error_type"] == "overloaded"


def test_compat_route_wraps_in_a_list_and_returns_full_text(tgi: TGITestServer) -> None:
    response = httpx.post(f"{tgi.url}/", json={"inputs": PROMPT, "parameters": {"max_new_tokens": 50}})
    (body,) = response.json()
    assert body["generated_text"].startswith(PROMPT + "<think>")
    parameters = {"max_new_tokens": 50, "return_full_text": False}
    response = httpx.post(f"{tgi.url}/", json={"inputs": PROMPT, "parameters": parameters})
    assert response.json()[0]["generated_text"] == generate(tgi, max_new_tokens=50).json()["generated_text"]


def test_tokenize(tgi: TGITestServer, spec: OpenAPISpec) -> None:
    tokens = httpx.post(f"{tgi.url}/tokenize", json={"inputs": "knockdown of TP53."}).json()
    assert spec.errors("TokenizeResponse", tokens) == []
    assert [t["text"] for t in tokens] == ["", "knockdown", " of", " TP53", "."]
    assert all("knockdown of TP53."[t["start"] : t["stop"]] == t["text"] for t in tokens)


# ---- validation


@pytest.mark.parametrize(
    ("parameters", "inputs", "message", "breaks_spec"),
    [
        ({"top_n_tokens": 6}, PROMPT, "`top_n_tokens` must be >= 0 and <= 5. Given: 6", False),
        ({"best_of": 3, "do_sample": True}, PROMPT, "`best_of` must be > 0 and <= 2. Given: 3", False),
        ({"best_of": 2, "do_sample": True, "seed": 4}, PROMPT, "`seed` must not be set", False),
        ({"best_of": 2}, PROMPT, "you must use sampling when `best_of` is > 1", False),
        ({"temperature": 0.0}, PROMPT, "`temperature` must be strictly positive", True),
        ({"top_p": 1.0}, PROMPT, "`top_p` must be > 0.0 and < 1.0", False),
        ({"top_p": 0.0}, PROMPT, "`top_p` must be > 0.0 and < 1.0", True),
        ({"max_new_tokens": 5000}, PROMPT, "`inputs` tokens + `max_new_tokens` must be <= 4096", False),
        ({"max_new_tokens": 10}, "", "`inputs` cannot be empty", False),
        ({"stop": list("abcde")}, PROMPT, "`stop` supports up to 4 stop sequences. Given: 5", True),
        ({"seed": 0, "do_sample": True}, PROMPT, "seed", True),
        ({"max_tokens": 10}, PROMPT, "'max_tokens' was unexpected", True),
        ({"max_new_tokens": 10.0}, PROMPT, "is not of type 'integer'", True),
    ],
)
def test_validation_errors(
    tgi: TGITestServer, parameters: dict[str, Any], inputs: str, message: str, breaks_spec: bool
) -> None:
    response = generate(tgi, inputs, **parameters)
    assert response.status_code == 422
    body = response.json()
    assert body["error_type"] == "validation" and message in body["error"]
    assert len(tgi.invalid_requests) == int(breaks_spec)
    assert tgi.generations == 0


def test_malformed_bodies_are_rejected_and_recorded(tgi: TGITestServer) -> None:
    def post(content: bytes, content_type: str) -> int:
        headers = {"content-type": content_type}
        return httpx.post(f"{tgi.url}/generate", content=content, headers=headers).status_code

    assert post(b"{not json", "application/json") == 400
    assert post(b"{}", "text/plain") == 415
    assert httpx.post(f"{tgi.url}/generate", json={"parameters": {}}).status_code == 422  # no inputs
    assert len(tgi.invalid_requests) == 3


def test_overloaded_above_max_concurrent_requests() -> None:
    async def burst(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=10) as client:
            body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 20}}
            return await asyncio.gather(*(client.post(f"{url}/generate", json=body) for _ in range(6)))

    # The latency keeps the first two busy while the burst arrives, even on a loaded machine.
    with TGITestServer(max_concurrent_requests=2, latency=1.0) as tgi:
        responses = asyncio.run(burst(tgi.url))
        statuses = sorted(r.status_code for r in responses)
        assert statuses == [200, 200, 429, 429, 429, 429]
        overloaded = next(r for r in responses if r.status_code == 429).json()
        assert overloaded == {"error": "Model is overloaded", "error_type": "overloaded"}
        assert tgi.max_in_flight == 2 and tgi.in_flight == 0


# ---- streaming


def test_stream_matches_generate(tgi: TGITestServer, spec: OpenAPISpec) -> None:
    parameters = {"details": True, "top_n_tokens": 3, "do_sample": True, "seed": 11, "max_new_tokens": 200}
    body = {"inputs": PROMPT, "parameters": parameters}
    with httpx.stream("POST", f"{tgi.url}/generate_stream", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r.read().decode())
    assert all(spec.errors("StreamResponse", e) == [] for e in events)
    assert [e["index"] for e in events] == list(range(1, len(events) + 1))
    assert all(e["generated_text"] is None and e["details"] is None for e in events[:-1])
    final = events[-1]
    expected = generate(tgi, **parameters).json()
    assert final["generated_text"] == expected["generated_text"]
    assert [e["token"] for e in events] == expected["details"]["tokens"]
    assert [e["top_tokens"] for e in events] == expected["details"]["top_tokens"]
    assert final["details"] == {
        "finish_reason": "eos_token",
        "generated_tokens": len(events),
        "seed": 11,
        "input_length": len(FakeReasoningModel().prompt_tokens(PROMPT)),  # BOS included
    }


def stream_events(url: str, parameters: dict[str, Any]) -> tuple[int, list[dict[str, Any]]]:
    body = {"inputs": PROMPT, "parameters": parameters}
    with httpx.stream("POST", f"{url}/generate_stream", json=body) as r:
        return r.status_code, sse_events(r.read().decode())


def test_stream_errors_arrive_as_events_over_200(tgi: TGITestServer) -> None:
    status, events = stream_events(tgi.url, {"decoder_input_details": True, "max_new_tokens": 20})
    assert status == 200
    assert events == [
        {
            "error": "`decoder_input_details` == true is not supported when streaming tokens",
            "error_type": "validation",
        }
    ]
    status, events = stream_events(tgi.url, {"top_n_tokens": 9, "max_new_tokens": 20})
    assert status == 200 and events[0]["error_type"] == "validation"

    tgi.inject_faults("424", "429")
    status, events = stream_events(tgi.url, {"max_new_tokens": 200})
    assert status == 200 and len(events) > 2
    assert "token" in events[0] and events[-1]["error_type"] == "generation"
    status, events = stream_events(tgi.url, {"max_new_tokens": 200})
    assert status == 200 and events == [{"error": "Model is overloaded", "error_type": "overloaded"}]
    assert tgi.faults_injected == {"424": 1, "429": 1}


# ---- faults


def run_attempts(url: str, bodies: list[dict[str, Any]], attempts: int) -> list[Any]:
    """Each body `attempts` times in order; the outcome of each try."""
    outcomes: list[Any] = []
    with httpx.Client(timeout=5) as client:
        for body in bodies:
            for _ in range(attempts):
                try:
                    response = client.post(f"{url}/generate", json=body)
                except httpx.TransportError as err:
                    outcomes.append(type(err).__name__)
                    continue
                try:
                    outcomes.append((response.status_code, response.json()))
                except json.JSONDecodeError:
                    outcomes.append((response.status_code, "truncated"))
    return outcomes


def test_fault_injection_is_reproducible_and_leaves_content_alone() -> None:
    kinds = ["429", "503", "424", "reset", "truncated"]
    parameters = {"details": True, "max_new_tokens": 60, "do_sample": True}
    bodies = [{"inputs": f"{PROMPT} ({i})", "parameters": {**parameters, "seed": i + 1}} for i in range(6)]
    runs = []
    for _ in range(2):
        with TGITestServer(fault_rate=0.5, fault_kinds=kinds, fault_seed=42) as tgi:
            runs.append((run_attempts(tgi.url, bodies, attempts=3), dict(tgi.faults_injected)))
    assert runs[0] == runs[1]
    outcomes, faults = runs[0]
    assert sum(faults.values()) >= 4 and len(faults) >= 3
    statuses = {o if isinstance(o, str) else o[0] for o in outcomes}
    assert 200 in statuses and len(statuses) >= 3

    with TGITestServer(fault_rate=0.5, fault_kinds=kinds, fault_seed=7) as tgi:
        assert run_attempts(tgi.url, bodies, attempts=3) != outcomes  # another seed, other faults

    # Every successful attempt returned exactly what a fault-free server returns.
    with TGITestServer() as clean:
        expected = run_attempts(clean.url, bodies, attempts=1)
    for i, outcome in enumerate(outcomes):
        if isinstance(outcome, tuple) and outcome[0] == 200 and outcome[1] != "truncated":
            assert outcome == expected[i // 3]


def test_max_faults_per_request_lets_retries_through() -> None:
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 20}}
    with TGITestServer(fault_rate=1.0, fault_kinds=["503"], max_faults_per_request=2) as tgi:
        statuses = [o[0] for o in run_attempts(tgi.url, [body], attempts=3)]
    assert statuses == [503, 503, 200]


def test_reset_truncated_and_timeout_faults() -> None:
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 20}}
    with TGITestServer(timeout_delay=5.0) as tgi:
        tgi.inject_faults("reset", "truncated", "timeout")
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.post(f"{tgi.url}/generate", json=body)
        truncated = httpx.post(f"{tgi.url}/generate", json=body)
        assert truncated.status_code == 200
        with pytest.raises(json.JSONDecodeError):
            truncated.json()
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{tgi.url}/generate", json=body, timeout=0.3)
        # The hung request's slot is freed once its client gives up.
        ok = httpx.post(f"{tgi.url}/generate", json=body)
        assert ok.status_code == 200
        assert tgi.faults_injected == {"reset": 1, "truncated": 1, "timeout": 1}


def test_unavailable(tgi: TGITestServer) -> None:
    tgi.set_unavailable()
    try:
        health = httpx.get(f"{tgi.url}/health")
        assert health.status_code == 503
        assert health.json() == {"error": "unhealthy", "error_type": "healthcheck"}
        assert generate(tgi, max_new_tokens=5).status_code == 503
    finally:
        tgi.set_unavailable(False)


def test_a_response_that_breaks_the_spec_fails_loudly() -> None:
    tgi = TGITestServer().start()
    tgi.info["max_best_of"] = -1  # not a valid Info
    assert httpx.get(f"{tgi.url}/info").status_code == 500
    with pytest.raises(SpecViolation, match="max_best_of"):
        tgi.stop()


# ---- the client the real backend uses


def test_huggingface_hub_client_parses_responses(tgi: TGITestServer, monkeypatch) -> None:
    # The suite runs with HF_HUB_OFFLINE=1, which makes huggingface_hub refuse every URL, even a local one.
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)

    async def main() -> None:
        client = AsyncInferenceClient(model=tgi.url)
        # do_sample: a seed alone leaves TGI greedy. return_full_text: the client posts to
        # TGI's compat route, which otherwise prepends the prompt for text-generation models.
        sampling = {"seed": 1, "do_sample": True, "max_new_tokens": 200, "return_full_text": False}
        output = await client.text_generation(
            PROMPT, details=True, decoder_input_details=False, top_n_tokens=5, **sampling
        )
        assert output.details.seed == 1 and output.details.finish_reason == "eos_token"
        assert len(output.details.tokens) == len(output.details.top_tokens) == output.details.generated_tokens
        # huggingface_hub 2.x parses tokens into dataclasses but leaves the nested
        # top_tokens lists as plain dicts; the backend must read both shapes.
        first_top = output.details.top_tokens[0][0]
        assert isinstance(first_top, dict) and first_top["logprob"] <= 0
        assert output.details.tokens[0].logprob <= 0
        assert ANSWER.search(output.generated_text)

        chunks = []
        async for chunk in await client.text_generation(PROMPT, stream=True, details=True, **sampling):
            chunks.append(chunk)
        assert "".join(c.token.text for c in chunks if not c.token.special) == output.generated_text
        assert chunks[-1].details.finish_reason == "eos_token"
        assert chunks[-1].generated_text == output.generated_text

        tgi.inject_faults("429", "424")
        with pytest.raises(OverloadedError):
            await client.text_generation(PROMPT, max_new_tokens=20)
        with pytest.raises(GenerationError):
            await client.text_generation(PROMPT, max_new_tokens=20)
        with pytest.raises(ValidationError):
            await client.text_generation(PROMPT, max_new_tokens=20, top_n_tokens=6)

    asyncio.run(main())
    assert tgi.invalid_requests == []


# ---- the vendored spec against huggingface_hub's generated TGI types


def _dataclass_fields(cls: type) -> set[str]:
    import dataclasses

    return {field.name for field in dataclasses.fields(cls)}


def test_vendored_spec_matches_huggingface_hub_types() -> None:
    """huggingface_hub generates its text-generation types from TGI's own spec and keeps them current;
    every field they know must be in the vendored spec (v3.3.6-dev0) with the same name, so a TGI
    release that adds or renames a field curate could send or read shows up here."""
    import huggingface_hub.inference._generated.types.text_generation as hub_types

    from tests.servers.tgi_server import VENDORED_SPEC

    schemas = json.loads(VENDORED_SPEC.read_text())["components"]["schemas"]
    assert json.loads(VENDORED_SPEC.read_text())["info"]["version"] == "3.3.6-dev0"
    pairs = {
        "GenerateParameters": hub_types.TextGenerationInputGenerateParameters,
        "GenerateResponse": hub_types.TextGenerationOutput,
        "Details": hub_types.TextGenerationOutputDetails,
        "Token": hub_types.TextGenerationOutputToken,
        "PrefillToken": hub_types.TextGenerationOutputPrefillToken,
        "StreamResponse": hub_types.TextGenerationStreamOutput,
    }
    for name, hub_class in pairs.items():
        in_spec = set(schemas[name]["properties"])
        missing = _dataclass_fields(hub_class) - in_spec
        assert not missing, f"{name}: huggingface_hub knows {sorted(missing)}, the vendored TGI spec does not"
