"""Explaining the model in evaluate: permutation importance, integrated gradients, proxies.

* Permutation importance (model-agnostic): on a sample of the evaluated rows, each raw feature's
  column is shuffled `permutation_repeats` times and the rows are scored again through the
  SavedModel's serving_default; the importance is the drop of the task's metric (AUC for binary,
  else the task's headline metric; for lower-is-better metrics the increase), overall and per
  group of every sensitive feature.
* Integrated gradients (Sundararajan et al. 2017) through the Keras side of the export
  (components/training/export.py `load_trainer`): the preprocessing layer turns raw features
  into the model's inputs; ids and token ids are not differentiable, so the path runs through
  the *first differentiable representation*: the outputs of the layers that read an integer
  input (one-hot encodings, embeddings) are interpolated, the other inputs (normalized numbers,
  scaled pixels) themselves. Baseline `zero` (0 in that space: the train mean of a normalized
  number, no category, a zero embedding, a black image) or `mean` (the sample's mean there).
  The explained output is P(positive) for binary, the predicted class's probability for
  multiclass, the prediction for regression (the model output's column `target`). Attributions
  are summed to the raw feature (tabular), to each token (text) and over channels (pixels).
* Proxies: each raw feature's association with each sensitive feature on the sampled rows
  (Cramér's V for two categorical columns, the correlation ratio for a numeric one; a numeric
  sensitive feature is quantile-bucketed), beside its importance; a feature with association >=
  `proxy_association` and importance share >= `proxy_importance` is flagged: the model leans on a
  stand-in for the sensitive attribute.

The attributions artifact, `attributions.npz` in the evaluation output (numpy.load):
    rows [n] int64: the explained rows' indices in the evaluated split
    features [F] str: raw feature names; feature_attributions [n, F] float32: IG per raw feature
    target [n] int64: output column explained; output, baseline_output, delta [n] float32:
        f(x), f(baseline) and sum(attributions) - (f(x) - f(baseline)) (completeness error)
    pixels__<feature> [n, h, w] float32: IG per pixel (summed over channels), image features
    tokens__<feature> [n, L] str, token_ids__<feature> [n, L] int64, token_attributions__<feature>
        [n, L] float32: text features (padding: id 0, token "")
    permutation_features [P] str, permutation_drops [P, repeats] float32: metric drop per repeat
Without a Keras side (an export by another tool), only the permutation arrays are written.
evaluation.json's `explanations` holds the summaries the report draws.
"""
from __future__ import annotations

import base64
import io
import time
from contextlib import contextmanager

import numpy as np

ATTRIBUTIONS_FILE = "attributions.npz"
SHOWN = 8  # images / texts drawn in the report
MAX_LEVELS = 50  # a string column with more distinct values (free text) gets no association


# ------------------------------------------------------------------ integrated gradients
def _entry_layers(model) -> dict[str, list]:
    """Integer model input name -> the layers reading it (their outputs are the first
    differentiable representation), found inside a nested functional model that reads it too
    (e.g. the rbf and som families' "encoder")."""
    import keras

    ints = {id(t): t.name for t in model.inputs if "int" in str(t.dtype)}
    out: dict[str, list] = {}
    for layer in model.layers:
        for node in getattr(layer, "_inbound_nodes", []):
            read = [ints[id(t)] for t in node.input_tensors if id(t) in ints]
            if read and isinstance(layer, keras.Model) and getattr(layer, "inputs", None):
                for name, inner in _entry_layers(layer).items():  # matched by input name
                    if name in read:
                        out.setdefault(name, []).extend(inner)
                continue
            for name in read:
                out.setdefault(name, []).append(layer)
    return out


@contextmanager
def _injected(layers_values: list):
    """Make each layer return the given tensor (the interpolated representation) when called;
    its mask still comes from its real (id) input."""
    try:
        for layer, value in layers_values:
            layer.call = (lambda v: lambda *args, **kwargs: v)(value)
        yield
    finally:
        for layer, _ in layers_values:
            del layer.call


