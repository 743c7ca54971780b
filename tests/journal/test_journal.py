"""The journal: what is committed survives, failures are remembered, and settings changes are seen."""

import sqlite3

from curation.generate import plan_requests
from curation.journal import Journal
from curation.recipe.sections import GeneratorConfig
from curation.types import Question, Trace, derive_seed
from tests.builders.synthetic_run import planning_identity


def _trace(request, text="t"):
    return Trace(request.fingerprint, request.prompt_id, request.sample_index, text, [-0.5, -0.25], [[-0.5, -1.0], [-0.25, -2.0]], "stop", "raw", request.seed)


QUESTIONS = [Question(id=f"q{i}", messages=[{"role": "user", "content": f"question {i}"}], columns={}) for i in range(3)]


def test_commit_load_and_resume(tmp_path):
    requests = plan_requests(QUESTIONS, GeneratorConfig(samples=2), planning_identity())
    assert len(requests) == 9 and len({r.fingerprint for r in requests}) == 9
    with Journal(tmp_path / "j.sqlite") as journal:
        journal.commit([_trace(r) for r in requests[:4]])
    with Journal(tmp_path / "j.sqlite") as journal:  # a new process sees exactly what was committed
        assert journal.done(r.fingerprint for r in requests) == {r.fingerprint for r in requests[:4]}
        loaded = journal.load(r.fingerprint for r in requests)
        assert loaded[requests[1].fingerprint].token_logprobs == [-0.5, -0.25]
        assert loaded[requests[1].fingerprint].seed == requests[1].seed


def test_failures_are_recorded_then_replaced_by_success(tmp_path):
    requests = plan_requests(QUESTIONS[:1], GeneratorConfig(samples=1), planning_identity())
    with Journal(tmp_path / "j.sqlite") as journal:
        journal.record_failure([(r.fingerprint, r.prompt_id, r.sample_index) for r in requests], "HTTP 503")
        assert set(journal.failures()) == {r.fingerprint for r in requests}
        assert journal.done(r.fingerprint for r in requests) == set()
        journal.commit([_trace(r) for r in requests])
        assert journal.failures() == {}
        attempts = journal.db.execute("SELECT attempts FROM traces").fetchall()
        assert all(a == (2,) for a in attempts)


def test_fingerprint_sees_generation_settings():
    base = {r.fingerprint for r in plan_requests(QUESTIONS, GeneratorConfig(samples=2), planning_identity())}
    for changed in (
        plan_requests(QUESTIONS, GeneratorConfig(samples=2, temperature=0.7), planning_identity()),
        plan_requests(QUESTIONS, GeneratorConfig(samples=2, max_new_tokens=10), planning_identity()),
        plan_requests(QUESTIONS, GeneratorConfig(samples=2, seed=1), planning_identity()),
        plan_requests(QUESTIONS, GeneratorConfig(samples=2), planning_identity(model="other")),
        plan_requests(QUESTIONS, GeneratorConfig(samples=2), planning_identity(params={"batch": 3})),
    ):
        samples = {r.fingerprint for r in changed if not r.is_reference}
        assert not samples & base
    # The greedy reference does not depend on sampling settings or the seed.
    ref_base = {r.fingerprint for r in plan_requests(QUESTIONS, GeneratorConfig(samples=2), planning_identity()) if r.is_reference}
    ref_temp = {r.fingerprint for r in plan_requests(QUESTIONS, GeneratorConfig(samples=2, temperature=0.3, seed=5), planning_identity()) if r.is_reference}
    assert ref_base == ref_temp


def test_seeds_are_per_question_and_sample():
    requests = plan_requests(QUESTIONS, GeneratorConfig(samples=3, seed=7), planning_identity())
    seeds = [r.seed for r in requests if not r.is_reference]
    assert len(set(seeds)) == len(seeds)
    assert requests[1].seed == derive_seed(7, "q0", 1)
    assert all(r.seed is None for r in requests if r.is_reference)


