"""Traces made elsewhere (source.traces): read, refused row by row, journaled once, scored and published as a generated run."""

import json
import math
import sqlite3
import subprocess
import sys

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from curation import pipeline
from curation.recipe.load import load_recipe
from curation.types import RecipeError

LABELS = ["up", "down", "none"]


def trace_rows(n=12, k=4, seed=0, reference=True):
    """One row per trace, as an OpenAI-compatible generator's export would have them: question i favours class i % 3."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        for s in range(0 if reference else 1, k + 1):
            label = LABELS[(i + (s if i % 2 and s > 2 else 0)) % 3]
            length = 3 + (i % 4)
            logprobs = (-rng.uniform(0.01, 1.0, size=length)).tolist()
            rows.append(
                {
                    "qid": f"q{i:02d}",
                    "question": f"What does gene G{i} do?",
                    "gold": LABELS[i % 3],
                    "gene": f"G{i}",
                    "is_greedy": s == 0,
                    "sample": s,
                    "text": f"<think>because {i}</think><answer>{label}</answer>",
                    "logprobs": logprobs,
                    "top": [[lp, lp - 1.0, lp - 2.5] for lp in logprobs],
                    "model": "teacher-7b",
                }
            )
    return rows


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


RECIPE = """
name: imported
source:
  path: {path}
  label_column: gold
  traces:
    id: qid
    prompt: question
    completion: text
    sample_index: sample
    reference: is_greedy
    token_logprobs: logprobs
    top_logprobs: top
    model: model
answer:
  labels: [up, down, none]
score:
  metric: cocoa_ppl
select:
  strategy: per_class
  fraction: 0.5
