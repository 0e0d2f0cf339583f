"""evaluate: metrics overall and by slice, fairness with bootstrap intervals, and the blessing.

The candidate SavedModel scores the split (default test, read from the examples' Parquet shards as
Arrow record batches: components/evaluation/columnar.py) through its serving_default signature
on raw features, once; every number is then vectorised numpy over those scores. What is scored
and which metrics, fairness gaps, curves and report sections apply is the model's task's
(models/tasks/, read from the task description inside the model), so this stage is the same
for every task. The baseline is the last pushed
model (an optional input resolved from push history by pipeline/graph.py); it is scored on the
same rows. The gate (evaluation_gate.py) turns the configured thresholds into checks.

Inputs: examples, schema, model, baseline_model (optional).
Outputs:
    evaluation: evaluation.json (overall, slices, fairness, mitigation, baseline comparison,
        robustness when evaluate.robustness.enabled: components/evaluation/robustness.py) and
        report.html (self-contained, inline SVG plots; sample images with their predictions for
        image models, components/evaluation/samples.py; images decoded from noise for models with a
        `decode` signature, components/evaluation/decoded.py), and attributions.npz (feature, token and
        pixel attributions; permutation importance: components/evaluation/explain.py).
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
from kfx.models import tasks
from kfx.models.tasks import Outcomes
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


def _codes(values: np.ndarray) -> tuple[np.ndarray, list[str]]:
    names, inverse = np.unique(values.astype(str), return_inverse=True)
    return inverse, [str(n) for n in names]


def _scored(model: str, data, label: str, cfg, where: str, read_split=None):
    """(task, outcomes) of `model` on `data`; `read_split(name)` reads another split for the task."""
    from kfx.pipeline.artifacts.scoring import score

    task, scores = score(model, data, cfg.batch_size, where=where)
    try:
        o = task.add_inputs(task.outcomes(data.frame[label], scores, cfg.threshold), data.frame)
        return task, task.add_model_inputs(o, model, data.serialized, read_split)
    except ValueError as err:
        raise ComponentError(f"{where}model {model}: {err}") from None


def _task_of(model: str):
    try:
        return tasks.of(tasks.load(model))
    except (FileNotFoundError, KeyError) as err:
        raise ComponentError(f"evaluate: {err}") from None


def _overall(task, o, cfg, pred=None) -> dict:
    return task.metrics(o, pred=pred, bins=cfg.calibration_bins, confusion_thresholds=cfg.confusion_thresholds)


def _slices(task, o, frame: dict, numeric: set[str], cfg) -> list[dict]:
    from kfx.components.evaluation.metrics import slice_name, slice_values

    out = []
    for features in cfg.slices:
        keys = slice_values(frame, tuple(features), numeric, cfg.numeric_buckets)
        codes, names = _codes(keys)
        values = []
        for i, name in enumerate(names):
            mask = codes == i
            n = int(mask.sum())
            metrics = {k: v for k, v in task.metrics(o, mask, bins=cfg.calibration_bins).items()
                       if not isinstance(v, dict)}
            values.append({"value": name, "count": n, "gated": n >= cfg.min_slice_size, "metrics": metrics})
        out.append({"name": slice_name(tuple(features)), "features": list(features), "values": values})
    return out


def _groups(frame: dict, feature: str, numeric: set[str], buckets: int) -> np.ndarray:
    from kfx.components.evaluation.metrics import slice_values

    return slice_values(frame, (feature,), numeric, buckets)


def _fairness(task, o, pred: np.ndarray, data, features: list[str], numeric: set[str], cfg) -> dict:
    """The task's fairness metrics per sensitive feature. Rows whose sensitive value is missing
    belong to no group: they are left out (and counted), with bootstrap resamples of the rest."""
    from kfx.components.evaluation.fairness import bootstrap_indices

    out = {}
    resamples, seed = cfg.fairness.bootstrap_resamples, cfg.fairness.seed
    for feature in features:
        known = ~data.missing[feature]
        rows = Outcomes(*(None if v is None else v[known] for v in (o.y, o.score, o.pred, o.probs)))
        frame = {feature: data.frame[feature][known]}
        codes, names = _codes(_groups(frame, feature, numeric, cfg.numeric_buckets))
        boot = bootstrap_indices(int(known.sum()), resamples, seed) if resamples else None
        out[feature] = {**task.fairness(rows, pred[known], codes, names, boot, cfg.fairness.confidence),
                        "missing": int((~known).sum())}
    return out


def _check_config(cfg, columns: dict, sensitive: list[str], task) -> None:
    for features in cfg.slices:
        for f in features:
            if f not in columns:
                raise ComponentError(f"evaluate.slices: feature {f!r} is not a column of the examples "
                                     f"(columns: {sorted(columns)})")
    for f in sensitive:
        if f not in columns:
            raise ComponentError(f"evaluate.fairness.sensitive: feature {f!r} is not a column of the examples")
    if cfg.mitigation.method != "none" and not task.MITIGABLE:
        raise ComponentError(f"evaluate.mitigation: per-group decision thresholds need a task deciding by a "
                             f"threshold on one score; the model's task is {task.NAME}")
    for key, thresholds, names in (("value", cfg.gate.value, task.METRICS), ("change", cfg.gate.change, task.METRICS),
                                   ("slices", cfg.gate.slices, task.METRICS),
                                   ("fairness", cfg.gate.fairness, task.FAIRNESS_METRICS)):
        for t in thresholds:
            if t.metric not in names:
                raise ComponentError(f"evaluate.gate.{key}: metric {t.metric!r} does not apply to a {task.NAME} "
                                     f"model (its metrics: {', '.join(names)})")


def _baseline(uri: str | None, data, label: str, cfg, task_name: str) -> dict:
    """The baseline's overall metrics and curves on the same rows (or why there are none, e.g. the
    last pushed model is of another task than the candidate's `task_name`)."""
    import tensorflow as tf

    from kfx.models import tasks

    if not uri:
        return {"uri": None, "note": "none: no model has been pushed yet (first run), change checks pass"}
    if not tf.io.gfile.exists(uri):
        return {"uri": None, "note": f"the last pushed model {uri} no longer exists: change checks pass"}
    if not tf.io.gfile.exists(f"{uri}/{tasks.TASK_ASSET}"):
        return {"uri": None, "note": f"the last pushed model {uri} has no task description ({tasks.TASK_ASSET}): "
                                     f"change checks pass"}
    kind = tasks.load(uri).get("type")
    if kind != task_name:
        return {"uri": None, "note": f"the last pushed model {uri} is a {kind} model, not {task_name}: "
                                     f"change checks pass"}
    task, o = _scored(uri, data, label, cfg, "evaluate (baseline): ")
    out = {"uri": uri, "note": f"the last pushed model, {uri}", "task": task.NAME, "overall": _overall(task, o, cfg)}
    curves = task.curves(o, cfg.calibration_bins)
    if curves:
        out["curves"] = curves
    return out


