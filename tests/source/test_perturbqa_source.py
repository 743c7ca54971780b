"""The PerturbQA source: joining <cell>-de.csv with <cell>-dir.csv, sampling by class, validation errors."""

from __future__ import annotations

import collections
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from curation import run_folder
from curation.recipe.load import load_recipe
from curation.recipe.sections import SourceConfig
from curation.source import (
    PERTURBQA_CLASSES,
    check_source,
    class_quotas,
    load_questions,
    read_perturbqa,
    sample_order,
)
from curation.types import RecipeError

# A digest of each cell line's joined table (every column's values, in row order), computed from the
# benchmark's own CSV files (`perturbqa/datasets/`, public mirror at commit 04ff16d) when the parquet
# copy was checked on 2026-12-06. The tests compare the packaged copy against these instead of reading
# the CSVs, which are not in the repository.
BENCHMARK_CSV_DIGESTS = {"k562": "079e7bc964cb66ae", "rpe1": "6697653a8d715029", "hepg2": "4b79a0591f2f7831", "jurkat": "300d3cb0246bc541"}


def table_digest(table: pa.Table) -> str:
    digest = hashlib.sha256()
    for name in table.column_names:
        digest.update(name.encode())
        digest.update("\x1f".join(map(str, table[name].to_pylist())).encode())
    return digest.hexdigest()[:16]


def benchmark_csv_folder(folder: Path, cell: str = "k562") -> Path:
    """The packaged parquet written back out in the benchmark's own CSV layout (`<cell>-de.csv`, `<cell>-dir.csv`)."""
    import pyarrow.csv
    import pyarrow.parquet as pq

    from curation.source import PACKAGED_PERTURBQA

    for kind in ("de", "dir"):
        pyarrow.csv.write_csv(pq.read_table(PACKAGED_PERTURBQA / f"{cell}-{kind}.parquet"), folder / f"{cell}-{kind}.csv")
    return folder

DE = """pert,gene,label,split
P1,G1,0,train
P1,G2,1,train
P1,G3,1,train
P2,G1,1,test
P2,G2,0,test
P2,G3,0,test
P3,G4,1,test
"""
DIR = """pert,gene,label,split
P2,G1,0,test
P1,G3,0,train
P1,G2,1,train
P3,G4,1,test
"""


def write_folder(root: Path, cell: str = "k562", de: str = DE, direction: str = DIR) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{cell}-de.csv").write_text(de)
    (root / f"{cell}-dir.csv").write_text(direction)
    return root


def config(folder: Path, **kwargs) -> SourceConfig:
    return SourceConfig(**{"path": str(folder), "format": "perturbqa", "cell_line": "k562", "label_column": "label", **kwargs})


def test_join_gives_three_classes_in_file_order(tmp_path):
    table = read_perturbqa(config(write_folder(tmp_path), split="all"))
    assert table.column_names == ["pert", "gene", "cell_line", "cell_type", "split", "label"]
    rows = [(r["pert"], r["gene"], r["label"]) for r in table.to_pylist()]
    assert rows == [
        ("P1", "G1", "not differentially expressed"),
        ("P1", "G2", "upregulated"),
        ("P1", "G3", "downregulated"),
        ("P2", "G1", "downregulated"),
        ("P2", "G2", "not differentially expressed"),
        ("P2", "G3", "not differentially expressed"),
        ("P3", "G4", "upregulated"),
    ]
    assert set(table["cell_line"].to_pylist()) == {"K562"}  # display name, ready for prompts


def test_split_and_several_cell_lines(tmp_path):
    folder = write_folder(tmp_path)
    write_folder(folder, "rpe1")
    test = read_perturbqa(config(folder, split="test", cell_line=["k562", "RPE1"]))
    assert test.num_rows == 8 and set(test["split"].to_pylist()) == {"test"}
    assert collections.Counter(test["cell_line"].to_pylist()) == {"K562": 4, "RPE1": 4}


