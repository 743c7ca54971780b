"""Recipes from elsewhere never execute code, never read outside their repo, never leak a secret.

A recipe is data: YAML without object tags, prompts through a sandboxed jinja2 environment, answers
read with tags, labels and regexes. Each attack below leaves a marker file if it gets anywhere;
none may. The Hub-specific rules (curation.recipe.remote.shared_recipe_problems / shared_endpoint_problems)
are checked against the local Hub.
"""

from __future__ import annotations

import time

import jinja2
import pytest

from curation.recipe.load import load_recipe
from curation.recipe.yaml_marks import parse_yaml
from curation.source import load_questions
from curation.templating import template_environment
from curation.types import RecipeError
from tests.builders.hub_run import curate_cli, write_questions
from tests.servers.hub_fixtures import hub_env, run_hub_client
from tests.servers.hub_server import HubTestServer

BASE = """\
name: hostile
source:
  path: {source}
prompt:
  user: {user}
generator:
  samples: 2
answer:
  labels: [upregulated, downregulated]
select:
  fraction: 0.5
"""

# Server-side template injection payloads that reach os/subprocess in an unsandboxed jinja2.
JINJA_ATTACKS = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.popen('touch MARKER').read() }}",
    "{{ joiner.__init__.__globals__.os.system('touch MARKER') }}",
    "{{ namespace.__init__.__globals__.os.system('touch MARKER') }}",
    "{{ lipsum.__globals__['os'].system('touch MARKER') }}",
    "{{ self.__init__.__globals__.__builtins__.__import__('os').system('touch MARKER') }}",
    "{{ self._TemplateReference__context.cycler.__init__.__globals__.os.system('touch MARKER') }}",
    "{% for c in [].__class__.__base__.__subclasses__() %}{% if c.__name__ == 'catch_warnings' %}"
    "{{ c()._module.__builtins__['__import__']('os').system('touch MARKER') }}{% endif %}{% endfor %}",
    "{{ gene.__class__.__base__.__subclasses__() }}",
    "{{ gene | attr('__class__') }}",
    "{{ '{0.__class__.__base__.__subclasses__}'.format(gene) }}",
    "{{ gene.format_map.__self__.__class__ }}",
    "{% set x = namespace() %}{{ x.__class__.__init__.__globals__ }}",
    "{{ config.__class__.__init__.__globals__['os'].popen('touch MARKER') }}",
    "{{ request.application.__globals__.__builtins__.__import__('os').popen('touch MARKER') }}",
    "{{ range.__self__.__import__('os').system('touch MARKER') }}",
    "{{ dict.__base__.__subclasses__() }}",
]


def _recipe(tmp_path, user: str, name: str = "recipe.yaml"):
    write_questions(tmp_path / "questions.csv", 3)
    text = BASE.format(source="questions.csv", user="'" + user.replace("'", "''") + "'")
    (tmp_path / name).write_text(text)
    return tmp_path / name


@pytest.mark.parametrize("payload", JINJA_ATTACKS)
def test_templates_cannot_reach_python_internals(tmp_path, monkeypatch, payload) -> None:
    monkeypatch.chdir(tmp_path)
    loaded = load_recipe(str(_recipe(tmp_path, payload)))
    with pytest.raises((jinja2.exceptions.SecurityError, jinja2.exceptions.UndefinedError)):
        load_questions(loaded)
    assert not (tmp_path / "MARKER").exists()


def test_template_resource_limits() -> None:
    env = template_environment()
    with pytest.raises(OverflowError):
        env.from_string("{{ range(10**9) | list | length }}").render()
    # harmless formatting still works
    assert env.from_string("{{ gene | upper }}-{{ '%s' % pert }}").render(gene="myc", pert="P") == "MYC-P"


YAML_ATTACKS = [
    "!!python/object/apply:os.system ['touch MARKER']",
    "!!python/object/new:subprocess.Popen [['touch', 'MARKER']]",
    "!!python/name:os.system",
    "!!python/module:os",
    "!!python/object:__main__.Evil {}",
    "!include /etc/passwd",
]


@pytest.mark.parametrize("value", YAML_ATTACKS)
def test_yaml_tags_never_construct_objects(tmp_path, value) -> None:
    (tmp_path / "evil.yaml").write_text(f"name: evil\ndescription: {value}\n")
    result = curate_cli("validate", "evil.yaml", env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}, cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    line = result.stderr.strip()
    assert line.startswith("evil.yaml:2:14: invalid YAML:") and "Traceback" not in line, line
    assert not (tmp_path / "MARKER").exists()