def _mitigate(cfg, task, o, data, read_split, label: str, model: str, feature: str, numeric: set[str]) -> dict:
    """Per-group thresholds chosen on cfg.mitigation.split (`read_split(name)` reads it), applied
    to the evaluated rows."""
    from kfx.components.evaluation.mitigation import apply_group_thresholds, choose_group_thresholds

    mit = cfg.mitigation
    fit_data = read_split(mit.split)
    _, fit = _scored(model, fit_data, label, cfg, "evaluate (mitigation): ")
    fit_codes, fit_names = _codes(_groups(fit_data.frame, feature, numeric, cfg.numeric_buckets))
    thresholds = choose_group_thresholds(fit.score, fit.y, fit_codes, fit_names, mit.objective, cfg.threshold)
    groups = _groups(data.frame, feature, numeric, cfg.numeric_buckets)
    pred = apply_group_thresholds(o.score, groups.astype(str), thresholds, cfg.threshold)
    overall = task.metrics(o, pred=pred, bins=cfg.calibration_bins)
    return {"method": mit.method, "objective": mit.objective, "feature": feature, "split": mit.split,
            "gated": mit.gate, "thresholds": thresholds, "default_threshold": cfg.threshold,
            "overall": {k: v for k, v in overall.items() if not isinstance(v, dict)},
            "fairness": _fairness(task, o, pred, data, [feature], numeric, cfg)[feature],
            "_pred": pred}


