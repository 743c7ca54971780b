"""`--set` overrides, the first error a user meets, and `curate run --dry-run`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from curation.recipe.load import load_recipe
from curation.types import RecipeError
from tests.conftest import REPO

QUICKSTART = REPO / "recipes" / "quickstart.yaml"
PERTURBQA = REPO / "recipes" / "perturbqa.yaml"


def curate(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("TGI_URL", "HF_TOKEN")}
    base |= {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "curation.cli", *args], capture_output=True, text=True, cwd=cwd, env=base | (env or {}))


# ----------------------------------------------------------------------------- --set
def test_overrides_take_dotted_paths_and_yaml_values():
    loaded = load_recipe(str(QUICKSTART), overrides=["source.limit=5", "generator.temperature=0.5", 'generator.stop=["\\n\\n", END]', "select.count=2"])
    recipe = loaded.recipe
    assert recipe.source.limit == 5 and recipe.generator.temperature == 0.5
    assert recipe.generator.stop == ["\n\n", "END"]
    # a budget set on the command line replaces the file's, instead of clashing with it
    assert recipe.select.count == 2 and recipe.select.fraction is None
    # later overrides win
    assert load_recipe(str(QUICKSTART), overrides=["source.limit=5", "source.limit=7"]).recipe.source.limit == 7


def test_an_invalid_override_is_named_as_the_override():
    with pytest.raises(RecipeError) as error:
        load_recipe(str(QUICKSTART), overrides=["source.limit=0"])
    assert str(error.value) == "--set source.limit: must be ≥ 1"
    with pytest.raises(RecipeError, match=r"^--set source.limitt: unknown key$"):
        load_recipe(str(QUICKSTART), overrides=["source.limitt=3"])
    with pytest.raises(RecipeError, match="expected dotted.path=VALUE"):
        load_recipe(str(QUICKSTART), overrides=["source.limit"])
    with pytest.raises(RecipeError, match=r"^--set generator.api_key: api_key must be an environment reference"):
        load_recipe(str(QUICKSTART), overrides=["generator.api_key=sk-secret"])
    with pytest.raises(RecipeError, match=r"^--set source.limit: invalid YAML"):
        load_recipe(str(QUICKSTART), overrides=["source.limit=[1"])
    with pytest.raises(RecipeError, match=r"^--set prompt.user: .*only allowed in"):
        load_recipe(str(QUICKSTART), overrides=["prompt.user=${HOME}"])


def test_override_problems_in_the_file_keep_their_line():
    """An override that makes the file's own value wrong elsewhere: that problem stays at its line."""
    with pytest.raises(RecipeError) as error:
        load_recipe(str(QUICKSTART), overrides=["generator.samples=1", "score.metric=self_consistency"])
    assert "self_consistency needs generator.samples >= 2" in str(error.value)


def test_validate_and_run_take_set_and_report_it(tmp_path):
    result = curate("validate", str(QUICKSTART), "--set", "source.limit=0", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.strip() == "--set source.limit: must be ≥ 1"
    result = curate("validate", str(QUICKSTART), "--set", "source.limit=3", "--set", "generator.samples=2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_train_takes_set(tmp_path):
    from curation.train.target import resolve_target

    target = resolve_target(str(QUICKSTART), overrides=["train.max_steps=1", "train.learning_rate=5e-5", f"train.dataset={tmp_path}"])
    assert target.config.max_steps == 1 and target.config.learning_rate == 5e-5


# ----------------------------------------------------------------------------- the first error
def test_missing_endpoint_variable_comes_first_and_says_how_to_set_it(tmp_path):
    """No TGI_URL and no Hub token: the endpoint is what a user fixes first."""
    result = curate("run", str(PERTURBQA), "--set", "source.limit=2", cwd=tmp_path, env={"HF_HOME": str(tmp_path / "hf")})
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: generator.url: environment variable TGI_URL is not set: export TGI_URL=http://HOST:PORT (the tgi endpoint), "
        "or pass --set generator.url=http://HOST:PORT"
    )
    assert not (tmp_path / "runs").exists()


def test_missing_hub_token_points_to_no_push(tmp_path):
    result = curate("run", str(PERTURBQA), "--set", "source.limit=2", cwd=tmp_path, env={"HF_HOME": str(tmp_path / "hf"), "TGI_URL": "http://127.0.0.1:9"})
    assert result.returncode == 1
    assert "no Hugging Face token" in result.stderr and "--no-push" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


# ----------------------------------------------------------------------------- --dry-run
def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path):
    result = curate("run", str(PERTURBQA), "--dry-run", "--set", "source.limit=20", "--set", "generator.max_new_tokens=100", cwd=tmp_path, env={"TGI_URL": "http://tgi.example:8080"})
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "questions: 20" in out
    assert "traces: 180 (9 per question), 0 already in the journal, 180 to generate" in out
    assert "tokens: at most 18,000 (180 traces x max_new_tokens 100)" in out
    assert "generator: tgi http://tgi.example:8080 (model Qwen/Qwen3-32B)" in out
    assert "push: to the Hub dataset my-lab/perturbqa-k562-cocoa" in out
    assert list(tmp_path.iterdir()) == []