def test_alias_bomb_and_recursive_alias_are_refused() -> None:
    bomb = "a: &a ['lol','lol','lol','lol','lol','lol','lol','lol','lol']\n"
    for level in "bcdefghi":
        previous = chr(ord(level) - 1)
        bomb += f"{level}: &{level} [{', '.join(['*' + previous] * 9)}]\n"
    started = time.monotonic()
    with pytest.raises(RecipeError, match="alias bomb"):
        parse_yaml(bomb, "bomb.yaml")
    assert time.monotonic() - started < 5
    with pytest.raises(RecipeError, match="recursive alias"):
        parse_yaml("a: &a [1, *a]\n", "loop.yaml")
    # ordinary anchors still work
    data, _ = parse_yaml("x: &x {a: 1}\ny: *x\n", "ok.yaml")
    assert data["y"] == {"a": 1}


# --------------------------------------------------------------------------- from the Hub
HUB_BASE = """\
name: shared
source:
  path: source/questions.csv
  label_column: label
prompt:
  user: "{{ gene }}?"
generator:
  samples: 2
answer:
  labels: [upregulated, downregulated]
select:
  fraction: 0.5
"""


def _seed(server: HubTestServer, tmp_path, repo: str, recipe: str, **extra) -> None:
    write_questions(tmp_path / "q.csv", 3)
    server.seed(repo, {"recipe.yaml": recipe, "source/questions.csv": (tmp_path / "q.csv").read_bytes(), **extra})


def _problems(server: HubTestServer, tmp_path, locations: list[str]) -> dict:
    return run_hub_client(
        server,
        tmp_path,
        f"""
        import json
        from curation.recipe.load import load_recipe
        from curation.types import RecipeError
        out = {{}}
        for location in {locations!r}:
            try:
                out[location] = load_recipe(location).recipe.name
            except RecipeError as err:
                out[location] = [p.path + ": " + p.message for p in err.problems]
        print(json.dumps(out))
        """,
    )


def test_hub_recipes_stay_inside_their_repo(hub_server: HubTestServer, tmp_path) -> None:
    (tmp_path / "secret.csv").write_text("gene\nSECRET\n")
    cases = {
        "abs": HUB_BASE.replace("source/questions.csv", str(tmp_path / "secret.csv")),
        "up": HUB_BASE.replace("source/questions.csv", "../../../secret.csv"),
        "home": HUB_BASE.replace("source/questions.csv", "~/secret.csv"),
        "folder": HUB_BASE.replace("path: source/questions.csv", f"dataset: {tmp_path}"),
        "out": HUB_BASE + "output_dir: /tmp/clobbered\n",
        "trainout": HUB_BASE + "train:\n  output_dir: /etc\n",
        "extends": HUB_BASE + f"extends: {tmp_path / 'mine.yaml'}\n",
        "regex": HUB_BASE.replace("labels: [upregulated, downregulated]", "regex: '(a+)+$'"),
    }
    for name, recipe in cases.items():
        _seed(hub_server, tmp_path, f"test-org/{name}", recipe)
    got = _problems(hub_server, tmp_path, [f"hf://datasets/test-org/{name}" for name in cases])
    expected = {
        "abs": "source.path: a recipe from the Hub may only read files in its own repo",
        "up": "source.path: a recipe from the Hub may only read files in its own repo",
        "home": "source.path: a recipe from the Hub may only read files in its own repo",
        "folder": "source.dataset: a recipe from the Hub must name a Hub dataset (org/name), not a local folder",
        "out": "output_dir: a recipe from the Hub may not choose where files are written",
        "trainout": "train.output_dir: a recipe from the Hub may not choose where files are written",
        "extends": "extends: a recipe from the Hub may only extend recipes on the Hub or in its own repo",
        "regex": "answer.regex: a recipe from the Hub may not use a regex with nested quantifiers",
    }
    for name, start in expected.items():
        problems = got[f"hf://datasets/test-org/{name}"]
        assert isinstance(problems, list) and len(problems) == 1 and problems[0].startswith(start), (name, problems)
    assert not (tmp_path / "clobbered").exists()


