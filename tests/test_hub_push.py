"""`curate push` against the local Hub (tests/servers/hub_server.py), checked as a user of the dataset would.

Client code (the CLI, datasets, huggingface_hub) runs in subprocesses with HF_ENDPOINT pointing at
the local Hub and HF_HUB_DISABLE_XET=1 (see tests/servers/hub_fixtures.py). Run folders are made
in seconds by the real pipeline on constructed traces (tests/hub_run_fixtures.py).
"""

from __future__ import annotations

import io
import json

import pyarrow.parquet as pq
import pytest
import yaml

from curation import pipeline, publish
from tests.hub_run_fixtures import curate_cli, make_run
from tests.servers import hub_fixtures
from tests.servers.hub_fixtures import HUB_TEST_READ_TOKEN, hub_env, run_hub_client
from tests.servers.hub_server import HubTestServer

hub_server = hub_fixtures.hub_server

REPO = "test-org/synth"
PUBLISHED = [
    ".gitattributes",
    "README.md",
    "data/filtered-00000-of-00001.parquet",
    "data/scored-00000-of-00001.parquet",
    "plots/uncertainty_by_class.png",
    "recipe.yaml",
    "source/questions.csv",
    "stats.json",
    "traces/train-00000-of-00001.parquet",
]


def push(server: HubTestServer, tmp_path, run_dir, *args: str, token: str | None = hub_fixtures.HUB_TEST_TOKEN):
    return curate_cli("push", str(run_dir), *args, env=hub_env(server, tmp_path, token=token), cwd=tmp_path)


def commit_posts(server: HubTestServer, repo: str = REPO) -> int:
    return sum(1 for r in server.request_log if r.method == "POST" and r.path.startswith(f"/api/datasets/{repo}/commit/"))


def front_matter(card: str) -> dict:
    return yaml.safe_load(card.split("---\n")[1])


def test_push_then_use_it_as_a_user_would(hub_server: HubTestServer, tmp_path) -> None:
    run_dir = make_run(tmp_path / "lab")
    (run_dir / publish.SECTIONS_FILE).write_text("{}")  # local bookkeeping, like the journal
    result = push(hub_server, tmp_path, run_dir, "--repo", REPO)
    assert result.returncode == 0, result.stderr
    assert f"pushed to dataset {REPO}@main (8 file(s) changed)" in result.stdout

    # one commit, holding everything but the journal; parquet through LFS, the card inline
    commits = hub_server.commits(REPO)
    assert [c.title for c in commits] == ["initial commit", "curate: synthetic, 6 of 12 questions kept by cocoa_ppl"]
    assert commit_posts(hub_server) == 1
    blobs = hub_server.blobs(REPO)
    assert sorted(blobs) == PUBLISHED
    assert all(blobs[p].is_lfs for p in PUBLISHED if p.endswith((".parquet", ".png")))
    assert not blobs["README.md"].is_lfs
    assert any(r.path == "/api/validate-yaml" for r in hub_server.request_log)  # the card's metadata was validated
    files = hub_server.files(REPO)
    assert files["data/filtered-00000-of-00001.parquet"] == (run_dir / publish.FILTERED_FILE).read_bytes()
    assert files["source/questions.csv"] == (tmp_path / "lab" / "questions.csv").read_bytes()
    stats = json.loads(files["stats.json"])
    assert stats["kept"] == 6 and "url" not in stats["provenance"]  # an endpoint URL can name an internal host

    # the published recipe reruns elsewhere: source in the repo, no hub/output_dir to push or write back
    recipe = yaml.safe_load(files["recipe.yaml"])
    assert recipe["source"]["path"] == "source/questions.csv"
    assert "hub" not in recipe and "output_dir" not in recipe and "extends" not in recipe
    assert files["recipe.yaml"].decode().startswith(f"# curate recipe of the dataset {REPO}")

    # a user elsewhere, with an empty cache and no token, loads it by its repo id and reads the card
    reader = tmp_path / "reader"
    reader.mkdir()
    seen = run_hub_client(
        hub_server,
        reader,
        f"""
        import json
        import datasets
        from huggingface_hub import DatasetCard

        filtered = datasets.load_dataset("{REPO}", split="filtered")
        scored = datasets.load_dataset("{REPO}", split="scored")
        traces = datasets.load_dataset("{REPO}", "traces", split="train")
        card = DatasetCard.load("{REPO}")
        print(json.dumps({{"filtered": filtered.to_list(), "scored": len(scored), "kept": sum(scored["kept"]),
                           "traces": len(traces), "references": sum(traces["is_reference"]),
                           "columns": filtered.column_names, "metadata": card.data.to_dict(), "text": card.text}}))
        """,
        token=None,
    )
    local_filtered = pq.read_table(run_dir / publish.FILTERED_FILE).to_pylist()
    assert seen["filtered"] == local_filtered
    assert seen["scored"] == 12 and seen["kept"] == 6 and seen["traces"] == 60 and seen["references"] == 12
    assert {"prompt", "completion", "uncertainty", "cocoa_ppl", "label", "kept"} <= set(seen["columns"])

    metadata = seen["metadata"]
    assert metadata["license"] == "cc-by-4.0"  # from the recipe
    assert metadata["task_categories"] == ["text-generation"]
    assert metadata["size_categories"] == ["n<1K"]
    assert {"curate", "perturbqa", "test"} <= set(metadata["tags"])
    assert [c["config_name"] for c in metadata["configs"]] == ["default", "traces"]
    text = seen["text"]
    assert f'load_dataset("{REPO}", split="filtered")' in text and "REPO_ID" not in text
    assert f"curate run hf://datasets/{REPO}" in text
    for fact in (
        "`test-org/fake-model` @ `0123abcd`",  # generator and revision
        "4 at temperature 1.0",  # samples per prompt
        "`cocoa_ppl` (higher = more uncertain), similarity `answer`",
        "`per_class`, budget 0.5 of each class",
        "| upregulated | 4 | 2 | 2 |",  # counts per class before/after and the budget
        "![plots/uncertainty_by_class.png](plots/uncertainty_by_class.png)",
        "path: source/questions.csv",  # the full (published) recipe
        "recipe fingerprint `",
        "arXiv:2510.05871",
        "PerturbQA",
        "SFTTrainer",
    ):
        assert fact in text, fact


