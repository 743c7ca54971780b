"""Recipe loading and `curate validate`: every malformed recipe gives file:line:col: path: message lines."""

import json
import re
import subprocess
import sys

import pytest

from curation.cli import main
from curation.recipe.dump import resolved_recipe_yaml
from curation.recipe.env import expand_env
from curation.recipe.load import load_recipe
from curation.types import RecipeError

VALID = """\
name: t
source:
  path: SAMPLE_CSV
  limit: 4
  label_column: label
prompt:
  user: "Knockdown of {{ pert }} in {{ cell_line }}: what happens to {{ gene }}?"
generator:
  samples: 2
  max_new_tokens: 8
answer:
  labels: [upregulated, downregulated, not differentially expressed]
select:
  strategy: per_class
  fraction: 0.5
"""

PROBLEM_LINE = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+):(?P<col>\d+): (?P<rest>.+)$")


def validate(capsys, path):
    code = main(["validate", str(path)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_valid_recipe(write_recipe, capsys):
    code, out, err = validate(capsys, write_recipe(VALID))
    assert code == 0, err
    assert "ok" in out


@pytest.mark.parametrize(
    "edit, path, message, line",
    [
        (lambda t: t.replace("samples: 2", "samples: 0"), "generator.samples", "must be ≥ 1", 9),
        (lambda t: t.replace("samples: 2", "samples: -3"), "generator.samples", "must be ≥ 1", 9),
        (lambda t: t.replace("samples: 2", "samples: many"), "generator.samples", "valid integer", 9),
        (lambda t: t.replace("  limit: 4\n", "  limit: 4\n  limitt: 5\n"), "source.limitt", "unknown key", 5),
        (lambda t: t.replace("name: t\n", ""), "name", "required field is missing", 1),
        (lambda t: t.replace("backend", "x") + "generator2: {}\n", "generator2", "unknown key", 16),
        (lambda t: t.replace("fraction: 0.5", "fraction: 1.5"), "select.fraction", "must be ≤ 1", 15),
        (lambda t: t.replace("fraction: 0.5", "fraction: 0.5\n  count: 3"), "select", "exactly one budget", 14),
        (lambda t: t.replace("fraction: 0.5", "per_class: {upregulated: 3, sideways: 2}"), "", "not in answer.labels: sideways", 1),
        (lambda t: t.replace("fraction: 0.5", "per_class: {upregulated: 0}"), "select", "budget must be", 14),
        (lambda t: t.replace("{{ gene }}", "{{ gene_name }}"), "prompt.user", "missing column(s): gene_name", 7),
        (lambda t: t + "score:\n  metric: vibes\n", "score", "unknown metric 'vibes'", 17),
        (lambda t: t.replace("samples: 2", "backend: vllm\n  samples: 2"), "generator.backend", "Input should be", 9),
        (lambda t: t.replace("SAMPLE_CSV", "/nonexistent/file.csv"), "source.path", "file not found", 3),
        (lambda t: t.replace("label_column: label", "label_column: truth"), "source.label_column", "column 'truth' not in source", 5),
        (lambda t: t.replace("samples: 2", "samples: 2\n  url: http://x"), "", "", 0),  # local backend ignores url: valid
        (lambda t: t.replace("name: t", "name: ${USER}"), "name", "only allowed in", 1),
        (lambda t: t.replace("samples: 2", "backend: tgi\n  samples: 2"), "generator", "needs `url`", 9),
        (lambda t: t.replace("samples: 2", "api_key: sk-live-123\n  samples: 2"), "generator", "never the secret itself", 9),
        (lambda t: t.replace("  user:", "  user: '{{ unclosed'\n  x:"), "prompt.user", "invalid template", 7),
        (lambda t: t + "answer:\n  tag: x\n", "", "duplicate key 'answer'", 16),
    ],
)
def test_malformed_recipes(write_recipe, capsys, edit, path, message, line):
    recipe = write_recipe(edit(VALID))
    code, out, err = validate(capsys, recipe)
    if not message:
        assert code == 0, err
        return
    assert code != 0
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    parsed = [PROBLEM_LINE.match(l) for l in lines]
    assert all(parsed), lines
    assert any(message in l for l in lines), lines
    hit = next(p for p, l in zip(parsed, lines) if message in l)
    assert hit["file"] == str(recipe)
    if path:
        assert hit["rest"].startswith(path + ": "), lines
    if line:
        assert int(hit["line"]) == line, lines


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "recipe is empty"),
        ("- just\n- a list\n", "must be a mapping"),
        ("name: [unclosed\n", "invalid YAML"),
        ("name: t\n  bad indent: 1\n", "invalid YAML"),
        ("!!python/object/apply:os.system ['echo pwned']\n", "invalid YAML"),
        ("name: \"\t\"\n\x00", "invalid YAML"),
    ],
)
def test_broken_files(write_recipe, capsys, text, message):
    code, out, err = validate(capsys, write_recipe(text))
    assert code != 0
    assert message in err
    assert PROBLEM_LINE.match(err.strip().splitlines()[0])
    assert "Traceback" not in err