"""


def recipe_file(tmp_path, data_path, text=RECIPE, **replace):
    body = text.format(path=data_path)
    for old, new in replace.items():
        body = body.replace(old, new)
    path = tmp_path / "recipe.yaml"
    path.write_text(body, encoding="utf-8")
    return path


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "curation.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def test_imported_jsonl_is_scored_selected_and_published(tmp_path):
    data = write_jsonl(tmp_path / "traces.jsonl", trace_rows())
    recipe = recipe_file(tmp_path, data)
    out = tmp_path / "run"
    result = run_cli("run", recipe, "-o", out, "-q")
    assert result.returncode == 0, result.stderr
    scored = datasets.load_dataset(str(out), split="scored")
    traces = datasets.load_dataset(str(out), "traces", split="train")
    assert len(scored) == 12 and len(traces) == 60
    assert scored["id"] == [f"q{i:02d}" for i in range(12)]
    assert scored["label"] == [LABELS[i % 3] for i in range(12)] and scored["gene"][3] == "G3"
    assert scored["prompt"][0] == [{"role": "user", "content": "What does gene G0 do?"}]
    assert all(n == 4 for n in scored["n_samples"])
    # the metrics are those of the file's logprobs: perplexity of q00's reference
    rows = trace_rows()
    ref0 = next(r for r in rows if r["qid"] == "q00" and r["is_greedy"])
    assert scored["perplexity"][0] == pytest.approx(-np.mean(ref0["logprobs"]), rel=1e-12)
    assert traces["model"][0] == "teacher-7b"
    stats = json.loads((out / "stats.json").read_text())
    assert stats["stages"]["read_traces"]["rows_in"] == 60 and stats["stages"]["read_traces"]["rows_out"] == 60
    imported = stats["generation"]["imported"]
    assert imported["traces"] == 60 and imported["refused_rows"] == 0 and imported["source"]["kind"] == "file"
    assert "temperature" not in stats["generation"]  # nothing here sampled them
    card = (out / "README.md").read_text()
    assert "traces.jsonl" in card and "imported" in card.lower()
    # the saved recipe validates again, so `curate score` works on an imported run
    rescored = run_cli("score", out, "--metric", "perplexity")
    assert rescored.returncode == 0, rescored.stderr
    assert datasets.load_dataset(str(out), split="scored", download_mode="force_redownload")["uncertainty"][0] == pytest.approx(-np.mean(ref0["logprobs"]))
    assert "Rows refused" not in card and "| Traces | imported from `traces.jsonl`" in card
    assert "at temperature" not in card and "Max new tokens" not in card


def test_bad_rows_are_refused_with_their_row_numbers_and_the_run_goes_on(tmp_path):
    rows = trace_rows()
    bad = {
        3: ("missing_column", lambda r: r.pop("text")),
        7: ("logprobs_length", lambda r: r.update(top=r["top"][:-1])),
        11: ("logprobs_nan", lambda r: r.update(logprobs=[float("nan")] + r["logprobs"][1:])),
        15: ("logprobs_positive", lambda r: r.update(logprobs=[0.25] + r["logprobs"][1:])),
        19: ("empty_completion", lambda r: r.update(text="   ")),
    }
    for index, (_, spoil) in bad.items():
        spoil(rows[index])
    rows.insert(30, dict(rows[29]))  # a duplicate (question, sample) pair: the second copy is refused
    data = tmp_path / "traces.jsonl"
    data.write_text("".join(json.dumps(row).replace("NaN", "NaN") + "\n" for row in rows), encoding="utf-8")
    out = tmp_path / "run"
    result = run_cli("run", recipe_file(tmp_path, data), "-o", out, "-q")
    assert result.returncode == 0, result.stderr
    assert "refused 6 of 61 rows" in result.stderr and "row 4: missing_column" in result.stderr
    stats = json.loads((out / "stats.json").read_text())
    imported = stats["generation"]["imported"]
    assert imported["refused_by_reason"] == {"duplicate_sample": 1, "empty_completion": 1, "logprobs_length": 1, "logprobs_nan": 1, "logprobs_positive": 1, "missing_column": 1}
    by_row = {r["row"]: r["reason"] for r in imported["refused_examples"]}
    assert by_row == {4: "missing_column", 8: "logprobs_length", 12: "logprobs_nan", 16: "logprobs_positive", 20: "empty_completion", 31: "duplicate_sample"}
    assert "already in row 30" in next(r["detail"] for r in imported["refused_examples"] if r["row"] == 31)
    assert stats["stages"]["read_traces"] == {"rows_in": 61, "rows_out": 55, "dropped": imported["refused_by_reason"], "seconds": stats["stages"]["read_traces"]["seconds"]}
    scored = datasets.load_dataset(str(out), split="scored")
    assert len(scored) == 12 and sum(scored["n_samples"]) == 48 - 4  # rows 8, 12, 16 and 20 were samples; row 4 was q00's sample 3
    card = (out / "README.md").read_text()
    assert "Rows refused at import: 6 of 61" in card and "`logprobs_nan` 1" in card


def test_a_file_that_is_not_a_table_is_refused_before_anything_is_written(tmp_path):
    data = tmp_path / "traces.jsonl"
    data.write_text("this is not JSON\n{\"qid\": 1}\n", encoding="utf-8")
    out = tmp_path / "run"
    result = run_cli("run", recipe_file(tmp_path, data), "-o", out, "-q")
    assert result.returncode == 2 and "not a JSONL table" in result.stderr and "recipe.yaml:4:" in result.stderr
    assert not out.exists()
    parquet = tmp_path / "traces.parquet"
    parquet.write_bytes(b"PAR1 but not really a parquet file")
    result = run_cli("run", recipe_file(tmp_path, parquet), "-o", out, "-q")
    assert result.returncode == 2 and "is not a parquet table" in result.stderr and not out.exists()
    # a table without a mapped column: located at the recipe key that names it
    write_jsonl(data, [{k: v for k, v in row.items() if k != "logprobs"} for row in trace_rows(n=2)])
    result = run_cli("validate", recipe_file(tmp_path, data))
    assert result.returncode == 2 and "source.traces.token_logprobs: column 'logprobs' not in the traces" in result.stderr


def test_a_rerun_reads_nothing_into_the_journal_twice(tmp_path):
    data = write_jsonl(tmp_path / "traces.jsonl", trace_rows())
    recipe = recipe_file(tmp_path, data)
    out = tmp_path / "run"
    assert run_cli("run", recipe, "-o", out, "-q").returncode == 0
    first = (out / "data").glob("scored-*.parquet")
    first_table = pq.read_table(next(first))
    with sqlite3.connect(out / "journal.sqlite") as db:
        before = db.execute("SELECT fingerprint, created_at FROM traces ORDER BY fingerprint").fetchall()
    assert len(before) == 60
    assert run_cli("run", recipe, "-o", out, "-q").returncode == 0
    with sqlite3.connect(out / "journal.sqlite") as db:
        after = db.execute("SELECT fingerprint, created_at FROM traces ORDER BY fingerprint").fetchall()
    assert after == before  # not one row written again
    stats = json.loads((out / "stats.json").read_text())
    assert stats["generation"]["imported"]["already_in_journal"] == 60
    assert pq.read_table(next((out / "data").glob("scored-*.parquet"))).equals(first_table)
    # the file did not change (name, size, modification time), so only its first line is read (the column check):
    # garbage after it, written behind the recipe's back with the old time stamp, is never seen
    import os

    stamp = data.stat()
    original_text = data.read_bytes()
    first_line = original_text.split(b"\n")[0] + b"\n"
    data.write_bytes(first_line + b"X" * (len(original_text) - len(first_line)))
    os.utime(data, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    result = run_cli("run", recipe, "-o", out, "-q")
    assert result.returncode == 0 and "refused" not in result.stderr, result.stderr
    assert pq.read_table(next((out / "data").glob("scored-*.parquet"))).equals(first_table)
    assert json.loads((out / "stats.json").read_text())["stages"]["read_traces"]["rows_in"] == 60
    data.write_bytes(original_text)
    # the file grows by a question: only its traces are new
    write_jsonl(data, trace_rows(n=13))
    assert run_cli("run", recipe, "-o", out, "-q").returncode == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["generation"]["imported"]["already_in_journal"] == 60 and stats["questions"] == 13


def test_question_rows_without_logprobs_score_by_consistency(tmp_path):
    rows = []
    for i in range(9):
        answers = [LABELS[i // 3]] * (4 - i % 3) + [LABELS[(i // 3 + 1) % 3]] * (i % 3)  # class i // 3, i % 3 disagreeing
        rows.append({"instruction": f"Gene G{i}?", "generation": [f"<answer>{a}</answer>" for a in answers], "model_name": "some-model"})
    data = write_jsonl(tmp_path / "grouped.jsonl", rows)
    text = """