def test_second_push_is_a_no_op(hub_server: HubTestServer, tmp_path) -> None:
    run_dir = make_run(tmp_path / "lab")
    assert push(hub_server, tmp_path, run_dir, "--repo", REPO).returncode == 0
    head = hub_server.refs(REPO)["main"]

    again = push(hub_server, tmp_path, run_dir, "--repo", REPO)
    assert again.returncode == 0, again.stderr
    assert "nothing pushed" in again.stdout
    assert "No files have been modified" not in again.stderr
    assert hub_server.refs(REPO)["main"] == head and commit_posts(hub_server) == 1

    # Rewriting the folder on another day with the same results keeps the card byte-identical
    # (the creation date is kept), so a rerun followed by a push is still a no-op.
    before = (run_dir / publish.STATS_FILE).read_text()
    original_today = publish.today
    publish.today = lambda: "2099-12-31"
    try:
        make_run(tmp_path / "lab", run_dir=run_dir)
    finally:
        publish.today = original_today
    assert (run_dir / publish.STATS_FILE).read_text() == before
    third = push(hub_server, tmp_path, run_dir, "--repo", REPO)
    assert third.returncode == 0 and "nothing pushed" in third.stdout
    assert len(hub_server.commits(REPO)) == 2


EXISTING_CARD = """\
---
license: mit
language:
- en
tags:
- hand-made
configs:
- config_name: default
  data_files:
  - split: train
    path: old/train.parquet
- config_name: extra
  data_files:
  - split: train
    path: extra/train.parquet
  default: true
dataset_info:
- config_name: default
  features:
  - name: old_column
    dtype: string
- config_name: extra
  features:
  - name: id
    dtype: int64
---

# Our lab's dataset

Hand-written introduction that must survive pushes.
"""


def _parquet(**columns) -> bytes:
    import pyarrow as pa

    buffer = io.BytesIO()
    pq.write_table(pa.table(columns), buffer)
    return buffer.getvalue()


def test_existing_card_and_configs_are_kept(hub_server: HubTestServer, tmp_path) -> None:
    hub_server.seed(REPO, {"README.md": EXISTING_CARD, "extra/train.parquet": _parquet(id=[1, 2, 3])})
    run_dir = make_run(tmp_path / "lab")
    result = push(hub_server, tmp_path, run_dir, "--repo", REPO)
    assert result.returncode == 0, result.stderr

    card = hub_server.files(REPO)["README.md"].decode()
    meta = front_matter(card)
    assert [c["config_name"] for c in meta["configs"]] == ["default", "extra", "traces"]
    configs = {c["config_name"]: c for c in meta["configs"]}
    assert configs["extra"] == {"config_name": "extra", "data_files": [{"split": "train", "path": "extra/train.parquet"}]}
    assert configs["default"]["default"] is True  # one default config: ours, so split="filtered" loads by repo id
    assert meta["license"] == "cc-by-4.0" and meta["language"] == ["en"]
    assert {"hand-made", "curate"} <= set(meta["tags"])
    # theirs for `extra` stays; the stale description of `default` is replaced by ours (sizes, no old columns)
    assert [d["config_name"] for d in meta["dataset_info"]] == ["extra", "default", "traces"]
    assert "features" not in meta["dataset_info"][1]
    assert "Hand-written introduction that must survive pushes." in card
    assert card.index("Hand-written introduction") < card.index(publish.CARD_BEGIN)

    seen = run_hub_client(
        hub_server,
        tmp_path,
        f"""
        import json, datasets
        extra = datasets.load_dataset("{REPO}", "extra", split="train")
        filtered = datasets.load_dataset("{REPO}", split="filtered")
        print(json.dumps({{"extra": list(extra["id"]), "filtered": len(filtered)}}))
        """,
    )
    assert seen == {"extra": [1, 2, 3], "filtered": 6}

    # the merge is stable: pushing again changes nothing, and the owner's later edits outside the markers stay
    again = push(hub_server, tmp_path, run_dir, "--repo", REPO)
    assert "nothing pushed" in again.stdout, again.stdout + again.stderr
    edited = card.replace("# Our lab's dataset", "# Our lab's dataset (edited on the Hub)") + "\nA footer.\n"
    hub_server.seed(REPO, {"README.md": edited}, message="Owner edits the card")
    (run_dir / publish.SECTIONS_FILE).unlink(missing_ok=True)
    publish.add_card_section(run_dir, "Evaluation", "accuracy 0.5")  # another stage adds a section
    assert push(hub_server, tmp_path, run_dir, "--repo", REPO).returncode == 0
    card = hub_server.files(REPO)["README.md"].decode()
    assert "(edited on the Hub)" in card and card.endswith("A footer.\n")
    assert "## Evaluation\n\naccuracy 0.5" in card


def test_eval_outputs_and_section_are_published(hub_server: HubTestServer, tmp_path) -> None:
    from curation import evaluation

    run_dir = make_run(tmp_path / "lab")
    evaluation.evaluate_run(run_dir)  # eval/report.json, eval/*.png and a card section
    result = push(hub_server, tmp_path, run_dir, "--repo", REPO)
    assert result.returncode == 0, result.stderr
    files = hub_server.files(REPO)
    assert {"eval/report.json", "eval/selective_accuracy.png"} <= set(files)
    assert files["eval/report.json"] == (run_dir / "eval" / "report.json").read_bytes()
    card = files["README.md"].decode()
    assert f"## {evaluation.CARD_SECTION}" in card and "](eval/selective_accuracy.png)" in card
    assert card.index(f"## {evaluation.CARD_SECTION}") < card.index(publish.CARD_END)
    assert "nothing pushed" in push(hub_server, tmp_path, run_dir, "--repo", REPO).stdout


def test_create_pr_leaves_main_alone(hub_server: HubTestServer, tmp_path) -> None:
    first = make_run(tmp_path / "a")
    assert push(hub_server, tmp_path, first, "--repo", REPO).returncode == 0
    main = hub_server.refs(REPO)["main"]

    second = make_run(tmp_path / "b", fraction=0.25)
    result = push(hub_server, tmp_path, second, "--repo", REPO, "--create-pr")
    assert result.returncode == 0, result.stderr
    assert f"opened a pull request on dataset {REPO}" in result.stdout
    assert result.stdout.strip().endswith(f"{hub_server.url}/datasets/{REPO}/discussions/1")
    assert hub_server.refs(REPO)["main"] == main
    assert [pr.base for pr in hub_server.pull_requests(REPO)] == ["main"]
    on_pr = hub_server.files(REPO, revision="refs/pr/1")
    assert on_pr["data/scored-00000-of-00001.parquet"] == (second / publish.SCORED_FILE).read_bytes()
    assert on_pr["recipe.yaml"] != hub_server.files(REPO)["recipe.yaml"]

    # proposing what main already has opens nothing
    same = push(hub_server, tmp_path, first, "--repo", REPO, "--create-pr")
    assert "nothing pushed" in same.stdout
    assert len(hub_server.pull_requests(REPO)) == 1