def test_wal_mode(tmp_path):
    Journal(tmp_path / "j.sqlite").close()
    mode = sqlite3.connect(tmp_path / "j.sqlite").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_read_chunks_gives_whole_questions_as_numpy_equal_to_load(tmp_path):
    """Chunks hold whole questions in question order; their buffers equal what load() returns per trace."""
    import numpy as np

    from curation.journal import fingerprint_grid

    questions = [Question(id=f"q{i}", messages=[{"role": "user", "content": f"q {i}"}], columns={}) for i in range(7)]
    requests = plan_requests(questions, GeneratorConfig(samples=2), planning_identity())
    rng = np.random.default_rng(0)
    traces = []
    for r in reversed(requests):  # written out of question order, as a resumed run does
        n = int(rng.integers(0, 5))
        top = [list(rng.normal(size=int(rng.integers(1, 4)))) for _ in range(n)]
        traces.append(Trace(r.fingerprint, r.prompt_id, r.sample_index, f"t{r.prompt_id}/{r.sample_index}", list(rng.normal(size=n)), top, "stop", "raw", r.seed))
    with Journal(tmp_path / "j.sqlite") as journal:
        journal.commit(traces[:-3])  # the first question's three traces are missing
        grid = fingerprint_grid(requests, [q.id for q in questions], 2)
        loaded = journal.load(r.fingerprint for r in requests)
        chunks = list(journal.read_chunks(grid, chunk_questions=3))
    assert [c.start for c in chunks] == [0, 3, 6] and [c.n_questions for c in chunks] == [3, 3, 1]
    assert chunks[0].slots[0].tolist() == [-1, -1, -1] and chunks[0].planned.all()
    for chunk in chunks:
        assert chunk.token_logprobs.dtype == np.float64 and chunk.question.tolist() == sorted(chunk.question.tolist())
        for j in range(3):
            arrays = chunk.token_arrays(chunk.slots[:, j])
            for i in range(chunk.n_questions):
                trace = loaded.get(grid[chunk.start + i][j])
                tokens = arrays.logprobs[arrays.offsets[i] : arrays.offsets[i + 1]].tolist()
                if trace is None:
                    assert tokens == []
                    continue
                assert tokens == trace.token_logprobs and chunk.text[chunk.slots[i, j]] == trace.text
                if arrays.top_values is not None:
                    rows = range(arrays.top_trace_offsets[i], arrays.top_trace_offsets[i + 1])
                    assert [arrays.top_values[arrays.top_row_offsets[r] : arrays.top_row_offsets[r + 1]].tolist() for r in rows] == trace.top_logprobs


def test_a_journal_written_by_curate_0_1_0_migrates_and_still_loads(tmp_path):
    """tests/data/journal-0.1.0.sqlite was written by the code before migrations (commit 62f8b83)."""
    import shutil
    from pathlib import Path

    from curation.journal import MIGRATIONS, applied_migrations

    old = tmp_path / "journal.sqlite"
    shutil.copy(Path(__file__).parents[1] / "data" / "journal-0.1.0.sqlite", old)
    with Journal(old) as journal:
        assert applied_migrations(journal.db) == [m.__name__ for m in MIGRATIONS]
        traces = journal.load([f"fp-q{q}-{i}" for q in (1, 2) for i in (0, 1)])
        assert len(traces) == 4 and traces["fp-q1-0"].text == "<answer>up</answer>"
        assert traces["fp-q2-1"].token_logprobs == [-0.1, -0.2, -0.05] and traces["fp-q2-1"].token_ids == [11, 12, 13]
        assert journal.failures() == {"fp-q3-0": "HTTP 500: boom"} and journal.get_meta("recipe_fingerprint") == "abc"
    with Journal(old) as journal:  # reopening applies nothing twice
        assert applied_migrations(journal.db) == [m.__name__ for m in MIGRATIONS]


def test_migrations_are_applied_in_order_once_and_a_failed_one_leaves_no_trace(tmp_path, monkeypatch):
    from curation import journal as journal_module

    path = tmp_path / "j.sqlite"
    Journal(path).close()

    def m999_broken(db):
        db.execute("CREATE TABLE half_done (x)")
        raise RuntimeError("boom")

    monkeypatch.setattr(journal_module, "MIGRATIONS", [*journal_module.MIGRATIONS, m999_broken])
    try:
        Journal(path)
    except RuntimeError:
        pass
    db = sqlite3.connect(path)
    assert "m999_broken" not in {r[0] for r in db.execute("SELECT name FROM _migrations")}
    assert not db.execute("SELECT name FROM sqlite_master WHERE name='half_done'").fetchall()  # rolled back with it


