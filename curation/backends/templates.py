"""Chat messages -> prompt text, for endpoints that take raw text (TGI's /generate, /v1/completions).

`generator.chat_template` chooses how:
- `server` (tgi default): TGI renders the model's own template (`POST /chat_tokenize`), exactly
  as its Messages API would; nothing to keep in sync on our side.
- `chatml`: `<|im_start|>role\\ncontent<|im_end|>\\n` per message, then the assistant header
  (SmolLM2, Qwen, and many others).
- `none` (openai completions default): message contents joined by blank lines, for base models.
- anything else is a jinja chat template (transformers' conventions: `messages`,
  `add_generation_prompt`, `bos_token`, `eos_token`), rendered in the recipes' bounded sandbox (curation.templating).
"""

from __future__ import annotations

from typing import Callable, Sequence

SERVER = "server"


def _chatml(messages: Sequence[dict[str, str]]) -> str:
    parts = [f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages]
    return "".join(parts) + "<|im_start|>assistant\n"


def _plain(messages: Sequence[dict[str, str]]) -> str:
    return "\n\n".join(m["content"] for m in messages)


def local_renderer(template: str) -> Callable[[Sequence[dict[str, str]]], str]:
    """A function rendering messages with a named or jinja template (not `server`)."""
    if template == "chatml":
        return _chatml
    if template == "none":
        return _plain
    if "{{" not in template and "{%" not in template:
        raise ValueError(f"chat_template {template!r} is neither 'server', 'chatml', 'none' nor a jinja template")
    from curation.templating import chat_template_environment

    def raise_exception(message: str) -> None:  # transformers' templates call this
        raise ValueError(f"chat template: {message}")

    env = chat_template_environment()  # the recipes' bounded sandbox: a shared chat template cannot hang the run either
    env.globals["raise_exception"] = raise_exception
    compiled = env.from_string(template)

    def render(messages: Sequence[dict[str, str]]) -> str:
        return compiled.render(messages=list(messages), add_generation_prompt=True, bos_token="", eos_token="")

    return render
