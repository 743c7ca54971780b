"""The opt-in measures of issue 31 by hand (fast: no model, no LM-Polygraph; parity is in test_score_polygraph.py)."""

import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from curation import pipeline, semantic
from curation.parse import read_confidence
from curation.recipe.load import load_recipe
from curation.score import METRICS, ScoringInputs, TokenArrays, compute_scores, rouge_l, sample_similarity_matrix
from curation.types import RecipeError

OPT_IN = ["semantic_entropy", "semantic_entropy_frequency", "eccentricity", "degree_matrix", "laplacian_eigenvalue_sum",
          "num_semantic_sets", "sentence_sar", "self_certainty", "trace_length", "verbalized_confidence", "p_true"]


def test_the_new_measures_are_opt_in_so_every_run_keeps_its_default_columns(write_recipe):
    assert all(not METRICS[name].default for name in OPT_IN)
    recipe = load_recipe(str(write_recipe("""
name: d
source: {path: SAMPLE_CSV, limit: 2}
prompt: {user: "{{ pert }}?"}
generator: {backend: openai, url: "http://x", model: m, samples: 2}
answer: {tag: answer}
select: {fraction: 0.5}
"""))).recipe
    assert pipeline.metric_names(recipe, False) == [
        "cocoa_ppl", "msp", "perplexity", "mean_token_entropy", "self_consistency", "semantic_consistency", "cocoa_msp", "cocoa_mte",
        "deepconf_lowest_group", "deepconf_bottom10_group", "deepconf_tail",
    ]


def test_answer_clusters_by_hand():
    # q0: answers a a b (classes of 2 and 1); q1: all agree; q2: two unparsed and one c (three sets)
    answers = np.array([[0, 0, 1], [2, 2, 2], [-1, -1, 2]])
    loglik = np.log(np.array([[0.2, 0.1, 0.3], [0.5, 0.25, 0.25], [0.1, 0.2, 0.4]]))
    inputs = ScoringInputs(TokenArrays.from_lists([[-0.1]] * 3), answers[:, 0], answers,
                           samples=TokenArrays.from_lists([[v] for v in loglik.reshape(-1)]))
    values = compute_scores(inputs, OPT_IN[:7]).values
    frequency = [-(2 * math.log(2 / 3) + math.log(1 / 3)) / 3, 0.0, -math.log(1 / 3)]
    assert np.allclose(values["semantic_entropy_frequency"], frequency)
    summed = [-(2 * math.log(0.3) + math.log(0.3)) / 3, -math.log(1.0), -(math.log(0.1) + math.log(0.2) + math.log(0.4)) / 3]
    assert np.allclose(values["semantic_entropy"], summed)
    assert values["num_semantic_sets"].tolist() == [2, 1, 3] and np.allclose(values["laplacian_eigenvalue_sum"], [2, 1, 3])
    assert np.allclose(values["eccentricity"], [1, 0, math.sqrt(2)])
    assert np.allclose(values["degree_matrix"], [(1 + 1 + 2) / 9, 0, 6 / 9])
    sar0 = -(math.log(0.2 + 0.1 / 0.001) + math.log(0.1 + 0.2 / 0.001) + math.log(0.3)) / 3
    assert values["sentence_sar"][0] == pytest.approx(sar0)


def test_a_question_without_drawn_samples_has_no_sample_measure():
    answers = np.array([[0, 1], [1, 1]])
    drawn = np.array([[False, False], [True, True]])
    inputs = ScoringInputs(TokenArrays.from_lists([[-0.1]] * 2), answers[:, 0], np.where(drawn, answers, -1), sampled=drawn)
    values = compute_scores(inputs, ["semantic_entropy_frequency", "num_semantic_sets", "eccentricity"]).values
    assert all(np.isnan(v[0]) and np.isfinite(v[1]) for v in values.values())


def test_rouge_matrix_between_samples():
    texts = [["the gene is up", "gene up", ""], ["down", "down", "not changed"]]
    matrix = sample_similarity_matrix("rouge_l", texts, np.array([[0, 0, -1], [1, 1, 2]]))
    assert matrix.shape == (2, 3, 3) and (matrix[:, [0, 1, 2], [0, 1, 2]] == 1).all()
    assert matrix[0, 0, 1] == pytest.approx(rouge_l("the gene is up", "gene up")) and matrix[0, 0, 2] == 0.0
    assert np.allclose(matrix, np.swapaxes(matrix, 1, 2))
    # clusters over it: greedy, s > 0.5 both ways with the cluster's first member
    assert semantic.clusters(matrix, 0.5).tolist() == [[0, 0, 2], [0, 0, 2]]


def test_verbalized_confidence_is_read_without_code():
    texts = ["<answer>up</answer><confidence>87</confidence>", "<confidence>0.4</confidence> then <confidence>90</confidence>",
             "no tag", None, "<confidence>1</confidence>", "<confidence>250</confidence>", "<confidence>__import__('os')</confidence>"]
    values = read_confidence(texts)
    assert values[:2].tolist() == [0.87, 0.4] and values[4] == 1.0  # the first tag; 1 is certain, as LM-Polygraph reads it
    assert np.isnan(values[[2, 3, 5, 6]]).all()
    assert read_confidence(["Confidence: 65%"], r"Confidence: ([0-9.]+)%").tolist() == [0.65]


def test_validate_refuses_p_true_without_a_scorer_and_a_confidence_regex_without_a_group(write_recipe):
    base = """
name: v
source: {path: SAMPLE_CSV, limit: 2}
prompt: {user: "{{ pert }}?"}
generator: {backend: openai, url: "http://x", model: m, samples: 2}
answer: {tag: answer}
select: {fraction: 0.5}
"""
    with pytest.raises(RecipeError, match="p_true.*add a scorer: section"):
        load_recipe(str(write_recipe(base + "score: {metric: self_consistency, metrics: [p_true]}\n")))
    with pytest.raises(RecipeError, match="score.confidence_regex: .*needs a group"):
        load_recipe(str(write_recipe(base + "score: {metric: self_consistency, confidence_regex: 'confidence: [0-9]+'}\n")))
