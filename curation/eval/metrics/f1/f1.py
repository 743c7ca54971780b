"""F1, as the Hub's `evaluate-metric/f1` computes it (scikit-learn's f1_score), shipped for offline use.

Same inputs and outputs as the Hub script: ``compute(predictions, references, labels=None,
pos_label=1, average="binary", sample_weight=None) -> {"f1": float | array}``.
"""

import datasets
import evaluate
from sklearn.metrics import f1_score

_DESCRIPTION = "F1 = 2 * (precision * recall) / (precision + recall), through sklearn.metrics.f1_score."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted labels.
    references (list of int): ground-truth labels.
    labels (list of int): labels to include (and their order when average=None).
    pos_label (int): the positive class for average="binary".
    average (str): "binary", "micro", "macro", "weighted", "samples", or None for one score per label.
    sample_weight (list of float): sample weights.
Returns:
    f1 (float or array of float): the F1 score(s), in [0, 1].
"""
_CITATION = "Pedregosa et al., Scikit-learn: Machine Learning in Python, JMLR 12, 2011."


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class F1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("int32")),
                    "references": datasets.Sequence(datasets.Value("int32")),
                }
                if self.config_name == "multilabel"
                else {
                    "predictions": datasets.Value("int32"),
                    "references": datasets.Value("int32"),
                }
            ),
            reference_urls=["https://scikit-learn.org/stable/modules/generated/sklearn.metrics.f1_score.html"],
        )

    def _compute(self, predictions, references, labels=None, pos_label=1, average="binary", sample_weight=None, zero_division=0.0):
        score = f1_score(
            references, predictions, labels=labels, pos_label=pos_label, average=average, sample_weight=sample_weight, zero_division=zero_division
        )
        return {"f1": float(score) if score.size == 1 else score}
