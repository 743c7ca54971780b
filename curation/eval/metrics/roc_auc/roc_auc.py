"""ROC AUC, as the Hub's `evaluate-metric/roc_auc` computes it (scikit-learn), shipped for offline use.

Binary form (the default config): ``compute(references, prediction_scores, average="macro",
sample_weight=None, max_fpr=None) -> {"roc_auc": float}``; references are 0/1, scores are
higher for the positive class.
"""

import datasets
import evaluate
from sklearn.metrics import roc_auc_score

_DESCRIPTION = "Area under the ROC curve, through sklearn.metrics.roc_auc_score (binary)."
_KWARGS_DESCRIPTION = """
Args:
    references (list of int): ground-truth 0/1 labels.
    prediction_scores (list of float): scores, higher meaning the positive class is more likely.
    average (str): passed to roc_auc_score.
    sample_weight (list of float): sample weights.
    max_fpr (float): if given, the standardised partial AUC over [0, max_fpr].
Returns:
    roc_auc (float): in [0, 1]; 0.5 is chance.
"""
_CITATION = "Pedregosa et al., Scikit-learn: Machine Learning in Python, JMLR 12, 2011."


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ROCAUC(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"prediction_scores": datasets.Value("float64"), "references": datasets.Value("int32")}),
            reference_urls=["https://scikit-learn.org/stable/modules/generated/sklearn.metrics.roc_auc_score.html"],
        )

    def _compute(self, references, prediction_scores, average="macro", sample_weight=None, max_fpr=None):
        return {"roc_auc": float(roc_auc_score(references, prediction_scores, average=average, sample_weight=sample_weight, max_fpr=max_fpr))}
