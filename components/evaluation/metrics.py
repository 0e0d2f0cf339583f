"""Model quality metrics as vectorised numpy: classification, regression, curves, slices.

Definitions follow scikit-learn (ROC AUC by the trapezoid over distinct thresholds, PR AUC as
average precision, log loss with probabilities clipped to [eps, 1 - eps]); expected calibration
error uses equal-width bins of the predicted probability. No TensorFlow here: evaluate scores
the model once and every number below is computed from the resulting arrays.
"""
from __future__ import annotations

import math

import numpy as np

EPS = 1e-15


def _curve_counts(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(true positives, false positives, threshold) at each distinct score, highest first."""
    order = np.argsort(-score, kind="mergesort")
    s, t = score[order], y[order].astype(np.float64)
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # last index of each distinct score
    tps = np.cumsum(t)[last]
    fps = (last + 1) - tps
    return tps, fps, s[last]


def roc_auc(y: np.ndarray, score: np.ndarray) -> float | None:
    """Area under the ROC curve; None when only one class is present."""
    pos = int(y.sum())
    if pos == 0 or pos == len(y):
        return None
    tps, fps, _ = _curve_counts(y, score)
    tpr, fpr = np.r_[0.0, tps / pos], np.r_[0.0, fps / (len(y) - pos)]
    return float(np.trapezoid(tpr, fpr))


def average_precision(y: np.ndarray, score: np.ndarray) -> float | None:
    """PR AUC as average precision: sum over thresholds of (R_n - R_{n-1}) * P_n."""
    pos = int(y.sum())
    if pos == 0:
        return None
    tps, fps, _ = _curve_counts(y, score)
    precision, recall = tps / (tps + fps), tps / pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def roc_points(y: np.ndarray, score: np.ndarray, max_points: int = 200) -> dict[str, list[float]]:
    """ROC curve (fpr, tpr), thinned to about max_points for the report."""
    pos = int(y.sum())
    if pos == 0 or pos == len(y):
        return {"fpr": [], "tpr": []}
    tps, fps, _ = _curve_counts(y, score)
    fpr, tpr = np.r_[0.0, fps / (len(y) - pos)], np.r_[0.0, tps / pos]
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(len(fpr), max_points)).astype(int))
    return {"fpr": [round(float(v), 5) for v in fpr[keep]], "tpr": [round(float(v), 5) for v in tpr[keep]]}


def calibration(y: np.ndarray, prob: np.ndarray, bins: int) -> dict:
    """Equal-width reliability bins and the expected calibration error.

    ECE = sum_b (n_b / N) * |mean(y in b) - mean(p in b)|.
    """
    b = np.minimum((prob * bins).astype(int), bins - 1)
    n = np.bincount(b, minlength=bins).astype(np.float64)
    conf = np.bincount(b, weights=prob, minlength=bins)
    acc = np.bincount(b, weights=y.astype(np.float64), minlength=bins)
    filled = n > 0
    mean_p = np.where(filled, conf / np.maximum(n, 1), np.nan)
    frac_pos = np.where(filled, acc / np.maximum(n, 1), np.nan)
    ece = float(np.sum(n[filled] / n.sum() * np.abs(frac_pos[filled] - mean_p[filled]))) if n.sum() else None
    return {"ece": ece, "bins": [{"mean_predicted": round(float(p), 5), "fraction_positive": round(float(f), 5),
                                  "count": int(c)} for p, f, c in zip(mean_p[filled], frac_pos[filled], n[filled])]}


def confusion(y: np.ndarray, pred: np.ndarray) -> dict[str, int]:
    """Binary confusion counts."""
    y, pred = y.astype(bool), pred.astype(bool)
    tp = int(np.sum(y & pred))
    fp = int(np.sum(~y & pred))
    fn = int(np.sum(y & ~pred))
    return {"tn": int(len(y)) - tp - fp - fn, "fp": fp, "fn": fn, "tp": tp}


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def binary_metrics(y: np.ndarray, prob: np.ndarray, pred: np.ndarray, bins: int = 10,
                   confusion_thresholds: tuple[float, ...] = ()) -> dict:
    """Metrics of a binary classifier.

    Args:
        y: 1 for the positive class, 0 otherwise.
        prob: P(positive).
        pred: the decisions (0/1) whose accuracy, precision and recall are reported.
        bins: calibration bins.
        confusion_thresholds: extra thresholds on prob with a confusion matrix each.
    """
    y = y.astype(np.int8)
    cm = confusion(y, pred)
    n = len(y)
    p = np.clip(prob.astype(np.float64), EPS, 1 - EPS)
    out = {
        "count": n,
        "positives": int(y.sum()),
        "accuracy": _ratio(cm["tp"] + cm["tn"], n),
        "precision": _ratio(cm["tp"], cm["tp"] + cm["fp"]),
        "recall": _ratio(cm["tp"], cm["tp"] + cm["fn"]),
        "auc": roc_auc(y, prob),
        "pr_auc": average_precision(y, prob),
        "log_loss": float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))) if n else None,
        "ece": calibration(y, prob, bins)["ece"] if n else None,
        "confusion": cm,
    }
    if confusion_thresholds:
        out["confusion_at"] = {str(t): confusion(y, prob >= t) for t in confusion_thresholds}
    return out


def multiclass_metrics(y_id: np.ndarray, probs: np.ndarray, bins: int = 10,
                       classes: list[str] | None = None) -> dict:
    """Accuracy, macro precision/recall, log loss, top-label calibration error and, with
    `classes`, per-class precision/recall and the confusion matrix (true -> predicted -> count)."""
    n, c = probs.shape
    pred = probs.argmax(axis=1)
    p_true = np.clip(probs[np.arange(n), y_id], EPS, 1.0)
    prec, rec, per_class = [], [], {}
    for k in range(c):
        tp = np.sum((pred == k) & (y_id == k))
        predicted, actual = int(np.sum(pred == k)), int(np.sum(y_id == k))
        if predicted:
            prec.append(tp / predicted)
        if actual:
            rec.append(tp / actual)
        if classes is not None:
            per_class[classes[k]] = {"count": actual, "precision": float(tp / predicted) if predicted else None,
                                     "recall": float(tp / actual) if actual else None}
    top = probs.max(axis=1)
    out = {"count": int(n), "accuracy": float(np.mean(pred == y_id)) if n else None,
           "precision": float(np.mean(prec)) if prec else None, "recall": float(np.mean(rec)) if rec else None,
           "log_loss": float(-np.mean(np.log(p_true))) if n else None,
           "ece": calibration((pred == y_id).astype(np.int8), top, bins)["ece"] if n else None}
    if classes is not None:
        matrix = np.bincount(y_id * c + pred, minlength=c * c).reshape(c, c)
        out["per_class"] = per_class
        out["confusion"] = {classes[i]: {classes[j]: int(matrix[i, j]) for j in range(c)} for i in range(c)}
    return out


def regression_metrics(y: np.ndarray, pred: np.ndarray, reference: float | None = None) -> dict:
    """MAE, RMSE, R2 (None when the labels are constant) and the mean predictor's RMSE.

    Args:
        y: true values.
        pred: predicted values.
        reference: the mean predictor's constant (the train label mean); default the mean of `y`.

    `rmse_reduction` = 1 - rmse / mean_predictor_rmse: the fraction of the constant predictor's
    error the model removes.
    """
    y, pred = y.astype(np.float64), pred.astype(np.float64)
    err = pred - y
    n = len(y)
    ss_tot = float(np.sum((y - y.mean()) ** 2)) if n else 0.0
    rmse = float(np.sqrt(np.mean(err ** 2))) if n else None
    const = float(y.mean()) if reference is None and n else reference
    base = float(np.sqrt(np.mean((y - const) ** 2))) if n else None
    return {"count": int(n), "mae": float(np.mean(np.abs(err))) if n else None, "rmse": rmse,
            "r2": 1.0 - float(np.sum(err ** 2)) / ss_tot if ss_tot else None,
            "mean_residual": float(np.mean(err)) if n else None,
            "mean_predictor_rmse": base, "rmse_reduction": 1.0 - rmse / base if base else None}


# ---------------------------------------------------------------------------- slices
def _fmt(v: float) -> str:
    return f"{v:.4g}" if math.isfinite(v) else str(v)


def bucketize(values: np.ndarray, buckets: int) -> np.ndarray:
    """Quantile buckets of a numeric column as labels "[lo, hi)"; missing (NaN) as "missing"."""
    v = values.astype(np.float64)
    finite = v[np.isfinite(v)]
    if finite.size == 0:
        return np.full(len(v), "missing", dtype=object)
    edges = np.unique(np.quantile(finite, np.linspace(0, 1, buckets + 1)))
    if len(edges) == 1:
        return np.where(np.isfinite(v), f"[{_fmt(edges[0])}, {_fmt(edges[0])}]", "missing").astype(object)
    idx = np.clip(np.searchsorted(edges, v, side="right") - 1, 0, len(edges) - 2)
    labels = np.array([f"[{_fmt(edges[i])}, {_fmt(edges[i + 1])}" + ("]" if i == len(edges) - 2 else ")")
                       for i in range(len(edges) - 1)], dtype=object)
    return np.where(np.isfinite(v), labels[idx], "missing").astype(object)


def slice_values(frame: dict[str, np.ndarray], features: tuple[str, ...], numeric: set[str],
                 buckets: int) -> np.ndarray:
    """Per row the slice value of `features` (crossed with " | ", numeric ones bucketed)."""
    parts = [bucketize(frame[f], buckets) if f in numeric else frame[f].astype(object) for f in features]
    if len(parts) == 1:
        return parts[0]
    out = parts[0].astype(str).astype(object)
    for p in parts[1:]:
        out = out + " | " + p.astype(str).astype(object)
    return out


def slice_name(features: tuple[str, ...]) -> str:
    return " x ".join(features)