def test_dry_run_of_a_local_recipe_loads_no_model(tmp_path):
    result = curate("run", str(QUICKSTART), "--dry-run", "-o", str(tmp_path / "run"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "questions: 12" in result.stdout and "generator: in-process model embedded (no endpoint)" in result.stdout
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- against a TGI-protocol server
@pytest.mark.slow
def test_dry_run_counts_the_journal_and_estimates_tokens_and_run_records_overrides(tmp_path):
    from tests.servers.tgi_server import TGITestServer

    run_dir = tmp_path / "run"
    sets = ["--set", "source.limit=3", "--set", "generator.max_new_tokens=40", "--set", "generator.chat_template=chatml"]
    with TGITestServer(max_total_tokens=8192, max_input_tokens=4096) as tgi:
        env = {"TGI_URL": tgi.url}
        result = curate("run", str(PERTURBQA), "--no-push", "-q", "-o", str(run_dir), *sets, cwd=tmp_path, env=env)
        assert result.returncode == 0, result.stderr
        requests_after_run = tgi.requests_total
        written = yaml.safe_load((run_dir / "recipe.yaml").read_text())
        assert written["source"]["limit"] == 3 and written["generator"]["max_new_tokens"] == 40
        assert written["generator"]["url"] == "${TGI_URL}"  # overrides are recorded; the endpoint stays a reference
        before = sorted(p.name for p in run_dir.iterdir())
        # two more questions: the first three's 27 traces are in the journal
        more = [s if s != "source.limit=3" else "source.limit=5" for s in sets]
        result = curate("run", str(PERTURBQA), "--dry-run", "-o", str(run_dir), *more, cwd=tmp_path, env=env)
        assert result.returncode == 0, result.stderr
        assert "traces: 45 (9 per question), 27 already in the journal, 18 to generate" in result.stdout
        assert "tokens: at most 720 (18 traces x max_new_tokens 40)" in result.stdout
        assert "estimate: about" in result.stdout and "mean of 27 earlier traces" in result.stdout
        assert tgi.requests_total == requests_after_run  # the dry run called nothing
        assert sorted(p.name for p in run_dir.iterdir()) == before  # and wrote nothing, not even a WAL file


@pytest.mark.slow
def test_fresh_clone_without_shared_reaches_generation(tmp_path):
    """`TGI_URL=… curate run recipes/perturbqa.yaml` in a clone of the committed tree, nothing beside it."""
    from tests.servers.tgi_server import TGITestServer

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    assert not (tmp_path / "shared").exists() and not (clone.parent / "shared").exists()
    env = {k: v for k, v in os.environ.items() if k not in ("TGI_URL", "HF_TOKEN")} | {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(clone)}
    where = subprocess.run([sys.executable, "-c", "import curation; print(curation.__file__)"], capture_output=True, text=True, cwd=clone, env=env)
    assert where.stdout.strip().startswith(str(clone))
    with TGITestServer(max_total_tokens=8192, max_input_tokens=4096) as tgi:
        result = subprocess.run(
            [sys.executable, "-m", "curation.cli", "run", "recipes/perturbqa.yaml", "--no-push", "-q",
             "--set", "source.limit=2", "--set", "generator.max_new_tokens=32", "--set", "generator.chat_template=chatml"],
            capture_output=True, text=True, cwd=clone, env=env | {"TGI_URL": tgi.url},
        )
        assert result.returncode == 0, result.stderr
        assert tgi.requests_by_route["/generate"] >= 18 and not tgi.invalid_requests
    assert "traces: 18 requested, 0 from the journal, 18 generated" in result.stdout
    assert (clone / "runs" / "perturbqa" / "recipe.yaml").exists()
