"""The LLM judge: grade parsing, journaled judgements through the runner, min-grade filtering (fake backend)."""

import os
import re

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pyarrow.parquet as pq
import pytest

from curation import critic, generate, pipeline, run_folder
from curation.journal import Journal
from curation.recipe.sections import CriticConfig
from curation.select import BELOW_MIN_GRADE
from curation.types import Trace
from tests.builders.eval_run import build_recipe as make_recipe
from tests.builders.eval_run import build_run as make_run

JUDGE_PROMPT = "Question: {{ question }}\nAnswer: {{ answer }}\nReasoning: {{ trace }}\nGene: {{ gene }}\nGrade 1-5 as <grade>N</grade>."


@pytest.mark.parametrize(
    "reply, grade",
    [
        ("Clear and correct. <grade>5</grade>", 5),
        ("<grade> 4 </grade>", 4),
        ("Grade: 3", 3),
        ("Final score = **2** out of 5", 2),
        ("I would rate this 4/5.", 4),
        ("Scale: 1 = poor, 5 = excellent.\nGrade: 2", 2),
        ("5", 5),
        ("It is a fine answer.", None),
        ("<grade>7</grade>", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_grade(reply, grade):
    assert critic.parse_grade(reply) == grade


def test_parse_grade_with_recipe_regex():
    assert critic.parse_grade("verdict: B (4)", r"\((\d)\)") == 4
    assert critic.parse_grade("verdict: B", r"\((\d)\)") is None


class FakeJudge:
    """A backend that grades by how often the trace says 'because' (capped at 5), else by the gene number."""

    name = "fake"
    logprob_kind = "raw"
    concurrency = 4
    endpoints = [None]

    def __init__(self, config, calls):
        self.config, self.calls = config, calls

    def model_identity(self):
        return "fake-judge"

    def fingerprint_params(self, config):
        return {"backend": "fake"}

    def group(self, requests):
        return [[r] for r in requests]

    def provenance(self):
        return {"backend": "fake", "model_id": "fake-judge"}

    async def generate(self, group, endpoint=None):
        self.calls.extend(group)
        traces = []
        for request in group:
            prompt = request.chat[-1]["content"]
            if "unreadable" in prompt:
                reply = "I cannot decide."
            elif "because" in prompt:
                reply = f"Reasoning checked. <grade>{min(5, 1 + prompt.count('because'))}</grade>"
            else:  # make_run's traces: "Gene: G<i>" grades 1 + i % 5
                gene = int(re.search(r"Gene: G(\d+)", prompt).group(1))
                reply = f"Grade: {1 + gene % 5}"
            traces.append(Trace(request.fingerprint, request.prompt_id, request.sample_index, reply, [-0.1], [], "stop", "raw", None))
        return traces

    async def aclose(self):
        return None


@pytest.fixture
def fake_judge(monkeypatch):
    calls = []
    monkeypatch.setattr(generate, "make_backend", lambda config: FakeJudge(config, calls))
    return calls


def test_judgements_are_journaled_and_never_bought_twice(tmp_path, fake_judge):
    config = CriticConfig(prompt=JUDGE_PROMPT)
    judgements = [
        critic.Judgement("q0", {"question": "q?", "answer": "up", "trace": "because because", "gene": "A"}),
        None,
        critic.Judgement("q2", {"question": "q?", "answer": "down", "trace": "unreadable", "gene": "B"}),
        critic.Judgement("q3", {"question": "q?", "answer": "up", "trace": "because " * 9, "gene": "C"}),
    ]
    first = critic.grade(config, judgements, tmp_path / "journal.sqlite", show_progress=False)
    assert np.array_equal(first.grades, [3, np.nan, np.nan, 5], equal_nan=True)
    assert first.stats["generated"] == 3 and first.stats["unreadable"] == 1
    assert len(fake_judge) == 3
    assert first.replies[1] is None and "cannot decide" in first.replies[2]

    again = critic.grade(config, judgements, tmp_path / "journal.sqlite", show_progress=False)
    assert len(fake_judge) == 3 and again.stats["cached"] == 3
    assert np.array_equal(again.grades, first.grades, equal_nan=True)

    # rescoring reads the journal without any backend
    offline = critic.grade(config, judgements, tmp_path / "journal.sqlite", generate=False)
    assert np.array_equal(offline.grades, first.grades, equal_nan=True)
    # a changed judge prompt is a different judgement: not in the journal
    changed = critic.grade(CriticConfig(prompt=JUDGE_PROMPT + " Be strict."), judgements, tmp_path / "journal.sqlite", generate=False)
    assert np.isnan(changed.grades).all() and changed.stats["missing"] == 3

    with Journal(tmp_path / "journal.sqlite") as journal:
        prompt_ids = {t.prompt_id for t in journal.iter_all()}
    assert prompt_ids == {"q0#critic", "q2#critic", "q3#critic"}


def test_fingerprints_depend_on_judge_model_prompt_and_settings():
    config = CriticConfig(prompt=JUDGE_PROMPT)
    j = [critic.Judgement("q0", {"question": "q", "answer": "up", "trace": "t", "gene": "A"})]
    base = critic.plan_judgements(config, j, "judge-a", {})[0]
    assert base.params.greedy and base.prompt_id == "q0#critic" and base.sample_index == 0
    assert critic.plan_judgements(config, j, "judge-b", {})[0].fingerprint != base.fingerprint
    assert critic.plan_judgements(CriticConfig(prompt=JUDGE_PROMPT, max_new_tokens=10), j, "judge-a", {})[0].fingerprint != base.fingerprint
    assert critic.plan_judgements(config, j, "judge-a", {})[0].fingerprint == base.fingerprint


def test_min_grade_filter_and_critic_metric_in_the_pipeline(tmp_path, fake_judge):
    judge = {"prompt": JUDGE_PROMPT, "min_grade": 3}
    recipe = make_recipe(critic=judge, select={"strategy": "per_class", "fraction": 1.0})
    run_dir = make_run(tmp_path / "run", recipe=recipe, n=12)
    rows = pq.read_table(run_dir / run_folder.SCORED_FILE).to_pylist()
    graded = [r for r in rows if r["critic"] == r["critic"]]  # not NaN
    assert graded and len(fake_judge) == len(graded)
    for r in rows:
        if r["kept"]:
            assert r["critic"] >= 3
        elif r["critic"] == r["critic"] and r["critic"] < 3:
            assert r["drop_reason"] == BELOW_MIN_GRADE
    # the label is not shown to the judge unless the recipe says so
    assert all("not differentially" not in c.chat[-1]["content"] or "Answer: not differentially" in c.chat[-1]["content"] for c in fake_judge)

    # rescoring with the critic as the selection metric: grades come from the journal, no new calls
    calls = len(fake_judge)
    monkey_fail = lambda config: (_ for _ in ()).throw(AssertionError("rescoring must not call the judge"))  # noqa: E731
    generate.make_backend, saved = monkey_fail, generate.make_backend
    try:
        summary = pipeline.rescore(run_dir, {"score": {"metric": "critic"}, "select": {"strategy": "global", "count": 2, "fraction": None}}, show_progress=False)
    finally:
        generate.make_backend = saved
    assert len(fake_judge) == calls
    after = pq.read_table(run_dir / run_folder.SCORED_FILE).to_pylist()
    assert np.allclose([r["critic"] for r in after], [r["critic"] for r in rows], equal_nan=True)
    kept = [r for r in after if r["kept"]]
    assert summary.kept == len(kept) == 2
    assert sorted(r["id"] for r in kept) == ["q004", "q009"]  # the two graded 5 (genes 4 and 9)
    for r in after:
        if r["critic"] == r["critic"]:
            assert r["uncertainty"] == pytest.approx(5 - r["critic"])


def test_recipe_needs_a_critic_section_for_the_critic_metric():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="critic: section"):
        make_recipe(score={"metric": "critic"})


# ----------------------------------------------------------------------------- SynthPert as published
@pytest.mark.parametrize(
    "reply, grade",
    [
        ("<reasoning>Specific and mechanistic.</reasoning>\n<evaluation>excellent</evaluation>", 5),
        ("<evaluation> Good </evaluation>", 4),
        ("<evaluation>**average**</evaluation>", 3),
        ("<evaluation>bad.</evaluation>", 2),
        ("<evaluation>TERRIBLE</evaluation>", 1),
        # the scale restated before the verdict: the last evaluation wins
        ("Use <evaluation>excellent</evaluation> only for the best.\n<evaluation>bad</evaluation>", 2),
        ("good", 4),
        ("<evaluation>great</evaluation>", None),
        ("It is a good trace overall.", None),
        ("<grade>5</grade>", None),
        (None, None),
    ],
)
def test_word_scale(reply, grade):
    assert critic.parse_grade(reply, scale="words") == grade


@pytest.mark.parametrize(
    "trace, shown",
    [
        ("<think>KD of A lowers B.</think><answer>downregulated</answer>", "KD of A lowers B."),
        ("Preamble <think>\n step 1\n step 2 \n</think>\n<answer>up</answer>", "step 1\n step 2"),
        ("<think>cut off before the end", "cut off before the end"),
        ("<think>no closing tag <answer>up</answer>", "no closing tag"),
        ("Plain reasoning. <answer>up</answer>", "Plain reasoning."),
    ],
)
def test_reasoning_block(trace, shown):
    assert critic.reasoning_block(trace) == shown


def test_reasoning_only_shows_the_judge_the_think_block_and_not_the_answer():
    variables = {"question": "q?", "answer": "upregulated", "trace": "<think>A activates B.</think><answer>upregulated</answer>", "gene": "B"}
    config = CriticConfig(prompt="Reasoning: {{ trace }}", reasoning_only=True)
    assert critic.judge_messages(config, variables)[-1]["content"] == "Reasoning: A activates B."
    whole = critic.judge_messages(CriticConfig(prompt="Reasoning: {{ trace }}"), variables)[-1]["content"]
    assert "<answer>upregulated</answer>" in whole


WORDS = ["terrible", "bad", "average", "good", "excellent"]


@pytest.fixture
def word_judge(monkeypatch):
    """A judge answering SynthPert's word scale: gene i gets WORDS[i % 5]."""
    calls = []

    class WordJudge(FakeJudge):
        async def generate(self, group, endpoint=None):
            self.calls.extend(group)
            out = []
            for request in group:
                gene = int(re.search(r"Gene: G(\d+)", request.chat[-1]["content"]).group(1))
                reply = f"<reasoning>checked</reasoning><evaluation>{WORDS[gene % 5]}</evaluation>"
                out.append(Trace(request.fingerprint, request.prompt_id, request.sample_index, reply, [-0.1], [], "stop", "raw", None))
            return out

    monkeypatch.setattr(generate, "make_backend", lambda config: WordJudge(config, calls))
    return calls


def test_synthpert_selection_excellent_or_good_and_answer_equals_label(tmp_path, word_judge):
    from curation.select import WRONG_ANSWER

    judge = {"prompt": "Reasoning: {{ trace }}\nGene: {{ gene }}", "scale": "words", "reasoning_only": True, "min_grade": 4}
    recipe = make_recipe(critic=judge, score={"metric": "critic"}, select={"strategy": "global", "fraction": 1.0, "require_correct": True})
    run_dir = make_run(tmp_path / "run", recipe=recipe, n=30)
    rows = pq.read_table(run_dir / run_folder.SCORED_FILE).to_pylist()
    assert all("<answer>" not in call.chat[-1]["content"] for call in word_judge)  # the judge saw the reasoning only
    kept = [r for r in rows if r["kept"]]
    assert kept
    for r in rows:
        gene = int(r["gene"][1:])
        assert r["critic"] == 1 + gene % 5  # the word scale, read as 5..1
        accepted, correct = r["critic"] >= 4, r["answer"] == r["label"]
        assert r["kept"] == (accepted and correct and r["answer"] is not None)
        if accepted and not correct and r["answer"] is not None:
            assert r["drop_reason"] == WRONG_ANSWER
        if not accepted:
            assert r["drop_reason"] == BELOW_MIN_GRADE
    assert any(r["drop_reason"] == WRONG_ANSWER for r in rows)  # the label check did drop something
    card = (run_dir / "README.md").read_text()
    assert "**Not label-free:**" in card and "`select.require_correct`" in card


def test_require_correct_needs_a_label_column():
    with pytest.raises(ValueError, match="require_correct compares answers with the ground truth"):
        make_recipe(source={"path": "x.csv"}, select={"strategy": "global", "fraction": 1.0, "require_correct": True})
