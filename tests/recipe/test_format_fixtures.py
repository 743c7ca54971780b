"""Recipe format versions: the format-1 fixture (a recipe and its run folder written by curate before formats
were recorded, tests/data/format-1/) is read by every command, migrated with a warning at the renamed key,
and its fingerprint does not change; newer formats are refused naming the format they need.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings

import pyarrow.parquet as pq
import pytest
import yaml

from curation import run_folder
from curation.recipe.dump import fingerprint_recipe, resolved_recipe_yaml
from curation.recipe.load import load_recipe
from curation.recipe.versions import FORMAT_KEY, FORMAT_VERSION, RecipeFormatWarning
from curation.run_folder import RunFolder
from curation.types import RecipeError
from tests.conftest import REPO
from tests.servers import hub_fixtures
from tests.servers.hub_fixtures import hub_env
from tests.servers.hub_server import HubTestServer
from tests.servers.tgi_server import TGITestServer

hub_server = hub_fixtures.hub_server

FIXTURE = REPO / "tests" / "data" / "format-1"
# recorded by the curate that wrote the fixture (its stats.json), and recipes/quickstart.yaml's at c20788b
FIXTURE_FINGERPRINT = "d6f1912d8e13e815"
FIXTURE_RUN_FINGERPRINT = "fcf7948f2174cb27"  # its run folder's recipe.yaml (source.path re-anchored there), by the curate at c20788b
QUICKSTART_FINGERPRINT = "0899c0643860fda8"
DEPRECATION = "select.keep is deprecated: renamed select.completion in recipe format 2"


def curate(*args: str, cwd, env: dict | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("TGI_URL", "HF_TOKEN")} | {"HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "curation.cli", *args], cwd=cwd, env=base | (env or {}), capture_output=True, text=True, timeout=300)


def test_a_format_1_recipe_is_migrated_with_a_warning_at_the_old_key(tmp_path) -> None:
    with pytest.warns(RecipeFormatWarning, match=r"format-1/recipe.yaml:35:3: " + DEPRECATION):
        loaded = load_recipe(str(FIXTURE / "recipe.yaml"))
    assert loaded.recipe.select.completion == "reference" and loaded.recipe.curate == FORMAT_VERSION
    # what curate writes records the format, first, under the new name
    written = resolved_recipe_yaml(loaded.recipe)
    assert written.startswith(f"{FORMAT_KEY}: {FORMAT_VERSION}\n")
    assert yaml.safe_load(written)["select"]["completion"] == "reference" and "keep" not in yaml.safe_load(written)["select"]
    # and reads back, without a warning, as the same recipe
    shutil.copy(FIXTURE / "questions.csv", tmp_path / "questions.csv")
    (tmp_path / "recipe.yaml").write_text(written)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RecipeFormatWarning)
        assert load_recipe(str(tmp_path / "recipe.yaml")).recipe == loaded.recipe


def test_migrating_changes_no_fingerprint() -> None:
    with pytest.warns(RecipeFormatWarning):
        assert fingerprint_recipe(load_recipe(str(FIXTURE / "recipe.yaml")).recipe) == FIXTURE_FINGERPRINT
    with pytest.warns(RecipeFormatWarning):
        assert fingerprint_recipe(RunFolder(FIXTURE / "run").recipe()) == FIXTURE_RUN_FINGERPRINT
    # quickstart is written in format 2 now (curate: 2, select.completion): same data, same name
    assert fingerprint_recipe(load_recipe(str(REPO / "recipes" / "quickstart.yaml")).recipe) == QUICKSTART_FINGERPRINT


@pytest.mark.parametrize(
    ("head", "select", "message"),
    [
        ("curate: 2\n", "  keep: reference\n", r"recipe.yaml:\d+:3: select.keep: unknown key: renamed select.completion in recipe format 2"),
        ("", "  keep: reference\n  completion: reference\n", r"select.keep: give select.completion only"),
        ("curate: 3\n", "", r"recipe.yaml:1:9: curate: this recipe is written in recipe format 3, and curate \S+ reads formats 1 to 2: it needs a curate that reads format 3"),
        ("curate: two\n", "", r"curate: the recipe format is a whole number from 1 to 2, not 'two'"),
    ],
)
def test_what_a_format_cannot_say_is_refused(write_recipe, head, select, message) -> None:
    text = head + "name: x\nsource: {path: data.csv}\nprompt: {user: q}\nanswer: {labels: [a, b]}\nselect:\n  fraction: 0.5\n" + select
    (write_recipe(text).parent / "data.csv").write_text("q\n1\n")
    with pytest.raises(RecipeError, match=message):
        load_recipe(str(write_recipe(text)))


def test_the_cli_prints_the_deprecation_as_a_located_warning_line(tmp_path) -> None:
    result = curate("validate", str(FIXTURE / "recipe.yaml"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"warning: {FIXTURE / 'recipe.yaml'}:35:3: {DEPRECATION}" in result.stderr


@pytest.mark.slow  # a TGI protocol server and the local Hub, CLI subprocesses
def test_every_command_reads_the_format_1_run_folder(tmp_path, hub_server: HubTestServer) -> None:
    """validate, run (resuming: 0 traces generated), score, eval, verify and push, on a copy of the fixture."""
    work = tmp_path / "format-1"
    shutil.copytree(FIXTURE, work)
    before = pq.read_table(work / "run" / run_folder.SCORED_FILE)
    with TGITestServer() as tgi:
        ran = curate("run", "recipe.yaml", "-o", "run", "--no-push", cwd=work, env={"TGI_URL": tgi.url})
        assert ran.returncode == 0, ran.stderr
        assert "traces: 48 requested, 48 from the journal, 0 generated" in ran.stdout, ran.stdout
        assert tgi.requests_by_route.get("/generate", 0) == 0
    after = pq.read_table(work / "run" / run_folder.SCORED_FILE)
    assert after.select(["id", "kept", "drop_reason", "cocoa_ppl"]).equals(before.select(["id", "kept", "drop_reason", "cocoa_ppl"]))
    assert (work / "run" / run_folder.RECIPE_FILE).read_text().startswith(f"{FORMAT_KEY}: {FORMAT_VERSION}\n")

    shutil.copytree(FIXTURE / "run", work / "as-written")  # the folder exactly as the old curate left it
    for args in (("score", "as-written"), ("eval", "as-written", "--bootstrap", "0"), ("verify", str(FIXTURE / "run"))):
        result = curate(*args, cwd=work)
        assert result.returncode == 0, (args, result.stderr)
    assert json.loads((work / "as-written" / "eval" / "report.json").read_text())["metrics"]
    assert pq.read_table(work / "as-written" / run_folder.SCORED_FILE).select(["kept"]).equals(before.select(["kept"]))

    shutil.copytree(FIXTURE / "run", work / "to-push")
    hub = {k: v for k, v in hub_env(hub_server, tmp_path).items() if k != "HF_HUB_OFFLINE"}
    pushed = subprocess.run([sys.executable, "-m", "curation.cli", "push", "to-push", "--repo", "test-org/format-1"], cwd=work, env=hub, capture_output=True, text=True, timeout=300)
    assert pushed.returncode == 0, pushed.stderr
    published = yaml.safe_load(hub_server.files("test-org/format-1")["recipe.yaml"])
    assert published[FORMAT_KEY] == FORMAT_VERSION and published["select"]["completion"] == "reference"


def test_a_key_added_later_leaves_the_fingerprint_while_at_its_default(monkeypatch) -> None:
    from curation.recipe import versions

    data = {"curate": 2, "name": "x", "select": {"completion": "reference", "later": "as before"}}
    assert versions.format_1_names(data) == {"name": "x", "select": {"keep": "reference", "later": "as before"}}
    monkeypatch.setattr(versions, "ADDED_DEFAULTS", {("select", "later"): "as before"})
    assert versions.format_1_names(data) == {"name": "x", "select": {"keep": "reference"}}
    changed = {**data, "select": {"completion": "reference", "later": "changed"}}
    assert versions.format_1_names(changed)["select"] == {"keep": "reference", "later": "changed"}
