"""Uncertainty metrics against hand-computed values, edge cases included (fast: no model)."""

import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pyarrow as pa
import pytest

from curation import score
from curation.recipe.sections import SelectConfig
from curation.score import (
    METRICS,
    SIMILARITIES,
    ScoringInputs,
    TokenArrays,
    compute_scores,
    lcs_length,
    majority,
    rouge_l,
    selection_keys,
)
from curation.select import select

NINF = float("-inf")


def h(row):
    """-sum p log p over the given logprobs, written out with math (the hand computation)."""
    return -sum(math.exp(v) * v for v in row if v != NINF)


# Three questions, K = 3.
# q0: three tokens, top-k rows of length 3, 2 and 1 (shorter than k); q1: a single token; q2: empty trace.
REF_LOGPROBS = [[-0.5, -1.0, -0.25], [-2.0], []]
REF_TOP = [[[-0.5, -1.0, -2.0], [-1.0, -1.5], [-0.25]], [[-0.2, -2.0]], []]
REF_ANSWERS = np.array([0, 1, -1])
SAMPLE_ANSWERS = np.array([[0, 0, 1], [1, 1, 1], [-1, -1, 2]])


def inputs(**overrides):
    values = dict(
        reference=TokenArrays.from_lists(REF_LOGPROBS, REF_TOP),
        reference_answers=REF_ANSWERS,
        sample_answers=SAMPLE_ANSWERS,
    )
    values.update(overrides)
    return ScoringInputs(**values)


def test_confidence_metrics_hand_computed():
    s = compute_scores(inputs()).values
    assert s["msp"][:2] == pytest.approx([1.75, 2.0], abs=1e-12)
    assert s["perplexity"][:2] == pytest.approx([1.75 / 3, 2.0], abs=1e-12)
    mte0 = (h([-0.5, -1.0, -2.0]) + h([-1.0, -1.5]) + h([-0.25])) / 3
    assert s["mean_token_entropy"][:2] == pytest.approx([mte0, h([-0.2, -2.0])], abs=1e-12)
    # an empty trace has no confidence at all (never kept), rather than LM-Polygraph's msp = -sum([]) = 0
    assert np.isnan(s["msp"][2]) and np.isnan(s["perplexity"][2]) and np.isnan(s["mean_token_entropy"][2])


def test_consistency_and_cocoa_hand_computed():
    s = compute_scores(inputs()).values
    # q0 majority 0 (2 of 3); q1 all agree; q2 only one parsed sample: majority 2 (1 of 3)
    assert s["self_consistency"] == pytest.approx([1 / 3, 0.0, 2 / 3])
    # answer similarity: q0 [1, 1, 0]; q1 [1, 1, 1]; q2 reference unparsed -> similar to nothing
    assert s["semantic_consistency"] == pytest.approx([1 / 3, 0.0, 1.0])
    assert s["cocoa_msp"][:2] == pytest.approx([1.75 / 3, 0.0])
    assert s["cocoa_ppl"][:2] == pytest.approx([1.75 / 9, 0.0])
    mte0 = (h([-0.5, -1.0, -2.0]) + h([-1.0, -1.5]) + h([-0.25])) / 3
    assert s["cocoa_mte"][:2] == pytest.approx([mte0 / 3, 0.0])
    assert all(np.isnan(s[m][2]) for m in ("cocoa_msp", "cocoa_ppl", "cocoa_mte"))


def test_explicit_similarity_matrix_is_used():
    sim = np.array([[0.9, 0.5, 0.0], [1.0, 1.0, 0.7], [0.2, 0.2, 0.2]])
    s = compute_scores(inputs(similarity=sim)).values
    assert s["semantic_consistency"] == pytest.approx([1 - 1.4 / 3, 0.1, 0.8])
    assert s["cocoa_ppl"][:2] == pytest.approx([1.75 / 3 * (1 - 1.4 / 3), 2.0 * 0.1])


def test_single_token_trace():
    arrays = TokenArrays.from_lists([[-0.7]], [[[-0.7, -1.2, -3.0]]])
    one = ScoringInputs(arrays, np.array([0]), np.array([[0]]))
    s = compute_scores(one).values
    assert s["msp"] == pytest.approx([0.7]) and s["perplexity"] == pytest.approx([0.7])
    assert s["mean_token_entropy"] == pytest.approx([h([-0.7, -1.2, -3.0])])


def test_k_equals_one():
    s = compute_scores(inputs(sample_answers=np.array([[0], [0], [2]]))).values
    assert s["self_consistency"] == pytest.approx([0.0, 0.0, 0.0])  # one parsed sample is its own majority
    assert s["semantic_consistency"] == pytest.approx([0.0, 1.0, 1.0])
    assert s["cocoa_ppl"][:2] == pytest.approx([0.0, 2.0])