def test_revision_pushes_to_a_new_branch(hub_server: HubTestServer, tmp_path) -> None:
    run_dir = make_run(tmp_path / "lab")
    result = push(hub_server, tmp_path, run_dir, "--repo", REPO, "--revision", "cocoa-v2")
    assert result.returncode == 0, result.stderr
    assert f"{REPO}@cocoa-v2" in result.stdout
    assert sorted(hub_server.files(REPO, revision="cocoa-v2")) == PUBLISHED
    assert sorted(hub_server.files(REPO)) == [".gitattributes"]


def test_private_repo(hub_server: HubTestServer, tmp_path) -> None:
    run_dir = make_run(tmp_path / "lab")
    result = push(hub_server, tmp_path, run_dir, "--repo", REPO, "--private")
    assert result.returncode == 0, result.stderr
    assert hub_server.is_private(REPO)
    code = f"""
        import json, datasets
        try:
            print(json.dumps(len(datasets.load_dataset("{REPO}", split="filtered"))))
        except Exception as err:
            print(json.dumps(type(err).__name__))
        """
    (tmp_path / "owner").mkdir()
    (tmp_path / "stranger").mkdir()
    assert run_hub_client(hub_server, tmp_path / "owner", code) == 6
    assert run_hub_client(hub_server, tmp_path / "stranger", code, token=None) == "DatasetNotFoundError"

    # an existing public repo is not made private behind the owner's back: it says so
    public = make_run(tmp_path / "other", name="other")
    assert push(hub_server, tmp_path, public, "--repo", "test-org/public").returncode == 0
    again = push(hub_server, tmp_path, make_run(tmp_path / "other2", name="other", fraction=0.25), "--repo", "test-org/public", "--private")
    assert again.returncode == 0 and not hub_server.is_private("test-org/public")
    assert "already exists and is public" in again.stderr


@pytest.mark.parametrize(
    "token, message",
    [
        (None, "error: HubError: no Hugging Face token: set HF_TOKEN or run `hf auth login`"),
        ("hf_wrong", "error: HubError: the Hub rejected the token (401)"),
        (HUB_TEST_READ_TOKEN, "error: HubError: the token is read-only"),
    ],
)
def test_token_problems_are_one_clear_line(hub_server: HubTestServer, tmp_path, token, message) -> None:
    run_dir = make_run(tmp_path / "lab")
    result = push(hub_server, tmp_path, run_dir, "--repo", REPO, token=token)
    assert result.returncode == 1
    assert result.stderr.strip().startswith(message), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not hub_server.repo_exists(REPO)
    if token is None:
        assert hub_server.request_log == []  # it failed before talking to the Hub


def test_run_with_hub_section_and_no_token_fails_before_generating(hub_server: HubTestServer, tmp_path) -> None:
    make_run(tmp_path / "lab", extra=f"hub:\n  repo: {REPO}\n")
    result = curate_cli("run", str(tmp_path / "lab" / "recipe.yaml"), "-o", str(tmp_path / "fresh"), env=hub_env(hub_server, tmp_path, token=None), cwd=tmp_path, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: no Hugging Face token: set HF_TOKEN or run `hf auth login` (pushing needs a token with write access); "
        "or run with --no-push to write the run folder only (push it later with curate push)"
    ]
    assert not (tmp_path / "fresh").exists()


def test_license_comes_from_the_recipe(hub_server: HubTestServer, tmp_path) -> None:
    mit = make_run(tmp_path / "mit", license="mit")
    assert push(hub_server, tmp_path, mit, "--repo", "test-org/mit").returncode == 0
    assert front_matter(hub_server.files("test-org/mit")["README.md"].decode())["license"] == "mit"

    none = make_run(tmp_path / "none", license="null")
    result = push(hub_server, tmp_path, none, "--repo", "test-org/none")
    assert result.returncode == 0 and "sets no license" in result.stderr
    assert "license" not in front_matter(hub_server.files("test-org/none")["README.md"].decode())


