"""Evaluation of generation models (models/tasks/generation.py): generated samples scored by a classifier.

The candidate's serving_default generates `evaluate.generation.samples` images from seeded
standard-normal noise, the requested classes uniform (sample i asks for class i mod C). The
classifier, a pushed model of another pipeline (e.g. mnist_cnn's), scores them through its own
serving_default: encoded PNG bytes when it takes one string input (kfx image models), else the
pixels [N, H, W, C] in [0, 255]. Metrics (`sample_metrics`), over the generator's classes matched
to the classifier's by name:
  * sample_confidence: mean of the classifier's top probability;
  * classes_covered: classes the classifier assigned to at least one sample;
  * min_class_share / max_class_share: the smallest / largest fraction of samples classified as
    one class (1 / C each for a perfect generator);
  * class_agreement: fraction classified as the class requested.
The gate (components/evaluation/gate.py) judges them as any task's metrics; the baseline (last
pushed generation model) is judged on the same noise. The report shows a grid of generated
images per requested class, captioned `requested -> classified`.
"""
from __future__ import annotations

import base64
import hashlib
import io
import time
from typing import Any

import numpy as np

from kfx.models.tasks.generation import (CLASS_AGREEMENT, CLASS_ID, CLASSES_COVERED, IMAGES, MAX_CLASS_SHARE,
                                         MIN_CLASS_SHARE, NOISE, PNG, SAMPLE_CONFIDENCE, SERVING_DEFAULT)
from kfx.pipeline.component import ComponentError

PROBABILITIES = "probabilities"


def classifier_dir(path: str) -> str:
    """The SavedModel directory of a pushed classifier: `path` itself when it is one, else its
    highest all-digit version subdirectory (TF Serving's layout).

    Raises:
        ComponentError: no such directory, or no model version in it; the message names the path.
    """
    import tensorflow as tf

    from kfx.pipeline.config import resolve_path

    where = f"evaluate.generation.classifier {path!r}"
    resolved = resolve_path(path).rstrip("/")
    if tf.io.gfile.exists(f"{resolved}/saved_model.pb"):
        return resolved
    if not tf.io.gfile.isdir(resolved):
        raise ComponentError(f"{where}: no such directory; push the classifier first (e.g. kfx run -c "
                             f"pipeline/configs/mnist_cnn.yaml) and name its serving directory")
    versions = [v.rstrip("/") for v in tf.io.gfile.listdir(resolved)]
    versions = sorted((v for v in versions if v.isdigit() and tf.io.gfile.exists(f"{resolved}/{v}/saved_model.pb")),
                      key=int)
    if not versions:
        raise ComponentError(f"{where}: {resolved} is neither a SavedModel (no saved_model.pb) nor a base "
                             f"directory of model versions (all-digit subdirectories holding one)")
    return f"{resolved}/{versions[-1]}"


def classifier_fingerprint(path: str) -> str:
    """Hash of the classifier `classifier_dir(path)` resolves to: its directory, saved_model.pb and
    variables/variables.index (size and modification time of each), so a re-pushed classifier
    invalidates evaluate's cache. A classifier that cannot be resolved hashes its error (evaluate fails
    on it anyway, uncached)."""
    import tensorflow as tf

    try:
        uri = classifier_dir(path)
    except ComponentError as err:
        return hashlib.sha256(str(err).encode()).hexdigest()
    parts = [uri]
    for name in ("saved_model.pb", "variables/variables.index"):
        st = tf.io.gfile.stat(f"{uri}/{name}") if tf.io.gfile.exists(f"{uri}/{name}") else None
        parts.append(f"{name}:{st.length}:{st.mtime_nsec}" if st else f"{name}:-")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def load_classifier(path: str) -> tuple[Any, list[str], str]:
    """(serving_default function, class names, directory) of the classifier at `path`.

    Raises:
        ComponentError: the model does not load, has no serving_default with `probabilities`, or
            no class names (task description); the message names the directory.
    """
    import tensorflow as tf

    from kfx.models import tasks

    uri = classifier_dir(path)
    where = f"evaluate.generation.classifier {uri}"
    try:
        fn = tf.saved_model.load(uri).signatures[SERVING_DEFAULT]
    except Exception as err:  # noqa: BLE001 - any load failure is the configured model's: reported by path
        raise ComponentError(f"{where}: the model does not load: {type(err).__name__}: {err}"[:2000]) from None
    if PROBABILITIES not in fn.structured_outputs:
        raise ComponentError(f"{where}: serving_default outputs {sorted(fn.structured_outputs)} lack "
                             f"{PROBABILITIES!r}; the classifier must be a classification model")
    try:
        classes = tasks.load(uri).get("vocabulary")
    except FileNotFoundError as err:
        raise ComponentError(f"{where}: {err}") from None
    if not classes:
        raise ComponentError(f"{where}: its task description has no class names (vocabulary)")
    return fn, [str(c) for c in classes], uri