name: grouped
source:
  path: {path}
  traces:
    preset: distilabel_grouped
answer:
  labels: [up, down, none]
score:
  metric: self_consistency
select:
  strategy: per_class
  count: 2
  completion: best_agreeing
"""
    out = tmp_path / "run"
    result = run_cli("run", recipe_file(tmp_path, data, text), "-o", out, "-q")
    assert result.returncode == 0, result.stderr
    scored = datasets.load_dataset(str(out), split="scored")
    assert scored["self_consistency"] == pytest.approx([1 - (4 - i % 3) / 4 for i in range(9)])
    assert "perplexity" not in scored.column_names and "cocoa_ppl" not in scored.column_names  # no NaN columns claimed as computed
    assert scored["answer"] == [LABELS[i // 3] for i in range(9)]
    kept = [r for r in scored if r["kept"]]
    assert {r["id"] for r in kept} == {scored["id"][i] for i in (0, 1, 3, 4, 6, 7)}  # the two most consistent of each class
    assert kept[0]["completion"][0]["content"] == f"<answer>{LABELS[0]}</answer>"
    card = (out / "README.md").read_text()
    assert "none in the imported traces" in card and "`some-model`" in card


def test_a_metric_that_needs_tokens_without_logprobs_is_a_located_error(tmp_path):
    data = write_jsonl(tmp_path / "t.jsonl", [{"instruction": "Gene?", "generation": "<answer>up</answer>", "model_name": "m"}])
    text = """name: nolp
source:
  path: {path}
  traces:
    preset: distilabel
answer:
  labels: [up, down, none]
score:
  metric: cocoa_ppl
select:
  fraction: 0.5
