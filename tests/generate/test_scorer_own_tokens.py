"""The scorer forces the generator's own tokens wherever they are known (issue 33, item 5).

Known: token ids (a generated trace; an imported one with its ``token_ids`` column, which curate's
traces config publishes), or token strings that re-encode to themselves. Otherwise the text is
re-tokenized, and such traces are counted (``retokenized``, in stats.json and on the card).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from curation.backends.tgi import tgi_identity
from curation.journal import Journal
from curation.recipe.sections import ScorerConfig
from curation.scorer import LocalScorer, ends_with_eos
from curation.types import Trace


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "curation.cli", *map(str, args)], capture_output=True, text=True)


def _trace(**fields) -> Trace:
    base = {"fingerprint": "fp", "prompt_id": "q", "sample_index": 1, "text": "Upregulated.", "token_logprobs": [], "top_logprobs": [], "finish_reason": "stop", "logprob_kind": "none"}
    return Trace(**{**base, **fields})


def test_no_end_of_turn_token_after_a_reported_stop_sequence():
    assert ends_with_eos(_trace(), stops=[])
    assert not ends_with_eos(_trace(usage={"stop_sequence": "."}), stops=[])  # vLLM's stop_reason, the local backend's
    assert not ends_with_eos(_trace(), stops=["."])  # the text still ends with it
    assert not ends_with_eos(_trace(finish_reason="length"), stops=[])
    assert ends_with_eos(_trace(usage={"stop_sequence": None}), stops=[])  # vLLM's stop_reason is null after an EOS


def test_the_tgi_generator_and_scorer_name_a_sha_less_model_alike():
    """/info without model_sha: both sides say `@unknown-sha`, so the scorer recognises the generator's token ids."""
    from curation.backends.tgi import TGIBackend
    from curation.recipe.sections import GeneratorConfig
    from curation.scorer import TGIScorer
    from tests.servers.tgi_server import TGITestServer

    assert tgi_identity({"model_id": "org/model", "model_sha": "abc"}) == "org/model@abc"
    with TGITestServer(model_sha=None) as tgi:
        backend = TGIBackend(GeneratorConfig(backend="tgi", url=tgi.url))
        scorer = TGIScorer(ScorerConfig(backend="tgi", url=tgi.url, top_logprobs=0))
        assert backend.model_identity() == scorer.model_identity() == "curate-test/fake-reasoner@unknown-sha"
        generated = _trace(token_ids=[5, 6], model=backend.model_identity())
        assert scorer.own_tokens(generated, scorer.model_identity()) == (5, 6)


def _import_rows(tmp_path, rows, traces_yaml: str):
    data = tmp_path / "traces.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    recipe = tmp_path / "import.yaml"
    recipe.write_text(
        f"name: ids\nsource:\n  path: {data}\n  traces:\n{traces_yaml}\nanswer:\n  labels:\n    up: [up]\n    down: [down]\n"
        "score:\n  metric: self_consistency\nselect:\n  strategy: per_class\n  fraction: 0.5\n  keep: best_agreeing\n",
        encoding="utf-8",
    )
    out = tmp_path / "run"
    return run_cli("run", recipe, "-o", out, "-q"), out


def test_imported_token_ids_and_strings_are_journaled_without_logprobs(tmp_path):
    rows = [
        {"qid": f"q{i}", "question": "Up or down?", "text": text, "ids": ids, "strings": strings}
        for i in range(2)
        for text, ids, strings in (("up", [701], ["up"]), ("down", [2, 3], ["do", "wn"]), ("up", [], []))
    ]
    traces = "    id: qid\n    prompt: question\n    completion: text\n    token_ids: ids\n    tokens: strings"
    result, out = _import_rows(tmp_path, rows, traces)
    assert result.returncode == 0, result.stderr
    with Journal(out / "journal.sqlite") as journal:
        stored = sorted(((t.text, t.token_ids, t.tokens) for t in journal.iter_all()), key=str)
    assert stored.count(("down", [2, 3], ["do", "wn"])) == 2 and stored.count(("up", [701], ["up"])) == 2 and stored.count(("up", [], [])) == 2
    published = pq.read_table(next((out / "traces").glob("*.parquet")))
    assert sorted(map(tuple, published.column("token_ids").to_pylist())) == sorted([(701,), (2, 3), ()] * 2)


def test_bad_token_ids_are_refused_row_by_row(tmp_path):
    rows = [{"qid": "q0", "question": "Up or down?", "text": "up", "ids": ids} for ids in ([1, 2], [1, "x"], [-1], [True])]
    result, out = _import_rows(tmp_path, rows, "    id: qid\n    prompt: question\n    completion: text\n    token_ids: ids\n    max_refused: 0.9")
    assert result.returncode == 0, result.stderr
    stats = json.loads((out / "stats.json").read_text())
    assert stats["generation"]["imported"]["refused_by_reason"] == {"bad_type": 3}, stats["generation"]["imported"]