def integrated_gradients(model, inputs: dict, steps: int = 32, baseline: str = "zero",
                         target: np.ndarray | None = None, batch_rows: int = 2048) -> dict:
    """Integrated gradients of `model` (a functional Keras model) at transformed inputs.

    Args:
        model: the Keras model on transformed features.
        inputs: model input name -> array [n, ...] (ids stay integer).
        steps: trapezoid intervals on the straight path from the baseline.
        baseline: "zero" or "mean" (of the rows), in the first differentiable representation.
        target: output column explained per row; default the argmax of f(x) (column 0 for one output).
        batch_rows: examples x (steps + 1) evaluated per call.

    Returns:
        {"attributions": {input name: [n, ...] summed over representation axes beyond the
        input's own shape}, "output", "baseline_output", "target"}.

    Raises:
        ValueError: an unknown baseline, naming it.
    """
    import tensorflow as tf

    if baseline not in ("zero", "mean"):
        raise ValueError(f"integrated gradients: baseline {baseline!r} is not 'zero' or 'mean'")
    entries = _entry_layers(model)
    names = [t.name for t in model.inputs]
    n = len(next(iter(inputs.values())))
    # The representation of every differentiable path start: (input name, layer or None) -> [n, ...]
    reps = {}
    for name in names:
        x = tf.convert_to_tensor(inputs[name])
        if name in entries:
            for layer in entries[name]:
                reps[(name, layer.name)] = tf.cast(layer(x), tf.float32).numpy()
        else:
            reps[(name, None)] = np.asarray(inputs[name], np.float32)
    bases = {k: (np.zeros_like(v) if baseline == "zero" else np.broadcast_to(v.mean(0), v.shape).copy())
             for k, v in reps.items()}
    layers = {layer.name: layer for ls in entries.values() for layer in ls}
    alphas = np.linspace(0.0, 1.0, steps + 1, dtype=np.float32)
    weights = np.full(steps + 1, 1.0 / steps, np.float32)
    weights[[0, -1]] /= 2
    chunk = max(1, batch_rows // (steps + 1))
    attr = {k: np.zeros_like(v) for k, v in reps.items()}
    out, base_out, tgt = np.zeros(n, np.float32), np.zeros(n, np.float32), np.zeros(n, np.int64)
    for start in range(0, n, chunk):
        sl = slice(start, min(n, start + chunk))
        b = sl.stop - sl.start
        path = {}
        for k, v in reps.items():
            x, x0 = v[sl], bases[k][sl]
            shape = (-1,) + (1,) * (v.ndim - 1)
            p = x0[:, None] + alphas.reshape(1, -1, *shape[1:]) * (x - x0)[:, None]
            path[k] = tf.constant(p.reshape(b * (steps + 1), *v.shape[1:]))
        ids = {name: tf.constant(np.repeat(np.asarray(inputs[name])[sl], steps + 1, axis=0))
               for name in names if name in entries}
        with tf.GradientTape() as tape:
            for t in path.values():
                tape.watch(t)
            feed = {name: ids[name] if name in entries else path[(name, None)] for name in names}
            with _injected([(layers[lname], path[(name, lname)]) for name, lname in path if lname]):
                y = tf.cast(model(feed, training=False), tf.float32)
            y = tf.reshape(y, [b * (steps + 1), -1])
            y_end = y.numpy().reshape(b, steps + 1, -1)
            col = (np.argmax(y_end[:, -1], axis=1) if target is None else np.asarray(target)[sl]).astype(np.int64)
            picked = tf.gather(y, np.repeat(col, steps + 1), axis=1, batch_dims=1)
        grads = tape.gradient(picked, list(path.values()))
        for (k, v), g in zip(path.items(), grads):
            g = (np.zeros(v.shape, np.float32) if g is None else g.numpy()).reshape(b, steps + 1, *reps[k].shape[1:])
            avg = np.tensordot(weights, np.moveaxis(g, 1, 0), axes=1)
            attr[k][sl] = (reps[k][sl] - bases[k][sl]) * avg
        out[sl], base_out[sl], tgt[sl] = (y_end[np.arange(b), -1, col], y_end[np.arange(b), 0, col], col)
    summed: dict[str, np.ndarray] = {}
    for (name, lname), v in attr.items():
        keep = np.ndim(inputs[name])  # the input's own axes (batch, tokens / pixels ...)
        v = v.reshape(*v.shape[:keep], -1).sum(-1) if v.ndim > keep else v
        summed[name] = summed.get(name, 0) + v
    return {"attributions": summed, "output": out, "baseline_output": base_out, "target": tgt}


# ------------------------------------------------------------------ permutation importance
def importance_metric(task) -> tuple[str, bool]:
    """(metric, lower is better) permutation importance measures: AUC when the task has it, else
    the task's headline metric."""
    metric = "auc" if "auc" in task.METRICS else (getattr(task, "HEADLINE", ()) or task.METRICS)[0]
    return metric, metric in task.LOWER_IS_BETTER


def _metric(task, o, metric: str, mask=None) -> float | None:
    if mask is not None and not mask.any():
        return None
    v = task.metrics(o, mask).get(metric)
    return float(v) if isinstance(v, (int, float)) and np.isfinite(v) else None


def permutation_importance(score, task, labels: np.ndarray, frame: dict, missing: dict, features: list[str],
                           repeats: int, seed: int, threshold: float, groups: dict | None = None) -> dict:
    """Metric drop when each feature's column is shuffled.

    Args:
        score: (frame, missing) -> the task's scored output per row (the model through serving_default).
        task: the model's task; labels: the rows' labels.
        frame, missing: the rows' columns (as pipeline/artifacts/scoring.py reads them).
        features: the columns to shuffle, one at a time.
        repeats, seed: shuffles per feature, and the seed of all of them.
        threshold: decision threshold of the task's outcomes.
        groups: {name: bool mask} where the drop is also measured (slices of sensitive features).

    Returns:
        {"metric", "lower_is_better", "base", "features": {f: {"mean", "std", "drops"}}, "groups":
        {name: {"rows", "base", "features": {f: mean drop or None}}}}
    """
    metric, lower = importance_metric(task)
    sign = -1.0 if lower else 1.0
    groups = groups or {}
    rng = np.random.default_rng(seed)

    def measure(scores):
        o = task.add_inputs(task.outcomes(labels, scores, threshold), frame)
        return _metric(task, o, metric), {g: _metric(task, o, metric, m) for g, m in groups.items()}

    base, base_groups = measure(score(frame, missing))
    out = {"metric": metric, "lower_is_better": lower, "base": base, "features": {},
           "groups": {g: {"rows": int(m.sum()), "base": base_groups[g], "features": {}} for g, m in groups.items()}}
    for f in features:
        drops, group_drops = [], {g: [] for g in groups}
        for _ in range(repeats):
            perm = rng.permutation(len(labels))
            value, by_group = measure(score({**frame, f: frame[f][perm]}, {**missing, f: missing[f][perm]}))
            drops.append(sign * (base - value) if None not in (base, value) else np.nan)
            for g, v in by_group.items():
                group_drops[g].append(sign * (base_groups[g] - v) if None not in (base_groups[g], v) else np.nan)
        d = np.array(drops, np.float64)
        out["features"][f] = {"mean": _mean(d), "std": float(np.nanstd(d)) if np.isfinite(d).any() else None,
                              "drops": [float(x) for x in d]}
        for g, v in group_drops.items():
            out["groups"][g]["features"][f] = _mean(np.array(v, np.float64))
    return out


def _mean(v: np.ndarray) -> float | None:
    return float(np.nanmean(v)) if np.isfinite(v).any() else None


# ------------------------------------------------------------------ proxies
def _levels(values: np.ndarray, numeric: bool, buckets: int = 4) -> np.ndarray | None:
    """Category codes of a column (numeric: quantile buckets); None for free text (too many levels)."""
    if numeric:
        v = np.asarray(values, np.float64)
        edges = np.unique(np.nanquantile(v, np.linspace(0, 1, buckets + 1)[1:-1])) if np.isfinite(v).any() else []
        return np.searchsorted(edges, v, side="right")
    codes = np.unique(np.asarray(values).astype(str), return_inverse=True)
    return codes[1].reshape(-1) if len(codes[0]) <= MAX_LEVELS else None


def cramers_v(a: np.ndarray, b: np.ndarray) -> float:
    """Cramér's V of two code arrays (0: independent, 1: one determines the other)."""
    table = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(table, (a, b), 1)
    table = table[table.sum(1) > 0][:, table.sum(0) > 0]
    k = min(table.shape) - 1
    if k == 0:
        return 0.0
    n = table.sum()
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / n
    chi2 = ((table - expected) ** 2 / expected).sum()
    return float(np.sqrt(chi2 / (n * k)))


def correlation_ratio(groups: np.ndarray, values: np.ndarray) -> float:
    """η: the share of a numeric column's spread that the groups explain, square-rooted (0..1)."""
    ok = np.isfinite(values)
    g, v = groups[ok], values[ok]
    total = ((v - v.mean()) ** 2).sum() if len(v) else 0.0
    if total == 0:
        return 0.0
    between = sum(((g == k).sum() * (v[g == k].mean() - v.mean()) ** 2) for k in np.unique(g))
    return float(np.sqrt(between / total))


def associations(frame: dict, features: list[str], sensitive: list[str], numeric: set[str]) -> dict:
    """{sensitive: {feature: association in [0, 1] or None}} (None: free text, images)."""
    out = {}
    for s in sensitive:
        s_codes = _levels(frame[s], s in numeric)
        row = {}
        for f in features:
            values = frame[f]
            if f == s or s_codes is None or np.ndim(values) != 1:
                row[f] = None
            elif f in numeric:
                row[f] = (correlation_ratio(s_codes, np.asarray(values, np.float64)) if s not in numeric
                          else cramers_v(s_codes, _levels(values, True)))
            else:
                codes = _levels(values, False) if not isinstance(values[0] if len(values) else "", bytes) else None
                row[f] = None if codes is None else cramers_v(s_codes, codes)
        out[s] = row
    return out


def proxies(assoc: dict, shares: dict[str, float], min_association: float, min_share: float) -> list[dict]:
    """The features standing in for a sensitive attribute: association >= min_association and
    importance share >= min_share, strongest first."""
    found = [{"feature": f, "sensitive": s, "association": a, "importance_share": shares.get(f, 0.0)}
             for s, row in assoc.items() for f, a in row.items()
             if a is not None and a >= min_association and shares.get(f, 0.0) >= min_share]
    return sorted(found, key=lambda p: -p["association"] * p["importance_share"])


def importance_shares(perm: dict | None, ig: dict | None) -> dict[str, float]:
    """Each feature's share of the total importance, the larger of permutation's and IG's."""
    shares: dict[str, float] = {}
    sources = []
    if perm:
        sources.append({f: max(v["mean"] or 0.0, 0.0) for f, v in perm["features"].items()})
    if ig:
        sources.append(ig["mean_abs"])
    for src in sources:
        total = sum(src.values())
        for f, v in src.items():
            shares[f] = max(shares.get(f, 0.0), v / total if total > 0 else 0.0)
    return shares


# ------------------------------------------------------------------ the stage's call
def _sample(rows: int, n: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(rows, min(n, rows), replace=False))


def _shown(rows: np.ndarray, wrong: np.ndarray, n: int) -> list[int]:
    """Positions in `rows` of up to n examples, half misclassified when there are (fixed order)."""
    bad = [i for i, r in enumerate(rows) if wrong[r]]
    good = [i for i, r in enumerate(rows) if not wrong[r]]
    half = min(len(bad), n // 2)
    return sorted(bad[:half] + good[:n - half])


def _heatmap_png(values: np.ndarray) -> str:
    """A saliency map as base64 PNG: red positive, blue negative, scaled by the map's max |value|."""
    import tensorflow as tf

    top = float(np.abs(values).max()) or 1.0
    v = np.clip(values / top, -1, 1)
    rgb = np.stack([1 - np.clip(-v, 0, 1), 1 - np.abs(v), 1 - np.clip(v, 0, 1)], -1)
    return base64.b64encode(tf.io.encode_png((rgb * 255).astype(np.uint8)).numpy()).decode("ascii")


def _token_strings(ids: np.ndarray, vocabulary: list[str]) -> np.ndarray:
    """Token ids -> tokens (models/kinds/text.py: 0 padding -> "", 1 out of vocabulary -> "[UNK]")."""
    table = np.array(["", "[UNK]", *vocabulary], dtype=object)
    return table[np.clip(ids, 0, len(table) - 1)].astype(str)


def explain(cfg, task, o, data, model_uri: str, sensitive: list[str], numeric: set[str], config_dir: str,
            threshold: float, batch_size: int, buckets: int, out_uri: str, log=None) -> dict:
    """The `explanations` section of evaluation.json; writes ATTRIBUTIONS_FILE under `out_uri`.

    Args:
        cfg: ExplainConfig (pipeline/config_evaluation.py).
        task, o: the model's task and its Outcomes on the evaluated split; data: the split.
        model_uri: the SavedModel; sensitive: sensitive features; numeric: numeric columns.
        config_dir: where the user's family module is looked up (load_trainer).
        threshold, batch_size, buckets: evaluate's decision threshold, scoring batch and quantile
            buckets of numeric sensitive features.
        out_uri: the evaluation output directory.
    """
    import tensorflow as tf

    from kfx.components.evaluation.metrics import slice_values
    from kfx.pipeline.artifacts.scoring import Split, feature_inputs, input_specs, load, wire_name

    started = time.time()
    fn = load(model_uri).signatures["serving_default"]
    raw = sorted(wire_name(a, s) for a, s in input_specs(fn).items())  # fixed order: same shuffles each run
    rows = _sample(data.rows, cfg.rows, cfg.seed)
    frame = {k: v[rows] for k, v in data.frame.items()}
    missing = {k: v[rows] for k, v in data.missing.items()}
    labels = data.frame[task.label][rows] if task.label in data.frame else None
    arrays: dict[str, np.ndarray] = {}
    result: dict = {"rows": int(len(rows)), "features": raw, "sensitive": sensitive, "notes": [],
                    "proxy_association": cfg.proxy_association, "proxy_importance": cfg.proxy_importance}

    def score(fr, miss):
        split = Split(fr, miss, [b""] * len(rows))
        parts = [fn(**feature_inputs(fn, split, s, s + batch_size))[task.SCORE_OUTPUT].numpy()
                 for s in range(0, len(rows), batch_size)]
        return np.concatenate(parts).astype(np.float64)

    groups = {}
    for s in sensitive:  # numeric ones in quantile buckets, as evaluate's fairness groups them
        codes = slice_values(frame, (s,), numeric, buckets).astype(str)
        for value in np.unique(codes[~missing[s]]):
            groups[f"{s}={value}"] = (codes == value) & ~missing[s]
    perm = None
    if cfg.permutation_repeats and labels is not None:
        perm = permutation_importance(score, task, labels, frame, missing, raw, cfg.permutation_repeats,
                                      cfg.seed, threshold, groups)
        arrays["permutation_features"] = np.array(raw, dtype=str)
        arrays["permutation_drops"] = np.array([perm["features"][f]["drops"] for f in raw], np.float32)
    result["permutation"] = perm

    ig = None
    try:
        ig, ig_arrays = _integrated(cfg, task, o, data, rows, model_uri, config_dir, groups)
        arrays.update(ig_arrays)
    except (FileNotFoundError, ValueError, KeyError, NotImplementedError, TypeError) as err:
        # No Keras side (another tool's export), or a model this cannot interpolate (not a
        # functional model of one output): said in the report, the rest of evaluate goes on.
        result["notes"].append(f"integrated gradients skipped: {err}")
    result["integrated_gradients"] = ig
    tabular = [f for f in raw if np.ndim(frame[f]) == 1 and not _is_bytes(frame[f])]
    result["associations"] = associations(frame, tabular, [s for s in sensitive if s in frame], numeric)
    result["importance_share"] = importance_shares(perm, ig)
    result["proxies"] = proxies(result["associations"], result["importance_share"], cfg.proxy_association,
                                cfg.proxy_importance)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    with tf.io.gfile.GFile(f"{out_uri}/{ATTRIBUTIONS_FILE}", "wb") as f:
        f.write(buf.getvalue())
    result["file"] = ATTRIBUTIONS_FILE
    result["seconds"] = round(time.time() - started, 2)
    if log is not None:
        log.info("explain: %d rows, %.1fs, proxies %s", len(rows), result["seconds"],
                 [p["feature"] for p in result["proxies"]])
    return result


def _is_bytes(values) -> bool:
    return len(values) > 0 and isinstance(values[0], bytes)


def _integrated(cfg, task, o, data, rows: np.ndarray, model_uri: str, config_dir: str, groups: dict):
    """(summary, arrays) of integrated gradients on the first `cfg.samples` sampled rows (images
    and texts: a fixed mix of right and wrong predictions)."""
    import tensorflow as tf

    from kfx.components.evaluation.samples import stored_image
    from kfx.components.training.export import load_trainer
    from kfx.models.kinds.base import IMAGE, SEQUENCE
    from kfx.models.kinds.graph import GRAPH
    from kfx.models.preprocess import raw_feature_spec

    pre, model, spec = load_trainer(model_uri, config_dir)
    if not getattr(model, "inputs", None) or len(getattr(model, "outputs", None) or ()) != 1:
        raise ValueError(f"integrated gradients need a functional Keras model with one output; "
                         f"{type(model).__name__} of the export is not")
    outputs = spec["outputs"]
    nodes = [k for k, v in outputs.items() if v["kind"] == GRAPH]
    if nodes:
        raise ValueError(f"the model's input {nodes[0]!r} is a graph node id (kind graph_node): the prediction "
                         f"comes from the graph the model holds, so attributions over node ids are not meaningful")
    detailed = any(v["kind"] in (IMAGE, SEQUENCE) for v in outputs.values())
    wrong = (o.y != o.pred) if task.classes is not None else np.zeros(data.rows, bool)
    # Tabular: the first `samples` rows of the sample; images and texts: right and wrong ones.
    pos = (np.arange(min(cfg.samples, len(rows))) if not detailed
           else np.array(_shown(rows, wrong, cfg.samples), np.int64))
    chosen = rows[pos]
    parse = raw_feature_spec(spec)
    feats = {}
    for name, fs in parse.items():
        values = data.frame[name][chosen]
        miss = data.missing[name][chosen]
        if fs.dtype == tf.string:
            feats[name] = tf.constant(np.array([v if isinstance(v, bytes) else str(v) for v in values], object))
        else:  # a missing number gets the transform's default, as a tf.Example without it would
            v = np.where(miss.reshape(miss.shape + (1,) * (np.ndim(values) - 1)), fs.default_value, values)
            feats[name] = tf.constant(np.asarray(v).astype(fs.dtype.as_numpy_dtype))
    transformed = {k: v.numpy() for k, v in pre(feats).items()}
    res = integrated_gradients(model, {t.name: transformed[t.name] for t in model.inputs}, cfg.steps,
                               cfg.baseline)
    source = {t["output"]: t["feature"] for t in spec["transforms"]}
    per_feature: dict[str, np.ndarray] = {}
    arrays = {"rows": chosen.astype(np.int64), "target": res["target"], "output": res["output"],
              "baseline_output": res["baseline_output"]}
    shown = []
    for name, a in res["attributions"].items():
        raw_name = source.get(name, name)
        kind = outputs.get(name, {}).get("kind")
        total = a.reshape(len(chosen), -1).sum(1)
        per_feature[raw_name] = per_feature.get(raw_name, 0) + total
        if kind == IMAGE:  # summed over channels: one value per pixel
            arrays[f"pixels__{raw_name}"] = a.reshape(*a.shape[:3], -1).sum(-1).astype(np.float32)
        elif kind == SEQUENCE:
            state = next(t["state"] for t in spec["transforms"] if t["output"] == name)
            ids = transformed[name].astype(np.int64)
            arrays[f"token_ids__{raw_name}"] = ids
            arrays[f"tokens__{raw_name}"] = _token_strings(ids, state["vocabulary"])
            arrays[f"token_attributions__{raw_name}"] = np.where(ids > 0, a, 0).astype(np.float32)
    features = sorted(per_feature)
    matrix = np.stack([per_feature[f] for f in features], 1).astype(np.float32)
    arrays["features"] = np.array(features, dtype=str)
    arrays["feature_attributions"] = matrix
    delta = matrix.sum(1) - (res["output"] - res["baseline_output"])
    arrays["delta"] = delta.astype(np.float32)
    scale = np.maximum(np.abs(res["output"] - res["baseline_output"]), 1e-6)
    mean_abs = np.abs(matrix).mean(0)
    sample_groups = {g: m[pos] for g, m in groups.items()}
    summary = {"rows": int(len(chosen)), "steps": cfg.steps, "baseline": cfg.baseline,
               "mean_abs": dict(zip(features, map(float, mean_abs))),
               "mean": dict(zip(features, map(float, matrix.mean(0)))),
               "groups": {g: {"rows": int(m.sum()),
                              "mean_abs": dict(zip(features, map(float, np.abs(matrix[m]).mean(0))))}
                          for g, m in sample_groups.items() if m.any()},
               "completeness_error": float(np.median(np.abs(delta) / scale)),
               "shown": shown}
    if detailed:
        labels = task.prediction_labels(o, o.y)
        preds = task.prediction_labels(o, o.pred)
        order = [i for i in range(len(chosen)) if wrong[chosen[i]]][:SHOWN // 2]
        order += [i for i in range(len(chosen)) if not wrong[chosen[i]]][:SHOWN - len(order)]
        for i in sorted(order):
            r = chosen[i]
            item = {"row": int(r), "label": _plain(labels[r]), "prediction": _plain(preds[r]),
                    "correct": bool(not wrong[r]), "output": float(res["output"][i]),
                    "target": _target_name(task, res["target"][i])}
            for f in features:
                if f"pixels__{f}" in arrays:
                    img = stored_image(data.frame[f][r]) if not data.missing[f][r] else None
                    if img:
                        item["image"] = {"feature": f, "mime": img[0], "data": base64.b64encode(img[1]).decode("ascii")}
                    item["saliency"] = _heatmap_png(arrays[f"pixels__{f}"][i])
                if f"tokens__{f}" in arrays:
                    keep = arrays[f"token_ids__{f}"][i] > 0
                    item["tokens"] = {"feature": f, "tokens": arrays[f"tokens__{f}"][i][keep].tolist(),
                                      "attributions": [round(float(x), 5)
                                                       for x in arrays[f"token_attributions__{f}"][i][keep]]}
            shown.append(item)
    return summary, arrays


def _target_name(task, column: int):
    """What an output column means: a binary model's one column is P(positive)."""
    if not task.classes:
        return None
    return task.info.get("positive") or task.classes[column] if len(task.classes) == 2 else task.classes[column]


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


# ------------------------------------------------------------------ report
def render(ex: dict) -> str:
    """The report section: importance bars, the proxy table, saliency maps and highlighted tokens."""
    from kfx.components.evaluation.report import _e, _fmt, bar_chart, table

    parts = [f"<h2>Explanations</h2><p>{ex['rows']:,} sampled rows; computed in {ex['seconds']:.1f}s. "
             f"Attributions per example: <code>{_e(ex['file'])}</code>.</p>"]
    parts += [f"<p><i>{_e(n)}</i></p>" for n in ex["notes"]]
    perm, ig = ex.get("permutation"), ex.get("integrated_gradients")
    plots = []
    if perm and len(ex["features"]) == 1:  # one input (an image, a text): no ranking to draw
        v = perm["features"][ex["features"][0]]
        parts.append(f"<p>Shuffling <b>{_e(ex['features'][0])}</b> across rows drops {perm['metric']} by "
                     f"{_fmt(v['mean'], 3)} (from {_fmt(perm['base'], 3)}).</p>")
    elif perm:
        feats = sorted(perm["features"], key=lambda f: -(perm["features"][f]["mean"] or 0))
        plots.append(bar_chart("explain-permutation",
                               f"Permutation importance: {perm['metric']} drop (base {_fmt(perm['base'], 3)})", feats,
                               {"drop": [perm["features"][f]["mean"] for f in feats]},
                               {"drop": [(None if v["mean"] is None or v["std"] is None
                                          else (v["mean"] - v["std"], v["mean"] + v["std"]))
                                         for v in (perm["features"][f] for f in feats)]}))
    if ig and len(ig["mean_abs"]) > 1:
        feats = sorted(ig["mean_abs"], key=lambda f: -ig["mean_abs"][f])
        plots.append(bar_chart("explain-ig", f"Integrated gradients: mean |attribution| ({ig['rows']} rows, "
                               f"{ig['baseline']} baseline)", feats, {"mean |attr|": [ig["mean_abs"][f] for f in feats]}))
    parts.append("<div class='plots'>" + "".join(plots) + "</div>")
    if ig:
        parts.append(f"<p>Completeness: median |sum of attributions &minus; (f(x) &minus; f(baseline))| is "
                     f"{ig['completeness_error']:.2%} of |f(x) &minus; f(baseline)| ({ig['steps']} steps).</p>")
    order = sorted(ex["features"], key=lambda f: -ex["importance_share"].get(f, 0))
    if len(order) > 1:
        for what, by_group, title in (
                ("permutation", {g: v["features"] for g, v in ((perm or {}).get("groups") or {}).items()},
                 f"{(perm or {}).get('metric')} drop when shuffled"),
                ("integrated gradients", {g: v["mean_abs"] for g, v in ((ig or {}).get("groups") or {}).items()},
                 "mean |attribution|")):
            if by_group:
                counts = (perm if what == "permutation" else ig)["groups"]
                parts.append(f"<h3>Importance by sensitive group: {what} ({_e(title)})</h3>")
                parts.append(table(["feature", *[f"{g} (n={counts[g]['rows']})" for g in by_group]],
                                   [[f, *[v.get(f) for v in by_group.values()]] for f in order]))
    assoc = ex.get("associations") or {}
    if assoc:
        sens = list(assoc)
        flagged = {(p["feature"], p["sensitive"]) for p in ex["proxies"]}
        feats = order
        parts.append("<h3>Proxies for sensitive attributes</h3><p>Association of each feature with each "
                     "sensitive feature on the sampled rows (Cramér's V; correlation ratio for numbers) beside "
                     f"its share of the importance. Flagged (red): association &ge; {ex['proxy_association']} "
                     f"and importance share &ge; {ex['proxy_importance']}.</p>")
        rows = [[f, ex["importance_share"].get(f), *[assoc[s].get(f) for s in sens],
                 ", ".join(s for s in sens if (f, s) in flagged) or ""] for f in feats]
        parts.append(table(["feature", "importance share", *[f"association with {s}" for s in sens], "proxy for"],
                           rows, ["fail" if r[-1] else "" for r in rows]))
    shown = (ig or {}).get("shown") or []
    if any("saliency" in s for s in shown):
        cells = []
        for s in shown:
            cls = "right" if s["correct"] else "wrong"
            img = s.get("image")
            pic = f"<img src='data:{img['mime']};base64,{img['data']}' alt='row {s['row']}'>" if img else ""
            cells.append(f"<figure class='sample {cls}'>{pic}<img src='data:image/png;base64,{s['saliency']}' "
                         f"alt='saliency of row {s['row']}'><figcaption>{_e(s['label'])} &rarr; "
                         f"{_e(s['prediction'])}<br><small>row {s['row']}, attributing "
                         f"{_e(s['target'])}</small></figcaption></figure>")
        parts.append("<h3>Saliency maps</h3><p>Integrated gradients per pixel (red raises the explained "
                     "class's probability, blue lowers it), beside each image; wrong predictions in red.</p>"
                     f"<div class='samples'>{''.join(cells)}</div>")
    if any("tokens" in s for s in shown):
        items = []
        for s in shown:
            t = s["tokens"]
            top = max([abs(a) for a in t["attributions"]] + [1e-9])
            spans = "".join(
                f"<span style='background:{_color(a / top)}' title='{a:+.4f}'>{_e(tok)}</span> "
                for tok, a in zip(t["tokens"], t["attributions"]))
            style = "" if s["correct"] else " style='color:#d62728'"
            items.append(f"<li class='{'right' if s['correct'] else 'wrong'}'><b{style}>{_e(s['label'])} &rarr; "
                         f"{_e(s['prediction'])}</b> (row {s['row']}, attributing {_e(s['target'])}): {spans}</li>")
        parts.append("<h3>Token attributions</h3><p>Integrated gradients per token (green raises the "
                     "explained class's probability, red lowers it; hover for the value).</p>"
                     f"<ul class='tokens'>{''.join(items)}</ul>")
    return "\n".join(parts)


def _color(v: float) -> str:
    """rgba green for positive, red for negative, alpha by |v| in [0, 1]."""
    return f"rgba(0,160,0,{min(abs(v), 1):.2f})" if v >= 0 else f"rgba(214,39,40,{min(abs(v), 1):.2f})"
