"""The `tgi` backend's test setup, shared by the generate, deepconf and CLI tests.

`ChatTemplateTGIServer` is the TGI protocol test server plus TGI's `POST /chat_tokenize` (ChatML);
`config_for()` and `generate()` run the runner on a few questions into a journal with fast retries;
`RECIPE` is a whole-run recipe against such a server (URL replaced by the test).
"""

from __future__ import annotations

from aiohttp import web

from curation.backends.templates import local_renderer
from curation.backends.tgi import TGIBackend
from curation.generate import RetryPolicy, plan_requests, run_generation
from curation.journal import Journal
from curation.recipe.sections import GeneratorConfig
from curation.types import Question
from tests.servers.tgi_server import TGITestServer

QUESTIONS = [Question(id=f"q{i}", messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"What happens to gene {i}?"}], columns={}) for i in range(4)]
FAST = RetryPolicy(max_retries=6, backoff=0.01)


class ChatTemplateTGIServer(TGITestServer):
    """The test server plus TGI's `POST /chat_tokenize`, rendering ChatML, checked against the spec."""

    def build_app(self) -> web.Application:
        app = super().build_app()
        app.router.add_post("/chat_tokenize", self._handle_chat_tokenize)
        return app

    async def _handle_chat_tokenize(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.received.append({"route": "/chat_tokenize", "body": body})
        errors = self.spec.errors("ChatRequest", body)
        if errors:
            self._record_invalid("/chat_tokenize", body, errors)
            return web.json_response({"error": errors[0], "error_type": "validation"}, status=422)
        text = local_renderer("chatml")(body["messages"])
        tokens = [{"id": i, "text": t, "start": s, "stop": e} for i, t, s, e in self.model.tokenize(text)]
        answer = {"templated_text": text, "tokenize_response": tokens}
        self.spec.check_response("ChatTokenizeResponse", answer, what="/chat_tokenize")
        return web.json_response(answer)


def config_for(url, **overrides) -> GeneratorConfig:
    settings = dict(backend="tgi", url=url, samples=3, max_new_tokens=48, stop=["</answer>"], temperature=0.8, top_p=0.95, top_logprobs=5, timeout=2.0)
    settings.update(overrides)
    return GeneratorConfig(**settings)


def generate(config, questions=QUESTIONS, tmp_path=None, policy=FAST, backend=None):
    backend = backend or TGIBackend(config)
    requests = plan_requests(questions, config, backend)
    with Journal(tmp_path / "journal.sqlite") as journal:
        stats = run_generation(requests, backend, journal, show_progress=False, policy=policy)
        traces = journal.load(r.fingerprint for r in requests)
        failures = journal.failures()
    return backend, requests, stats, traces, failures


RECIPE = """
name: tgi-run
source:
  path: SAMPLE_CSV
  shuffle_seed: 0
  limit: 12
  id_template: "{{ cell_line }}__{{ pert }}__{{ gene }}"
  label_column: label
prompt:
  system: Think, then answer inside <answer></answer> tags.
  user: "In {{ cell_line }} cells, {{ pert }} was knocked down. What happens to {{ gene }}?"
generator:
  backend: tgi
  url: URL
  samples: 4
  temperature: 0.9
  top_p: 0.95
  max_new_tokens: 64
  stop: ["</answer>"]
  top_logprobs: 5
  timeout: 1.0
  retry_backoff: 0.01
  max_retries: 8
answer:
  tag: answer
  labels: [upregulated, downregulated, not differentially expressed]
select:
  strategy: per_class
  fraction: 0.5
"""
