"""Shared test setup: offline, one thread per model, and helpers to build recipes and run folders."""

import os

# Set before anything imports torch or huggingface_hub: both read these at import time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SAMPLE_CSV = REPO / "recipes" / "data" / "perturbqa-k562-sample.csv"


@pytest.fixture
def write_recipe(tmp_path):
    """Write a recipe YAML next to a copy-free reference to the sample CSV and return its path."""

    def write(text: str, name: str = "recipe.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text.replace("SAMPLE_CSV", str(SAMPLE_CSV)), encoding="utf-8")
        return path

    return write


# ----------------------------------------------------------------------------- skips are failures
# `make test` installs and builds everything the suite needs (the test extras, Ray, llama-server,
# Chromium), so a skip there means something silently did not run: a missing binary, a dependency
# that failed to install. `--no-skips` (which `make test` passes) turns every skip into a failed run
# with its reason printed. `make test-fast` leaves slow tests out by marker, which is not a skip.
def pytest_addoption(parser):
    parser.addoption("--no-skips", action="store_true", default=False, help="fail the run if any test is skipped (make test)")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not config.getoption("--no-skips"):
        return
    skipped = terminalreporter.stats.get("skipped", [])
    if not skipped:
        return
    terminalreporter.section("skipped tests fail this run (--no-skips)", red=True)
    for report in skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        terminalreporter.line(f"SKIPPED {report.nodeid}: {reason}", red=True)


def pytest_sessionfinish(session, exitstatus):
    if session.config.getoption("--no-skips"):
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None and reporter.stats.get("skipped") and session.exitstatus == 0:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


# ----------------------------------------------------------------------------- parallel runs (pytest-xdist)
# `make test` runs the suite on 2 workers with `--dist loadgroup`. Each module is one group, so a module's
# fixtures (a loaded model, a started server) are made once, on one worker, as in a serial run; modules
# that share a session run (below) are one group, so that run is made once. Servers bind free ports.
SHARED_RUN_GROUPS = {
    "quickstart_run": ("tests/pipeline/test_quickstart.py", "tests/generate/test_scorer_own_tokens.py"),
}


def pytest_collection_modifyitems(config, items):
    group_of = {path: name for name, paths in SHARED_RUN_GROUPS.items() for path in paths}
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            path = item.nodeid.split("::", 1)[0]
            item.add_marker(pytest.mark.xdist_group(group_of.get(path, path)))


# ----------------------------------------------------------------------------- runs shared by the session
# A generated run is minutes of model time on 2 cores; tests that only read one share it. Each is made
# once per session (per xdist worker), in its own temporary folder, and the tests treat it as read-only:
# a test that writes copies it first, so the tests stay independent of each other's order.
def _cli(*args):
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "curation.cli", *map(str, args)], env=env, capture_output=True, text=True)


@pytest.fixture(scope="session")
def quickstart_run(tmp_path_factory):
    """`curate run recipes/quickstart.yaml` on the embedded model (60 traces), and its stdout."""
    run_dir = tmp_path_factory.mktemp("quickstart") / "quickstart"
    result = _cli("run", REPO / "recipes" / "quickstart.yaml", "-o", run_dir, "--no-push")
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir, result.stdout


@pytest.fixture(scope="session")
def small_generated_run(tmp_path_factory):
    """A small quickstart run (4 questions, reference + 3 samples of at most 12 tokens) for the import round trips."""
    run_dir = tmp_path_factory.mktemp("small-generated") / "generated"
    sets = ["--set", "source.limit=4", "--set", "generator.samples=3", "--set", "generator.max_new_tokens=12", "--set", "select.fraction=0.5"]
    result = _cli("run", REPO / "recipes" / "quickstart.yaml", "-o", run_dir, "-q", "--no-push", *sets)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir
