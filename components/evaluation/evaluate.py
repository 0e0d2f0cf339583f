"""evaluate: metrics overall and by slice, fairness with bootstrap intervals, and the blessing.

The candidate SavedModel scores the split (default test) through its serving_default signature
on raw features, once; every number is then vectorised numpy over those scores
(components/evaluation_metrics.py, evaluation_fairness.py). The baseline is the last pushed
model (an optional input resolved from push history by pipeline/graph.py); it is scored on the
same rows. The gate (evaluation_gate.py) turns the configured thresholds into checks.

Inputs: examples, schema, model, baseline_model (optional).
Outputs:
    evaluation: evaluation.json (overall, slices, fairness, mitigation, baseline comparison) and
        report.html (self-contained, inline SVG plots).
    blessing: blessing.json ({blessed, checks, reasons, decision_thresholds}) and an empty
        BLESSED or NOT_BLESSED file (TFX's marker).
    predictions: predictions.csv.gz, one row per example: label, score, prediction (and the
        mitigated prediction), and the slice and sensitive features.
"""
from __future__ import annotations

import io
import json
import time
from typing import Any

import numpy as np

from kfx.pipeline.config_evaluation import EvaluateConfig
from kfx.pipeline.component import ComponentError, ComponentSpec, Context

EVALUATION, BLESSING, PREDICTIONS = "evaluation", "blessing", "predictions"
EVALUATION_FILE, REPORT_FILE = "evaluation.json", "report.html"
BLESSING_FILE, BLESSED_MARKER, NOT_BLESSED_MARKER = "blessing.json", "BLESSED", "NOT_BLESSED"
PREDICTIONS_FILE = "predictions.csv.gz"


def load_blessing(uri: str) -> dict:
    """blessing.json of a blessing artifact."""
    import tensorflow as tf

    with tf.io.gfile.GFile(f"{uri}/{BLESSING_FILE}") as f:
        return json.load(f)


def _label_strings(values: np.ndarray, kind: str) -> np.ndarray:
    """Label values as the strings the classify vocabulary uses (ints without ".0")."""
    if kind == "string":
        return values.astype(object)
    return np.array([str(int(v)) if np.isfinite(v) else "" for v in values.tolist()], dtype=object)


def _schema_vocabulary(schema, label: str) -> list[str] | None:
    from kfx.components.data.schema import string_domain

    for f in schema.feature:
        if f.name == label:
            dom = string_domain(schema, f)
            return sorted(dom) if dom else None
    return None


def _codes(values: np.ndarray) -> tuple[np.ndarray, list[str]]:
    names, inverse = np.unique(values.astype(str), return_inverse=True)
    return inverse, [str(n) for n in names]


class _Task:
    """Labels and decisions of one scored split (binary / multiclass / regression)."""

    def __init__(self, scored, labels: np.ndarray, label_kind: str, threshold: float, where: str):
        self.kind = scored.task
        self.vocabulary = scored.vocabulary
        if self.kind == "regression":
            self.y = labels.astype(np.float64)
            self.score = scored.predictions
            self.binary = False
            return
        text = _label_strings(labels, label_kind)
        index = {v: i for i, v in enumerate(self.vocabulary or [])}
        y_id = np.array([index.get(v, -1) for v in text.tolist()], dtype=np.int64)
        if (y_id < 0).any():
            unknown = sorted(set(text[y_id < 0].tolist()))[:5]
            raise ComponentError(f"{where}labels {unknown} are not among the model's classes {self.vocabulary}")
        self.y_id, self.probs = y_id, scored.probabilities
        self.binary = len(self.vocabulary) == 2
        if self.binary:
            # Column 1 is the positive class: the transform sorts the vocabulary and takes the last.
            self.y = (y_id == 1).astype(np.int8)
            self.score = self.probs[:, 1]
            self.pred = (self.score >= threshold).astype(np.int8)
        else:
            self.y, self.score = y_id, self.probs.max(axis=1)
            self.pred = self.probs.argmax(axis=1)

    def metrics(self, mask: np.ndarray | None, cfg, pred: np.ndarray | None = None) -> dict:
        from kfx.components.evaluation import metrics as em

        m = slice(None) if mask is None else mask
        if self.kind == "regression":
            return em.regression_metrics(self.y[m], self.score[m])
        if self.binary:
            p = self.pred if pred is None else pred
            return em.binary_metrics(self.y[m], self.score[m], p[m], cfg.calibration_bins,
                                     cfg.confusion_thresholds if mask is None else ())
        return em.multiclass_metrics(self.y_id[m], self.probs[m], cfg.calibration_bins)

    def prediction_labels(self, pred: np.ndarray) -> np.ndarray:
        if self.kind == "regression":
            return self.score
        return np.array(self.vocabulary, dtype=object)[pred]


