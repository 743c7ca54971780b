"""``${VAR}`` references in a recipe: where they may appear, and resolving them only at the moment of use.

A recipe is shared between labs, so the environment may only supply endpoints and secrets; the
resolved value is never stored (the run folder's recipe.yaml keeps the reference).
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any

from curation.recipe.yaml_marks import MarkIndex
from curation.types import Problem, RecipeError

if TYPE_CHECKING:
    from curation.recipe.sections import Recipe

ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

# `${ENV}` is resolved only where an endpoint or a secret belongs: a recipe is shared between
# labs, and interpolating elsewhere would make the same recipe mean different data.
ENV_ALLOWED_PATHS = {
    ("generator", "url"), ("generator", "api_key"), ("critic", "url"), ("critic", "api_key"), ("scorer", "url"), ("scorer", "api_key"),
}


def endpoint_url_problem(url: str) -> str | None:
    """Why an endpoint URL cannot be used, or None. Checked on the recipe's literal URLs at validation and
    on a URL read from ${ENV} at the moment of use.

    Only http and https: anything else (`file:///etc/passwd`) is not an inference server. No
    credentials in the URL: the recipe and its URL are written out with the run (recipe.yaml, the
    card, failure messages in the journal), so a key goes in `api_key: ${VAR}`, which never is.
    """
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url.strip())
    except ValueError as exc:
        return f"not a URL: {exc}"
    if parts.scheme.lower() not in ("http", "https"):
        shown = f"'{parts.scheme}://'" if parts.scheme else "no scheme"
        return f"endpoint URLs must be http:// or https:// (got {shown})"
    if parts.username is not None or parts.password is not None:
        return "the URL carries credentials (user:password@host); curate writes URLs out with the run, so give the key as api_key: ${VAR} instead"
    if not parts.hostname:
        return "the URL has no host"
    return None


def check_endpoint_urls(value: str | list[str] | None) -> str | list[str] | None:
    """The url field's check: every literal URL must be an endpoint (a ${VAR} one is checked when it is resolved)."""
    for url in [value] if isinstance(value, str) else (value or []):
        if ENV_PATTERN.search(url):
            continue  # resolved at the moment of use, and checked then (http.endpoint_setup)
        problem = endpoint_url_problem(url)
        if problem:
            raise ValueError(problem)
    return value


def check_env_references(data: Any, path: tuple, marks: MarkIndex, file: str) -> list[Problem]:
    """A problem for every ${VAR} outside ENV_ALLOWED_PATHS, at its place in the file."""
    problems = []
    if isinstance(data, dict):
        for key, value in data.items():
            problems += check_env_references(value, path + (key,), marks, file)
    elif isinstance(data, list):
        for index, value in enumerate(data):
            # a list of URLs is still an endpoint
            problems += check_env_references(value, path + (index,) if path not in ENV_ALLOWED_PATHS else path, marks, file)
    elif isinstance(data, str) and ENV_PATTERN.search(data) and path not in ENV_ALLOWED_PATHS:
        line, col = marks.locate(path)
        allowed = ", ".join(".".join(p) for p in sorted(ENV_ALLOWED_PATHS))
        problems.append(
            Problem(file, line, col, ".".join(map(str, path)), f"${{ENV}} references are only allowed in {allowed}")
        )
    return problems



def expand_env(value: str, *, what: str) -> str:
    """Resolve ${NAME} and ${NAME:-default} at the point of use, so the resolved value is never stored."""

    def replace(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise RecipeError([Problem("<environment>", 1, 1, what, f"environment variable {name} is not set")])

    return ENV_PATTERN.sub(replace, value)


def endpoint_env_problems(recipe: Recipe) -> list[Problem]:
    """Every ${NAME} an endpoint or secret needs that is not set, each with the way to set it.

    Checked before the Hub token and before any model loads, because it is what a user fixes first.
    """
    problems = []
    for section in ("generator", "critic", "scorer"):
        config = getattr(recipe, section)
        if config is None or config.backend == "local":
            continue
        urls = config.url if isinstance(config.url, list) else [config.url]
        for key, values in (("url", urls), ("api_key", [config.api_key])):
            for value in values:
                for match in ENV_PATTERN.finditer(value or ""):
                    name, default = match.group(1), match.group(2)
                    if name in os.environ or default is not None:
                        continue
                    if key == "url":
                        how = f"export {name}=http://HOST:PORT (the {config.backend} endpoint), or pass --set {section}.url=http://HOST:PORT"
                    else:
                        how = f"export {name}=YOUR_KEY (the endpoint's API key)"
                    problems.append(Problem("error:", 0, 0, f"{section}.{key}", f"environment variable {name} is not set: {how}"))
    unique = {str(p): p for p in problems}
    return list(unique.values())
