"""Classification scores through the `evaluate` library, and the one definition of a correct answer.

``evaluate`` 0.4.6 ships no metric scripts: ``evaluate.load("f1")`` downloads one from the Hub at
run time and fails offline. :func:`load_metric` asks the Hub first only when the Hub may be
reachable (``HF_HUB_OFFLINE``/``HF_EVALUATE_OFFLINE`` unset, and a TCP connection to the
endpoint opens within a second); otherwise, or when that load fails, it loads the script shipped
in ``metrics/`` beside this module (``f1/f1.py``, ``accuracy/accuracy.py``, ``roc_auc/roc_auc.py``),
which computes the same numbers with scikit-learn and takes the same arguments.

:func:`is_correct` is what every report (`curate eval`, `curate eval --model`, the studies) counts
as a right answer, so that their accuracies agree.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import warnings
from pathlib import Path
from typing import Sequence
from urllib.parse import urlparse

import numpy as np

log = logging.getLogger(__name__)

# the metric scripts are data for `evaluate.load`, not modules of this package
HERE = Path(__file__).parent / "metrics"
LOCAL_METRICS = tuple(sorted(p.name for p in HERE.iterdir() if (p / f"{p.name}.py").is_file()))
_TRUE = {"1", "ON", "YES", "TRUE"}
PROBE_TIMEOUT_S = 1.0


def is_correct(answer, label) -> bool:
    """A parsed answer equal to a ground-truth label (compared as text: a CSV label may read back as a number)."""
    return answer is not None and label is not None and str(answer) == str(label)


def local_path(name: str) -> str:
    script = HERE / name / f"{name}.py"
    if not script.is_file():
        raise FileNotFoundError(f"no local evaluation module {name!r}; shipped: {', '.join(LOCAL_METRICS)}")
    return str(script)


def hub_may_be_reachable() -> bool:
    """False when offline mode is set or the endpoint does not answer a TCP connect quickly."""
    if any(os.environ.get(var, "").upper() in _TRUE for var in ("HF_HUB_OFFLINE", "HF_EVALUATE_OFFLINE", "HF_DATASETS_OFFLINE")):
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname, port), timeout=PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


@functools.lru_cache(maxsize=None)
def load_metric(name: str, prefer_local: bool = False):
    """``evaluate.load(name)``: the Hub's module when reachable, else the one shipped here.

    The returned module records where it came from in ``.curate_source`` ("hub" or "local").
    """
    import evaluate

    use_hub = not prefer_local and (name not in LOCAL_METRICS or hub_may_be_reachable())
    if use_hub:
        try:
            module = evaluate.load(name, keep_in_memory=True)
            module.curate_source = "hub"
            return module
        except Exception as exc:  # noqa: BLE001 - any Hub failure falls back to the shipped script
            if name not in LOCAL_METRICS:
                raise
            log.info("evaluate.load(%r) failed (%s); using the shipped module", name, exc)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = evaluate.load(local_path(name), keep_in_memory=True)
    module.curate_source = "local"
    return module


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