def _slices(task: _Task, frame: dict, numeric: set[str], cfg) -> list[dict]:
    from kfx.components.evaluation.metrics import slice_name, slice_values

    out = []
    for features in cfg.slices:
        keys = slice_values(frame, tuple(features), numeric, cfg.numeric_buckets)
        codes, names = _codes(keys)
        values = []
        for i, name in enumerate(names):
            mask = codes == i
            n = int(mask.sum())
            metrics = {k: v for k, v in task.metrics(mask, cfg).items() if not isinstance(v, dict)}
            values.append({"value": name, "count": n, "gated": n >= cfg.min_slice_size, "metrics": metrics})
        out.append({"name": slice_name(tuple(features)), "features": list(features), "values": values})
    return out


def _groups(frame: dict, feature: str, numeric: set[str], buckets: int) -> np.ndarray:
    from kfx.components.evaluation.metrics import slice_values

    return slice_values(frame, (feature,), numeric, buckets)


def _fairness(task: _Task, pred: np.ndarray, frame: dict, features: list[str], numeric: set[str], cfg,
              boot) -> dict:
    from kfx.components.evaluation.fairness import group_fairness

    out = {}
    for feature in features:
        codes, names = _codes(_groups(frame, feature, numeric, cfg.numeric_buckets))
        out[feature] = group_fairness(codes, names, task.y, pred, boot, cfg.fairness.confidence)
    return out


def _check_config(cfg, columns: dict, sensitive: list[str], task: _Task) -> None:
    for features in cfg.slices:
        for f in features:
            if f not in columns:
                raise ComponentError(f"evaluate.slices: feature {f!r} is not a column of the examples "
                                     f"(columns: {sorted(columns)})")
    for f in sensitive:
        if f not in columns:
            raise ComponentError(f"evaluate.fairness.sensitive: feature {f!r} is not a column of the examples")
    if not task.binary and (cfg.gate.fairness or cfg.mitigation.method != "none"):
        raise ComponentError("evaluate.gate.fairness / evaluate.mitigation need a binary classifier; the model is "
                             f"{task.kind}" + (f" with classes {task.vocabulary}" if task.vocabulary else ""))
    names = {"classification": set(_CLASSIFICATION), "regression": set(_REGRESSION)}[task.kind]
    for t in (*cfg.gate.value, *cfg.gate.change, *cfg.gate.slices):
        if t.metric not in names:
            raise ComponentError(f"evaluate.gate: metric {t.metric!r} does not apply to a {task.kind} model "
                                 f"(metrics: {sorted(names)})")


_CLASSIFICATION = ("accuracy", "precision", "recall", "auc", "pr_auc", "log_loss", "ece")
_REGRESSION = ("mae", "rmse", "r2")


def _baseline(uri: str | None, data, columns: dict, label: str, cfg, vocab_fallback) -> dict:
    """The baseline's overall metrics and curves on the same rows (or why there are none)."""
    import tensorflow as tf

    from kfx.components.evaluation import metrics as em
    from kfx.components.evaluation.scoring import score

    if not uri:
        return {"uri": None, "note": "none: no model has been pushed yet (first run), change checks pass"}
    if not tf.io.gfile.exists(uri):
        return {"uri": None, "note": f"the last pushed model {uri} no longer exists: change checks pass"}
    scored = score(uri, data, cfg.batch_size, vocab_fallback, where="evaluate (baseline): ")
    task = _Task(scored, data.frame[label], columns[label], cfg.threshold, "evaluate (baseline): ")
    overall = {k: v for k, v in task.metrics(None, cfg).items()}
    out = {"uri": uri, "note": f"the last pushed model, {uri}", "overall": overall}
    if task.binary:
        out["curves"] = {"roc": em.roc_points(task.y, task.score),
                         "calibration": em.calibration(task.y, task.score, cfg.calibration_bins)["bins"]}
    return out