def test_no_source_keeps_the_file_private(hub_server: HubTestServer, tmp_path) -> None:
    run_dir = make_run(tmp_path / "lab")
    result = push(hub_server, tmp_path, run_dir, "--repo", REPO, "--no-source")
    assert result.returncode == 0 and "source file is not published" in result.stderr
    files = hub_server.files(REPO)
    assert "source/questions.csv" not in files
    assert "not published: the recipe expects it at `source/questions.csv`" in files["README.md"].decode()


def test_not_a_run_folder(hub_server: HubTestServer, tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    result = push(hub_server, tmp_path, tmp_path / "empty", "--repo", REPO)
    assert result.returncode == 1 and "give --repo" not in result.stderr
    assert "is not a finished run folder" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_push_folder_for_other_repo_types(hub_server: HubTestServer, tmp_path) -> None:
    """The generic entry point `curate train` uses for adapters: a model repo, patterns, model-card merge."""
    adapter = tmp_path / "adapter"
    (adapter / "checkpoint-1").mkdir(parents=True)
    (adapter / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    (adapter / "adapter_config.json").write_text('{"r": 8}')
    (adapter / "checkpoint-1" / "optimizer.pt").write_bytes(b"\0" * 64)
    (adapter / "README.md").write_text("---\nlibrary_name: peft\nbase_model: HuggingFaceTB/SmolLM2-135M-Instruct\ntags:\n- lora\n---\n\n<!-- curate:begin -->\n# Adapter\n<!-- curate:end -->\n")
    hub_server.seed("test-org/adapter", {"README.md": "---\nlicense: apache-2.0\ntags:\n- mine\n---\n\nOwner notes.\n"}, repo_type="model")
    seen = run_hub_client(
        hub_server,
        tmp_path,
        f"""
        import json
        from curation.hub import push_folder
        result = push_folder("{adapter}", "test-org/adapter", "model", ignore_patterns=["checkpoint-*/*"],
                             commit_message="Add adapter")
        again = push_folder("{adapter}", "test-org/adapter", "model", ignore_patterns=["checkpoint-*/*"])
        print(json.dumps([result.changed, sorted(result.uploaded), again.changed, again.describe()]))
        """,
    )
    assert seen[0] is True and seen[1] == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert seen[2] is False and "nothing pushed" in seen[3]
    files = hub_server.files("test-org/adapter", repo_type="model")
    assert sorted(files) == [".gitattributes", "README.md", "adapter_config.json", "adapter_model.safetensors"]
    card = files["README.md"].decode()
    meta = front_matter(card)
    assert meta["license"] == "apache-2.0" and meta["library_name"] == "peft" and sorted(meta["tags"]) == ["lora", "mine"]
    assert "Owner notes." in card and "# Adapter" in card


def test_card_in_run_folder_is_deterministic(tmp_path) -> None:
    """No clock or path in what a push renders: two renders of one folder for one repo are identical."""
    run_dir = make_run(tmp_path / "lab")
    first = publish.publication(run_dir, REPO)
    second = publish.publication(run_dir, REPO)
    assert first.card == second.card and first.recipe_yaml == second.recipe_yaml
    assert str(tmp_path) not in first.card and str(tmp_path) not in first.recipe_yaml
    # and the folder's own card loads from the folder until there is a repo to load from
    local_card = (run_dir / publish.CARD_FILE).read_text()
    assert f'load_dataset("{run_dir.as_posix()}", split="filtered")' in local_card


def test_run_folder_recipe_is_self_contained(tmp_path) -> None:
    base = make_run(tmp_path / "lab")
    child = tmp_path / "lab" / "child.yaml"
    child.write_text("extends: recipe.yaml\nname: child\nselect:\n  strategy: per_class\n  fraction: 0.25\n")
    from curation.recipe import load_recipe

    loaded = load_recipe(str(child))
    text = pipeline._recipe_yaml_for(loaded, base)
    assert "extends" not in yaml.safe_load(text)


def test_a_recipe_cannot_hold_the_token(tmp_path) -> None:
    from curation.recipe import RecipeError, load_recipe

    make_run(tmp_path / "lab")
    recipe = tmp_path / "lab" / "recipe.yaml"
    recipe.write_text(recipe.read_text() + "hub:\n  repo: test-org/x\n  token: hf_secret_in_a_file\n")
    with pytest.raises(RecipeError, match=r"recipe.yaml:\d+:3: hub.token: unknown key"):
        load_recipe(str(recipe))