@pytest.mark.parametrize(
    "direction, message",
    [
        ("pert,gene,label,split\nP1,G2,1,train\n", "lack a direction"),  # P1,G3 and P2,G1 are DE with no direction
        (DIR + "P1,G1,1,train\n", "lack a direction"),  # a direction for a non-DE pair
        (DIR + "P9,G9,1,train\n", "no (pert, gene) pair"),
    ],
)
def test_inconsistent_files_are_refused(tmp_path, direction, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_perturbqa(config(write_folder(tmp_path, direction=direction), split="all"))


def test_wrong_columns_are_refused(tmp_path):
    with pytest.raises(ValueError, match="not a PerturbQA file"):
        read_perturbqa(config(write_folder(tmp_path, de="a,b\n1,2\n"), split="all"))


# ----------------------------------------------------------------------------- sampling
def test_class_quotas():
    sizes = {"down": 5, "none": 100, "up": 100}
    assert class_quotas(sizes, 99, "balanced") == {"down": 5, "none": 47, "up": 47}
    assert class_quotas(sizes, 30, "balanced") == {"down": 5, "none": 13, "up": 12}
    assert class_quotas(sizes, None, "balanced") == {"down": 5, "none": 5, "up": 5}
    assert class_quotas(sizes, 41, "stratified") == {"down": 1, "none": 20, "up": 20}
    assert class_quotas(sizes, None, "stratified") == sizes
    assert sum(class_quotas(sizes, 205, "balanced").values()) == 205


def _table(n_up=50, n_down=20, n_none=500):
    labels = ["upregulated"] * n_up + ["downregulated"] * n_down + ["not differentially expressed"] * n_none
    return pa.table({"x": list(range(len(labels))), "label": labels})


@pytest.mark.parametrize("how", ["balanced", "stratified", "natural"])
def test_sampling_is_deterministic_and_nested(how):
    table = _table()
    small = SourceConfig(path="x.csv", label_column="label", sample=how, limit=30, shuffle_seed=3)
    big = small.model_copy(update={"limit": 60})
    first, again, larger = sample_order(table, small), sample_order(table, small), sample_order(table, big)
    assert list(first) == list(again) and len(first) == 30 and len(set(first)) == 30
    assert set(first) <= set(larger)  # growing a study keeps every question it had
    counts = collections.Counter(table.take(pa.array(first))["label"].to_pylist())
    if how == "balanced":
        assert counts == {label: 10 for label in PERTURBQA_CLASSES}
    if how == "stratified":
        assert counts == {"not differentially expressed": 26, "upregulated": 3, "downregulated": 1}


def test_sample_needs_a_column():
    with pytest.raises(ValueError, match="needs `sample_by` or `label_column`"):
        SourceConfig(path="x.csv", sample="balanced", limit=3)


# ----------------------------------------------------------------------------- recipes
RECIPE = """\
name: pq
source:
  path: {path}
  format: perturbqa
  cell_line: k562
  split: test
  sample: balanced
  limit: 3
  id_template: "{{{{ cell_line }}}}__{{{{ pert }}}}__{{{{ gene }}}}"
  label_column: label
prompt:
  user: "CRISPRi knockdown of {{{{ pert }}}} in {{{{ cell_line }}}} cells: what happens to {{{{ gene }}}}?{extra}"
{hint}answer:
  labels: [upregulated, downregulated, not differentially expressed]
select:
  fraction: 0.1
"""


def test_questions_from_a_recipe_relative_folder(tmp_path):
    write_folder(tmp_path / "data" / "perturbqa")
    recipe = tmp_path / "recipes" / "pq.yaml"
    recipe.parent.mkdir()
    recipe.write_text(RECIPE.format(path="../data/perturbqa", extra="", hint=""))
    loaded = load_recipe(str(recipe))
    assert check_source(loaded) == []
    questions = load_questions(loaded).questions
    assert sorted(q.label for q in questions) == sorted(PERTURBQA_CLASSES)
    assert all(q.id.startswith("K562__P") for q in questions)
    assert "label" not in questions[0].columns  # ground truth travels as Question.label only
    assert "CRISPRi knockdown of P" in questions[0].messages[-1]["content"]


def _validate(recipe: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "curation.cli", "validate", str(recipe)], capture_output=True, text=True, env=env)


def test_validate_reports_a_missing_folder_at_its_line(tmp_path):
    recipe = tmp_path / "pq.yaml"
    recipe.write_text(RECIPE.format(path="../nowhere/perturbqa", extra="", hint=""))
    result = _validate(recipe)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert f"{recipe}:3:9: source.path: cannot read PerturbQA source: PerturbQA folder not found" in result.stderr
    assert "k562-de.csv" in result.stderr


def test_validate_reports_an_empty_split(tmp_path):
    write_folder(tmp_path / "perturbqa")
    recipe = tmp_path / "pq.yaml"
    recipe.write_text(RECIPE.format(path="perturbqa", extra="", hint="").replace("split: test", "split: validation"))
    result = _validate(recipe)
    assert result.returncode != 0
    assert "source.split: no k562 rows with split 'validation'" in result.stderr


def test_label_in_the_dataset_prompt_is_refused(tmp_path):
    write_folder(tmp_path / "perturbqa")
    recipe = tmp_path / "pq.yaml"
    recipe.write_text(RECIPE.format(path="perturbqa", extra=" It is {{ label }}; explain why.", hint="").replace("  label_column: label\n", "  label_column: label\n  label_in_prompt: true\n"))
    loaded = load_recipe(str(recipe))
    problems = check_source(loaded)
    assert len(problems) == 1 and problems[0].path == "prompt.user" and "prompt.teacher_hint" in problems[0].message
    with pytest.raises(RecipeError, match="student would train"):
        load_questions(loaded)


