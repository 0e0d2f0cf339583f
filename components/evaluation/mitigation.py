"""Fairness mitigation by per-group decision thresholds (post-processing).

Thresholds are chosen on one split (eval) and applied to another (test), so the test numbers
show the effect on unseen rows. For each group the threshold is the score above which the
group reaches the target rate, where the target is the overall rate at the base threshold:
  * equal_opportunity: target = overall true positive rate (threshold from the group's
    positives' scores) -> equal TPR across groups;
  * demographic_parity: target = overall selection rate (from all the group's scores).
A group without rows (or, for equal_opportunity, without positives) keeps the base threshold,
as does a group first seen at serving time.
"""
from __future__ import annotations

import numpy as np


def _threshold_for_rate(scores: np.ndarray, rate: float, base: float) -> float:
    """The threshold t such that a fraction `rate` of `scores` is >= t (ties aside)."""
    if scores.size == 0:
        return base
    k = int(round(rate * scores.size))
    if k <= 0:
        return float(np.nextafter(scores.max(), np.inf))
    return float(np.sort(scores)[::-1][min(k, scores.size) - 1])


def choose_group_thresholds(scores: np.ndarray, y: np.ndarray, groups: np.ndarray, names: list[str],
                            objective: str, base: float) -> dict[str, float]:
    """{group name: threshold} equalising TPR or selection rate (see module doc).

    Args:
        scores: P(positive) per row.
        y: 1 for the positive class.
        groups: per row the index into `names`.
        names: group names.
        objective: "equal_opportunity" or "demographic_parity".
        base: the model's decision threshold, the target's reference.
    """
    pred = scores >= base
    if objective == "equal_opportunity":
        target = float(pred[y == 1].mean()) if np.any(y == 1) else 0.0
    elif objective == "demographic_parity":
        target = float(pred.mean()) if pred.size else 0.0
    else:
        raise ValueError(f"unknown mitigation objective {objective!r}")
    out = {}
    for i, name in enumerate(names):
        mask = groups == i
        if objective == "equal_opportunity":
            mask &= y == 1
        out[name] = _threshold_for_rate(scores[mask], target, base)
    return out


def apply_group_thresholds(scores: np.ndarray, group_values: np.ndarray, thresholds: dict[str, float],
                           base: float) -> np.ndarray:
    """Decisions (0/1) with each row's group threshold (the base one for unknown groups)."""
    t = np.array([thresholds.get(v, base) for v in group_values.tolist()], dtype=np.float64) \
        if len(group_values) else np.zeros(0)
    return (scores >= t).astype(np.int8)
