"""Select: keep the least uncertain questions within a budget, and say why every other was dropped.

``per_class`` ranks within each *predicted* class (uncertainty scales differ between classes,
Stoisser et al. 2025); ``global`` applies one threshold; ``random`` is the ablation baseline;
``conformal`` keeps what a false discovery rate level allows, stated from labelled calibration
questions (curation.conformal). Ground-truth labels never enter here, except as the ``incorrect``
mask of a recipe that asks for SynthPert's answer check (``select.require_correct``) and as the
``wrong`` mask of calibration questions (recipe ``calibrate:``), which are never kept themselves. Ranking is by (uncertainty, tie-break metric, id) so the
outcome is deterministic. Fractions keep ceil(fraction * n) rows, so no non-empty class is ever
left with nothing because of rounding.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

from curation import conformal
from curation.recipe.sections import CalibrateConfig, SelectConfig
from curation.types import StageStats

# drop reasons, as datatrove's exclusion writers keep them
GENERATION_FAILED = "generation_failed"
UNPARSED = "unparsed_answer"
UNFINISHED = "unfinished_thinking"  # the kept trace's thinking never closed: it has no answer to read
TRUNCATED = "truncated"
NO_SCORE = "uncertainty_undefined"
OVER_BUDGET = "over_class_budget"
ABOVE_THRESHOLD = "above_global_threshold"
NOT_SAMPLED = "not_in_random_sample"
BELOW_MIN_GRADE = "critic_grade_too_low"
WRONG_ANSWER = "answer_differs_from_label"  # select.require_correct (SynthPert): label-using
CALIBRATION = "calibration_question"  # labelled, held out to state the selection's quality: never published as kept
FITTING = "score_fitting_question"  # labelled, held out to fit the learned score (calibrate.learn)
NOT_DISCOVERED = "above_fdr_threshold"  # conformal: its p-value did not pass Benjamini-Hochberg at the level
TOO_FEW_LABELS = "too_few_calibration_labels"  # conformal: its class has too few calibration questions to keep anything
# the reasons that come before any ranking: calibration questions pass them like the pool, so both are drawn alike
PRE_FILTERS = (GENERATION_FAILED, UNFINISHED, UNPARSED, TRUNCATED, NO_SCORE, BELOW_MIN_GRADE, WRONG_ANSWER)


@dataclass
class Selection:
    kept: np.ndarray  # [n] bool
    drop_reason: np.ndarray  # [n] object: None for kept rows
    budget: dict[str, int]  # rows allowed per class ("*" for global/random; conformal: rows the level allowed)
    statement: dict | None = None  # with calibration questions: what the labels say of the kept (stats.json "quality")

    def drop_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(r for r in self.drop_reason if r is not None).items()))

    def stage(self, seconds: float = 0.0) -> StageStats:
        """The select stage's section of stats.json: questions ranked, kept, and dropped by reason."""
        return StageStats(rows_in=len(self.kept), rows_out=int(self.kept.sum()), dropped=self.drop_counts(), seconds=seconds)


def _budget(size: int, config: SelectConfig, label: str | None) -> int:
    value: float | int | None
    if config.per_class is not None:
        value = config.per_class.get(label) if label is not None else None
        if value is None:
            return 0  # a class the recipe gave no budget keeps nothing
    elif config.fraction is not None:
        value = config.fraction
    else:
        value = config.count
    if isinstance(value, float) and value <= 1.0:
        return min(size, math.ceil(value * size))
    return min(size, int(value))


def class_budget(size: int, config: SelectConfig, label: str | None) -> int:
    """Rows a class of ``size`` candidates may keep (label None: the global or random budget)."""
    return _budget(size, config, label)