"""
    result = run_cli("validate", recipe_file(tmp_path, data, text))
    assert result.returncode == 2
    assert "recipe.yaml:9:11: score.metric: metric 'cocoa_ppl' needs token logprobs" in result.stderr and "scorer:" in result.stderr


@pytest.mark.parametrize(
    "body, message",
    [
        ("  traces:\n    completion: text\n  limit: 5\n", "limit do not apply to imported traces"),
        ("  traces:\n    preset: curate\n    shape: question\n", "`sample_index` is for shape: trace"),
        ("  traces:\n    top_logprobs: top\n    completion: text\n", "`top_logprobs` needs `token_logprobs`"),
        ("  traces:\n    preset: nonesuch\n", "preset"),
    ],
)
def test_traces_section_errors_are_located(tmp_path, body, message):
    path = tmp_path / "recipe.yaml"
    path.write_text(f"name: x\nsource:\n  path: t.jsonl\n{body}answer:\n  tag: answer\nscore:\n  metric: self_consistency\nselect:\n  fraction: 0.5\n", encoding="utf-8")
    with pytest.raises(RecipeError) as error:
        load_recipe(str(path))
    assert message in str(error.value) and str(error.value).startswith(f"{path}:")


def test_generator_and_traces_do_not_mix(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("name: x\nsource:\n  path: t.jsonl\n  traces: {preset: distilabel}\ngenerator:\n  samples: 2\nanswer: {tag: answer}\nscore: {metric: self_consistency}\nselect: {fraction: 0.5}\n", encoding="utf-8")
    with pytest.raises(RecipeError, match="source.traces replaces generation"):
        load_recipe(str(path))


def _assert_same_tables(original, imported, float_rel=1e-6):
    assert original.column_names == imported.column_names
    for name in original.column_names:
        a, b = original.column(name).to_pylist(), imported.column(name).to_pylist()
        if pa.types.is_floating(original.schema.field(name).type):
            assert np.allclose(np.array(a, dtype=float), np.array(b, dtype=float), rtol=float_rel, atol=1e-7, equal_nan=True), name
        else:
            assert a == b, name


def test_round_trip_of_a_curate_run_through_its_traces_config(tmp_path):
    """Export a run's `traces` config, import it into an empty folder: the same scored and filtered tables."""
    from tests.builders.synthetic_run import RECIPE, build

    original = tmp_path / "original"
    questions, requests, traces = build(n=30)
    pipeline.curate(RECIPE, questions, requests, traces, {}, {"model_id": "m", "backend": "test", "logprob_kind": "raw"}, original, recipe_yaml="name: synthetic\n")
    recipe = tmp_path / "import.yaml"
    recipe.write_text(
        f"""name: synthetic
license: cc-by-4.0
source:
  path: {original}/traces/train-*.parquet
  label_column: label
  traces:
    preset: curate
    questions: {original}/data/scored-*.parquet
answer:
  labels: {json.dumps(RECIPE.answer.classes)}
score:
  metric: cocoa_ppl
select:
  strategy: per_class
  fraction: 0.5
""",
        encoding="utf-8",
    )
    out = tmp_path / "empty" / "run"
    result = run_cli("run", recipe, "-o", out, "-q")
    assert result.returncode == 0, result.stderr
    for split in ("scored", "filtered"):
        _assert_same_tables(pq.read_table(next((original / "data").glob(f"{split}-*.parquet"))), pq.read_table(next((out / "data").glob(f"{split}-*.parquet"))))
    # the traces table too, but for the token logprobs' float32 (the export's precision) and the answers read again
    a, b = pq.read_table(next((original / "traces").glob("*.parquet"))), pq.read_table(next((out / "traces").glob("*.parquet")))
    assert a.drop_columns(["model"]).equals(b.drop_columns(["model"]))
    stats = json.loads((out / "stats.json").read_text())
    assert stats["kept"] == pq.read_metadata(next((original / "data").glob("filtered-*.parquet"))).num_rows