def test_hub_recipes_cannot_send_your_keys_to_their_endpoint(hub_server: HubTestServer, tmp_path) -> None:
    openai = "  backend: openai\n  model: m\n"
    cases = {
        "literal-with-key": openai + "  url: https://collector.example/v1\n  api_key: ${OPENAI_API_KEY}\n",
        "key-in-url": openai + "  url: https://collector.example/${HF_TOKEN}\n",
        "default-url-with-key": openai + "  url: ${ENDPOINT:-https://collector.example}\n  api_key: ${OPENAI_API_KEY}\n",
        "env-url-with-key": openai + "  url: ${MY_ENDPOINT}\n  api_key: ${OPENAI_API_KEY}\n",  # fine: you choose it
        "literal-no-key": openai + "  url: https://public.example/v1\n",  # fine: nothing of yours goes there
    }
    for name, generator in cases.items():
        _seed(hub_server, tmp_path, f"test-org/{name}", HUB_BASE.replace("generator:\n", "generator:\n" + generator))
    (tmp_path / "adds-key.yaml").write_text("extends: hf://datasets/test-org/literal-no-key\ngenerator:\n  api_key: ${OPENAI_API_KEY}\n")
    (tmp_path / "own-endpoint.yaml").write_text("extends: hf://datasets/test-org/literal-with-key\ngenerator:\n  url: http://127.0.0.1:8000/v1\n")
    got = _problems(hub_server, tmp_path, [f"hf://datasets/test-org/{name}" for name in cases] + ["adds-key.yaml", "own-endpoint.yaml"])
    refused = "generator.url: a recipe from the Hub names this endpoint itself and would send it generator.api_key"
    assert got["hf://datasets/test-org/literal-with-key"][0].startswith(refused)
    whole_only = "generator.url: a recipe from the Hub may take an endpoint from the environment only as a whole ${MY_ENDPOINT}"
    assert got["hf://datasets/test-org/key-in-url"][0].startswith(whole_only)
    assert got["hf://datasets/test-org/default-url-with-key"][0].startswith(whole_only)  # the default is theirs
    assert got["adds-key.yaml"][0].startswith(refused)  # your key, their endpoint: still refused
    assert got["hf://datasets/test-org/env-url-with-key"] == "shared"
    assert got["hf://datasets/test-org/literal-no-key"] == "shared"
    assert got["own-endpoint.yaml"] == "shared"  # your endpoint overrides theirs


def test_hostile_recipe_from_the_hub_end_to_end(hub_server: HubTestServer, tmp_path) -> None:
    """`curate run hf://…` on a template injection and on a YAML object tag: one-line errors, nothing runs."""
    injection = HUB_BASE.replace('"{{ gene }}?"', "\"{{ cycler.__init__.__globals__.os.system('touch MARKER') }}\"")
    _seed(hub_server, tmp_path, "test-org/ssti", injection)
    _seed(hub_server, tmp_path, "test-org/tag", HUB_BASE + "description: !!python/object/apply:os.system ['touch MARKER']\n")
    env = hub_env(hub_server, tmp_path)
    ssti = curate_cli("run", "hf://datasets/test-org/ssti", "-o", "out", "-q", env=env, cwd=tmp_path, timeout=120)
    # refused while checking the recipe, at the template's own line, before any model or endpoint
    assert ssti.returncode == 2
    (line,) = ssti.stderr.strip().splitlines()
    assert line.startswith("hf://datasets/test-org/ssti:")
    assert line.endswith("prompt.user: template refused by the sandbox on the first source row: access to attribute '__init__' of 'type' object is unsafe.")
    tag = curate_cli("run", "hf://datasets/test-org/tag", "-o", "out2", "-q", env=env, cwd=tmp_path, timeout=120)
    assert tag.returncode == 2
    assert tag.stderr.strip().startswith("hf://datasets/test-org/tag:13:14: invalid YAML: could not determine a constructor for the tag")
    assert not (tmp_path / "MARKER").exists()


