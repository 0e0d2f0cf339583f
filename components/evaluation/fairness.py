"""Group fairness metrics with bootstrap confidence intervals, vectorised with numpy.

Tasks (models/tasks/) choose what they report: binary classifiers the confusion-count rates
below (`group_fairness`), other tasks per-group ratio metrics such as accuracy, per-class
recall, MAE or the mean residual (`ratio_fairness`).

Binary definitions are fairlearn's (fairlearn.metrics, method="between_groups"):
  * per group: selection rate P(yhat=1), TPR P(yhat=1|y=1), FPR P(yhat=1|y=0), FNR = 1 - TPR,
    precision P(y=1|yhat=1);
  * demographic_parity_difference = max - min selection rate over groups;
  * demographic_parity_ratio = min / max selection rate;
  * equal_opportunity_difference = max - min TPR;
  * equalized_odds_difference = max(TPR difference, FPR difference) (agg="worst_case").
fairlearn is only a test dependency: tests/components/test_evaluate.py checks these against it.

Everything is computed from a (groups x 4) table of confusion counts [tn, fp, fn, tp]. The
bootstrap draws all resamples' row indices at once and turns them into a (resamples x groups x 4)
count table with one bincount, so 200 resamples of 16k rows take milliseconds, not minutes.
A rate whose denominator is empty (a group without positives in a resample) is NaN and that
group is left out of that resample's gap.
"""
from __future__ import annotations

import warnings

import numpy as np

GAPS = ("demographic_parity_difference", "demographic_parity_ratio",
        "equalized_odds_difference", "equal_opportunity_difference")