def test_hub_dataset_of_traces_with_reasoning_and_messages(tmp_path):
    """An R1-style Hub dataset (messages, separated reasoning, K samples per question, no logprobs), served by the test Hub."""
    from tests.builders.hub_run import curate_cli
    from tests.servers.hub_fixtures import hub_env
    from tests.servers.hub_server import HubTestServer

    rows = []
    for i in range(6):
        for s in range(1, 5):
            answer = LABELS[i % 3] if s <= 4 - i % 2 else LABELS[(i + 1) % 3]
            rows.append({
                "problem_id": f"p{i}",
                "messages": [{"role": "system", "content": "Answer in <answer> tags."}, {"role": "user", "content": f"Gene G{i}?"}],
                "reasoning_content": f"Thinking about G{i}, attempt {s}.",
                "content": f"<answer>{answer}</answer>",
                "generator": "deepseek-r1",
            })
    buffer = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    with HubTestServer() as server:
        server.seed("test-org/r1-traces", {"data/train-00000-of-00001.parquet": buffer.getvalue().to_pybytes()})
        recipe = tmp_path / "recipe.yaml"
        recipe.write_text(
            """name: from-hub
source:
  dataset: test-org/r1-traces
  split: train
  traces:
    id: problem_id
    prompt: messages
    completion: content
    reasoning: reasoning_content
    model: generator
answer:
  labels: [up, down, none]
score:
  metric: self_consistency
select:
  strategy: global
  count: 3
  completion: best_agreeing
""",
            encoding="utf-8",
        )
        result = curate_cli("run", "recipe.yaml", "-o", "run", "-q", env=hub_env(server, tmp_path), cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert not server.server_errors
    out = tmp_path / "run"
    scored = pq.read_table(next((out / "data").glob("scored-*.parquet"))).to_pylist()
    assert [r["id"] for r in scored] == [f"p{i}" for i in range(6)]
    assert scored[0]["prompt"][0] == {"role": "system", "content": "Answer in <answer> tags."}
    assert [r["self_consistency"] for r in scored] == pytest.approx([0.0, 0.25] * 3)
    assert sorted(r["id"] for r in scored if r["kept"]) == ["p0", "p2", "p4"]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["generation"]["imported"]["source"] == {"kind": "dataset", "name": "test-org/r1-traces", "hub": True, "config": None, "split": "train"}
    card = (out / "README.md").read_text()
    assert "[`test-org/r1-traces`](https://huggingface.co/datasets/test-org/r1-traces)" in card and "`deepseek-r1`" in card
    # the separated reasoning is kept with the trace in the journal (trace_import.with_reasoning)
    with sqlite3.connect(out / "journal.sqlite") as db:
        payloads = [json.loads(p) for (p,) in db.execute("SELECT payload FROM traces")]
    assert {p["reasoning"] for p in payloads if p["text"] == "<answer>up</answer>"} >= {"Thinking about G0, attempt 1."}
    # ... and it is the trace's thinking: the published completion carries it as the chat templates read it
    kept = [r for r in scored if r["kept"]]
    assert all(r["completion"][0]["reasoning_content"].startswith("Thinking about") for r in kept), kept[0]["completion"]


def test_too_many_refused_rows_stop_before_scoring_and_keep_the_good_ones(tmp_path):
    rows = trace_rows(n=4)
    for row in rows[:12]:
        row["logprobs"] = row["logprobs"][:-1] + [0.5]
    data = write_jsonl(tmp_path / "traces.jsonl", rows)
    out = tmp_path / "run"
    result = run_cli("run", recipe_file(tmp_path, data), "-o", out, "-q")
    assert result.returncode == 1
    assert "12 of 20 rows refused (logprobs_positive 12), more than source.traces.max_refused (0.5); first: row 1:" in result.stderr
    with sqlite3.connect(out / "journal.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM traces").fetchone()[0] == 8  # the good rows are kept for the next run
    assert not (out / "data").exists()


def test_dry_run_describes_the_import_and_writes_nothing(tmp_path):
    data = tmp_path / "traces.parquet"
    pq.write_table(pa.Table.from_pylist(trace_rows(n=3)), data)
    out = tmp_path / "run"
    result = run_cli("run", recipe_file(tmp_path, data), "-o", out, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "traces: imported from traces.parquet, 15 rows" in result.stdout and "completion=text" in result.stdout
    assert "nothing is generated" in result.stdout and not out.exists()


@pytest.mark.slow
def test_round_trip_of_a_generated_run_on_the_embedded_model(small_generated_run, tmp_path):
    """A run the local model really generated: its `traces` config, imported into an empty folder, gives the same tables."""
    original = small_generated_run  # tests/conftest.py: made once per session, read here
    generated = yaml.safe_load((original / "recipe.yaml").read_text())
    recipe = tmp_path / "import.yaml"
    recipe.write_text(
        yaml.safe_dump({
            "name": "quickstart",
            "license": generated.get("license"),
            "source": {"path": f"{original}/traces/train-*.parquet", "label_column": "label",
                       "traces": {"preset": "curate", "questions": f"{original}/data/scored-*.parquet"}},
            "answer": generated["answer"], "score": generated["score"], "select": generated["select"],
        }),
        encoding="utf-8",
    )
    out = tmp_path / "empty" / "run"
    result = run_cli("run", recipe, "-o", out, "-q")
    assert result.returncode == 0, result.stderr
    for split in ("scored", "filtered"):
        _assert_same_tables(pq.read_table(next((original / "data").glob(f"{split}-*.parquet"))), pq.read_table(next((out / "data").glob(f"{split}-*.parquet"))))
    a, b = pq.read_table(next((original / "traces").glob("*.parquet"))), pq.read_table(next((out / "traces").glob("*.parquet")))
    differ = [name for name in a.column_names if a.column(name).to_pylist() != b.column(name).to_pylist()]
    assert a.column_names == b.column_names and not differ, differ


@pytest.mark.slow
def test_imported_without_logprobs_and_scored_by_the_local_model_equals_the_generated_run(small_generated_run, tmp_path):
    """The teacher-forcing equality end to end: the local model's traces, imported without their logprobs and read
    back by the local scorer, score as the generated run scored them (token metrics within 1e-4, same kept rows)."""
    original = small_generated_run  # tests/conftest.py: made once per session, read here
    generated = yaml.safe_load((original / "recipe.yaml").read_text())
    recipe = tmp_path / "import.yaml"
    recipe.write_text(
        yaml.safe_dump({
            "name": "quickstart",
            "source": {"path": f"{original}/traces/train-*.parquet", "label_column": "label",
                       "traces": {"preset": "curate", "questions": f"{original}/data/scored-*.parquet",
                                  "token_logprobs": None, "top_logprobs": None, "tokens": None, "token_ids": None}},
            "scorer": {"backend": "local", "model": "embedded", "top_logprobs": generated["generator"]["top_logprobs"]},
            "answer": generated["answer"], "score": generated["score"], "select": generated["select"],
        }),
        encoding="utf-8",
    )
    out = tmp_path / "empty" / "run"
    result = run_cli("run", recipe, "-o", out, "-q")
    assert result.returncode == 0, result.stderr
    a = pq.read_table(next((original / "data").glob("scored-*.parquet")))
    b = pq.read_table(next((out / "data").glob("scored-*.parquet")))
    for name in ("msp", "perplexity", "mean_token_entropy", "cocoa_msp", "cocoa_ppl", "cocoa_mte", "uncertainty"):
        assert np.allclose(np.array(a.column(name).to_pylist(), dtype=float), np.array(b.column(name).to_pylist(), dtype=float), rtol=0, atol=1e-4, equal_nan=True), name
    assert a.column("kept").to_pylist() == b.column("kept").to_pylist() and a.column("answer").to_pylist() == b.column("answer").to_pylist()
    stats = json.loads((out / "stats.json").read_text())
    assert stats["provenance"]["scorer"]["backend"] == "local" and "scorer" in stats["stages"]


# --------------------------------------------------------------------------- presets, on files the tools wrote
# tests/data/imports/ was written by distilabel 1.5.3 and bespokelabs-curator 0.1.31 against llama-server
# serving SmolLM2-135M-Instruct (scripts/make_import_fixtures.py regenerates it).
IMPORTS = __import__("pathlib").Path(__file__).parents[1] / "data" / "imports"
ANIMAL_RECIPE = """name: {name}
source:
  path: {path}
  traces:
{traces}
answer:
  tag: answer
  labels:
    mammal: [mammals]
    bird: [birds]
    fish: [fishes]
score:
  metric: {metric}
select:
  strategy: per_class
  fraction: 0.5
  completion: best_agreeing
"""


def _animal_run(tmp_path, name, path, traces, metric="self_consistency"):
    recipe = tmp_path / f"{name}.yaml"
    recipe.write_text(ANIMAL_RECIPE.format(name=name, path=path, traces=traces, metric=metric), encoding="utf-8")
    out = tmp_path / name
    result = run_cli("run", recipe, "-o", out, "-q")
    assert result.returncode == 0, result.stderr
    return out, pq.read_table(next((out / "data").glob("scored-*.parquet"))).to_pylist(), json.loads((out / "stats.json").read_text())


def test_distilabel_text_generation_preset_on_its_real_output(tmp_path):
    rows = [json.loads(line) for line in (IMPORTS / "distilabel_text_generation.jsonl").read_text().splitlines()]
    out, scored, stats = _animal_run(tmp_path, "distilabel-rows", IMPORTS / "distilabel_text_generation.jsonl", "    preset: distilabel")
    instructions = list(dict.fromkeys(r["instruction"] for r in rows))
    assert len(scored) == len(instructions) == 8  # rows with the same instruction are one question's samples
    assert [r["prompt"][0]["content"] for r in scored] == instructions
    assert sum(r["n_samples"] for r in scored) == len(rows) - stats["generation"]["imported"]["refused_rows"]
    assert stats["generation"]["imported"]["models"] == ["SmolLM2-135M-Instruct"]
    for row in scored:  # self-consistency from the samples' own answers, as the parser reads them
        assert 0 <= row["self_consistency"] <= 1 or math.isnan(row["self_consistency"])
    kept = [r for r in scored if r["kept"]]
    assert kept and all(r["completion"][0]["content"] in {x["generation"] for x in rows if x["instruction"] == r["prompt"][0]["content"]} for r in kept)


def test_distilabel_grouped_preset_on_its_real_output(tmp_path):
    rows = [json.loads(line) for line in (IMPORTS / "distilabel_grouped.jsonl").read_text().splitlines()]
    assert all(isinstance(r["generation"], list) for r in rows)  # what group_generations really writes
    _, scored, stats = _animal_run(tmp_path, "distilabel-grouped", IMPORTS / "distilabel_grouped.jsonl", "    preset: distilabel_grouped")
    assert len(scored) == len(rows) and stats["generation"]["samples"] == max(len(r["generation"]) for r in rows)
    assert [r["n_samples"] for r in scored] == [len(r["generation"]) for r in rows]


def test_curator_preset_on_its_real_output_with_logprobs(tmp_path):
    table = pq.read_table(IMPORTS / "curator_responses.parquet")
    traces = "    preset: curator\n    prompt: question\n    sample_index: sample\n    token_logprobs: token_logprobs\n    top_logprobs: top_logprobs\n    finish_reason: finish_reason\n    model: model"
    out, scored, stats = _animal_run(tmp_path, "curator", IMPORTS / "curator_responses.parquet", traces, metric="self_consistency")
    assert len(scored) == len(set(table.column("question").to_pylist())) == 8
    assert stats["generation"]["imported"]["token_logprobs"] and stats["generation"]["imported"]["top_logprobs"]
    exported = pq.read_table(next((out / "traces").glob("*.parquet"))).to_pylist()
    by_text = {(r["text"]): r for r in exported}
    for row in table.to_pylist():  # the logprobs curator kept are the ones scored (float32 in the traces config)
        if row["response"].strip() and row["response"] in by_text:
            assert np.allclose(by_text[row["response"]]["token_logprobs"], row["token_logprobs"], rtol=1e-6)
    # no reference trace: perplexity-based metrics are computed for no question, and say why
    assert "perplexity" not in stats["metrics_computed"] and "no reference" in stats["metrics_skipped"]["perplexity"]