# ----------------------------------------------------------------------------- five kinds that once validated
FIVE_BAD = {
    "synonym claimed twice": ("answer:\n  labels:\n    up: [change]\n    down: [change]\n", "answer.labels", "'change' is claimed by both 'up' and 'down'"),
    "synonym claimed twice, in another case": ("answer:\n  labels:\n    up: [Change]\n    down: [change]\n", "answer.labels", "is claimed by both"),
    "class name is another class's synonym": ("answer:\n  labels:\n    up: []\n    down: [up]\n", "answer.labels", "'up' is claimed by both"),
    "empty label set (list)": ("answer:\n  labels: []\n", "answer.labels", "labels is empty"),
    "empty label set (map)": ("answer:\n  labels: {}\n", "answer.labels", "labels is empty"),
    "file url": ("generator:\n  backend: openai\n  url: file:///etc/passwd\n", "generator.url", "must be http:// or https://"),
    "gopher url in a list": ("generator:\n  backend: tgi\n  url: [http://a:8080, gopher://b]\n", "generator.url", "must be http:// or https://"),
    "critic file url": ("critic:\n  backend: openai\n  url: file:///etc/passwd\n  prompt: grade {{ trace }}\n", "critic.url", "must be http:// or https://"),
    "credentials in the url": ("generator:\n  backend: openai\n  url: http://user:secret@host:8000\n", "generator.url", "carries credentials"),
    "token as userinfo": ("generator:\n  backend: tgi\n  url: https://hf_abc@host\n", "generator.url", "carries credentials"),
    "base model as a url": ("train:\n  base_model: https://example.com/model.gguf\n", "train.base_model", "not a URL"),
    "base model as hf url": ("train:\n  base_model: hf://HuggingFaceTB/SmolLM2-135M\n", "train.base_model", "not a URL"),
    "empty thinking start": ("generator:\n  thinking_markers: [['', '</think>']]\n", "generator.thinking_markers", "thinking_markers[0]: the start marker is empty"),
    "empty thinking end": ("generator:\n  thinking_markers: [['<think>', '</think>'], ['<t>', '']]\n", "generator.thinking_markers", "thinking_markers[1]: the end marker is empty"),
    "empty thinking markers": ("generator:\n  thinking_markers: []\n", "generator.thinking_markers", "thinking_markers is empty"),
}


@pytest.mark.parametrize("case", sorted(FIVE_BAD))
def test_validate_refuses_with_a_located_error(case, tmp_path):
    from tests.conftest import SAMPLE_CSV

    section, where, message = FIVE_BAD[case]
    text = "name: hostile\nsource:\n  path: " + str(SAMPLE_CSV) + "\nprompt:\n  user: '{{ pert }}'\nselect:\n  fraction: 0.5\n" + section
    if "answer:" not in section:
        text += "answer:\n  labels: [upregulated, downregulated]\n"
    (tmp_path / "r.yaml").write_text(text)
    with pytest.raises(RecipeError) as caught:
        load_recipe(str(tmp_path / "r.yaml"))
    lines = [str(p) for p in caught.value.problems if p.path == where]
    assert lines and message in lines[0], str(caught.value)
    problem = next(p for p in caught.value.problems if p.path == where)
    assert problem.line > 1 and problem.file.endswith("r.yaml")  # located at the offending key, not the top
    assert "user:secret" not in str(caught.value) and "hf_abc" not in str(caught.value)  # the error does not echo the credentials


def test_the_same_words_in_different_case_are_fine_when_case_sensitive(tmp_path):
    from tests.conftest import SAMPLE_CSV

    text = f"name: ok\nsource:\n  path: {SAMPLE_CSV}\nprompt:\n  user: x\nselect:\n  fraction: 0.5\nanswer:\n  case_sensitive: true\n  labels:\n    up: [Change]\n    down: [change]\n"
    (tmp_path / "r.yaml").write_text(text)
    load_recipe(str(tmp_path / "r.yaml"))


def test_a_url_from_the_environment_is_checked_when_it_is_used(monkeypatch):
    from curation.backends.http import endpoint_setup
    from curation.recipe.sections import GeneratorConfig

    config = GeneratorConfig(backend="openai", url="${CURATE_TEST_URL}", model="m")
    monkeypatch.setenv("CURATE_TEST_URL", "http://user:hunter2@host:8000")
    with pytest.raises(ValueError, match=r"generator.url \(\$\{CURATE_TEST_URL\}\): the URL carries credentials") as caught:
        endpoint_setup(config, "openai")
    assert "hunter2" not in str(caught.value)
    monkeypatch.setenv("CURATE_TEST_URL", "file:///etc/passwd")
    with pytest.raises(ValueError, match="must be http:// or https://"):
        endpoint_setup(config, "openai")