def _mitigate(cfg, task: _Task, frame: dict, examples: str, columns: dict, label: str, model: str,
              feature: str, numeric: set[str], boot, vocab_fallback) -> dict:
    """Per-group thresholds chosen on cfg.mitigation.split, applied to the evaluated rows."""
    from kfx.components.evaluation import metrics as em
    from kfx.components.evaluation.fairness import group_fairness
    from kfx.components.evaluation.mitigation import apply_group_thresholds, choose_group_thresholds
    from kfx.components.evaluation.scoring import read_split, score

    mit = cfg.mitigation
    fit_data = read_split(examples, mit.split, columns, cfg.batch_size)
    fit = _Task(score(model, fit_data, cfg.batch_size, vocab_fallback, where="evaluate (mitigation): "),
                fit_data.frame[label], columns[label], cfg.threshold, "evaluate (mitigation): ")
    fit_codes, fit_names = _codes(_groups(fit_data.frame, feature, numeric, cfg.numeric_buckets))
    thresholds = choose_group_thresholds(fit.score, fit.y, fit_codes, fit_names, mit.objective, cfg.threshold)
    groups = _groups(frame, feature, numeric, cfg.numeric_buckets)
    pred = apply_group_thresholds(task.score, groups.astype(str), thresholds, cfg.threshold)
    codes, names = _codes(groups)
    overall = em.binary_metrics(task.y, task.score, pred, cfg.calibration_bins)
    return {"method": mit.method, "objective": mit.objective, "feature": feature, "split": mit.split,
            "gated": mit.gate, "thresholds": thresholds, "default_threshold": cfg.threshold,
            "overall": {k: v for k, v in overall.items() if not isinstance(v, dict)},
            "fairness": group_fairness(codes, names, task.y, pred, boot, cfg.fairness.confidence),
            "_pred": pred}


def _write_predictions(uri: str, task: _Task, frame: dict, columns: dict, label: str, features: list[str],
                       mitigated: np.ndarray | None) -> None:
    import pandas as pd
    import tensorflow as tf

    table = {label: frame[label], "score": task.score, "prediction": task.prediction_labels(
        task.pred if task.kind != "regression" else None)}
    if mitigated is not None:
        table["mitigated_prediction"] = task.prediction_labels(mitigated)
    for f in features:
        if f != label:
            values = frame[f]
            # Integer columns are read as float (NaN marks missing); keep them integers when whole.
            if columns[f] == "int" and np.isfinite(values).all():
                values = values.astype(np.int64)
            table[f] = values
    buf = io.BytesIO()
    pd.DataFrame(table).to_csv(buf, index=False, compression={"method": "gzip", "mtime": 0})
    with tf.io.gfile.GFile(f"{uri}/{PREDICTIONS_FILE}", "wb") as f:
        f.write(buf.getvalue())


def _write_json(path: str, obj: Any) -> None:
    import tensorflow as tf

    with tf.io.gfile.GFile(path, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True, default=float)