def select(
    ids: np.ndarray,
    answers: np.ndarray,
    uncertainty: np.ndarray,
    tiebreak: np.ndarray | None,
    config: SelectConfig,
    *,
    truncated: np.ndarray | None = None,
    failed: np.ndarray | None = None,
    eligible: np.ndarray | None = None,
    ineligible_reason: str = BELOW_MIN_GRADE,
    incorrect: np.ndarray | None = None,
    unfinished: np.ndarray | None = None,
    calibration: np.ndarray | None = None,
    wrong: np.ndarray | None = None,
    calibrate: CalibrateConfig | None = None,
    features: dict[str, np.ndarray] | None = None,
) -> Selection:
    """Choose the kept rows. ``answers`` are predicted classes (None = unparsed).

    ``calibration`` marks labelled calibration questions and ``wrong`` their answers that differ
    from the label; they go through the same pre-filters, then are held out of the selection.
    """
    n = len(ids)
    reason = np.full(n, None, dtype=object)
    # Reasons in order of precedence: the first that applies is the one recorded.
    for mask, why in (
        (failed, GENERATION_FAILED),
        (unfinished, UNFINISHED),
        (np.array([a is None for a in answers], dtype=bool), UNPARSED),
        (truncated if config.drop_truncated else None, TRUNCATED),
        (~np.isfinite(uncertainty), NO_SCORE),
        (None if eligible is None else ~eligible, ineligible_reason),
        (incorrect, WRONG_ANSWER),
    ):
        if mask is not None:
            reason[(reason == None) & mask] = why  # noqa: E711 - elementwise comparison on object array

    passed = reason == None  # noqa: E711
    labelled = passed & (calibration if calibration is not None else np.zeros(n, dtype=bool))
    reason[labelled] = CALIBRATION
    candidates = np.flatnonzero(reason == None)  # noqa: E711
    if config.strategy == "conformal":
        return _conformal(ids, answers, uncertainty, tiebreak, config, calibrate, reason, labelled, wrong, features)
    tie = tiebreak if tiebreak is not None else np.zeros(n)
    tie = np.where(np.isfinite(tie), tie, np.inf)
    kept = np.zeros(n, dtype=bool)
    budget: dict[str, int] = {}

    def rank(rows: np.ndarray) -> np.ndarray:
        # np.lexsort sorts by the last key first
        return rows[np.lexsort((ids[rows].astype(str), tie[rows], uncertainty[rows]))]

    if config.strategy == "per_class":
        classes = sorted({answers[i] for i in candidates})
        for label in classes:
            rows = candidates[np.array([answers[i] == label for i in candidates], dtype=bool)]
            allowed = _budget(len(rows), config, label)
            budget[label] = allowed
            ordered = rank(rows)
            kept[ordered[:allowed]] = True
            reason[ordered[allowed:]] = OVER_BUDGET
    elif config.strategy == "global":
        allowed = _budget(len(candidates), config, None)
        budget["*"] = allowed
        ordered = rank(candidates)
        kept[ordered[:allowed]] = True
        reason[ordered[allowed:]] = ABOVE_THRESHOLD
    else:  # random baseline: same budget, no uncertainty
        allowed = _budget(len(candidates), config, None)
        budget["*"] = allowed
        chosen = np.random.default_rng(config.seed).permutation(np.sort(candidates))[:allowed] if len(candidates) else candidates
        kept[chosen] = True
        reason[np.setdiff1d(candidates, chosen)] = NOT_SAMPLED
    statement = None
    if labelled.any():
        statement = budget_statement(conformal.order_scores(uncertainty, tiebreak), answers, kept, labelled, wrong, config.strategy)
    return Selection(kept=kept, drop_reason=reason, budget=budget, statement=statement)


def budget_statement(scores: np.ndarray, answers: np.ndarray, kept: np.ndarray, labelled: np.ndarray, wrong: np.ndarray, strategy: str) -> dict:
    """A budget selection with calibration questions: what the labels measure, with no guarantee.

    Per class, the calibration AUROC of the selection metric and the right share of the calibration
    questions that rank at or below the class's last kept row (for ``global``/``random``, over all classes).
    """
    per_class = {}
    groups = sorted({answers[i] for i in np.flatnonzero(labelled | kept)}) if strategy == "per_class" else ["*"]
    for label in groups:
        in_group = np.array([a == label for a in answers], dtype=bool) if label != "*" else np.ones(len(answers), dtype=bool)
        cal_rows = np.flatnonzero(labelled & in_group)
        entry = {"calibration": len(cal_rows), "calibration_wrong": int(wrong[cal_rows].sum()), "kept": int((kept & in_group).sum()),
                 "calibration_auroc": conformal.auroc_with_interval(scores[cal_rows], wrong[cal_rows])}
        kept_scores = scores[kept & in_group]
        below = cal_rows[scores[cal_rows] <= kept_scores.max()] if len(kept_scores) and strategy != "random" else cal_rows[:0]
        entry["kept_calibration_rows"] = len(below)
        entry["kept_calibration_accuracy"] = round(float(1 - wrong[below].mean()), 4) if len(below) else None
        per_class[str(label)] = entry
    cal_rows = np.flatnonzero(labelled)
    return {"guarantee": None, "labels": {"calibration": int(labelled.sum())}, "per_class": per_class,
            "calibration_auroc": conformal.auroc_with_interval(scores[cal_rows], wrong[cal_rows])}


