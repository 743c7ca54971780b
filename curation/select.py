"""Select: keep the least uncertain questions within a budget, and say why every other was dropped.

``per_class`` ranks within each *predicted* class (uncertainty scales differ between classes,
Stoisser et al. 2025); ``global`` applies one threshold; ``random`` is the ablation baseline.
Ground-truth labels never enter here, except as the ``incorrect`` mask of a recipe that asks
for SynthPert's answer check (``select.require_correct``). Ranking is by (uncertainty, tie-break metric, id) so the
outcome is deterministic. Fractions keep ceil(fraction * n) rows, so no non-empty class is ever
left with nothing because of rounding.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

from curation.recipe.sections import SelectConfig
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


@dataclass
class Selection:
    kept: np.ndarray  # [n] bool
    drop_reason: np.ndarray  # [n] object: None for kept rows
    budget: dict[str, int]  # rows allowed per class ("*" for global/random)

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
) -> Selection:
    """Choose the kept rows. ``answers`` are predicted classes (None = unparsed)."""
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

    candidates = np.flatnonzero(reason == None)  # noqa: E711
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
    return Selection(kept=kept, drop_reason=reason, budget=budget)