def test_missing_file(capsys, tmp_path):
    code, _, err = validate(capsys, tmp_path / "nope.yaml")
    assert code != 0 and "file not found" in err and "Traceback" not in err


def test_validate_subprocess_has_no_traceback(write_recipe):
    recipe = write_recipe(VALID.replace("samples: 2", "samples: 0"))
    result = subprocess.run([sys.executable, "-m", "curation.cli", "validate", str(recipe)], capture_output=True, text=True)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert re.match(rf"{re.escape(str(recipe))}:9:\d+: generator.samples: ", result.stderr)


def test_every_problem_is_reported(write_recipe):
    text = VALID.replace("samples: 2", "samples: 0").replace("limit: 4", "limit: 4\n  bogus: 1").replace("fraction: 0.5", "fraction: 7")
    with pytest.raises(RecipeError) as err:
        load_recipe(str(write_recipe(text)))
    paths = {p.path for p in err.value.problems}
    assert {"generator.samples", "source.bogus", "select.fraction"} <= paths


def test_schema_is_json_schema(capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["title"] == "curate recipe"
    # `prompt` is required unless source.traces imports traces with their own prompt column (a cross-check, not the schema)
    assert {"source", "answer", "select"} <= set(schema["required"]) and "prompt" in schema["properties"]
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(schema)


def test_env_is_resolved_at_use_and_never_written(write_recipe, monkeypatch):
    text = VALID.replace("samples: 2", "backend: openai\n  url: ${MY_URL}\n  api_key: ${MY_KEY}\n  samples: 2")
    loaded = load_recipe(str(write_recipe(text)))
    monkeypatch.setenv("MY_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("MY_KEY", "secret-value")
    assert expand_env(loaded.recipe.generator.url, what="generator.url") == "http://127.0.0.1:9"
    written = resolved_recipe_yaml(loaded.recipe)
    assert "${MY_KEY}" in written and "secret-value" not in written
    monkeypatch.delenv("MY_URL")
    with pytest.raises(RecipeError, match="MY_URL is not set"):
        expand_env(loaded.recipe.generator.url, what="generator.url")


def test_extends_local_base(write_recipe):
    base = write_recipe(VALID, "base.yaml")
    child = write_recipe("extends: base.yaml\nname: child\nselect:\n  strategy: global\n  fraction: 0.25\n", "child.yaml")
    loaded = load_recipe(str(child))
    assert loaded.recipe.name == "child"
    assert loaded.recipe.select.strategy == "global" and loaded.recipe.select.fraction == 0.25
    assert loaded.recipe.generator.samples == 2  # inherited
    assert base.exists()


def test_shipped_quickstart_validates(capsys):
    from tests.conftest import REPO

    code, out, err = validate(capsys, REPO / "recipes" / "quickstart.yaml")
    assert code == 0, err


def test_extends_can_switch_budget_kind(write_recipe):
    write_recipe(VALID, "base.yaml")
    child = write_recipe("extends: base.yaml\nname: child\nselect:\n  count: 3\n", "child.yaml")
    select = load_recipe(str(child)).recipe.select
    assert select.count == 3 and select.fraction is None and select.strategy == "per_class"