def test_all_samples_identical_ties_broken_by_confidence():
    # every question: all samples agree with the reference -> CoCoA is 0 for all of them
    arrays = TokenArrays.from_lists([[-0.1, -0.1], [-2.0, -2.0], [-1.0, -1.0]], [[[-0.1]] * 2, [[-2.0]] * 2, [[-1.0]] * 2])
    agree = ScoringInputs(arrays, np.array([1, 1, 1]), np.ones((3, 4), dtype=int))
    values = compute_scores(agree).values
    assert values["cocoa_ppl"] == pytest.approx([0, 0, 0])
    assert values["self_consistency"] == pytest.approx([0, 0, 0])
    uncertainty, tiebreak = selection_keys("cocoa_ppl", values)
    assert tiebreak == pytest.approx([0.1, 2.0, 1.0])
    kept = select(np.array(["a", "b", "c"], dtype=object), np.array(["x"] * 3, dtype=object), uncertainty, tiebreak, SelectConfig(count=1)).kept
    assert kept.tolist() == [True, False, False]  # the most confident of the tied questions


def test_unparsed_answers_never_form_a_majority():
    answers, counts = majority(np.array([[-1, -1, -1], [-1, 3, -1]]), np.array([-1, -1]))
    assert answers.tolist() == [-1, 3] and counts.tolist() == [0, 1]
    s = compute_scores(inputs(sample_answers=np.array([[-1, -1, -1], [-1, -1, -1], [-1, -1, -1]]))).values
    assert s["self_consistency"] == pytest.approx([1, 1, 1])
    assert s["semantic_consistency"] == pytest.approx([1, 1, 1])


def test_majority_ties_prefer_the_reference_then_the_earliest_sample():
    answers, counts = majority(np.array([[0, 1, 1, 0], [2, 3, 3, 2]]), np.array([1, 7]))
    assert answers.tolist() == [1, 2] and counts.tolist() == [2, 2]


def test_top_k_rows_not_matching_tokens_have_no_entropy():
    arrays = TokenArrays.from_lists([[-0.1, -0.2], [-0.3]], [[[-0.1]], [[-0.3, -1.4]]])  # trace 0: one row for two tokens
    mte = score.sequence_mean_entropy(arrays)
    assert np.isnan(mte[0]) and mte[1] == pytest.approx(h([-0.3, -1.4]))


def test_no_top_k_at_all_skips_entropy_metrics():
    arrays = TokenArrays.from_lists([[-0.1], [-0.2]], [[], []])
    s = compute_scores(ScoringInputs(arrays, np.array([0, 0]), np.array([[0], [0]])))
    assert "mean_token_entropy" in s.skipped and "cocoa_mte" in s.skipped
    assert "msp" in s.values


def test_metric_requirements_are_reported():
    s = compute_scores(inputs(sample_answers=np.zeros((3, 0), dtype=int)))
    assert set(s.skipped) >= {"self_consistency", "semantic_consistency", "cocoa_ppl", "critic"}
    s = compute_scores(inputs(has_reference=False))
    assert "msp" in s.skipped and "self_consistency" in s.values


def test_empty_run():
    empty = ScoringInputs(TokenArrays.from_lists([], []), np.zeros(0, dtype=int), np.zeros((0, 4), dtype=int))
    values = compute_scores(empty).values
    assert all(len(v) == 0 for v in values.values())


def test_from_arrow_dense_and_lists_agree_and_float32_keeps_precision(monkeypatch):
    dense_blocks = []
    monkeypatch.setattr(score, "_p_log_p_rows", lambda block, real=score._p_log_p_rows: dense_blocks.append(block.shape) or real(block))
    rng = np.random.default_rng(1)
    lengths = rng.integers(0, 40, 300)
    logprobs = [list(-rng.exponential(1.0, n)) for n in lengths]
    tops = [[sorted(-rng.exponential(1.5, 5))[::-1] for _ in range(n)] for n in lengths]
    a = TokenArrays.from_lists(logprobs, tops)
    b = TokenArrays.from_arrow(
        pa.chunked_array([pa.array(logprobs[:100], pa.list_(pa.float32())), pa.array(logprobs[100:], pa.list_(pa.float32()))]),
        pa.array(tops, pa.list_(pa.list_(pa.float32()))),
    )
    assert b.logprobs.dtype == np.float32
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    c = TokenArrays.from_dense(offsets, np.concatenate(logprobs), np.array([r for t in tops for r in t]).reshape(-1, 5))
    expected_msp = np.array([-sum(x) if x else np.nan for x in logprobs])
    for arrays, tol in ((a, 1e-12), (c, 1e-12), (b, 1e-5)):
        assert np.allclose(score.sequence_msp(arrays), expected_msp, atol=tol, equal_nan=True)
    expected_mte = np.array([np.mean([h(r) for r in t]) if t else np.nan for t in tops])
    assert np.allclose(score.sequence_mean_entropy(a), expected_mte, atol=1e-12, equal_nan=True)
    assert dense_blocks and all(shape[1] == 5 for shape in dense_blocks)  # regular rows: the dense fast path
    assert np.allclose(score.sequence_mean_entropy(c), expected_mte, atol=1e-12, equal_nan=True)
    # float32 inputs are reduced in float64: only the float32 rounding of the inputs remains
    b32 = [[float(np.float32(v)) for v in row] for row in logprobs]
    assert np.allclose(score.sequence_msp(b), [-sum(x) if x else np.nan for x in b32], atol=1e-9, equal_nan=True)