def _cell(groups: np.ndarray, y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Cell index group * 4 + (2 * y + pred): 0 tn, 1 fp, 2 fn, 3 tp."""
    return groups.astype(np.int64) * 4 + 2 * y.astype(np.int64) + pred.astype(np.int64)


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)


def rates(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Per-group rates from counts [..., groups, 4] (any leading axes, e.g. resamples)."""
    tn, fp, fn, tp = (counts[..., i].astype(np.float64) for i in range(4))
    tpr = _div(tp, tp + fn)
    return {"selection_rate": _div(tp + fp, tn + fp + fn + tp), "tpr": tpr, "fpr": _div(fp, fp + tn),
            "fnr": 1.0 - tpr, "precision": _div(tp, tp + fp)}


def _spread(x: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmax(x, axis=-1) - np.nanmin(x, axis=-1)


def gaps(r: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Across-group gaps (fairlearn's definitions) from rates with groups on the last axis."""
    sel = r["selection_rate"]
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        lo, hi = np.nanmin(sel, axis=-1), np.nanmax(sel, axis=-1)
        ratio = np.where(hi > 0, lo / np.where(hi > 0, hi, 1), np.nan)
    tpr_gap = _spread(r["tpr"])
    return {"demographic_parity_difference": hi - lo, "demographic_parity_ratio": ratio,
            "equalized_odds_difference": np.fmax(tpr_gap, _spread(r["fpr"])),
            "equal_opportunity_difference": tpr_gap}


def bootstrap_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) row indices drawn with replacement; shared by every feature so the
    intervals of different features come from the same resamples."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, n, size=(resamples, n), dtype=np.int32 if n < 2**31 else np.int64)


def group_fairness(groups: np.ndarray, names: list[str], y: np.ndarray, pred: np.ndarray,
                   boot: np.ndarray | None, confidence: float) -> dict:
    """Per-group rates and across-group gaps of one sensitive feature, with bootstrap CIs.

    Args:
        groups: per row the group index into `names`.
        names: group names.
        y: 1 for the positive class.
        pred: the decisions (0/1).
        boot: (resamples, n) indices from `bootstrap_indices`, or None for no intervals.
        confidence: interval mass, e.g. 0.95 -> 2.5th and 97.5th percentiles.

    Returns:
        {"groups": {name: {count, positives, selection_rate, tpr, fpr, fnr, precision}},
         "gaps": {metric: {"value", "lower", "upper"}}, "resamples": int}
    """
    g = len(names)
    cells = _cell(groups, y, pred)
    counts = np.bincount(cells, minlength=4 * g).reshape(g, 4)
    point_rates = rates(counts)
    point = gaps(point_rates)
    out_groups = {}
    for i, name in enumerate(names):
        row = {"count": int(counts[i].sum()), "positives": int(counts[i, 2] + counts[i, 3])}
        row.update({k: _num(v[i]) for k, v in point_rates.items()})
        out_groups[name] = row
    result = {"groups": out_groups, "resamples": 0,
              "gaps": {k: {"value": _num(v), "lower": None, "upper": None} for k, v in point.items()}}
    if boot is not None and len(boot):
        r = boot.shape[0]
        # One bincount over (resample, cell): offsets keep each resample's cells apart.
        offs = (np.arange(r, dtype=np.int64) * 4 * g)[:, None]
        rc = np.bincount((cells[boot] + offs).ravel(), minlength=r * 4 * g).reshape(r, g, 4)
        dist = gaps(rates(rc))
        _add_intervals(result, dist, confidence)
        result["resamples"] = int(r)
    return result


def _add_intervals(result: dict, dist: dict, confidence: float) -> None:
    """Percentile bootstrap interval of each gap from its resampled values (non-finite ones dropped)."""
    alpha = (1.0 - confidence) / 2
    for k, v in dist.items():
        v = v[np.isfinite(v)]
        if v.size:
            lo, hi = np.quantile(v, [alpha, 1 - alpha])
            result["gaps"][k].update(lower=float(lo), upper=float(hi))


def _num(v) -> float | None:
    v = float(v)
    return v if np.isfinite(v) else None


def ratio_fairness(groups: np.ndarray, names: list[str], ratios: dict[str, tuple[np.ndarray, np.ndarray]],
                   gap_of: dict[str, tuple[str, ...]], boot: np.ndarray | None, confidence: float) -> dict:
    """Per-group metrics that are ratios of per-row sums, their across-group gaps, bootstrap CIs.

    Accuracy (correct / rows), the recall of one class (correct and of the class / of the class),
    MAE (|error| / rows) and the mean residual (error / rows) are all such ratios, so one weighted
    bincount per metric gives every group's value, and one more over (resample, group) cells
    gives every resample's.

    Args:
        groups: per row the group index into `names`.
        names: group names.
        ratios: metric -> (numerator per row, denominator per row).
        gap_of: gap name -> the metrics it covers; the gap is max - min over groups, and over
            several metrics the worst of them (as equalized odds takes the worse of TPR and FPR).
        boot: (resamples, n) indices from `bootstrap_indices`, or None for no intervals.
        confidence: interval mass, e.g. 0.95 -> 2.5th and 97.5th percentiles.

    Returns:
        {"groups": {name: {"count", metric...}}, "gaps": {gap: {"value", "lower", "upper"}},
         "resamples": int}
    """
    g = len(names)
    groups = groups.astype(np.int64)

    def per_group(cells: np.ndarray, rows: np.ndarray | slice, size: int) -> dict[str, np.ndarray]:
        return {m: _div(np.bincount(cells, weights=num[rows].ravel(), minlength=size),
                        np.bincount(cells, weights=den[rows].ravel(), minlength=size))
                for m, (num, den) in ratios.items()}

    def gaps_of(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return {gap: np.nanmax(np.stack([_spread(values[m]) for m in metrics]), axis=0)
                    for gap, metrics in gap_of.items()}

    point = per_group(groups, slice(None), g)
    counts = np.bincount(groups, minlength=g)
    result = {"groups": {name: {"count": int(counts[i]), **{m: _num(v[i]) for m, v in point.items()}}
                         for i, name in enumerate(names)},
              "gaps": {k: {"value": _num(v), "lower": None, "upper": None} for k, v in gaps_of(point).items()},
              "resamples": 0}
    if boot is not None and len(boot):
        r = boot.shape[0]
        cells = (groups[boot] + (np.arange(r, dtype=np.int64) * g)[:, None]).ravel()
        dist = gaps_of({m: v.reshape(r, g) for m, v in per_group(cells, boot, r * g).items()})
        _add_intervals(result, dist, confidence)
        result["resamples"] = int(r)
    return result