def _write_predictions(uri: str, task, o, frame: dict, columns: dict, label: str, features: list[str],
                       mitigated: np.ndarray | None) -> None:
    import pandas as pd
    import tensorflow as tf

    table = {label: frame[label], "score": o.score, "prediction": task.prediction_labels(o, o.pred)}
    # A column of several values per row (a forecast's steps) is written as a JSON list per row.
    table = {k: [json.dumps(r.tolist()) for r in v] if np.ndim(v) == 2 else v for k, v in table.items()}
    if mitigated is not None:
        table["mitigated_prediction"] = task.prediction_labels(o, mitigated)
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

    from kfx.components.evaluation.gate import bless, reason
    from kfx.components.evaluation.report import render
    from kfx.components.evaluation.decoded import decoded_samples
    from kfx.components.evaluation.samples import image_samples
    from kfx.components.evaluation.columnar import read_split
    from kfx.pipeline.artifacts import read_columns
    from kfx.pipeline.artifacts import image_features, label_key, load_schema, sensitive_keys

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
    own = _task_of(ctx.inputs["model"]).evaluate(ctx, ctx.inputs["model"])  # e.g. generation's samples
    if own is not None:
        return own

    def read(split: str):  # columnar (Parquet shards) unless the artifact predates them
        return read_split(ctx.inputs["examples"], split, meta, cfg.batch_size)

    data = read(cfg.split)
    if not data.rows:
        raise ComponentError(f"evaluate: split {cfg.split!r} has no rows")
    model = ctx.inputs["model"]
    task, o = _scored(model, data, label, cfg, "evaluate: ", read)
    sensitive = list(cfg.fairness.sensitive) if cfg.fairness.sensitive is not None else sensitive_keys(schema)
    _check_config(cfg, columns, sensitive, task)

    overall = _overall(task, o, cfg)
    ev: dict[str, Any] = {
        "model": model, "split": cfg.split, "rows": data.rows, "label": label, "task": task.NAME,
        "vocabulary": task.classes, "threshold": cfg.threshold, "positive_class": task.info.get("positive"),
        "metric_names": list(task.METRICS), "fairness_metric_names": list(task.FAIRNESS_METRICS),
        "overall": overall, "slices": _slices(task, o, data.frame, numeric, cfg), "min_slice_size": cfg.min_slice_size,
        "curves": task.curves(o, cfg.calibration_bins),
        "fairness": _fairness(task, o, o.pred, data, sensitive, numeric, cfg),
        "fairness_settings": {"sensitive": sensitive, **cfg.fairness.model_dump(mode="json")},
        "mitigation": None, "samples": image_samples(task, o, data.frame, data.missing, image_features(schema)),
        "decoded_samples": decoded_samples(model),
    }
    if cfg.mitigation.method == "group_thresholds":
        feature = cfg.mitigation.feature or (sensitive[0] if sensitive else None)
        if feature is None or feature not in columns:
            raise ComponentError(f"evaluate.mitigation.feature {feature!r}: set a column to mitigate on "
                                 f"(the schema has no sensitive features)")
        ev["mitigation"] = _mitigate(cfg, task, o, data, read, label, model, feature, numeric)
    baseline = _baseline(ctx.inputs.get("baseline_model"), data, label, cfg, task.NAME)
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
    if cfg.robustness.enabled:  # components/evaluation/robustness.py
        from kfx.components.evaluation import robustness

        rob_gate = cfg.gate.robustness
        ev["robustness"] = robustness.evaluate(model, data.frame, o.y, task, cfg.robustness,
                                               rob_gate, ctx.pipeline.config_dir)
        if rob_gate:
            checks.append(robustness.gate_check(ev["robustness"], rob_gate))
            if not checks[-1]["passed"]:
                blessed, reasons = False, [*reasons, reason(checks[-1])]
    blessing = {"blessed": blessed, "checks": checks, "reasons": reasons, "model": model,
                "baseline": baseline["uri"], "baseline_note": baseline["note"],
                "decision_thresholds": None}
    if ev["mitigation"]:
        blessing["decision_thresholds"] = {
            "feature": ev["mitigation"]["feature"], "positive_class": ev["positive_class"],
            "default": cfg.threshold, "groups": ev["mitigation"]["thresholds"],
            "applies": "predict the positive class when P(positive) >= the threshold of the row's group"}
    out_eval, out_bless = ctx.outputs[EVALUATION], ctx.outputs[BLESSING]
    if cfg.explain.enabled:  # components/evaluation/explain.py; attributions.npz beside the report
        from kfx.components.evaluation.explain import explain

        ev["explanations"] = explain(cfg.explain, task, o, data, model, sensitive, numeric, ctx.pipeline.config_dir,
                                     cfg.threshold, cfg.batch_size, cfg.numeric_buckets, out_eval, ctx.log)
    ev["seconds"] = time.time() - started

    _write_json(f"{out_eval}/{EVALUATION_FILE}", ev)
    with tf.io.gfile.GFile(f"{out_eval}/{REPORT_FILE}", "w") as f:
        f.write(render(ev, blessing, task))
    _write_json(f"{out_bless}/{BLESSING_FILE}", blessing)
    with tf.io.gfile.GFile(f"{out_bless}/{BLESSED_MARKER if blessed else NOT_BLESSED_MARKER}", "w") as f:
        f.write("")
    slice_features = sorted({f for s in cfg.slices for f in s} | set(sensitive))
    _write_predictions(ctx.outputs[PREDICTIONS], task, o, data.frame, columns, label, slice_features, mitigated)

    metrics: dict[str, Any] = {"rows": data.rows, "blessed": blessed, "reasons": reasons,
                               "baseline": baseline["uri"], "seconds": round(time.time() - started, 2)}
    for m in ev["metric_names"]:
        if isinstance(overall.get(m), float):
            metrics[m] = round(overall[m], 4)
    if ev.get("robustness"):
        from kfx.components.evaluation.robustness import summary

        metrics.update(summary(ev["robustness"]))
    headline = task.FAIRNESS_METRICS[0]
    for feature, fr in ev["fairness"].items():
        metrics[f"{feature}_{headline}"] = fr["gaps"][headline]["value"]
    ctx.log.info("evaluate %s", metrics)
    return metrics