def run(ctx: Context) -> dict[str, Any]:
    import tensorflow as tf

    from kfx.components.evaluation import metrics as em
    from kfx.components.evaluation.fairness import bootstrap_indices
    from kfx.components.evaluation.gate import bless
    from kfx.components.evaluation.report import render
    from kfx.components.evaluation.scoring import read_split, score
    from kfx.components.data.ingest import read_columns
    from kfx.components.data.schema import label_key, load_schema, sensitive_keys

    cfg = ctx.config
    started = time.time()
    schema = load_schema(ctx.inputs["schema"])
    label = label_key(schema)
    if label is None:
        raise ComponentError("evaluate: the schema has no label (a feature tagged 'label'); set schema.label")
    meta = read_columns(ctx.inputs["examples"])
    columns = meta["columns"]
    if cfg.split not in meta["splits"]:
        raise ComponentError(f"evaluate.split {cfg.split!r} is not a split of the examples ({meta['splits']})")
    if label not in columns:
        raise ComponentError(f"evaluate: label {label!r} is not a column of the examples")
    numeric = {c for c, kind in columns.items() if kind != "string"}
    vocab_fallback = _schema_vocabulary(schema, label)

    data = read_split(ctx.inputs["examples"], cfg.split, columns, cfg.batch_size)
    if not data.rows:
        raise ComponentError(f"evaluate: split {cfg.split!r} has no rows")
    model = ctx.inputs["model"]
    task = _Task(score(model, data, cfg.batch_size, vocab_fallback, where="evaluate: "), data.frame[label],
                 columns[label], cfg.threshold, "evaluate: ")
    sensitive = list(cfg.fairness.sensitive) if cfg.fairness.sensitive is not None else sensitive_keys(schema)
    _check_config(cfg, columns, sensitive, task)

    overall = task.metrics(None, cfg)
    ev: dict[str, Any] = {
        "model": model, "split": cfg.split, "rows": data.rows, "label": label, "task": task.kind,
        "binary": task.binary, "vocabulary": task.vocabulary, "threshold": cfg.threshold,
        "positive_class": task.vocabulary[1] if task.binary else None,
        "metric_names": list(_CLASSIFICATION if task.kind == "classification" else _REGRESSION),
        "overall": overall, "slices": _slices(task, data.frame, numeric, cfg), "min_slice_size": cfg.min_slice_size,
        "fairness": {}, "mitigation": None,
    }
    if task.binary:
        ev["curves"] = {"roc": em.roc_points(task.y, task.score),
                        "calibration": em.calibration(task.y, task.score, cfg.calibration_bins)["bins"]}
        boot = (bootstrap_indices(data.rows, cfg.fairness.bootstrap_resamples, cfg.fairness.seed)
                if cfg.fairness.bootstrap_resamples else None)
        ev["fairness"] = _fairness(task, task.pred, data.frame, sensitive, numeric, cfg, boot)
        ev["fairness_settings"] = {"sensitive": sensitive, **cfg.fairness.model_dump(mode="json")}
        if cfg.mitigation.method == "group_thresholds":
            feature = cfg.mitigation.feature or (sensitive[0] if sensitive else None)
            if feature is None or feature not in columns:
                raise ComponentError(f"evaluate.mitigation.feature {feature!r}: set a column to mitigate on "
                                     f"(the schema has no sensitive features)")
            ev["mitigation"] = _mitigate(cfg, task, data.frame, ctx.inputs["examples"], columns, label, model,
                                         feature, numeric, boot, vocab_fallback)
    baseline = _baseline(ctx.inputs.get("baseline_model"), data, columns, label, cfg, vocab_fallback)
    ev["baseline"] = baseline
    if baseline.get("overall"):
        ev["baseline"]["comparison"] = {
            m: {"candidate": overall.get(m), "baseline": baseline["overall"].get(m),
                "change": (overall[m] - baseline["overall"][m])
                if overall.get(m) is not None and baseline["overall"].get(m) is not None else None}
            for m in ev["metric_names"]}

    # What the gate judges: the model as is, or with the mitigation's decisions when configured.
    gate_overall, gate_fairness = overall, ev["fairness"]
    mitigated = ev["mitigation"].pop("_pred") if ev["mitigation"] else None
    if ev["mitigation"] and cfg.mitigation.gate:
        gate_overall = {**overall, **{k: ev["mitigation"]["overall"][k] for k in ("accuracy", "precision", "recall")}}
        gate_fairness = {**ev["fairness"], ev["mitigation"]["feature"]: ev["mitigation"]["fairness"]}
    blessed, checks, reasons = bless(cfg.gate, gate_overall, baseline.get("overall"), ev["slices"],
                                     cfg.min_slice_size, gate_fairness, cfg.fairness.confidence)
    blessing = {"blessed": blessed, "checks": checks, "reasons": reasons, "model": model,
                "baseline": baseline["uri"], "baseline_note": baseline["note"],
                "decision_thresholds": None}
    if ev["mitigation"]:
        blessing["decision_thresholds"] = {
            "feature": ev["mitigation"]["feature"], "positive_class": ev["positive_class"],
            "default": cfg.threshold, "groups": ev["mitigation"]["thresholds"],
            "applies": "predict the positive class when P(positive) >= the threshold of the row's group"}
    ev["seconds"] = time.time() - started

    out_eval, out_bless = ctx.outputs[EVALUATION], ctx.outputs[BLESSING]
    _write_json(f"{out_eval}/{EVALUATION_FILE}", ev)
    with tf.io.gfile.GFile(f"{out_eval}/{REPORT_FILE}", "w") as f:
        f.write(render(ev, blessing))
    _write_json(f"{out_bless}/{BLESSING_FILE}", blessing)
    with tf.io.gfile.GFile(f"{out_bless}/{BLESSED_MARKER if blessed else NOT_BLESSED_MARKER}", "w") as f:
        f.write("")
    slice_features = sorted({f for s in cfg.slices for f in s} | set(sensitive))
    _write_predictions(ctx.outputs[PREDICTIONS], task, data.frame, columns, label, slice_features, mitigated)

    metrics: dict[str, Any] = {"rows": data.rows, "blessed": blessed, "reasons": reasons,
                               "baseline": baseline["uri"], "seconds": round(time.time() - started, 2)}
    for m in ev["metric_names"]:
        if isinstance(overall.get(m), float):
            metrics[m] = round(overall[m], 4)
    for feature, fr in ev["fairness"].items():
        metrics[f"{feature}_equalized_odds_difference"] = fr["gaps"]["equalized_odds_difference"]["value"]
    ctx.log.info("evaluate %s", metrics)
    return metrics


SPEC = ComponentSpec(
    name="evaluate", config=EvaluateConfig, inputs=("examples", "schema", "model", "baseline_model"),
    outputs=(EVALUATION, BLESSING, PREDICTIONS), run=run, optional_inputs=("baseline_model",),
    code=("kfx.components.evaluation.metrics", "kfx.components.evaluation.fairness", "kfx.components.evaluation.gate",
          "kfx.components.evaluation.mitigation", "kfx.components.evaluation.report", "kfx.components.evaluation.scoring"))