# --------------------------------------------------------------------------- on the embedded model
@pytest.mark.slow
def test_token_strings_that_re_encode_to_themselves_are_forced_as_ids():
    scorer = LocalScorer(ScorerConfig(top_logprobs=0))
    identity = scorer.model_identity()
    _, tokenizer = scorer._ensure_loaded()
    ids = tokenizer("Upregulated, because", add_special_tokens=False)["input_ids"] + [2]
    strings = [tokenizer.decode([i]) for i in ids]
    assert scorer.own_tokens(_trace(tokens=strings, model=identity), identity) == tuple(ids)
    assert scorer.own_tokens(_trace(tokens=strings), identity) == tuple(ids)  # no model named: the strings prove the vocabulary
    assert scorer.own_tokens(_trace(tokens=strings, model="another/model"), identity) is None
    several = next(word for word in ("Upregulated", " downregulated", " differentially") if len(tokenizer(word, add_special_tokens=False)["input_ids"]) > 1)
    assert scorer.own_tokens(_trace(tokens=[several]), identity) is None  # a string that is not one token: the text is read instead
    # ids of an unnamed model are used only when they spell the text
    assert scorer.own_tokens(_trace(text="Upregulated, because", token_ids=ids), identity) == tuple(ids)
    assert scorer.own_tokens(_trace(text="something else", token_ids=ids), identity) is None


def _import_recipe(tmp_path, original, name: str, path: str, **traces) -> str:
    generated = yaml.safe_load((original / "recipe.yaml").read_text())
    recipe = tmp_path / f"{name}.yaml"
    recipe.write_text(
        yaml.safe_dump({
            "name": name,
            "source": {"path": path, "label_column": "label",
                       "traces": {"preset": "curate", "questions": f"{original}/data/scored-*.parquet", "token_logprobs": None, "top_logprobs": None, **traces}},
            "scorer": {"backend": "local", "model": "embedded", "top_logprobs": generated["generator"]["top_logprobs"]},
            "answer": generated["answer"], "score": generated["score"], "select": generated["select"],
        }),
        encoding="utf-8",
    )
    return recipe


def _by_trace(table: pa.Table) -> dict:
    return {(row["id"], row["sample_index"]): row for row in table.select(["id", "sample_index", "token_logprobs", "token_ids"]).to_pylist()}


@pytest.mark.slow
def test_quickstart_traces_read_back_with_their_tokens_give_the_generation_logprobs(quickstart_run, tmp_path):
    """The quickstart's 60 traces, imported without logprobs but with their token ids, read back by the local
    scorer: every trace's logprobs are the generation's within 1e-4. Read from text alone (an old traces
    config without the ids column), they still import and score, and all 60 are counted as retokenized."""
    original, _ = quickstart_run
    generated = pq.read_table(next((original / "traces").glob("*.parquet")))
    assert all(generated.column("token_ids").to_pylist()), "the traces config publishes every trace's token ids"
    expected = _by_trace(generated)
    assert len(expected) == 60

    out = tmp_path / "with-tokens"
    result = run_cli("run", _import_recipe(tmp_path, original, "with-tokens", f"{original}/traces/train-*.parquet"), "-o", out, "-q")
    assert result.returncode == 0, result.stderr[-3000:]
    forced = _by_trace(pq.read_table(next((out / "traces").glob("*.parquet"))))
    assert forced.keys() == expected.keys()
    within = [key for key, row in forced.items() if row["token_ids"] == expected[key]["token_ids"]
              and np.max(np.abs(np.array(row["token_logprobs"]) - np.array(expected[key]["token_logprobs"]))) < 1e-4]
    assert len(within) == 60, sorted(set(forced) - set(within))
    stats = json.loads((out / "stats.json").read_text())
    assert stats["provenance"]["scorer"]["retokenized"] == 0 and stats["provenance"]["scorer"]["traces"] == 60

    # the same traces as published before the ids column, and without token strings: the text route
    old = tmp_path / "old" / "traces.parquet"
    old.parent.mkdir()
    pq.write_table(generated.drop_columns(["token_ids"]), old)
    out = tmp_path / "from-text"
    result = run_cli("run", _import_recipe(tmp_path, original, "from-text", str(old), tokens=None), "-o", out, "-q")
    assert result.returncode == 0, result.stderr[-3000:]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["provenance"]["scorer"]["retokenized"] == 60 and stats["provenance"]["scorer"]["traces"] == 60
    assert "60 of 60 traces retokenized" in (out / "README.md").read_text()
    reread = _by_trace(pq.read_table(next((out / "traces").glob("*.parquet"))))
    # where the canonical split is the sampled one, the logprobs still agree (the issue measured 58 of 60 on the shared tokens)
    same_split = [key for key, row in reread.items() if row["token_ids"][: len(expected[key]["token_ids"])] == expected[key]["token_ids"]]
    assert len(same_split) >= 30, len(same_split)
