"""Evaluation: how well each uncertainty metric separates right answers from wrong ones.

Labels are used here and only here: selection never sees them (label-free filtering).
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np


# --------------------------------------------------------------------------- classification
def classification_scores(references: Sequence, predictions: Sequence, labels: Sequence[str]) -> dict:
    """Accuracy, F1 per class and macro-F1 of ``predictions`` against ``references``, through `evaluate`.

    ``references`` and ``predictions`` are class names; ``labels`` lists the classes (their order is
    the order of ``f1_per_class``). Rows whose reference is None (no ground truth) are left out.
    A prediction that is None or not in ``labels`` (an unparsed answer) counts as wrong.
    A class with neither support nor predictions has no F1 (None) and is left out of macro-F1,
    as scikit-learn does when it infers the labels; a class that was predicted but never true
    (or the reverse) scores 0 and counts. Macro-F1 is the unweighted mean over the scored classes.

    Returns ``{"n", "accuracy", "macro_f1", "f1_per_class": {label: f1}, "support": {label: n},
    "unparsed", "source"}`` where ``source`` says whether the Hub's or the shipped `evaluate`
    modules computed it. With no labelled rows every score is None.
    """
    from curation.eval_metrics import load_metric

    labels = [str(label) for label in labels]
    code = {label: i for i, label in enumerate(labels)}
    pairs = [(r, p) for r, p in zip(references, predictions, strict=True) if r is not None]
    refs = np.array([code.get(str(r), -1) for r, _ in pairs], dtype=np.int64)
    preds = np.array([code.get(str(p), -1) if p is not None else -1 for _, p in pairs], dtype=np.int64)
    support = {label: int((refs == i).sum()) for i, label in enumerate(labels)}
    result: dict = {"n": len(pairs), "accuracy": None, "macro_f1": None, "f1_per_class": {label: None for label in labels}, "support": support}
    result["unparsed"] = int(sum(p is None for _, p in pairs))
    if not pairs or not labels:
        result["source"] = None
        return result
    accuracy = load_metric("accuracy")
    f1 = load_metric("f1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # UndefinedMetricWarning for classes absent from a subset: scored 0, documented
        result["accuracy"] = float(accuracy.compute(predictions=preds, references=refs)["accuracy"])
        per_class = np.atleast_1d(f1.compute(predictions=preds, references=refs, labels=list(range(len(labels))), average=None)["f1"])
    seen = np.array([support[label] > 0 or bool((preds == i).any()) for i, label in enumerate(labels)])
    result["f1_per_class"] = {label: float(v) if s else None for label, v, s in zip(labels, per_class, seen)}
    result["macro_f1"] = float(np.mean(per_class[seen])) if seen.any() else None
    result["source"] = f1.curate_source
    return result