def _conformal(ids, answers, uncertainty, tiebreak, config: SelectConfig, calibrate: CalibrateConfig | None, reason, labelled, wrong, features) -> Selection:
    """BH on conformal p-values per predicted class (curation.conformal), with the recipe's metric or the learned score."""
    n = len(ids)
    wrong = np.zeros(n, dtype=bool) if wrong is None else np.asarray(wrong, dtype=bool)
    scores = conformal.order_scores(uncertainty, tiebreak)
    calibrating, learned = labelled, None
    if calibrate is not None and calibrate.learn:
        fit = conformal.fit_split(ids, labelled, calibrate.fit_fraction, calibrate.seed)
        reason[fit] = FITTING
        calibrating = labelled & ~fit
        learned = _choose_score(scores, fit, wrong, features or {}, calibrate.seed)
        if learned["used"]:
            scores = learned.pop("model").predict(features)
        learned.pop("model", None)
    pool = reason == None  # noqa: E711
    kept, starved, statements = conformal.select_by_class(scores, answers, pool, calibrating, wrong, config.fdr, config.scope)
    conformal.describe(statements, scores, answers, calibrating, wrong)
    reason[pool & starved] = TOO_FEW_LABELS
    reason[pool & ~kept & ~starved] = NOT_DISCOVERED
    statement = {
        "guarantee": {"fdr": config.fdr, "scope": config.scope, "score": conformal.LEARNED if learned and learned["used"] else "metric"},
        "labels": {"calibration": int(calibrating.sum()), **({"fitting": int((labelled & ~calibrating).sum())} if learned else {})},
        "per_class": {s.label: s.to_json() for s in statements},
        "min_calibration_per_class": conformal.min_calibration(statements[0].level if statements else config.fdr),
        "calibration_auroc": conformal.auroc_with_interval(scores[calibrating], wrong[calibrating]),
        **({"learned": learned} if learned else {}),
    }
    return Selection(kept=kept, drop_reason=reason, budget={s.label: s.kept for s in statements}, statement=statement)


def _choose_score(metric_scores: np.ndarray, fit: np.ndarray, wrong: np.ndarray, features: dict[str, np.ndarray], seed: int) -> dict:
    """Fit the learned score on the fitting part, and use it only if it out-ranks the metric there (cross-validated)."""
    on_fit = {name: np.asarray(values)[fit] for name, values in features.items()}
    metric_auroc = conformal.auroc(metric_scores[fit], wrong[fit])
    cv_auroc = conformal.cross_validated_auroc(on_fit, wrong[fit], seed) if features else None
    model = conformal.fit_learned(on_fit, wrong[fit], seed) if cv_auroc is not None else None
    used = model is not None and metric_auroc is not None and cv_auroc > metric_auroc
    decision = {"used": used, "fitting_metric_auroc": metric_auroc, "fitting_cv_auroc": cv_auroc, "model": model}
    if model is not None:
        decision["fit"] = model.to_json()
    if model is None:
        decision["why_not"] = "the fitting part needs right and wrong answers (at least 2 of each) and a finite input"
    elif metric_auroc is None:
        decision["why_not"] = "the recipe's metric has no AUROC on the fitting part to compare with"
    return decision


def quality_statement(selection: Selection, scores: np.ndarray, labels: np.ndarray | None, answers: np.ndarray) -> dict:
    """What stats.json and the card may say of the kept traces' quality: only what labels measured.

    With calibration questions, the selection's own statement. Without, the quality is unmeasured,
    and the statement says how many labels a conformal selection would need; where the source carries
    labels (for evaluation), the selection metric's AUROC over every ranked question is the check
    behind the at-chance warning.
    """
    if selection.statement is not None:
        quality = {"measured": True, **selection.statement}
    else:
        quality = {"measured": False, "labels_needed_per_class": {str(level): conformal.min_calibration(level) for level in (0.1, 0.2, 0.3)}}
    if labels is not None:
        ranked = np.array([r is None or r not in PRE_FILTERS for r in selection.drop_reason], dtype=bool)
        ranked &= np.array([lab is not None for lab in labels], dtype=bool)
        if selection.statement is not None:  # the calibration questions are what measures a calibrated run
            ranked &= np.array([r in (CALIBRATION,) for r in selection.drop_reason], dtype=bool)
        rows = np.flatnonzero(ranked)
        wrong = np.array([answers[i] != labels[i] for i in rows], dtype=bool)
        check = conformal.auroc_with_interval(scores[rows], wrong)
        check["at_chance"] = conformal.at_chance(check)
        quality["selection_metric_check"] = check
    return quality