def generate(model, n: int, classes: int, seed: int, batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(requested class ids [n], pixels [n, H, W, C], PNG bytes [n]) from a generation model's
    serving_default (`model`: the loaded SavedModel), on seeded noise, classes in turn."""
    import tensorflow as tf

    fn = model.signatures[SERVING_DEFAULT]
    latent = fn.structured_input_signature[1][NOISE].shape[-1]
    noise = np.random.default_rng(seed).standard_normal((n, latent)).astype(np.float32)
    requested = np.arange(n, dtype=np.int64) % classes
    pixels, png = [], []
    for start in range(0, n, batch_size):
        out = fn(**{NOISE: tf.constant(noise[start:start + batch_size]),
                    CLASS_ID: tf.constant(requested[start:start + batch_size])})
        pixels.append(out[IMAGES].numpy())
        png.append(out[PNG].numpy())
    return requested, np.concatenate(pixels), np.concatenate(png)


def classify(fn, pixels: np.ndarray, png: np.ndarray, batch_size: int, where: str) -> np.ndarray:
    """The classifier's probabilities [N, C] for the images, fed as its signature declares.

    Raises:
        ComponentError: a signature that takes neither one encoded image nor one pixel tensor.
    """
    import tensorflow as tf

    specs = fn.structured_input_signature[1]
    arg, spec = next(iter(specs.items())) if len(specs) == 1 else (None, None)
    if spec is not None and spec.dtype == tf.string:
        values = png
    elif spec is not None and spec.dtype.is_floating and spec.shape.rank == pixels.ndim:
        values = pixels.astype(spec.dtype.as_numpy_dtype)
    else:
        raise ComponentError(f"{where}: serving_default takes {({k: str(s) for k, s in specs.items()})}; "
                             f"a generated image is given as one encoded image or one pixel tensor")
    parts = [fn(**{arg: tf.constant(values[i:i + batch_size])})[PROBABILITIES].numpy()
             for i in range(0, len(values), batch_size)]
    return np.concatenate(parts).astype(np.float64)


def sample_metrics(probs: np.ndarray, requested: list[str], classifier_classes: list[str],
                   classes: list[str]) -> dict:
    """The generation metrics (see module doc) and per-class details.

    Args:
        probs: the classifier's probabilities [N, K].
        requested: the class name each sample was generated for [N].
        classifier_classes: the classifier's class names [K].
        classes: the generator's class names (the classes shares are counted over).
    """
    probs = np.asarray(probs, dtype=np.float64)
    n = len(probs)
    predicted = np.array(classifier_classes, dtype=object)[probs.argmax(axis=1)]
    confidence = probs.max(axis=1)
    requested = np.asarray(requested, dtype=object)
    shares = {c: float(np.mean(predicted == c)) for c in classes}
    per_class = {c: {"requested": int((requested == c).sum()), "classified_share": shares[c],
                     "agreement": float(np.mean(predicted[requested == c] == c)) if (requested == c).any() else None,
                     "confidence": float(confidence[requested == c].mean()) if (requested == c).any() else None}
                 for c in classes}
    return {SAMPLE_CONFIDENCE: float(confidence.mean()), CLASSES_COVERED: float(sum(s > 0 for s in shares.values())),
            MIN_CLASS_SHARE: min(shares.values()), MAX_CLASS_SHARE: max(shares.values()),
            CLASS_AGREEMENT: float(np.mean(predicted == requested)), "samples": n,
            "other_classes_share": float(1.0 - sum(shares.values())), "per_class": per_class,
            "_predicted": predicted, "_confidence": confidence}


def judge(model_uri: str, task, gen, classifier) -> dict:
    """Generate `gen.samples` images with the model and score them with `classifier`
    ((fn, classes, uri) of `load_classifier`); `sample_metrics` plus the raw samples."""
    import tensorflow as tf

    fn, classifier_classes, uri = classifier
    requested, pixels, png = generate(tf.saved_model.load(model_uri), gen.samples, len(task.classes), gen.seed,
                                      gen.batch_size)
    probs = classify(fn, pixels, png, gen.batch_size, f"evaluate.generation.classifier {uri}")
    names = [task.classes[i] for i in requested]
    return {**sample_metrics(probs, names, classifier_classes, task.classes), "_requested": names, "_png": png}


def _shown(m: dict, classes: list[str], per_class: int) -> list[dict]:
    """The first `per_class` samples of each requested class, as samples.py rows."""
    rows = []
    for c in classes:
        for i in [i for i, r in enumerate(m["_requested"]) if r == c][:per_class]:
            rows.append({"row": i, "label": c, "prediction": str(m["_predicted"][i]),
                         "score": float(m["_confidence"][i]), "correct": bool(m["_predicted"][i] == c),
                         "mime": "image/png", "data": base64.b64encode(m["_png"][i]).decode("ascii")})
    return rows


def _baseline(uri: str | None, task, gen, classifier) -> dict:
    """The last pushed model judged on the same noise (when it is a generation model), or why not."""
    import tensorflow as tf

    from kfx.models import tasks

    if not uri:
        return {"uri": None, "note": "none: no model has been pushed yet (first run), change checks pass"}
    if not tf.io.gfile.exists(f"{uri}/{tasks.TASK_ASSET}"):
        return {"uri": None, "note": f"the last pushed model {uri} is gone or has no task description: "
                                     f"change checks pass"}
    if tasks.load(uri).get("type") != task.NAME:
        return {"uri": None, "note": f"the last pushed model {uri} is not a generation model: change checks pass"}
    m = judge(uri, tasks.of(tasks.load(uri)), gen, classifier)
    return {"uri": uri, "note": f"the last pushed model, {uri}", "task": task.NAME,
            "overall": {k: m[k] for k in task.METRICS}}


def _write_predictions(uri: str, m: dict) -> None:
    import pandas as pd
    import tensorflow as tf

    from kfx.components.evaluation.evaluate import PREDICTIONS_FILE

    buf = io.BytesIO()
    pd.DataFrame({"sample": np.arange(len(m["_requested"])), "requested": m["_requested"],
                  "prediction": m["_predicted"], "score": m["_confidence"]}).to_csv(
        buf, index=False, compression={"method": "gzip", "mtime": 0})
    with tf.io.gfile.GFile(f"{uri}/{PREDICTIONS_FILE}", "wb") as f:
        f.write(buf.getvalue())


def run(ctx, model: str, task) -> dict[str, Any]:
    """The evaluate stage for a generation model: the same outputs as for any task
    (evaluation.json, report.html, blessing, predictions: one row per generated sample).

    Raises:
        ComponentError: evaluate.generation is not configured, or its classifier is unusable.
    """
    import tensorflow as tf

    from kfx.components.evaluation import evaluate as stage
    from kfx.components.evaluation.gate import bless
    from kfx.components.evaluation.report import render

    cfg = ctx.config
    started = time.time()
    gen = cfg.generation
    if gen is None:
        raise ComponentError("evaluate.generation: a generation model is judged by a classifier of its samples; "
                             "set evaluate.generation.classifier to a pushed classifier's directory")
    classifier = load_classifier(gen.classifier)
    m = judge(model, task, gen, classifier)
    overall = {k: v for k, v in m.items() if not k.startswith("_")}
    baseline = _baseline(ctx.inputs.get("baseline_model"), task, gen, classifier)
    blessed, checks, reasons = bless(cfg.gate, overall, baseline.get("overall"), [], cfg.min_slice_size, {},
                                     cfg.fairness.confidence)
    ev: dict[str, Any] = {
        "model": model, "split": "generated", "rows": gen.samples, "label": task.label, "task": task.NAME,
        "vocabulary": task.classes, "metric_names": list(task.METRICS), "fairness_metric_names": [],
        "overall": overall, "slices": [], "curves": {}, "fairness": {}, "mitigation": None, "samples": None,
        "baseline": baseline,
        "generation": {"classifier": classifier[2], "classifier_classes": classifier[1], "samples": gen.samples,
                       "seed": gen.seed, "shown": _shown(m, task.classes, gen.shown_per_class)},
        "seconds": time.time() - started}
    blessing = {"blessed": blessed, "checks": checks, "reasons": reasons, "model": model, "baseline": baseline["uri"],
                "baseline_note": baseline["note"], "decision_thresholds": None}
    out_eval, out_bless = ctx.outputs[stage.EVALUATION], ctx.outputs[stage.BLESSING]
    stage._write_json(f"{out_eval}/{stage.EVALUATION_FILE}", ev)
    with tf.io.gfile.GFile(f"{out_eval}/{stage.REPORT_FILE}", "w") as f:
        f.write(render(ev, blessing, task))
    stage._write_json(f"{out_bless}/{stage.BLESSING_FILE}", blessing)
    with tf.io.gfile.GFile(f"{out_bless}/{stage.BLESSED_MARKER if blessed else stage.NOT_BLESSED_MARKER}", "w") as f:
        f.write("")
    _write_predictions(ctx.outputs[stage.PREDICTIONS], m)
    metrics = {"rows": gen.samples, "blessed": blessed, "reasons": reasons, "baseline": baseline["uri"],
               "classifier": classifier[2], "seconds": round(time.time() - started, 2),
               **{k: round(overall[k], 4) for k in task.METRICS}}
    ctx.log.info("evaluate %s", metrics)
    return metrics


def report_sections(ev: dict) -> tuple[list[str], list[str]]:
    """(HTML tables, SVG plots): shares per class, and a grid of generated images per class."""
    from kfx.components.evaluation.report import _e, bar_chart, table
    from kfx.components.evaluation.samples import figure

    g, per_class = ev["generation"], ev["overall"]["per_class"]
    tables = ["<h3>Per requested class</h3>",
              table(["class", "requested", "classified as (share)", "agreement", "mean confidence"],
                    [[c, v["requested"], v["classified_share"], v["agreement"], v["confidence"]]
                     for c, v in per_class.items()])]
    grid = []
    for c in per_class:
        cells = "".join(figure(r) for r in g["shown"] if r["label"] == c)
        if cells:
            grid.append(f"<div class='samples'>{cells}</div>")
    if grid:
        tables.append(f"<h2>Generated samples</h2><p>The first images generated for each requested class, "
                      f"captioned requested &rarr; classified by {_e(g['classifier'])} (red when they differ), "
                      f"with the classifier's confidence.</p>{''.join(grid)}")
    plots = [bar_chart("class-shares", "Share of samples classified as each class", list(per_class),
                       {"share": [v["classified_share"] for v in per_class.values()]})]
    return tables, plots