HINT = """  teacher_hint: "The measured outcome is: {{ label }}. Explain the mechanism that leads to it."
"""


def test_teacher_hint_with_the_label_needs_explicit_opt_in(tmp_path):
    write_folder(tmp_path / "perturbqa")
    recipe = tmp_path / "pq.yaml"
    text = RECIPE.format(path="perturbqa", extra="", hint=HINT)
    recipe.write_text(text)
    loaded = load_recipe(str(recipe))
    problems = check_source(loaded)
    assert [p.path for p in problems] == ["prompt.teacher_hint"] and "label_in_prompt" in problems[0].message
    assert f"{recipe}:" in str(problems[0])

    recipe.write_text(text.replace("  label_column: label\n", "  label_column: label\n  label_in_prompt: true\n"))
    loaded = load_recipe(str(recipe))
    assert check_source(loaded) == []
    question = load_questions(loaded).questions[0]
    student, teacher = question.messages[-1]["content"], question.teacher_messages[-1]["content"]
    assert question.label not in student and "measured outcome" not in student
    assert teacher.startswith(student) and teacher.endswith(f"The measured outcome is: {question.label}. Explain the mechanism that leads to it.")


def test_teacher_hint_reaches_the_teacher_but_not_the_dataset(tmp_path):
    """Generation (and the journal fingerprints) use the teacher's prompt; `prompt` stays label-free; rescoring finds the traces."""
    from curation import pipeline
    from curation.generate import plan_requests
    from curation.journal import Journal
    from curation.recipe.sections import Recipe
    from curation.types import Trace
    from tests.builders.synthetic_run import planning_identity

    recipe = Recipe.model_validate(
        {
            "name": "rationalise",
            "source": {"path": "x.csv", "label_column": "label", "label_in_prompt": True},
            "prompt": {"user": "What happens to {{ gene }}?", "teacher_hint": "It is {{ label }}: explain."},
            "generator": {"samples": 1},
            "answer": {"labels": list(PERTURBQA_CLASSES)},
            "select": {"strategy": "global", "fraction": 1.0},
        }
    )
    from curation.types import Question

    questions = [
        Question(
            id=f"q{i}",
            messages=[{"role": "user", "content": f"What happens to G{i}?"}],
            columns={"gene": f"G{i}"},
            label=PERTURBQA_CLASSES[i % 3],
            teacher_messages=[{"role": "user", "content": f"What happens to G{i}?\n\nIt is {PERTURBQA_CLASSES[i % 3]}: explain."}],
        )
        for i in range(3)
    ]
    identity = planning_identity()
    requests = plan_requests(questions, recipe.generator, identity)
    assert all("It is " in r.chat[-1]["content"] for r in requests)
    traces = {
        r.fingerprint: Trace(r.fingerprint, r.prompt_id, r.sample_index, f"<think>x</think><answer>{PERTURBQA_CLASSES[int(r.prompt_id[1:]) % 3]}</answer>", [-0.1, -0.2], [], "stop", "raw", r.seed)
        for r in requests
    }
    with Journal(tmp_path / run_folder.JOURNAL_FILE) as journal:
        journal.commit(list(traces.values()))
        journal.set_meta("provenance", {"identity": identity.model_identity(), "fingerprint_params": identity.fingerprint_params(None)})
    pipeline.curate(recipe, questions, requests, traces, {}, {"model_id": "m"}, tmp_path, recipe_yaml=__import__("curation.recipe.dump", fromlist=["x"]).resolved_recipe_yaml(recipe))
    import pyarrow.parquet as pq

    scored = pq.read_table(tmp_path / run_folder.SCORED_FILE).to_pylist()
    assert all("It is" not in row["prompt"][-1]["content"] for row in scored)
    assert all(row["teacher_prompt"][-1]["content"].endswith("explain.") for row in scored)
    card = (tmp_path / "README.md").read_text()
    assert "Not label-free" in card and "No ground-truth label was used" not in card  # the card must not claim otherwise
    summary = pipeline.rescore(tmp_path)  # finds every trace again through the teacher's prompt
    assert summary.traces == 6 and summary.kept == 3


def test_cell_line_is_perturbqa_only():
    with pytest.raises(ValueError, match="`cell_line` is for format: perturbqa"):
        SourceConfig(path="x.csv", cell_line="k562")
    with pytest.raises(ValueError, match="needs `cell_line`"):
        SourceConfig(path="x", format="perturbqa")


