"""transform: full-pass Beam analyzers over the train split -> a fixed Keras preprocessing graph.

What each feature becomes comes from the schema (types, label, domains, natural-language
features) plus `transform.features` overrides, with defaults by type: numbers are normalized,
strings one-hot encoded (embedded above `one_hot_max` values), natural-language strings
tokenized. The analyzers (moments, quantile boundaries, top-k vocabularies, token vocabularies,
pixel scaling, label classes) run in Beam over batches of parsed Examples: a worker parses a
whole batch with tf.io.parse_example and emits one partial accumulator per batch, and a
CombineFn merges them (per-element Beam would be ~10x slower).

Outputs:
    transform_graph: transform.json (what components/modeling_preprocess.py rebuilds the Keras
        preprocessing layer from), analyzers.json (every analyzer result, for people), and with
        `materialize: true` transformed_examples/Split-<name>/ (gzip TFRecord of transformed
        features).
"""
from __future__ import annotations

import json
from typing import Any, Iterator

from kfx.pipeline.config_modeling import TransformConfig
from kfx.pipeline.component import ComponentError, ComponentSpec, Context

TRANSFORM_GRAPH = "transform_graph"
NUMERIC_KINDS = ("normalize", "bucketize", "passthrough", "one_hot", "embed", "hash")
STRING_KINDS = ("one_hot", "embed", "hash", "text")


# ------------------------------------------------------------------ the plan (driver side)
def plan(schema, columns: dict[str, str], cfg) -> tuple[dict, list[dict], dict]:
    """What to analyze and build, from the schema and the transform config.

    Args:
        schema: tensorflow_metadata Schema (source of names, types, label, domains).
        columns: examples' column types {name: "int"|"float"|"string"} (ingest's columns.json).
        cfg: TransformConfig.

    Returns:
        (raw_features, transforms, task): raw serving inputs, transforms without state yet,
        and the task description without class counts.

    Raises:
        ComponentError: a configured feature that does not exist or a kind that does not fit
            its type, or a task the label cannot support.
    """
    from kfx.pipeline.artifacts import label_key, string_domain

    label = label_key(schema)
    features = {f.name: f for f in schema.feature}
    for name in list(cfg.features) + list(cfg.exclude):
        if name not in features:
            raise ComponentError(f"transform: feature {name!r} in transform config is not in the schema; "
                                 f"features are {sorted(features)}")
        if name == label:
            raise ComponentError(f"transform: {name!r} is the label; it cannot be a model input")
    raw, transforms = {}, []
    for name, f in features.items():
        if name == label or name in cfg.exclude:
            continue
        dtype = {"int": "int64", "float": "float32", "string": "string"}.get(columns.get(name, ""))
        if dtype is None:
            raise ComponentError(f"transform: schema feature {name!r} is not a column of the examples "
                                 f"(columns: {sorted(columns)})")
        override = cfg.features.get(name)
        if override is not None:
            kinds = override.kinds
        elif dtype == "string":
            kinds = ("text",) if f.HasField("natural_language_domain") else (cfg.string_default,)
        else:
            kinds = (cfg.numeric_default,)
        shape: list[int] = []
        for kind in kinds:
            allowed = STRING_KINDS if dtype == "string" else NUMERIC_KINDS + ("image",)
            if kind not in allowed:
                raise ComponentError(f"transform: feature {name!r} is {dtype}; kind {kind!r} needs "
                                     f"{'a number' if dtype == 'string' else 'a string'} (allowed: {list(allowed)})")
            opts = _options(kind, override, cfg)
            if kind == "image":
                if override is None or override.image_shape is None:
                    raise ComponentError(f"transform: image feature {name!r} needs transform.features.{name}.image_shape")
                shape = [_prod(override.image_shape)]
                opts["shape"] = list(override.image_shape)
            if kind == "one_hot" and override is None and dtype == "string":
                opts["auto_embed_above"] = cfg.one_hot_max
            transforms.append({"feature": name, "kind": kind,
                               "output": name if len(kinds) == 1 else f"{name}__{kind}", "options": opts})
        raw[name] = {"dtype": dtype, "shape": shape, "default": "" if dtype == "string" else 0}
    if not transforms:
        raise ComponentError("transform: no feature left for the model (all excluded?)")
    return raw, transforms, _task(schema, features, label, columns, cfg, string_domain)