def source_fingerprint(cfg: EvaluateConfig) -> str:
    """The generation classifier read from outside the artifact store (its resolved version), else ""."""
    from kfx.components.evaluation.generation import classifier_fingerprint

    return classifier_fingerprint(cfg.generation.classifier) if cfg.generation is not None else ""


SPEC = ComponentSpec(
    name="evaluate", config=EvaluateConfig, inputs=("examples", "schema", "model", "baseline_model"),
    outputs=(EVALUATION, BLESSING, PREDICTIONS), run=run, optional_inputs=("baseline_model",),
    source_fingerprint=source_fingerprint,
    code=("kfx.models.tasks", "kfx.models.tasks.base", *sorted({v.split(":")[0] for v in tasks.TASKS.values()}),
          "kfx.components.evaluation.metrics", "kfx.components.evaluation.fairness", "kfx.components.evaluation.gate",
          "kfx.components.evaluation.mitigation", "kfx.components.evaluation.report",
          "kfx.components.evaluation.samples", "kfx.components.evaluation.clusters",
          "kfx.components.evaluation.references", "kfx.components.evaluation.explain",
          "kfx.components.evaluation.generation",
          "kfx.components.evaluation.decoded", "kfx.components.evaluation.robustness",
          "kfx.pipeline.artifacts.scoring", "kfx.components.evaluation.columnar", "kfx.pipeline.artifacts.examples"))
