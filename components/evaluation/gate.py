"""The blessing: every configured threshold turned into a check with its value, bound and verdict.

A check is a dict {kind, name, metric, slice/feature, value, bound, threshold, threshold_text,
passed, note}; `value` is the point estimate, `bound` the confidence bound when there is one
(fairness) or the baseline's value (change checks). The model is blessed when every check passes.
"""
from __future__ import annotations

from kfx.pipeline.config_evaluation import LOWER_IS_BETTER


def _within(x: float, lo: float | None, hi: float | None) -> bool:
    return (lo is None or x >= lo) and (hi is None or x <= hi)


def _range_text(lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None:
        return f"in [{lo}, {hi}]"
    return f">= {lo}" if lo is not None else f"<= {hi}"


def _check(kind: str, name: str, value, threshold: dict, passed: bool, text: str, bound=None,
           note: str = "", **extra) -> dict:
    return {"kind": kind, "name": name, "value": value, "bound": bound, "threshold": threshold,
            "threshold_text": text, "passed": bool(passed), "note": note, **extra}


def value_checks(gate, overall: dict) -> list[dict]:
    out = []
    for t in gate.value:
        v = overall.get(t.metric)
        text = _range_text(t.min, t.max)
        ok = v is not None and _within(v, t.min, t.max)
        out.append(_check("value", f"{t.metric} {text}", v, {"min": t.min, "max": t.max}, ok, text,
                          note="" if v is not None else f"{t.metric} is undefined for this model/split",
                          metric=t.metric))
    return out


def change_checks(gate, overall: dict, baseline: dict | None) -> list[dict]:
    """Candidate vs baseline; with no baseline every change check passes and says why."""
    out = []
    for t in gate.change:
        worse = "higher" if t.metric in LOWER_IS_BETTER else "lower"
        text = f"worsening <= {t.max_worsening}{' (relative)' if t.relative else ''}"
        name = f"{t.metric} no worse than baseline ({text})"
        cand = overall.get(t.metric)
        if baseline is None:
            out.append(_check("change", name, cand, {"max_worsening": t.max_worsening, "relative": t.relative},
                              True, text, note="no baseline (no model pushed yet): nothing to compare with",
                              metric=t.metric))
            continue
        base = baseline.get(t.metric)
        if cand is None or base is None:
            out.append(_check("change", name, cand, {"max_worsening": t.max_worsening}, False, text, base,
                              note=f"{t.metric} undefined for the candidate or the baseline", metric=t.metric))
            continue
        # Worsening is positive when the candidate is worse, whatever the metric's direction.
        worsening = (cand - base) if t.metric in LOWER_IS_BETTER else (base - cand)
        allowed = t.max_worsening * abs(base) if t.relative else t.max_worsening
        out.append(_check("change", name, cand, {"max_worsening": t.max_worsening, "relative": t.relative},
                          worsening <= allowed + 1e-12, text, base,
                          note=f"baseline {base:.4f}, candidate {cand:.4f} ({worse} is worse)",
                          metric=t.metric, worsening=worsening))
    return out


def slice_checks(gate, slices: list[dict], min_slice_size: int) -> list[dict]:
    """Per-slice thresholds on every slice of the named feature list with enough rows."""
    out = []
    by_features = {tuple(s["features"]): s for s in slices}
    for t in gate.slices:
        spec = by_features.get(tuple(t.slice))
        text = _range_text(t.min, t.max)
        if spec is None:
            out.append(_check("slice", f"{t.metric} {text} on slices {' x '.join(t.slice)}", None,
                              {"min": t.min, "max": t.max}, False, text,
                              note=f"slice {list(t.slice)} is not in evaluate.slices", metric=t.metric))
            continue
        for v in spec["values"]:
            if not v["gated"]:
                continue  # reported, not gated: fewer rows than min_slice_size
            value = v["metrics"].get(t.metric)
            name = f"{t.metric} {text} on {spec['name']} = {v['value']}"
            if value is None:
                out.append(_check("slice", name, None, {"min": t.min, "max": t.max}, True, text,
                                  note=f"{t.metric} undefined on this slice (one class only?): not gated",
                                  metric=t.metric, slice=spec["name"], slice_value=v["value"]))
                continue
            out.append(_check("slice", name, value, {"min": t.min, "max": t.max}, _within(value, t.min, t.max), text,
                              metric=t.metric, slice=spec["name"], slice_value=v["value"]))
    return out


def fairness_checks(gate, fairness: dict, confidence: float) -> list[dict]:
    """Fairness thresholds, on the point estimate or on the bootstrap bound (upper for a max,
    lower for a min: the check passes only if we are confident the gap is within bounds)."""
    out = []
    for t in gate.fairness:
        features = [t.feature] if t.feature else list(fairness)
        for feature in features:
            text = _range_text(t.min, t.max)
            gaps = fairness.get(feature, {}).get("gaps", {})
            if t.metric not in gaps:
                out.append(_check("fairness", f"{feature}: {t.metric} {text}", None, {"min": t.min, "max": t.max},
                                  False, text, note=f"no fairness results for feature {feature!r}",
                                  metric=t.metric, feature=feature))
                continue
            g = gaps[t.metric]
            side = "upper" if t.max is not None else "lower"
            bound = g[side]
            judged, note = g["value"], ""
            if t.judge == "bound":
                if bound is None:
                    note = "no bootstrap interval (0 resamples): gated on the point estimate"
                else:
                    judged = bound
            label = f"{side} {confidence:.0%} bound" if t.judge == "bound" else "point estimate"
            ok = judged is not None and _within(judged, t.min, t.max)
            out.append(_check("fairness", f"{feature}: {t.metric} ({label}) {text}", g["value"],
                              {"min": t.min, "max": t.max, "judge": t.judge}, ok, text, bound, note=note,
                              metric=t.metric, feature=feature, judged=judged))
    return out


def reason(check: dict) -> str:
    """One line saying why a check failed."""
    v = check["value"]
    shown = "undefined" if v is None else f"{v:.4f}"
    if check["kind"] == "fairness" and check.get("judged") is not None and check["threshold"].get("judge") == "bound":
        shown = f"{check['judged']:.4f} (bound; point {shown})"
    if check["kind"] == "change" and check.get("worsening") is not None:
        shown = f"{shown} vs baseline {check['bound']:.4f}"
    return f"check failed: {check['name']}: got {shown}" + (f" ({check['note']})" if check["note"] else "")


def bless(gate, overall: dict, baseline: dict | None, slices: list[dict], min_slice_size: int,
          fairness: dict, confidence: float) -> tuple[bool, list[dict], list[str]]:
    """(blessed, checks, reasons) for the candidate."""
    checks = (value_checks(gate, overall) + change_checks(gate, overall, baseline)
              + slice_checks(gate, slices, min_slice_size) + fairness_checks(gate, fairness, confidence))
    reasons = [reason(c) for c in checks if not c["passed"]]
    return not reasons, checks, reasons