# ----------------------------------------------------------------------------- the real files
def test_full_k562_join_from_the_benchmark_csv_layout_matches_the_published_counts(tmp_path):
    csv_folder = benchmark_csv_folder(tmp_path)
    table = read_perturbqa(config(csv_folder, split="all"))
    assert collections.Counter(table["label"].to_pylist()) == {
        "not differentially expressed": 137_699,
        "upregulated": 13_571,
        "downregulated": 6_409,
    }
    test = read_perturbqa(config(csv_folder, split="test"))
    assert test.num_rows == 23_212 and set(test["split"].to_pylist()) == {"test"}


def packaged(**kwargs) -> SourceConfig:
    return SourceConfig(**{"format": "perturbqa", "cell_line": "k562", "label_column": "label", **kwargs})


def test_packaged_k562_needs_no_path_and_matches_the_published_counts():
    """The copy inside the package: format perturbqa with neither path nor dataset."""
    table = read_perturbqa(packaged(split="all"))
    assert collections.Counter(table["label"].to_pylist()) == {
        "not differentially expressed": 137_699,
        "upregulated": 13_571,
        "downregulated": 6_409,
    }
    assert read_perturbqa(packaged(split="test")).num_rows == 23_212


def test_packaged_files_are_all_four_cell_lines_and_small():
    from curation.source import PACKAGED_PERTURBQA, PERTURBQA_CELL_LINES

    for cell in PERTURBQA_CELL_LINES:
        for kind in ("de", "dir"):
            path = PACKAGED_PERTURBQA / f"{cell}-{kind}.parquet"
            assert path.stat().st_size < 1_000_000, path  # well under the repository's 5 MB per file
        assert read_perturbqa(packaged(cell_line=cell, split="all")).num_rows > 100_000
    assert "CC BY 4.0" in (PACKAGED_PERTURBQA / "README.md").read_text()


@pytest.mark.parametrize("cell", ["k562", "rpe1", "hepg2", "jurkat"])
def test_packaged_copy_equals_the_benchmark_csv(cell, tmp_path):
    """Rows, order and values unchanged by the parquet re-encoding (digests taken from the benchmark's CSV),
    and the `path:` route over CSV files reads the same table as the packaged copy."""
    table = read_perturbqa(packaged(cell_line=cell, split="all"))
    assert table_digest(table) == BENCHMARK_CSV_DIGESTS[cell]
    assert read_perturbqa(config(benchmark_csv_folder(tmp_path, cell), cell_line=cell, split="all")).equals(table)


def test_path_and_dataset_together_are_refused():
    with pytest.raises(ValueError, match="exactly one of `path` or `dataset`"):
        SourceConfig(path="x", dataset="y", format="perturbqa", cell_line="k562")


# ----------------------------------------------------------------------------- the Hub
def test_hub_dataset_repo_with_the_same_files(tmp_path):
    from tests.servers.hub_fixtures import run_hub_client
    from tests.servers.hub_server import HubTestServer

    folder = write_folder(tmp_path / "upload" / "perturbqa" / "datasets")
    (tmp_path / "upload" / "README.md").write_text("PerturbQA mirror\n")
    with HubTestServer() as server:
        result = run_hub_client(
            server,
            tmp_path,
            f"""
            import json
            from huggingface_hub import HfApi
            HfApi().create_repo("lab/perturbqa", repo_type="dataset")
            HfApi().upload_folder(repo_id="lab/perturbqa", repo_type="dataset", folder_path={str(folder.parent.parent)!r})
            from curation.recipe.sections import SourceConfig
            from curation.source import read_perturbqa
            config = SourceConfig(dataset="lab/perturbqa", format="perturbqa", cell_line="k562", split="test", label_column="label")
            table = read_perturbqa(config)
            print(json.dumps(table["label"].to_pylist()))
            """,
        )
        assert not server.server_errors
    assert result == ["downregulated", "not differentially expressed", "not differentially expressed", "upregulated"]


def test_validate_points_at_an_unknown_cell_line(tmp_path):
    write_folder(tmp_path / "perturbqa")
    recipe = tmp_path / "pq.yaml"
    recipe.write_text(RECIPE.format(path="perturbqa", extra="", hint="").replace("cell_line: k562", "cell_line: hela"))
    result = _validate(recipe)
    assert result.returncode != 0
    assert f"{recipe}:5:14: source.cell_line: cannot read PerturbQA source: hela-de.csv, hela-dir.csv not in" in result.stderr
    assert "PerturbQA's cell lines are k562, rpe1, hepg2, jurkat" in result.stderr and "shared/" not in result.stderr  # never points a user at the CI machines' folder