def test_journals_written_before_m003_resume_and_score_with_no_thinking(tmp_path):
    """tests/data/journal-m002.sqlite was written by the code at 9844cc5 (migrations m001, m002);
    journal-0.1.0.sqlite before migrations. Both gain m003 and read back as traces without
    thinking whose tokens are all answer tokens, so scoring reads what it read before."""
    import shutil
    from pathlib import Path

    import numpy as np

    from curation.journal import applied_migrations

    for name in ("journal-m002.sqlite", "journal-0.1.0.sqlite"):
        old = tmp_path / name
        shutil.copy(Path(__file__).parents[1] / "data" / name, old)
        with Journal(old) as journal:
            assert applied_migrations(journal.db)[-2:] == ["m003_reasoning_tokens", "m004_scorer_tokens"]
            traces = journal.load([f"fp-q1-{i}" for i in (0, 1)])
            assert traces["fp-q1-0"].text == "<answer>up</answer>"
            for trace in traces.values():
                assert trace.reasoning is None and trace.answer_start is None and trace.alignment == "ok" and trace.tokens == []
            grid = [["fp-q1-0", "fp-q1-1"]]
            (chunk,) = journal.read_chunks(grid)
            assert chunk.alignment == ["ok", "ok"] and chunk.reasoning == [None, None] and chunk.answer_start.tolist() == [0, 0]
            whole, answer = chunk.token_arrays(np.array([0, 1])), chunk.token_arrays(np.array([0, 1]), span="answer")
            assert whole.offsets.tolist() == answer.offsets.tolist() and whole.logprobs.tolist() == answer.logprobs.tolist()
            # a resumed run adds traces with thinking beside the old ones
            thinking = Trace("fp-q9-0", "q9", 0, "<answer>up</answer>", [-1.0, -2.0, -0.5], [[-1.0], [-2.0], [-0.5]], "stop", "raw",
                             reasoning="hmm", tokens=["hmm", "</think>", "<answer>up</answer>"], answer_start=2)
            journal.commit([thinking])
        with Journal(old) as journal:
            back = journal.load(["fp-q9-0"])["fp-q9-0"]
            assert (back.reasoning, back.tokens, back.answer_start, back.alignment) == ("hmm", ["hmm", "</think>", "<answer>up</answer>"], 2, "ok")
            (chunk,) = journal.read_chunks([["fp-q9-0"]])
            assert chunk.token_arrays(np.array([0]), span="answer").logprobs.tolist() == [-0.5]
            assert chunk.token_arrays(np.array([0]), span="thinking").logprobs.tolist() == [-1.0, -2.0]


def test_span_fields_round_trip_unaligned_and_unfinished(tmp_path):
    import numpy as np

    traces = [
        Trace("a", "q", 0, "", [-1.0, -1.0], [[-1.0], [-1.0]], "length", "raw", reasoning="still thinking", tokens=["still", " thinking"], answer_start=2, alignment="unfinished"),
        Trace("b", "q", 1, "x", [-1.0, -3.0], [[-1.0], [-3.0]], "stop", "raw", reasoning="r", tokens=["r", "y"], answer_start=None, alignment="unaligned"),
    ]
    with Journal(tmp_path / "j.sqlite") as journal:
        journal.commit(traces)
        (chunk,) = journal.read_chunks([["a", "b"]])
        assert chunk.alignment == ["unfinished", "unaligned"] and chunk.answer_start.tolist() == [2, -1]
        answer = chunk.token_arrays(np.array([0, 1]), span="answer")
        assert answer.lengths.tolist() == [0, 0]  # no answer tokens / not known: the metrics are NaN
        thinking = chunk.token_arrays(np.array([0, 1]), span="thinking")
        assert thinking.lengths.tolist() == [2, 0] and thinking.top_trace_offsets.tolist() == [0, 2, 2]
        loaded = journal.load(["a", "b"])
        assert loaded["b"].answer_start is None and loaded["a"].alignment == "unfinished"
