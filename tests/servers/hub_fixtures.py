"""Pytest fixtures for tests that talk to the local Hub (`hub_server.HubTestServer`).

Run Hub client code (huggingface_hub, datasets, the `curate` CLI) in a subprocess with
`hub_env(...)` as its environment. Both libraries read `HF_ENDPOINT` once, at import
time, into several module globals (URL templates, the trusted-host sets, the default
`HfApi` instance behind `upload_file`/`DatasetCard.push_to_hub`, datasets' own config).
Patching those after import is whack-a-mole: a missed one sends requests to the real
huggingface.co, which offline means slow retries and then a ConnectError. A subprocess
imports them fresh with the right environment.

Use from a test module:

    from tests.servers.hub_fixtures import hub_server, hub_env, run_hub_client  # noqa: F401

or register the module once with `pytest_plugins = ["tests.servers.hub_fixtures"]` in
conftest.py and import only the helpers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.servers.hub_server import HubTestServer

HUB_TEST_TOKEN = "hf_test_write_token"  # any `hf_test*` token is valid; `hf_test_read*` ones are read-only
HUB_TEST_READ_TOKEN = "hf_test_read_token"

# Variables that would make a client skip the network or read state outside the test.
_SCRUBBED = (
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_DATASETS_OFFLINE",
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "HF_ASSETS_CACHE",
    "HF_DATASETS_CACHE",
    "HF_TOKEN_PATH",
    "HF_HUB_DISABLE_IMPLICIT_TOKEN",
    "HUGGINGFACE_CO_STAGING",
)


@pytest.fixture
def hub_server() -> Iterator[HubTestServer]:
    """A fresh, empty local Hub; fails the test if the server itself hit a bug."""
    with HubTestServer() as server:
        yield server
        assert not server.server_errors, "the test Hub raised:\n" + "\n".join(server.server_errors)


def hub_env(server: HubTestServer, tmp_path: Path, *, token: str | None = HUB_TEST_TOKEN) -> dict[str, str]:
    """Environment for a subprocess that must use `server` as its Hub.

    Caches and the token file live under `tmp_path/hf-home`, so nothing leaks between
    tests or from the developer's machine. Pass `token=None` for an anonymous client.
    """
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
    home = tmp_path / "hf-home"
    env.update(
        HF_ENDPOINT=server.url,
        # With hf_xet installed, huggingface_hub uploads through Xet only; the test Hub speaks LFS.
        HF_HUB_DISABLE_XET="1",
        HF_HOME=str(home),
        HF_DATASETS_CACHE=str(home / "datasets"),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_UPDATE_CHECK="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        # A proxy configured on the machine must not swallow requests to 127.0.0.1.
        NO_PROXY=",".join(filter(None, [env.get("NO_PROXY"), "127.0.0.1", "localhost"])),
    )
    env.pop("HF_TOKEN", None)
    env.pop("HUGGING_FACE_HUB_TOKEN", None)
    if token is not None:
        env["HF_TOKEN"] = token
    return env


def run_hub_client(
    server: HubTestServer,
    tmp_path: Path,
    code: str,
    *,
    token: str | None = HUB_TEST_TOKEN,
    timeout: float = 120,
) -> Any:
    """Run Python `code` in a subprocess wired to `server` and return what it reports.

    The code reports by printing one JSON value as its last line of stdout. A failing
    subprocess fails the test with its output.
    """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=hub_env(server, tmp_path, token=token),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        pytest.fail(
            f"hub client exited with {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
        )
    lines = result.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else None