def _prod(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _options(kind: str, override, cfg) -> dict[str, Any]:
    get = (lambda key, default: default if override is None or getattr(override, key) is None
           else getattr(override, key))
    if kind == "normalize":
        return {"log": bool(override.log) if override is not None else False}
    if kind == "bucketize":
        return {"num_buckets": get("num_buckets", cfg.num_buckets)}
    if kind in ("one_hot", "embed", "text"):
        return {"top_k": get("top_k", cfg.top_k), "min_frequency": get("min_frequency", cfg.min_frequency),
                "num_oov_buckets": get("num_oov_buckets", cfg.num_oov_buckets),
                **({"sequence_length": override.sequence_length if override else 64} if kind == "text" else {})}
    if kind == "hash":
        return {"num_bins": get("hash_buckets", cfg.hash_buckets)}
    return {}


def _task(schema, features, label, columns, cfg, string_domain) -> dict:
    """The task description before analysis: the configured task, or the one `auto` picks."""
    from kfx.models import tasks

    if label is None:
        raise ComponentError("transform: the schema has no label (annotation tag 'label'); set schema.label")
    kind = columns.get(label)
    if kind is None:
        raise ComponentError(f"transform: label {label!r} is not a column of the examples")
    dtype = {"int": "int64", "float": "float32", "string": "string"}[kind]
    domain = string_domain(schema, features[label]) if kind == "string" else None
    vocab = list(cfg.label_vocabulary) if cfg.label_vocabulary else (sorted(domain) if domain else None)
    if vocab is None and kind == "int" and features[label].HasField("int_domain"):
        d = features[label].int_domain
        if d.max - d.min <= 1000:
            vocab = [str(v) for v in range(d.min, d.max + 1)]
    auto = cfg.task == tasks.AUTO
    name = tasks.auto(dtype, kind == "string" or features[label].HasField("int_domain")) if auto else cfg.task
    try:
        task = tasks.get(name).plan(label, dtype, vocab)
    except ValueError as err:
        raise ComponentError(f"transform: {err}") from None
    # auto picked before the label was analyzed; finalize may narrow it (two classes: binary).
    return {**task, tasks.AUTO: True} if auto else task


# ------------------------------------------------------------------ analyzers (Beam workers)
def _parse_spec(raw: dict, label: str, label_dtype: str):
    import tensorflow as tf

    spec = {name: tf.io.VarLenFeature(tf.as_dtype(r["dtype"])) for name, r in raw.items()}
    spec[label] = tf.io.VarLenFeature(tf.as_dtype(label_dtype))
    return spec


def _batches(path: str, raw: dict, label: str, label_dtype: str, batch_size: int) -> Iterator[tuple[int, dict]]:
    """(rows, {feature: (values ndarray, row ids ndarray)}) per batch of one TFRecord file."""
    import tensorflow as tf

    spec = _parse_spec(raw, label, label_dtype)
    ds = tf.data.TFRecordDataset(path, compression_type="GZIP" if path.endswith(".gz") else "")
    for batch in ds.batch(batch_size):
        parsed = tf.io.parse_example(batch, spec)
        n = int(batch.shape[0])
        yield n, {k: (v.values.numpy(), v.indices.numpy()[:, 0]) for k, v in parsed.items()}


def _moments(x) -> list:
    import numpy as np

    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return [0, 0.0, 0.0, float("inf"), float("-inf")]
    mean = float(x.mean())
    return [int(x.size), mean, float(((x - mean) ** 2).sum()), float(x.min()), float(x.max())]


def _merge_moments(a: list, b: list) -> list:
    """Chan et al.'s parallel update of (count, mean, M2, min, max)."""
    na, ma, m2a, lo_a, hi_a = a
    nb, mb, m2b, lo_b, hi_b = b
    n = na + nb
    if n == 0:
        return a
    delta = mb - ma
    return [n, ma + delta * nb / n, m2a + m2b + delta * delta * na * nb / n, min(lo_a, lo_b), max(hi_a, hi_b)]


def _counts(values) -> dict:
    import numpy as np

    if len(values) == 0:
        return {}
    uniq, cnt = np.unique(values, return_counts=True)
    return dict(zip(uniq.tolist(), cnt.tolist()))


def _quantile_summary(values, weights, cap: int):
    """Weighted points summarising a distribution: exact up to `cap` distinct values, then compacted."""
    import numpy as np

    values = np.asarray(values, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    uniq, inv = np.unique(values, return_inverse=True)
    w = np.bincount(inv, weights=weights, minlength=len(uniq)) if len(uniq) else np.zeros(0)
    if len(uniq) <= cap:
        return uniq, w
    cum = np.cumsum(w)
    targets = (np.arange(cap) + 0.5) * cum[-1] / cap
    idx = np.minimum(np.searchsorted(cum, targets), len(uniq) - 1)
    return uniq[idx], np.full(cap, cum[-1] / cap)


def analyze_file(path: str, raw: dict, transforms: list[dict], task: dict, batch_size: int, cap: int):
    """Partial accumulators, one per batch of a TFRecord file (runs on a Beam worker)."""
    import numpy as np
    import tensorflow as tf

    needs = _needs(transforms, task)
    for n, cols in _batches(path, raw, task["label"], task["label_dtype"], batch_size):
        acc: dict[str, Any] = {"rows": n}
        for key, (what, feature, log) in needs.items():
            values, rows = cols[feature]
            if what == "missing":
                acc[key] = n - len(np.unique(rows))
            elif what == "moments":
                x = values.astype(np.float64)
                acc[key] = _moments(np.log1p(np.maximum(x, 0.0)) if log else x)
            elif what == "quantiles":
                v = values.astype(np.float64)
                acc[key] = _quantile_summary(v, np.ones_like(v), cap)
            elif what == "vocab":
                acc[key] = _counts(values)
            elif what == "tokens":
                text = tf.strings.regex_replace(tf.strings.lower(values), r"[!\"#$%&()\*\+,-\./:;<=>?@\[\\\]^_`{|}~']", "")
                acc[key] = _counts(tf.strings.split(text).flat_values.numpy())
        yield acc


def _needs(transforms: list[dict], task: dict) -> dict[str, tuple[str, str, bool]]:
    """Accumulator key -> (analyzer, feature, log) for the plan."""
    needs: dict[str, tuple[str, str, bool]] = {}
    for t in transforms:
        f, kind = t["feature"], t["kind"]
        needs[f"missing:{f}"] = ("missing", f, False)
        if kind in ("normalize", "passthrough", "image", "bucketize"):
            needs[f"moments:{f}"] = ("moments", f, False)
        if kind == "normalize" and t["options"].get("log"):
            needs[f"logmoments:{f}"] = ("moments", f, True)
        if kind == "bucketize":
            needs[f"quantiles:{f}"] = ("quantiles", f, False)
        if kind in ("one_hot", "embed"):
            needs[f"vocab:{f}"] = ("vocab", f, False)
        if kind == "text":
            needs[f"tokens:{f}"] = ("tokens", f, False)
    from kfx.models import tasks

    label, statistic = task["label"], tasks.get(task["type"]).LABEL_STATISTIC
    needs[f"missing:{label}"] = ("missing", label, False)
    needs[f"{statistic}:{label}"] = (statistic, label, False)
    return needs


def merge_accumulators(accs, cap: int) -> dict:
    """Merge partial accumulators (the CombineFn's merge; associative and commutative)."""
    import numpy as np

    out: dict[str, Any] = {}
    for acc in accs:
        for key, value in acc.items():
            if key not in out:
                out[key] = value
            elif key == "rows" or key.startswith("missing:"):
                out[key] += value
            elif key.startswith(("moments:", "logmoments:")):
                out[key] = _merge_moments(out[key], value)
            elif key.startswith("quantiles:"):
                out[key] = _quantile_summary(np.concatenate([out[key][0], value[0]]),
                                             np.concatenate([out[key][1], value[1]]), cap)
            else:
                merged = dict(out[key])
                for k, c in value.items():
                    merged[k] = merged.get(k, 0) + c
                out[key] = merged
    return out


def _combine_fn(cap: int):
    import apache_beam as beam

    class MergeAccumulators(beam.CombineFn):
        def create_accumulator(self):
            return {}

        def add_input(self, acc, element):
            return merge_accumulators([acc, element], cap)

        def merge_accumulators(self, accs):
            return merge_accumulators(list(accs), cap)

        def extract_output(self, acc):
            return acc

    return MergeAccumulators()


# ------------------------------------------------------------------ analyzer results -> state
def _decode(v) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def _vocabulary(counts: dict, top_k: int, min_frequency: int, is_string: bool) -> tuple[list, list]:
    """Most frequent first, ties by value (deterministic); returns (values, counts)."""
    items = [(k, c) for k, c in counts.items() if c >= min_frequency and (not is_string or k != b"")]
    items.sort(key=lambda kc: (-kc[1], kc[0]))
    items = items[:top_k]
    return [(_decode(k) if is_string else int(k)) for k, _ in items], [int(c) for _, c in items]


def _boundaries(summary, num_buckets: int) -> list[float]:
    import numpy as np

    values, weights = summary
    if len(values) == 0:
        return [0.0]
    cum = np.cumsum(weights)
    qs = np.arange(1, num_buckets) / num_buckets * cum[-1]
    idx = np.minimum(np.searchsorted(cum, qs, side="right"), len(values) - 1)
    bounds = sorted(set(float(values[i]) for i in idx))
    # A boundary at the minimum would leave bucket 0 empty.
    return [b for b in bounds if b > float(values[0])] or [float(values[-1])]


def finalize(acc: dict, raw: dict, transforms: list[dict], task: dict) -> tuple[dict, dict]:
    """Analyzer results -> (transform.json spec, analyzers.json report).

    Raises:
        ComponentError: empty train split, a numeric feature with no value at all, or label
            values outside the configured vocabulary.
    """
    import math

    rows = acc.get("rows", 0)
    if rows == 0:
        raise ComponentError("transform: the train split has no rows")
    report: dict[str, Any] = {"rows": rows, "features": {}}
    built = []
    for t in transforms:
        f, kind, opts = t["feature"], t["kind"], t["options"]
        is_string = raw[f]["dtype"] == "string"
        rep = report["features"].setdefault(f, {"dtype": raw[f]["dtype"], "missing": acc.get(f"missing:{f}", 0)})
        state: dict[str, Any] = {}
        if f"moments:{f}" in acc:
            n, mean, m2, lo, hi = acc[f"moments:{f}"]
            if n == 0:
                raise ComponentError(f"transform: numeric feature {f!r} has no value in the train split")
            rep.update(count=n, mean=mean, variance=m2 / n, min=lo, max=hi)
            # Missing numbers are parsed as the train mean (normalized: 0), for ints rounded.
            raw[f]["default"] = float(mean) if raw[f]["dtype"] == "float32" else int(round(mean))
        if kind == "normalize":
            key = f"logmoments:{f}" if opts.get("log") else f"moments:{f}"
            n, mean, m2, _, _ = acc[key]
            state = {"mean": mean, "variance": m2 / n, "log": bool(opts.get("log"))}
            if opts.get("log"):
                rep.update(log_mean=mean, log_variance=m2 / n)
        elif kind == "bucketize":
            state = {"boundaries": _boundaries(acc[f"quantiles:{f}"], opts["num_buckets"])}
            rep["boundaries"] = state["boundaries"]
        elif kind in ("one_hot", "embed", "text"):
            counts = acc[f"tokens:{f}" if kind == "text" else f"vocab:{f}"]
            vocab, freq = _vocabulary(counts, opts["top_k"], opts["min_frequency"], is_string or kind == "text")
            if opts.get("auto_embed_above") is not None and len(vocab) > opts["auto_embed_above"]:
                kind = "embed"
            state = {"vocabulary": vocab, "num_oov_buckets": opts["num_oov_buckets"]}
            if kind == "text":
                state["sequence_length"] = opts["sequence_length"]
            rep.update({"distinct": len(counts), "vocabulary_size": len(vocab),
                        "top": [[v, c] for v, c in zip(vocab[:20], freq[:20])]})
        elif kind == "hash":
            state = {"num_bins": opts["num_bins"]}
        elif kind == "image":
            n, mean, m2, _, _ = acc[f"moments:{f}"]
            state = {"shape": opts["shape"], "mean": mean, "std": math.sqrt(m2 / n) or 1.0}
        built.append({"feature": f, "kind": kind, "output": t["output"], "state": state})
    task, report["label"] = _analyze_label(task, acc)
    from kfx.models.preprocess import output_description

    spec = {"version": 1, "train_rows": rows, "raw_features": raw, "transforms": built,
            "outputs": {t["output"]: output_description(t) for t in built}, "task": task}
    return spec, report


def _analyze_label(task: dict, acc: dict) -> tuple[dict, dict]:
    """(task description completed by its label analysis, analyzers.json's label report).

    Raises:
        ComponentError: train rows without a label, or a label the task cannot use.
    """
    from kfx.models import tasks

    label = task["label"]
    if acc.get(f"missing:{label}", 0):
        raise ComponentError(f"transform: {acc[f'missing:{label}']} train rows have no label {label!r}")
    task = dict(task)
    auto = task.pop(tasks.AUTO, False)
    try:
        statistic = acc[f"{tasks.get(task['type']).LABEL_STATISTIC}:{label}"]
        info, report = tasks.of(task).analyze_label(statistic)
        if auto:
            # The classes are counted now: auto may pick another task (two classes: binary).
            classes = info.get("vocabulary")
            name = tasks.auto(task["label_dtype"], classes is not None, len(classes or ()))
            if name != info["type"]:
                info, report = tasks.of({**task, "type": name}).analyze_label(statistic)
    except ValueError as err:
        raise ComponentError(f"transform: {err}") from None
    return info, report


# ------------------------------------------------------------------ materialization
def transform_file(path: str, spec_json: str, batch_size: int):
    """Serialized tf.Examples of transformed features for one raw TFRecord file (Beam worker)."""
    import numpy as np
    import tensorflow as tf

    from kfx.models.preprocess import make_preprocessor, raw_feature_spec

    spec = json.loads(spec_json)
    pre = make_preprocessor(spec)
    parse_spec = raw_feature_spec(spec, with_label=True)
    label = spec["task"]["label"]
    ds = tf.data.TFRecordDataset(path, compression_type="GZIP" if path.endswith(".gz") else "").batch(batch_size)
    for batch in ds:
        parsed = tf.io.parse_example(batch, parse_spec)
        out = {k: v.numpy() for k, v in pre(parsed).items()}
        out[label] = parsed[label].numpy()
        for i in range(int(batch.shape[0])):
            feats = {}
            for k, v in out.items():
                flat = np.asarray(v[i]).reshape(-1)
                if flat.dtype.kind == "f":
                    feats[k] = tf.train.Feature(float_list=tf.train.FloatList(value=flat))
                elif flat.dtype.kind in "iu":
                    feats[k] = tf.train.Feature(int64_list=tf.train.Int64List(value=flat))
                else:
                    feats[k] = tf.train.Feature(bytes_list=tf.train.BytesList(value=flat))
            yield tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


def with_user_preprocessing(spec: dict, function: str, config_dir: str, files: list[str]) -> dict:
    """`spec` with the user's preprocessing function and the outputs it gives (run on train rows)."""
    import tensorflow as tf

    from kfx.models.preprocess import describe_outputs, raw_feature_spec

    spec = {**spec, "preprocessing": {"function": function, "config_dir": config_dir}}
    if not files:
        raise ComponentError("transform: no train examples to run transform.preprocessing on")
    batch = next(iter(tf.data.TFRecordDataset(files[0], compression_type="GZIP" if files[0].endswith(".gz") else "")
                      .batch(64)))
    try:
        outputs = describe_outputs(spec, tf.io.parse_example(batch, raw_feature_spec(spec)))
    except Exception as err:  # noqa: BLE001 - the user's function: say which and why
        raise ComponentError(f"transform.preprocessing {function!r} failed on train rows: "
                             f"{type(err).__name__}: {err}") from None
    return {**spec, "outputs": outputs}


def preprocessing_code(cfg, pipeline) -> list:
    """The module of the user's preprocessing function (`ComponentSpec.user_code`)."""
    from kfx.pipeline.user_code import load_module

    return [load_module(cfg.preprocessing.rpartition(":")[0], pipeline.config_dir)] if cfg.preprocessing else []


# ------------------------------------------------------------------ the stage
def _files(examples: str, split: str) -> list[str]:
    import tensorflow as tf

    from kfx.pipeline.artifacts import split_dir

    files = sorted(tf.io.gfile.glob(f"{split_dir(examples, split)}/*"))
    if not files:
        raise ComponentError(f"transform: no files in split {split!r} of {examples}")
    return files


def run(ctx: Context) -> dict[str, Any]:
    import apache_beam as beam
    import tensorflow as tf

    from kfx.pipeline.artifacts import read_columns
    from kfx.models.preprocess import ANALYZERS_FILE, TRANSFORM_FILE, TRANSFORMED_DIR
    from kfx.pipeline.artifacts import load_schema

    cfg = ctx.config
    examples, out = ctx.inputs["examples"], ctx.outputs[TRANSFORM_GRAPH]
    columns = read_columns(examples)
    raw, transforms, task = plan(load_schema(ctx.inputs["schema"]), columns["columns"], cfg)
    files = _files(examples, "train")
    cap = cfg.quantile_accuracy
    with beam.Pipeline(options=ctx.beam_options()) as p:
        _ = (p | "Files" >> beam.Create(files)
             | "Spread" >> beam.Reshuffle()
             | "Analyze" >> beam.FlatMap(analyze_file, raw, transforms, task, cfg.batch_size, cap)
             | "Merge" >> beam.CombineGlobally(_combine_fn(cap))
             | "Pickle" >> beam.Map(lambda acc: __import__("pickle").dumps(acc).hex())
             | "Write" >> beam.io.WriteToText(f"{out}/.accumulators", shard_name_template="", num_shards=1))
    import pickle

    with tf.io.gfile.GFile(f"{out}/.accumulators") as f:
        acc = pickle.loads(bytes.fromhex(f.read().strip()))
    tf.io.gfile.remove(f"{out}/.accumulators")
    spec, report = finalize(acc, raw, transforms, task)
    if cfg.preprocessing:
        spec = with_user_preprocessing(spec, cfg.preprocessing, ctx.pipeline.config_dir, files)
    with tf.io.gfile.GFile(f"{out}/{TRANSFORM_FILE}", "w") as f:
        json.dump(spec, f, indent=1, sort_keys=True)
    with tf.io.gfile.GFile(f"{out}/{ANALYZERS_FILE}", "w") as f:
        json.dump(report, f, indent=1, sort_keys=True)

    materialized = 0
    if cfg.materialize:
        from kfx.pipeline.artifacts import split_dir

        spec_json = json.dumps(spec)
        with beam.Pipeline(options=ctx.beam_options()) as p:
            for split in columns["splits"]:
                _ = (p | f"Files{split}" >> beam.Create(_files(examples, split))
                     | f"Spread{split}" >> beam.Reshuffle()
                     | f"Transform{split}" >> beam.FlatMap(transform_file, spec_json, cfg.batch_size)
                     | f"Write{split}" >> beam.io.WriteToTFRecord(
                         f"{split_dir(f'{out}/{TRANSFORMED_DIR}', split)}/data_tfrecord", file_name_suffix=".gz",
                         compression_type=beam.io.filesystem.CompressionTypes.GZIP))
        materialized = len(columns["splits"])
    kinds: dict[str, int] = {}
    for t in spec["transforms"]:
        kinds[t["kind"]] = kinds.get(t["kind"], 0) + 1
    metrics = {"rows": report["rows"], "raw_features": len(raw), "outputs": len(spec["outputs"]),
               "kinds": kinds, "task": spec["task"]["type"], "materialized_splits": materialized}
    ctx.log.info("transform %s", metrics)
    return metrics


SPEC = ComponentSpec(name="transform", config=TransformConfig, inputs=("examples", "schema"), outputs=(TRANSFORM_GRAPH,), run=run,
                     code=("kfx.models.preprocess",), user_code=preprocessing_code)