def test_ragged_top_k_and_many_blocks(monkeypatch):
    rng = np.random.default_rng(2)
    lengths = rng.integers(0, 30, 500)
    logprobs = [list(-rng.exponential(1.0, n)) for n in lengths]
    tops = [[list(-rng.exponential(1.5, rng.integers(0, 6))) for _ in range(n)] for n in lengths]
    one_block = TokenArrays.from_lists(logprobs, tops)
    assert one_block.top_row_offsets is not None  # ragged path
    expected_mte = np.array([np.mean([h(r) for r in t]) if t else np.nan for t in tops])
    assert np.allclose(score.sequence_mean_entropy(one_block), expected_mte, atol=1e-12, equal_nan=True)
    monkeypatch.setattr(score, "BLOCK_VALUES", 37)  # force hundreds of blocks, including single-trace ones
    many = TokenArrays.from_lists(logprobs, tops)
    assert len(list(many.trace_blocks())) > 50
    assert np.allclose(score.sequence_mean_entropy(many), expected_mte, atol=1e-12, equal_nan=True)
    assert np.allclose(score.sequence_msp(many), [-sum(x) if x else np.nan for x in logprobs], atol=1e-12, equal_nan=True)


def test_critic_is_a_quality_score():
    grades = np.array([5.0, 2.0, np.nan])
    s = compute_scores(inputs(critic_grades=grades)).values
    assert np.array_equal(s["critic"], grades, equal_nan=True)
    uncertainty, tiebreak = selection_keys("critic", s)
    assert uncertainty[:2] == pytest.approx([0.0, 3.0]) and np.isnan(uncertainty[2])
    assert tiebreak[:2] == pytest.approx(s["perplexity"][:2])


def test_registry_is_complete_and_documented():
    assert {"msp", "perplexity", "mean_token_entropy", "self_consistency", "semantic_consistency", "cocoa_msp", "cocoa_ppl", "cocoa_mte", "critic"} <= set(METRICS)
    assert {"answer", "embedding", "cross_encoder", "rouge_l"} <= set(SIMILARITIES)
    for m in METRICS.values():
        assert m.description
    for name in ("cocoa_msp", "cocoa_ppl", "cocoa_mte"):
        assert METRICS[name].tiebreak in METRICS


# --------------------------------------------------------------------------- lexical similarity
def _lcs_dp(a, b):
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            table[i][j] = table[i - 1][j - 1] + 1 if a[i - 1] == b[j - 1] else max(table[i - 1][j], table[i][j - 1])
    return table[-1][-1]


def test_bit_parallel_lcs_matches_dynamic_programming():
    rng = np.random.default_rng(3)
    for _ in range(300):
        a = list(rng.choice(list("abcde"), rng.integers(0, 25)))
        b = list(rng.choice(list("abcdef"), rng.integers(0, 25)))
        assert lcs_length(a, b) == _lcs_dp(a, b)


def test_rouge_l_hand_computed():
    # LCS("the cat sat on the mat", "the cat lay on a mat") = the cat on mat = 4; P = 4/6, R = 4/6
    assert rouge_l("The cat sat on the mat.", "the cat lay on a mat") == pytest.approx(4 / 6)
    assert rouge_l("", "anything") == 0.0 and rouge_l("same words", "Same, words!") == 1.0


def test_rouge_l_matches_rouge_score_package():
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    texts = [
        "Knocking down MAPRE3 leaves LGR4 unchanged, so: not differentially expressed.",
        "MAPRE3 loss reduces LGR4 expression; answer downregulated",
        "<think>INO80 remodels chromatin</think><answer>upregulated</answer>",
        "",
        "upregulated upregulated upregulated",
    ]
    for a in texts:
        for b in texts:
            assert rouge_l(a, b) == pytest.approx(scorer.score(a, b)["rougeL"].fmeasure, abs=1e-12)


def test_rouge_l_similarity_matrix():
    refs = ["the answer is up", "", "down"]
    samples = [["the answer is up", "answer down"], ["x", "y"], ["", "down"]]
    sim = SIMILARITIES["rouge_l"].fn(refs, samples, None, None)
    assert sim.shape == (3, 2)
    assert sim[0, 0] == 1.0 and sim[0, 1] == pytest.approx(rouge_l("the answer is up", "answer down"))
    assert sim[1].tolist() == [0.0, 0.0] and sim[2].tolist() == [0.0, 1.0]  # an empty text is similar to nothing
