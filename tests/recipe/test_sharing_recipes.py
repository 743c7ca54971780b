"""Sharing recipes through the Hub: `curate run hf://…`, `extends: hf://…`, at revisions, offline from the cache.

Against the local Hub (tests/servers/hub_server.py); client code runs in subprocesses.
"""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from curation import run_folder
from tests.builders.hub_run import curate_cli, write_questions
from tests.servers.hub_fixtures import hub_env, run_hub_client
from tests.servers.hub_server import HubTestServer

SHARED = """\
name: {name}
license: cc-by-4.0
source:
  path: source/questions.csv
  label_column: label
prompt:
  user: "{{{{ pert }}}} knocked down; what happens to {{{{ gene }}}}?"
generator:
  samples: 2
answer:
  labels: [upregulated, downregulated, not differentially expressed]
select:
  fraction: 0.5
"""


def seed_shared(server: HubTestServer, tmp_path, repo: str = "test-org/shared") -> None:
    """A dataset repo with a recipe on main, another on branch v2, one in a PR, and one in a subfolder."""
    write_questions(tmp_path / "questions.csv", 6)
    csv = (tmp_path / "questions.csv").read_bytes()
    server.seed(
        repo,
        {
            "recipe.yaml": SHARED.format(name="on-main"),
            "source/questions.csv": csv,
            "recipes/alt.yaml": SHARED.format(name="alt").replace("path: source/questions.csv", "path: ../source/questions.csv"),
            "recipes/nested/recipe.yaml": SHARED.format(name="nested").replace("path: source/", "path: ../../source/"),
        },
    )
    run_hub_client(
        server,
        tmp_path,
        f"""
        from huggingface_hub import CommitOperationAdd, HfApi
        api = HfApi()
        api.create_branch("{repo}", branch="v2", repo_type="dataset")
        api.upload_file(path_or_fileobj={SHARED.format(name="on-v2")!r}.encode(), path_in_repo="recipe.yaml",
                        repo_id="{repo}", repo_type="dataset", revision="v2")
        api.create_commit("{repo}", [CommitOperationAdd("recipe.yaml", {SHARED.format(name="in-pr")!r}.encode())],
                          commit_message="Propose", repo_type="dataset", create_pr=True)
        """,
    )


def load_many(server: HubTestServer, tmp_path, locations: list[str], *, offline: bool = False) -> dict:
    """load_recipe + check_source on each location in one client process: name, or the problem lines."""
    code = f"""
        import json, os
        from pathlib import Path
        from curation.recipe.load import load_recipe
        from curation.types import RecipeError
        from curation.source import check_source
        out = {{}}
        for location in {locations!r}:
            try:
                loaded = load_recipe(location)
                problems = check_source(loaded)
                out[location] = [str(p) for p in problems] or loaded.recipe.name
            except RecipeError as err:
                out[location] = str(err).splitlines()
        print(json.dumps(out))
        """
    if offline:
        code = "import os; os.environ['HF_HUB_OFFLINE'] = '1'\n" + code.replace("\n        ", "\n")
    return run_hub_client(server, tmp_path, code)


def test_locations_follow_hffilesystem_syntax(hub_server: HubTestServer, tmp_path) -> None:
    seed_shared(hub_server, tmp_path)
    main_commit = hub_server.refs("test-org/shared")["main"]
    base = "hf://datasets/test-org/shared"
    got = load_many(
        hub_server,
        tmp_path,
        [
            base,
            f"{base}/recipe.yaml",
            f"{base}@main",
            f"{base}@v2",
            f"{base}@v2/recipe.yaml",
            f"{base}@refs/pr/1",
            f"{base}@refs%2Fpr%2F1/recipe.yaml",
            f"{base}@{main_commit}",
            f"{base}/recipes/alt.yaml",
            f"{base}/recipes/nested",
        ],
    )
    assert list(got.values()) == ["on-main", "on-main", "on-main", "on-v2", "on-v2", "in-pr", "in-pr", "on-main", "alt", "nested"]


def test_cli_validate_and_clear_errors(hub_server: HubTestServer, tmp_path) -> None:
    seed_shared(hub_server, tmp_path)
    env = hub_env(hub_server, tmp_path)
    ok = curate_cli("validate", "hf://datasets/test-org/shared@v2", env=env, cwd=tmp_path)
    assert ok.returncode == 0 and ok.stdout.strip() == "hf://datasets/test-org/shared@v2: ok (on-v2)"

    got = load_many(
        hub_server,
        tmp_path,
        [
            "hf://datasets/test-org/nope",
            "hf://datasets/test-org/shared@no-such-branch",
            "hf://datasets/test-org/shared/missing.yaml",
            "hf://datasets/just-a-name",
        ],
    )
    assert got["hf://datasets/test-org/nope"] == [
        "hf://datasets/test-org/nope:1:1: no dataset repo test-org/nope on the Hub, or it is private and the token cannot see it"
    ]
    assert got["hf://datasets/test-org/shared@no-such-branch"] == [
        "hf://datasets/test-org/shared@no-such-branch:1:1: no revision 'no-such-branch' in dataset test-org/shared"
    ]
    assert got["hf://datasets/test-org/shared/missing.yaml"] == [
        "hf://datasets/test-org/shared/missing.yaml:1:1: no file missing.yaml in dataset test-org/shared@main"
    ]
    assert len(got["hf://datasets/just-a-name"]) == 1 and "hf://datasets/ORG/NAME" in got["hf://datasets/just-a-name"][0]


