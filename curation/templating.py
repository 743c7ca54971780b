"""Templating: the one bounded jinja2 sandbox every template of a recipe renders in.

Prompt templates, id templates, the critic's prompt and the backends' jinja chat templates all
come from recipes, which may come from someone else (the Hub). They render in an immutable
sandbox (no Python internals), with ``**`` and ``*`` bounded so that ``{{ 9**9**9 }}`` or
``{{ 'x' * 10**11 }}`` cannot hang or exhaust the machine.
"""

from __future__ import annotations

from functools import lru_cache

import jinja2
from jinja2 import meta
from jinja2.sandbox import ImmutableSandboxedEnvironment


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """The sandbox, plus limits on `**` and `*`: `{{ 9**9**9 }}` or `{{ 'x' * 10**11 }}` reach no
    Python internals, but a shared recipe could still hang or exhaust the machine with them."""

    intercepted_binops = frozenset({"**", "*"})
    MAX_RESULT = 10**6

    def call_binop(self, context, operator, left, right):
        if operator == "**" and isinstance(right, (int, float)) and abs(right) > 64:
            raise jinja2.exceptions.SecurityError("exponent too large in template")
        if operator == "*":
            for sequence, count in ((left, right), (right, left)):
                if isinstance(sequence, (str, list, tuple)) and isinstance(count, int) and len(sequence) * count > self.MAX_RESULT:
                    raise jinja2.exceptions.SecurityError("repetition too large in template")
        return super().call_binop(context, operator, left, right)


@lru_cache(maxsize=1)
def template_environment() -> ImmutableSandboxedEnvironment:
    # StrictUndefined: a typo in a column name must fail loudly, not render an empty string.
    return BoundedSandbox(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True)


def template_variables(template: str) -> set[str]:
    env = template_environment()
    return meta.find_undeclared_variables(env.parse(template))


def chat_template_environment() -> ImmutableSandboxedEnvironment:
    """The same bounds for chat templates, with transformers' whitespace settings (a fresh one: it gets globals)."""
    return BoundedSandbox(trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
