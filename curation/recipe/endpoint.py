"""The endpoint a section talks to: the fields and checks that generator, critic and scorer share.

Each of the three reaches a model the same way (in-process, or TGI / an OpenAI-compatible server
at one or more URLs) with the same transport settings, so they are declared once here. A section
redeclares a field only to describe it in its own terms (what `model` means for a judge).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from curation.recipe.base import Strict
from curation.recipe.env import ENV_PATTERN, check_endpoint_urls


class EndpointConfig(Strict):
    backend: Literal["local", "tgi", "openai"] = Field("local", description="local transformers, TGI native, or OpenAI-compatible.")
    model: str = Field("embedded", description="local: 'embedded', a folder or a Hub id; openai: the served model name; tgi: informational.")
    gguf_file: str | None = Field(None, description="local: GGUF file inside `model`.")
    revision: str | None = None
    url: str | list[str] | None = Field(None, description="Endpoint URL(s) for tgi/openai; ${ENV} allowed.")
    api_key: str | None = Field(None, description="Secret for the endpoint, as ${ENV} only; never written out.")
    concurrency: int = Field(
        8, ge=1, description="Requests in flight per endpoint (at least the server's parallel slots, divided by n when generator.use_n; local: 1)."
    )
    timeout: float = Field(120.0, gt=0, description="Seconds a request may wait for its answer (tgi stream: between tokens).")
    max_retries: int = Field(6, ge=0, description="Retries per request on 429/503/5xx, connection errors and timeouts.")
    device: str | None = Field(None, description="local: torch device (default: cuda if available, else cpu).")

    @field_validator("url")
    @classmethod
    def _url_is_an_endpoint(cls, value):
        return check_endpoint_urls(value)

    @model_validator(mode="after")
    def _endpoint_reachable(self) -> "EndpointConfig":
        if self.backend in ("tgi", "openai") and not self.url:
            raise ValueError(f"backend {self.backend!r} needs `url`")
        if self.api_key and not ENV_PATTERN.fullmatch(self.api_key.strip()):
            raise ValueError("api_key must be an environment reference like ${OPENAI_API_KEY}, never the secret itself")
        return self

    @property
    def urls(self) -> list[str]:
        if self.url is None:
            return []
        return [self.url] if isinstance(self.url, str) else list(self.url)