def test_source_file_not_published(hub_server: HubTestServer, tmp_path) -> None:
    hub_server.seed("test-org/no-source", {"recipe.yaml": SHARED.format(name="x")})
    got = load_many(hub_server, tmp_path, ["hf://datasets/test-org/no-source"])
    assert got["hf://datasets/test-org/no-source"] == [
        "hf://datasets/test-org/no-source:4:9: source.path: source/questions.csv is not in dataset test-org/no-source: "
        "its publisher did not upload the source file; write a recipe with `extends: hf://datasets/test-org/no-source` and your own source.path"
    ]


def test_extends_hub_recipe_from_a_local_one(hub_server: HubTestServer, tmp_path) -> None:
    seed_shared(hub_server, tmp_path)
    (tmp_path / "mine.yaml").write_text(
        "extends: hf://datasets/test-org/shared@v2\nname: mine\nselect:\n  strategy: global\n  fraction: 0.25\ngenerator:\n  temperature: 0.7\n"
    )
    seen = run_hub_client(
        hub_server,
        tmp_path,
        """
        import json
        from pathlib import Path
        import yaml
        from curation.recipe.dump import resolved_recipe_yaml
        from curation.recipe.load import load_recipe
        loaded = load_recipe("mine.yaml")
        r = loaded.recipe
        print(json.dumps({"name": r.name, "select": [r.select.strategy, r.select.fraction], "samples": r.generator.samples,
                          "temperature": r.generator.temperature, "license": r.license,
                          "source_exists": loaded.resolve_path(r.source.path).exists(),
                          "extends_written": "extends" in yaml.safe_load(resolved_recipe_yaml(r))}))
        """,
    )
    assert seen == {
        "name": "mine",
        "select": ["global", 0.25],
        "samples": 2,  # inherited from the shared recipe
        "temperature": 0.7,
        "license": "cc-by-4.0",
        "source_exists": True,  # the base's source was fetched from its repo
        "extends_written": False,  # the run folder's recipe is self-contained
    }
    # a local base works the same way
    (tmp_path / "base.yaml").write_text(SHARED.format(name="base").replace("source/questions.csv", "questions.csv"))
    (tmp_path / "child.yaml").write_text("extends: ./base.yaml\nname: child\n")
    assert curate_cli("validate", "child.yaml", env=hub_env(hub_server, tmp_path), cwd=tmp_path).returncode == 0


def test_relative_extends_inside_a_hub_repo(hub_server: HubTestServer, tmp_path) -> None:
    write_questions(tmp_path / "q.csv", 4)
    hub_server.seed(
        "test-org/family",
        {
            "base.yaml": SHARED.format(name="base"),
            "source/questions.csv": (tmp_path / "q.csv").read_bytes(),
            "variants/hot.yaml": "extends: ../base.yaml\nname: hot\ngenerator:\n  temperature: 1.3\n",
        },
    )
    got = load_many(hub_server, tmp_path, ["hf://datasets/test-org/family/variants/hot.yaml"])
    assert got == {"hf://datasets/test-org/family/variants/hot.yaml": "hot"}


def test_offline_uses_the_cache(hub_server: HubTestServer, tmp_path) -> None:
    seed_shared(hub_server, tmp_path)
    location = "hf://datasets/test-org/shared@v2"
    assert load_many(hub_server, tmp_path, [location]) == {location: "on-v2"}
    answered = len(hub_server.request_log)
    assert load_many(hub_server, tmp_path, [location], offline=True) == {location: "on-v2"}
    assert len(hub_server.request_log) == answered  # the cache under tmp_path/hf-home answered


@pytest.mark.slow
def test_run_pushes_then_hf_location_reproduces_it(hub_server: HubTestServer, tmp_path) -> None:
    """`curate run` with a hub: section pushes at the end; `curate run hf://…` elsewhere makes the same data."""
    lab = tmp_path / "lab"
    lab.mkdir()
    write_questions(lab / "questions.csv", 3)
    (lab / "tiny.yaml").write_text(
        """\
name: tiny
license: cc-by-4.0
tags: [perturbqa]
source:
  path: questions.csv
  id_template: "{{ cell_line }}__{{ pert }}__{{ gene }}"
  label_column: label
prompt:
  user: "In {{ cell_line }} cells, {{ pert }} was knocked down. Is {{ gene }} upregulated or downregulated? Answer in <answer></answer>."
generator:
  samples: 2
  max_new_tokens: 8
answer:
  labels: [upregulated, downregulated, not differentially expressed]
select:
  fraction: 1.0
  drop_truncated: false
hub:
  repo: test-org/tiny
"""
    )
    env = {**hub_env(hub_server, tmp_path), "OMP_NUM_THREADS": "1"}
    first = curate_cli("run", "tiny.yaml", "-o", "run", "-q", env=env, cwd=lab, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "pushed to dataset test-org/tiny@main" in first.stdout
    commits = len(hub_server.commits("test-org/tiny"))

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    again = curate_cli("run", "hf://datasets/test-org/tiny", "-o", "rerun", "-q", env=env, cwd=elsewhere, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "pushed" not in again.stdout  # the published recipe has no hub: section
    assert len(hub_server.commits("test-org/tiny")) == commits

    for split in (run_folder.SCORED_FILE, run_folder.FILTERED_FILE, run_folder.TRACES_FILE):
        original = pq.read_table(lab / "run" / split)
        rerun = pq.read_table(elsewhere / "rerun" / split)
        assert rerun.equals(original), split
    hub_scored = hub_server.files("test-org/tiny")[run_folder.SCORED_FILE]
    assert hub_scored == (elsewhere / "rerun" / run_folder.SCORED_FILE).read_bytes()
