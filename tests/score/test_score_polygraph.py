"""Parity with LM-Polygraph 0.7.0's own estimators and PRR on identical constructed `stats` (slow: imports it).

LM-Polygraph is not a dependency of curate; CI installs it (`pip install -c constraints lm-polygraph==0.7.0`)
and this module is skipped where it is missing.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

pytestmark = pytest.mark.slow

estimators = pytest.importorskip("lm_polygraph.estimators", reason="lm-polygraph 0.7.0 not installed")

from lm_polygraph.stat_calculators.entropy import EntropyCalculator  # noqa: E402
from lm_polygraph.ue_metrics.pred_rej_area import PredictionRejectionArea  # noqa: E402
from lm_polygraph.ue_metrics.ue_metric import get_random_scores, normalize_metric  # noqa: E402

from curation.eval import ranking  # noqa: E402
from curation.score import ScoringInputs, TokenArrays, compute_scores  # noqa: E402

TOL = 1e-6


def constructed(seed=0, n=200, k=8, top_k=5):
    """Random traces (1..60 tokens, the last one standing for EOS), ragged top-k rows, answers and a similarity."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 60, n)
    logprobs = [-rng.exponential(0.8, size=m) for m in lengths]
    tops = []
    for lp in logprobs:
        rows = []
        for chosen in lp:
            width = int(rng.integers(1, top_k + 1))  # some rows shorter than k
            rest = chosen - rng.exponential(1.0, size=width - 1)
            rows.append(np.sort(np.r_[chosen, rest])[::-1])
        tops.append(rows)
    similarity = rng.uniform(0, 1, size=(n, k))
    similarity[rng.random((n, k)) < 0.3] = 1.0
    answers = rng.integers(0, 3, size=(n, k))
    return logprobs, tops, similarity, answers


def polygraph_stats(logprobs, tops, similarity, top_k=5):
    # LM-Polygraph's entropy calculator takes each token's full log-distribution and masks -inf:
    # the top-k rows padded with -inf are exactly what it sees from a truncated server response.
    padded = [np.array([np.r_[row, [-np.inf] * (top_k - len(row))] for row in rows]) for rows in tops]
    stats = {"greedy_log_likelihoods": [list(lp) for lp in logprobs], "greedy_log_probs": padded, "greedy_sentence_similarity": similarity}
    stats.update(EntropyCalculator()(stats))
    return stats


@pytest.mark.parametrize("seed", [0, 1])
def test_estimators_match_lm_polygraph(seed):
    logprobs, tops, similarity, answers = constructed(seed)
    stats = polygraph_stats(logprobs, tops, similarity)
    arrays = TokenArrays.from_lists([list(x) for x in logprobs], [[list(r) for r in rows] for rows in tops])
    assert arrays.top_row_offsets is not None  # the ragged path is the one compared
    ours = compute_scores(ScoringInputs(arrays, answers[:, 0], answers, similarity=similarity)).values
    pairs = {
        "msp": estimators.MaximumSequenceProbability(),
        "perplexity": estimators.Perplexity(),
        "mean_token_entropy": estimators.MeanTokenEntropy(),
        "cocoa_msp": estimators.CocoaMSP(),
        "cocoa_ppl": estimators.CocoaPPL(),
        "cocoa_mte": estimators.CocoaMTE(),
    }
    for name, estimator in pairs.items():
        theirs = np.asarray(estimator(stats), dtype=np.float64)
        assert np.allclose(ours[name], theirs, rtol=0, atol=TOL), name


def test_estimators_match_lm_polygraph_from_float32_parquet_columns():
    import pyarrow as pa

    logprobs, tops, similarity, answers = constructed(2)
    # the traces parquet stores float32: parity holds for the float32 values themselves
    logprobs32 = [lp.astype(np.float32).astype(np.float64) for lp in logprobs]
    tops32 = [[r.astype(np.float32).astype(np.float64) for r in rows] for rows in tops]
    stats = polygraph_stats(logprobs32, tops32, similarity)
    arrays = TokenArrays.from_arrow(
        pa.array([lp.astype(np.float32) for lp in logprobs], pa.list_(pa.float32())),
        pa.array([[r.astype(np.float32) for r in rows] for rows in tops], pa.list_(pa.list_(pa.float32()))),
    )
    ours = compute_scores(ScoringInputs(arrays, answers[:, 0], answers, similarity=similarity)).values
    for name, estimator in (("msp", estimators.MaximumSequenceProbability()), ("mean_token_entropy", estimators.MeanTokenEntropy()), ("cocoa_ppl", estimators.CocoaPPL())):
        assert np.allclose(ours[name], estimator(stats), rtol=0, atol=TOL), name


