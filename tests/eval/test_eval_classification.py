"""classification_scores and the shipped `evaluate` modules (offline)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from curation.eval.classification import LOCAL_METRICS, classification_scores, load_metric

LABELS = ["upregulated", "downregulated", "not differentially expressed"]


def test_shipped_modules_are_found():
    assert {"f1", "accuracy", "roc_auc"} <= set(LOCAL_METRICS)


def test_modules_load_offline_and_match_sklearn():
    rng = np.random.default_rng(0)
    refs = rng.integers(0, 3, 50)
    preds = rng.integers(0, 3, 50)
    f1 = load_metric("f1")
    assert f1.curate_source == "local"
    assert np.allclose(f1.compute(predictions=preds, references=refs, average=None)["f1"], f1_score(refs, preds, average=None))
    assert load_metric("accuracy").compute(predictions=preds, references=refs)["accuracy"] == pytest.approx(accuracy_score(refs, preds))
    scores = rng.random(50)
    binary = (refs == 0).astype(int)
    from sklearn.metrics import roc_auc_score

    assert load_metric("roc_auc").compute(references=binary, prediction_scores=scores)["roc_auc"] == pytest.approx(roc_auc_score(binary, scores))


def test_classification_scores_hand_computed():
    refs = ["upregulated", "downregulated", "not differentially expressed", "upregulated", None]
    preds = ["upregulated", "not differentially expressed", "not differentially expressed", None, "upregulated"]
    out = classification_scores(refs, preds, LABELS)
    assert out["n"] == 4  # the unlabelled row is left out
    assert out["unparsed"] == 1
    assert out["accuracy"] == pytest.approx(2 / 4)
    # up: tp 1, fn 1, fp 0 -> 2/3; down: tp 0 -> 0; none: tp 1, fp 1 -> 2/3
    assert out["f1_per_class"] == pytest.approx({"upregulated": 2 / 3, "downregulated": 0.0, "not differentially expressed": 2 / 3})
    assert out["macro_f1"] == pytest.approx(4 / 9)
    assert out["support"] == {"upregulated": 2, "downregulated": 1, "not differentially expressed": 1}


def test_absent_class_has_no_f1_and_leaves_macro():
    out = classification_scores(["upregulated"], ["upregulated"], LABELS)
    assert out["f1_per_class"]["downregulated"] is None
    assert out["macro_f1"] == 1.0


def test_no_labels():
    out = classification_scores([None, None], ["upregulated", None], LABELS)
    assert out["n"] == 0 and out["accuracy"] is None and out["macro_f1"] is None