def test_prr_matches_lm_polygraph():
    rng = np.random.default_rng(3)
    for n in (7, 50, 400):
        uncertainty = rng.normal(size=n)  # continuous: no ties, where LM-Polygraph's argsort order is defined
        correct = (rng.random(n) < 1 / (1 + np.exp(2 * uncertainty))).astype(float)
        ue_metric = PredictionRejectionArea()
        raw = ue_metric(uncertainty, correct)
        oracle = ue_metric(-correct, correct)
        random = get_random_scores(ue_metric, correct)  # 1,000 shuffles; ours is the exact expectation
        ours = ranking.prr(uncertainty, correct)
        assert ours["raw"] == pytest.approx(raw, abs=1e-12)
        assert ours["oracle"] == pytest.approx(oracle, abs=1e-12)
        assert ours["random"] == pytest.approx(random, abs=0.02)
        assert ours["prr"] == pytest.approx(normalize_metric(raw, oracle, ours["random"]), abs=1e-12)
        assert ours["prr"] == pytest.approx(normalize_metric(raw, oracle, random), abs=0.1)


# ---- the measures of issue 31: sample graphs, semantic entropy, SAR, self-certainty, verbalized, P(True)
def sample_stats(seed=0, n=120, k=6):
    """Per question: K sample log-likelihoods, answers (some unparsed), and a random sample-to-sample similarity."""
    rng = np.random.default_rng(seed)
    sample_tokens = [-rng.exponential(0.3, size=int(m)) for m in rng.integers(1, 12, n * k)]
    loglik = np.array([t.sum() for t in sample_tokens]).reshape(n, k)
    answers = rng.integers(-1, 3, size=(n, k))
    answers[: n // 4] = answers[: n // 4, :1]  # some questions whose samples all agree
    matrix = rng.uniform(0, 1, size=(n, k, k))
    matrix[rng.random((n, k, k)) < 0.3] = 1.0
    matrix[:, np.arange(k), np.arange(k)] = 1.0
    return sample_tokens, loglik, answers, matrix


def answer_classes(answers):
    """LM-Polygraph's semantic_classes_entail for answer clusters: one class per parsed answer, each unparsed sample alone."""
    class_to_sample, sample_to_class = [], []
    for row in answers:
        classes, of_sample, seen = [], [], {}
        for j, a in enumerate(row):
            key = int(a) if a >= 0 else ("unparsed", j)
            if key not in seen:
                seen[key] = len(classes)
                classes.append([])
            classes[seen[key]].append(j)
            of_sample.append(seen[key])
        class_to_sample.append(classes)
        sample_to_class.append(of_sample)
    return {"class_to_sample": class_to_sample, "sample_to_class": sample_to_class}


def matrix_classes(matrix):
    """Greedy classes over a similarity matrix (s > 0.5 both ways with the class's first member), written independently."""
    class_to_sample, sample_to_class = [], []
    for m in matrix:
        classes, of_sample = [], []
        for j in range(m.shape[0]):
            for c, members in enumerate(classes):
                if m[j, members[0]] > 0.5 and m[members[0], j] > 0.5:
                    members.append(j)
                    of_sample.append(c)
                    break
            else:
                of_sample.append(len(classes))
                classes.append([j])
        class_to_sample.append(classes)
        sample_to_class.append(of_sample)
    return {"class_to_sample": class_to_sample, "sample_to_class": sample_to_class}


def sample_inputs(sample_tokens, answers, matrix=None, **extra):
    n, k = answers.shape
    reference = TokenArrays.from_lists([[-0.1]] * n)
    return ScoringInputs(reference, answers[:, 0], answers, samples=TokenArrays.from_lists([list(t) for t in sample_tokens]), sample_similarity=matrix, **extra)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("similarity", ["answer", "matrix"])
def test_sample_measures_match_lm_polygraph(seed, similarity):
    from curation.semantic import answer_matrix

    sample_tokens, loglik, answers, matrix = sample_stats(seed)
    n, k = answers.shape
    given = matrix if similarity == "matrix" else None
    used = matrix if similarity == "matrix" else answer_matrix(answers)
    classes = matrix_classes(matrix) if similarity == "matrix" else answer_classes(answers)
    stats = {
        "sample_texts": [[f"s{j}" for j in range(k)] for _ in range(n)],
        "sample_log_probs": [list(row) for row in loglik],
        "semantic_classes_entail": classes,
        "semantic_matrix_entail": used,
        "semantic_matrix_contra": 1.0 - used,  # curate has no NLI model: contra = 1 - s stands in
        "sample_sentence_similarity": used,
    }
    names = ["semantic_entropy", "semantic_entropy_frequency", "eccentricity", "degree_matrix", "laplacian_eigenvalue_sum", "num_semantic_sets", "sentence_sar"]
    scores = compute_scores(sample_inputs(sample_tokens, answers, given), names)
    assert not scores.skipped
    pairs = {
        "semantic_entropy": estimators.SemanticEntropy(class_probability_estimation="sum"),
        "semantic_entropy_frequency": estimators.SemanticEntropy(class_probability_estimation="frequency"),
        "eccentricity": estimators.Eccentricity(),
        "degree_matrix": estimators.DegMat(),
        "laplacian_eigenvalue_sum": estimators.EigValLaplacian(),
        "num_semantic_sets": estimators.NumSemSets(),
        "sentence_sar": estimators.SentenceSAR(),
    }
    for name, estimator in pairs.items():
        theirs = np.asarray(estimator(stats), dtype=np.float64)
        assert np.isfinite(theirs).all(), name
        assert np.allclose(scores.values[name], theirs, rtol=0, atol=TOL), name


def test_sample_measures_over_the_drawn_samples_only_match_lm_polygraph_on_those():
    """Adaptive sampling leaves holes: each question's measures equal LM-Polygraph's on the samples it has."""
    sample_tokens, loglik, answers, matrix = sample_stats(4, n=30, k=6)
    rng = np.random.default_rng(5)
    drawn = rng.random(answers.shape) < 0.7
    drawn[:, 0] = True
    inputs = sample_inputs(sample_tokens, np.where(drawn, answers, -1), matrix, sampled=drawn)
    names = ["semantic_entropy", "semantic_entropy_frequency", "eccentricity", "degree_matrix", "laplacian_eigenvalue_sum", "num_semantic_sets", "sentence_sar"]
    ours = compute_scores(inputs, names).values
    for i in range(answers.shape[0]):
        cols = np.flatnonzero(drawn[i])
        sub = matrix[i][np.ix_(cols, cols)][None]
        stats = {
            "sample_texts": [[f"s{j}" for j in cols]], "sample_log_probs": [list(loglik[i, cols])],
            "semantic_classes_entail": matrix_classes(sub), "semantic_matrix_entail": sub,
            "semantic_matrix_contra": 1.0 - sub, "sample_sentence_similarity": sub,
        }
        for name, estimator in (
            ("semantic_entropy", estimators.SemanticEntropy()), ("semantic_entropy_frequency", estimators.SemanticEntropy(class_probability_estimation="frequency")),
            ("eccentricity", estimators.Eccentricity()), ("degree_matrix", estimators.DegMat()), ("laplacian_eigenvalue_sum", estimators.EigValLaplacian()),
            ("num_semantic_sets", estimators.NumSemSets()), ("sentence_sar", estimators.SentenceSAR()),
        ):
            assert abs(ours[name][i] - float(estimator(stats)[0])) <= TOL, (name, i)


@pytest.mark.parametrize("seed", [0, 3])
def test_self_certainty_matches_lm_polygraph_on_the_returned_top_k(seed):
    logprobs, tops, similarity, answers = constructed(seed)
    stats = polygraph_stats(logprobs, tops, similarity)  # -inf padded rows: LM-Polygraph drops the -inf values
    ragged = TokenArrays.from_lists([list(x) for x in logprobs], [[list(r) for r in rows] for rows in tops])
    dense = TokenArrays.from_dense(np.r_[0, np.cumsum([len(x) for x in logprobs])], np.concatenate(logprobs), np.concatenate(stats["greedy_log_probs"]))
    theirs = estimators.SelfCertainty()(stats)
    for arrays in (ragged, dense):
        ours = compute_scores(ScoringInputs(arrays, answers[:, 0], answers), ["self_certainty", "mean_token_entropy"]).values
        assert np.allclose(ours["self_certainty"], theirs, rtol=0, atol=TOL)
        assert np.allclose(ours["mean_token_entropy"], estimators.MeanTokenEntropy()(stats), rtol=0, atol=TOL)  # the shared pass


def test_verbalized_confidence_and_p_true_match_lm_polygraph():
    from curation.parse import read_confidence

    rng = np.random.default_rng(6)
    stated = np.round(rng.random(50), 3)
    texts = [f"<answer>up</answer> <confidence>{c}</confidence>" for c in stated]
    regex = r"<confidence>([0-9.]+)</confidence>"
    log_p_true = np.log(rng.uniform(0.01, 1, 50))
    reference = TokenArrays.from_lists([[-0.1]] * 50)
    answers = np.zeros((50, 2), dtype=np.int64)
    inputs = ScoringInputs(reference, answers[:, 0], answers, verbalized=read_confidence(texts, regex), p_true=log_p_true)
    ours = compute_scores(inputs, ["verbalized_confidence", "p_true"]).values
    assert np.allclose(ours["verbalized_confidence"], estimators.Verbalized1S(confidence_regex=regex)({"greedy_texts": texts}), rtol=0, atol=TOL)
    assert np.allclose(ours["p_true"], estimators.PTrue()({"p_true": log_p_true}), rtol=0, atol=TOL)
    # the default tag and percentages: 87 reads as 0.87, where LM-Polygraph would give 1 - 87
    whole = rng.integers(2, 101, 50)  # 1 itself is read as 1.0 (certain), as LM-Polygraph reads it
    percent = read_confidence([f"<confidence>{c}</confidence>" for c in whole] + ["<confidence>101</confidence>", "no tag", "<CONFIDENCE> 87% </confidence>"])
    assert np.allclose(percent[:50], whole / 100, atol=1e-12) and np.isnan(percent[50:52]).all() and percent[52] == 0.87


def test_self_certainty_and_entropy_from_full_dense_rows_match_lm_polygraph():
    rng = np.random.default_rng(8)
    lengths = rng.integers(1, 40, 300)
    offsets = np.r_[0, np.cumsum(lengths)]
    chosen = -rng.exponential(0.8, size=offsets[-1])
    top = np.sort(np.c_[chosen, chosen[:, None] - rng.exponential(1.0, size=(offsets[-1], 4))], axis=1)[:, ::-1]
    rows = [top[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
    stats = {"greedy_log_likelihoods": [list(chosen[a:b]) for a, b in zip(offsets[:-1], offsets[1:])], "greedy_log_probs": rows}
    stats.update(EntropyCalculator()(stats))
    answers = np.zeros((300, 1), dtype=np.int64)
    both = compute_scores(ScoringInputs(TokenArrays.from_dense(offsets, chosen, top), answers[:, 0], answers), ["self_certainty", "mean_token_entropy"]).values
    alone = compute_scores(ScoringInputs(TokenArrays.from_dense(offsets, chosen, top), answers[:, 0], answers), ["mean_token_entropy"]).values
    assert np.allclose(both["self_certainty"], estimators.SelfCertainty()(stats), rtol=0, atol=TOL)
    assert np.allclose(both["mean_token_entropy"], estimators.MeanTokenEntropy()(stats), rtol=0, atol=TOL)
    assert np.array_equal(both["mean_token_entropy"], alone["mean_token_entropy"])  # reading both in one pass changes no bit


def test_answer_closed_forms_over_drawn_samples_match_lm_polygraph():
    """Answer similarity with holes (adaptive sampling): the closed forms equal LM-Polygraph's eigh on the drawn samples."""
    from curation.semantic import answer_matrix

    sample_tokens, loglik, answers, _ = sample_stats(9, n=40, k=6)
    rng = np.random.default_rng(10)
    drawn = rng.random(answers.shape) < 0.7
    drawn[:, 0] = True
    coded = np.where(drawn, answers, -1)
    names = ["semantic_entropy", "semantic_entropy_frequency", "eccentricity", "degree_matrix", "laplacian_eigenvalue_sum", "num_semantic_sets", "sentence_sar"]
    ours = compute_scores(sample_inputs(sample_tokens, coded, None, sampled=drawn), names).values
    for i in range(answers.shape[0]):
        cols = np.flatnonzero(drawn[i])
        sub = answer_matrix(answers[i : i + 1, cols])
        stats = {
            "sample_texts": [[f"s{j}" for j in cols]], "sample_log_probs": [list(loglik[i, cols])],
            "semantic_classes_entail": answer_classes(answers[i : i + 1, cols]), "semantic_matrix_entail": sub,
            "semantic_matrix_contra": 1.0 - sub, "sample_sentence_similarity": sub,
        }
        for name, estimator in (
            ("semantic_entropy", estimators.SemanticEntropy()), ("semantic_entropy_frequency", estimators.SemanticEntropy(class_probability_estimation="frequency")),
            ("eccentricity", estimators.Eccentricity()), ("degree_matrix", estimators.DegMat()), ("laplacian_eigenvalue_sum", estimators.EigValLaplacian()),
            ("num_semantic_sets", estimators.NumSemSets()), ("sentence_sar", estimators.SentenceSAR()),
        ):
            assert abs(ours[name][i] - float(estimator(stats)[0])) <= TOL, (name, i)
