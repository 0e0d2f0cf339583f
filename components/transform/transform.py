"""transform: full-pass Beam analyzers over the train split -> a fixed Keras preprocessing graph.

What each feature becomes comes from the schema (types, label, domains, natural-language
features) plus `transform.features` overrides, with defaults by type: numbers are normalized,
strings one-hot encoded (embedded above `one_hot_max` values), natural-language strings
tokenized, image features (schema image_domain) decoded at the schema's `image_shape:` size. Each kind (models/kinds: moments, quantile boundaries, top-k vocabularies, token
vocabularies, pixel scaling) supplies its options, analyzer and Keras layer; this stage adds the
feature-level analyses (missing values, the train mean that fills missing numbers) and the
task's label statistic. The analyzers run in Beam over batches of the train split: a worker
reads the Parquet shards as Arrow record batches (numpy over the buffers; TensorFlow is imported
only by kinds that need it, text and encoded_image) or, for an examples artifact of the previous
format, parses TFRecord batches with tf.io.parse_example; both give the same (values, row ids)
per feature, and each batch one partial accumulator, which a CombineFn merges (per-element Beam
would be ~10x slower). The materialization and the user's preprocessing get the raw features
as parse_example would give them, made dense from the same record batches (`parsed_batches`).
Graph examples (ingest.graph) are served by node id: their id feature gets the whole graph (node
features, normalised adjacency) as its state (components/transform/graph.py).

Outputs:
    transform_graph: transform.json (what models/preprocess.py rebuilds the Keras
        preprocessing layer from), analyzers.json (every analyzer result, for people), and with
        `materialize: true` transformed_examples/Split-<name>/ (gzip TFRecord of transformed
        features).
"""
from __future__ import annotations

import json
from typing import Any, Callable, Iterator, NamedTuple

from kfx.pipeline.artifacts.examples import PARQUET_SUFFIX
from kfx.pipeline.config_modeling import TransformConfig
from kfx.pipeline.component import ComponentError, ComponentSpec, Context

TRANSFORM_GRAPH = "transform_graph"
DTYPES = {"int": "int64", "float": "float32", "string": "string"}  # ingest's column types -> raw dtypes
# Accumulator keys: feature-level analyses (missing values, the moments that fill missing
# numbers), the label's statistic and each transform's own analyzer (models/kinds).
ROWS, MISSING, MOMENTS, LABEL, KIND = "rows", "missing", "moments", "label", "kind"


# ------------------------------------------------------------------ the plan (driver side)
def plan(schema, columns: dict[str, str], cfg) -> tuple[dict, list[dict], dict]:
    """What to analyze and build, from the schema and the transform config.

    Args:
        schema: tensorflow_metadata Schema (source of names, types, label, domains).
        columns: examples' column types {name: "int"|"float"|"string"} (ingest's columns.json).
        cfg: TransformConfig.

    Returns:
        (raw_features, transforms, task): raw serving inputs, transforms without state yet
        (with their kind's `options`), and the task description without class counts.

    Raises:
        ComponentError: a configured feature that does not exist or a kind that does not fit
            its type, or a task the label cannot support.
    """
    from kfx.pipeline.artifacts import label_key, string_domain
    from kfx.models import kinds
    from kfx.models.kinds.base import describe_dtypes

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
        dtype = DTYPES.get(columns.get(name, ""))
        if dtype is None:
            raise ComponentError(f"transform: schema feature {name!r} is not a column of the examples "
                                 f"(columns: {sorted(columns)})")
        override = cfg.features.get(name)
        if f.HasField("image_domain") and getattr(override, "image_shape", None) is None:
            override = _schema_image_shape(name, f, dtype, override)
        if override is not None:
            names = override.kinds
        elif dtype == kinds.STRING:
            names = (kinds.TEXT,) if f.HasField("natural_language_domain") else (cfg.string_default,)
        else:
            names = (cfg.numeric_default,)
        shape: list[int] = []
        for kind_name in names:
            kind = kinds.get(kind_name)
            if dtype not in kind.DTYPES:
                raise ComponentError(f"transform: feature {name!r} is {dtype}; kind {kind_name!r} needs "
                                     f"{describe_dtypes(kind.DTYPES)} (allowed: {kinds.accepting(dtype)})")
            try:
                opts = kind.configure(dtype, override, cfg)
            except ValueError as err:
                raise ComponentError(f"transform: feature {name!r}, kind {kind_name!r}: {err}") from None
            shape = kind(dtype, opts).raw_shape() or shape
            transforms.append({"feature": name, "kind": kind_name,
                               "output": name if len(names) == 1 else f"{name}__{kind_name}", "options": opts})
        raw[name] = {"dtype": dtype, "shape": shape, "default": "" if dtype == kinds.STRING else 0}
    if not transforms:
        raise ComponentError("transform: no feature left for the model (all excluded?)")
    return raw, transforms, _task(schema, features, label, columns, cfg, string_domain)


def _schema_image_shape(name: str, feature, dtype: str, override):
    """The feature's transform config with the image_shape the schema records for an image
    feature (image_domain; default kind encoded_image for bytes, image for pixel arrays).

    Raises:
        ComponentError: the schema records no fully known shape (images of several sizes).
    """
    from kfx.models import kinds
    from kfx.pipeline.artifacts import image_shape
    from kfx.pipeline.config_modeling import FeatureTransform

    if override is not None and not {kinds.ENCODED_IMAGE, kinds.PIXELS} & set(override.kinds):
        return override  # configured as something else than an image
    shape = image_shape(feature)
    if shape is None or None in shape:
        found = "no image_shape tag" if shape is None else "image_shape " + "x".join(str(d or "*") for d in shape)
        raise ComponentError(f"transform: feature {name!r} is an image (schema image_domain) without a fixed size "
                             f"in the schema ({found}); set transform.features.{name}.image_shape: "
                             f"[height, width, channels]")
    if override is None:
        override = FeatureTransform(kinds=(kinds.ENCODED_IMAGE if dtype == kinds.STRING else kinds.PIXELS,))
    return override.model_copy(update={"image_shape": tuple(shape)})


def _task(schema, features, label, columns, cfg, string_domain) -> dict:
    """The task description before analysis: the configured task, or the one `auto` picks."""
    from kfx.models import tasks

    if label is None:
        raise ComponentError("transform: the schema has no label (annotation tag 'label'); set schema.label")
    kind = columns.get(label)
    if kind is None:
        raise ComponentError(f"transform: label {label!r} is not a column of the examples")
    dtype = DTYPES[kind]
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
        if cfg.anomaly is not None:  # the normal label values (models/tasks/anomaly.py)
            task.update(cfg.anomaly.model_dump(mode="json"))
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
    """(rows, {feature: (values ndarray, row ids ndarray)}) per batch of one examples shard: a Parquet
    shard as Arrow record batches (numpy over the buffers, no TensorFlow), else a TFRecord file of
    tf.Examples (an artifact of the previous format) parsed with tf.io.parse_example."""
    if path.endswith(PARQUET_SUFFIX):
        import numpy as np

        from kfx.pipeline.artifacts.examples import read_lists

        for n, cols in read_lists(path, list(dict.fromkeys([*raw, label])), batch_size):
            yield n, {k: (values, np.repeat(np.arange(n, dtype=np.int64), lengths))
                      for k, (values, lengths) in cols.items()}
        return
    import tensorflow as tf

    spec = _parse_spec(raw, label, label_dtype)
    ds = tf.data.TFRecordDataset(path, compression_type="GZIP" if path.endswith(".gz") else "")
    for batch in ds.batch(batch_size):
        parsed = tf.io.parse_example(batch, spec)
        n = int(batch.shape[0])
        yield n, {k: (v.values.numpy(), v.indices.numpy()[:, 0]) for k, v in parsed.items()}


class Analyzer(NamedTuple):
    """One accumulator of the analysis: on which column, how a batch and two partials combine."""

    column: str
    accumulate: Callable  # (values, row ids, rows in batch) -> partial
    merge: Callable  # (partial, partial) -> partial


def analyzers(raw: dict, transforms: list[dict], task: dict) -> dict[str, Analyzer]:
    """Accumulator key -> Analyzer for the plan (built on each worker: nothing here is pickled).

    Every feature counts its missing rows; a numeric feature with a kind that fills missing
    numbers with the train mean gets its moments; each transform runs its kind's analyzer;
    the label gets its task's statistic.
    """
    import operator

    import numpy as np

    from kfx.models import kinds, tasks
    from kfx.models.kinds import base
    from kfx.models.tasks import base as task_base

    def missing(values, rows, n):
        return n - len(np.unique(rows))

    def column_moments(values, rows, n):
        return base.moments(values)

    out: dict[str, Analyzer] = {}
    for t in transforms:
        f = t["feature"]
        kind = kinds.get(t["kind"])(raw[f]["dtype"], t["options"])
        out[f"{MISSING}:{f}"] = Analyzer(f, missing, operator.add)
        if kind.FILL_MEAN:
            out[f"{MOMENTS}:{f}"] = Analyzer(f, column_moments, base.merge_moments)
        out[f"{KIND}:{t['output']}"] = Analyzer(f, lambda values, rows, n, k=kind, t=t: _accumulate(k, t, values, rows),
                                                kind.merge)
    label, statistic = task["label"], tasks.get(task["type"]).LABEL_STATISTIC
    label_analyzers = {task_base.COUNTS: (lambda values, rows, n: base.counts(values), base.merge_counts),
                       task_base.MOMENTS: (column_moments, base.merge_moments)}
    out[f"{MISSING}:{label}"] = Analyzer(label, missing, operator.add)
    out[f"{LABEL}:{label}"] = Analyzer(label, *label_analyzers[statistic])
    return out


def _accumulate(kind, t: dict, values, row_ids):
    """The kind's partial accumulator of a batch; its errors name the feature."""
    import numpy as np

    try:
        return kind.accumulate(values, len(np.unique(row_ids)))
    except ValueError as err:
        raise ComponentError(f"transform: feature {t['feature']!r}, kind {t['kind']!r}: {err}") from None


def analyze_file(path: str, raw: dict, transforms: list[dict], task: dict, batch_size: int):
    """Partial accumulators, one per batch of an examples shard (runs on a Beam worker)."""
    plan_ = analyzers(raw, transforms, task)
    for n, cols in _batches(path, raw, task["label"], task["label_dtype"], batch_size):
        acc: dict[str, Any] = {ROWS: n}
        for key, a in plan_.items():
            acc[key] = a.accumulate(*cols[a.column], n)
        yield acc


def merge_accumulators(accs, plan_: dict[str, Analyzer]) -> dict:
    """Merge partial accumulators (the CombineFn's merge; associative and commutative)."""
    out: dict[str, Any] = {}
    for acc in accs:
        for key, value in acc.items():
            if key not in out:
                out[key] = value
            elif key == ROWS:
                out[key] += value
            else:
                out[key] = plan_[key].merge(out[key], value)
    return out


def _combine_fn(raw: dict, transforms: list[dict], task: dict):
    import apache_beam as beam

    class MergeAccumulators(beam.CombineFn):
        plan: dict[str, Analyzer] | None = None

        def analyzers(self) -> dict[str, Analyzer]:
            # Built where it runs (closures do not pickle), once per worker.
            if self.plan is None:
                self.plan = analyzers(raw, transforms, task)
            return self.plan

        def create_accumulator(self):
            return {}

        def add_input(self, acc, element):
            return merge_accumulators([acc, element], self.analyzers())

        def merge_accumulators(self, accs):
            return merge_accumulators(list(accs), self.analyzers())

        def extract_output(self, acc):
            return acc

    return MergeAccumulators()


# ------------------------------------------------------------------ analyzer results -> state
def finalize(acc: dict, raw: dict, transforms: list[dict], task: dict) -> tuple[dict, dict]:
    """Analyzer results -> (transform.json spec, analyzers.json report).

    Raises:
        ComponentError: empty train split, a numeric feature with no value at all, or label
            values outside the configured vocabulary.
    """
    from kfx.models import kinds, tasks

    rows = acc.get(ROWS, 0)
    if rows == 0:
        raise ComponentError("transform: the train split has no rows")
    report: dict[str, Any] = {"rows": rows, "features": {}}
    built = []
    for t in transforms:
        f = t["feature"]
        kind = kinds.get(t["kind"])(raw[f]["dtype"], t["options"])
        rep = report["features"].setdefault(f, {"dtype": raw[f]["dtype"], "missing": acc.get(f"{MISSING}:{f}", 0)})
        if f"{MOMENTS}:{f}" in acc:
            n, mean, m2, lo, hi = acc[f"{MOMENTS}:{f}"]
            if n == 0:
                raise ComponentError(f"transform: numeric feature {f!r} has no value in the train split")
            rep.update(count=n, mean=mean, variance=m2 / n, min=lo, max=hi)
            # Missing numbers are parsed as the train mean (normalized: 0), for ints rounded.
            raw[f]["default"] = float(mean) if raw[f]["dtype"] == kinds.FLOAT else int(round(mean))
        try:
            state, lines = kind.finalize(acc[f"{KIND}:{t['output']}"])
        except ValueError as err:
            raise ComponentError(f"transform: feature {f!r}, kind {t['kind']!r}: {err}") from None
        rep.update(lines)
        built.append({"feature": f, "kind": kind.recorded_kind(state), "output": t["output"], "state": state})
    task, report["label"] = _analyze_label(task, acc)
    spec = {"version": 1, "train_rows": rows, "raw_features": raw, "transforms": built,
            "outputs": {t["output"]: kinds.get(t["kind"]).describe(t["state"]) for t in built}, "task": task}
    try:
        spec["task"] = tasks.of(task).complete(spec)
    except ValueError as err:
        raise ComponentError(f"transform: {err}") from None
    return spec, report


def _analyze_label(task: dict, acc: dict) -> tuple[dict, dict]:
    """(task description completed by its label analysis, analyzers.json's label report).

    Raises:
        ComponentError: train rows without a label, or a label the task cannot use.
    """
    from kfx.models import tasks

    label = task["label"]
    if acc.get(f"{MISSING}:{label}", 0):
        raise ComponentError(f"transform: {acc[f'{MISSING}:{label}']} train rows have no label {label!r}")
    task = dict(task)
    auto = task.pop(tasks.AUTO, False)
    try:
        statistic = acc[f"{LABEL}:{label}"]
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
def parsed_batches(path: str, parse_spec: dict, batch_size: int) -> Iterator[tuple[int, dict]]:
    """(rows, {feature: tensor}) per batch of one examples shard, as tf.io.parse_example gives them
    with `parse_spec` (FixedLenFeature: shape, default): a Parquet shard's record batches made dense
    in numpy, or a TFRecord file's tf.Examples parsed.

    Raises:
        ComponentError: a row with another number of values than the feature's shape, or without
            a value for a feature that has no default (the label).
    """
    import numpy as np
    import tensorflow as tf

    if not path.endswith(PARQUET_SUFFIX):
        for batch in tf.data.TFRecordDataset(path, compression_type="GZIP" if path.endswith(".gz") else "").batch(
                batch_size):
            yield int(batch.shape[0]), tf.io.parse_example(batch, parse_spec)
        return
    from kfx.pipeline.artifacts.examples import read_lists

    for n, cols in read_lists(path, list(parse_spec), batch_size):
        out = {}
        for name, (values, lengths) in cols.items():
            f = parse_spec[name]
            size = int(np.prod(f.shape))
            bad = (lengths != size) & ((lengths != 0) | (f.default_value is None))
            if bad.any():
                raise ComponentError(f"transform: feature {name!r} has {int(lengths[bad][0])} values in a row of "
                                     f"{path}; it needs {size}")
            dense = np.empty((n, size), dtype=object if f.dtype == tf.string else f.dtype.as_numpy_dtype)
            if (lengths == 0).any():  # the feature's default (a missing label failed above)
                dense[lengths == 0] = np.reshape(np.asarray(f.default_value, dtype=dense.dtype), -1)
            dense[lengths == size] = values.reshape(-1, size)
            out[name] = tf.constant(dense.reshape(n, *f.shape), f.dtype)
        yield n, out


def transform_file(path: str, spec_json: str, batch_size: int, user_fn=None):
    """Serialized tf.Examples of transformed features for one raw examples shard (Beam worker).

    The user's preprocessing function comes as `user_fn`, pickled by value with the step (its
    file is not on the workers), and `spec_json` then names none."""
    import numpy as np
    import tensorflow as tf

    from kfx.models.preprocess import apply_user_function, make_preprocessor, raw_feature_spec

    spec = json.loads(spec_json)
    base = make_preprocessor(spec)
    pre = base if user_fn is None else (lambda feats: apply_user_function(user_fn, base(feats)))
    parse_spec = raw_feature_spec(spec, with_label=True)
    label = spec["task"]["label"]
    for n, parsed in parsed_batches(path, parse_spec, batch_size):
        out = {k: v.numpy() for k, v in pre(parsed).items()}
        out[label] = parsed[label].numpy()
        for i in range(n):
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
    from kfx.models.preprocess import describe_outputs, raw_feature_spec

    spec = {**spec, "preprocessing": {"function": function, "config_dir": config_dir}}
    if not files:
        raise ComponentError("transform: no train examples to run transform.preprocessing on")
    _, batch = next(parsed_batches(files[0], raw_feature_spec(spec), 64))
    try:
        outputs = describe_outputs(spec, batch)
    except Exception as err:  # noqa: BLE001 - the user's function: say which and why
        raise ComponentError(f"transform.preprocessing {function!r} failed on train rows: "
                             f"{type(err).__name__}: {err}") from None
    return {**spec, "outputs": outputs}


def preprocessing_code(cfg, pipeline) -> list:
    """The module of the user's preprocessing function, located, not imported (`ComponentSpec.user_code`)."""
    from kfx.pipeline.user_code import locate

    return [locate(cfg.preprocessing.rpartition(":")[0], pipeline.config_dir)] if cfg.preprocessing else []


# ------------------------------------------------------------------ the stage
def _files(examples: str, split: str, columnar: bool = False, required: bool = True) -> list[str]:
    """The split's Parquet shards when `columnar` (the artifact has them), else its tf.Example files.

    ingest writes no shard for a split without rows, so only the analyzed split is `required`; a
    materialized split without files is written empty."""
    from kfx.pipeline.artifacts import split_dir
    from kfx.pipeline.artifacts.examples import shards, tfrecord_files

    files = shards(split_dir(examples, split)) if columnar else tfrecord_files(examples, split)
    if not files and required:
        raise ComponentError(f"transform: no files in split {split!r} of {examples}")
    return files


def run(ctx: Context) -> dict[str, Any]:
    import apache_beam as beam
    import tensorflow as tf

    from kfx.pipeline.artifacts import read_columns
    from kfx.pipeline.artifacts.examples import has_columnar
    from kfx.models.preprocess import ANALYZERS_FILE, TRANSFORM_FILE, TRANSFORMED_DIR
    from kfx.pipeline.artifacts import load_schema
    from kfx.pipeline.artifacts.graph import read_graph

    cfg = ctx.config
    examples, out = ctx.inputs["examples"], ctx.outputs[TRANSFORM_GRAPH]
    columns = read_columns(examples)
    raw, transforms, task = plan(load_schema(ctx.inputs["schema"]), columns["columns"], cfg)
    graph = read_graph(examples)
    if graph is not None:  # a graph: node ids in, the graph as the id's state (components/transform/graph.py)
        from kfx.components.transform import graph as graphs

        raw, transforms = graphs.plan(graph, raw)
    # Every step reads the Parquet shards when the artifact has them (previous format: tf.Example).
    columnar = has_columnar(columns)
    train_files = _files(examples, "train", columnar)
    with beam.Pipeline(options=ctx.beam_options()) as p:
        _ = (p | "Files" >> beam.Create(train_files)
             | "Spread" >> beam.Reshuffle()
             | "Analyze" >> beam.FlatMap(analyze_file, raw, transforms, task, cfg.batch_size)
             | "Merge" >> beam.CombineGlobally(_combine_fn(raw, transforms, task))
             | "Pickle" >> beam.Map(lambda acc: __import__("pickle").dumps(acc).hex())
             | "Write" >> beam.io.WriteToText(f"{out}/.accumulators", shard_name_template="", num_shards=1))
    import pickle

    with tf.io.gfile.GFile(f"{out}/.accumulators") as f:
        acc = pickle.loads(bytes.fromhex(f.read().strip()))
    tf.io.gfile.remove(f"{out}/.accumulators")
    spec, report = finalize(acc, raw, transforms, task)
    if cfg.preprocessing:
        spec = with_user_preprocessing(spec, cfg.preprocessing, ctx.pipeline.config_dir, train_files)
    with tf.io.gfile.GFile(f"{out}/{TRANSFORM_FILE}", "w") as f:
        json.dump(spec, f, indent=1, sort_keys=True)
    with tf.io.gfile.GFile(f"{out}/{ANALYZERS_FILE}", "w") as f:
        json.dump(report, f, indent=1, sort_keys=True)

    materialized = 0
    if cfg.materialize:
        from kfx.pipeline.artifacts import split_dir

        user_fn = None
        if cfg.preprocessing:  # loaded here, shipped to the workers by value (user_code.pickle_by_value)
            from kfx.pipeline.user_code import load_function, pickle_by_value

            user_fn = pickle_by_value(load_function(cfg.preprocessing, ctx.pipeline.config_dir,
                                                    what="transform.preprocessing"))
        spec_json = json.dumps({k: v for k, v in spec.items() if k != "preprocessing"})
        with beam.Pipeline(options=ctx.beam_options()) as p:
            for split in columns["splits"]:
                _ = (p | f"Files{split}" >> beam.Create(_files(examples, split, columnar, required=False))
                     | f"Spread{split}" >> beam.Reshuffle()
                     | f"Transform{split}" >> beam.FlatMap(transform_file, spec_json, cfg.batch_size, user_fn)
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


def _code() -> tuple[str, ...]:
    """kfx modules whose source is part of transform's code version: the preprocessing, the
    examples' readers, the kinds (analyzers, state) and the tasks (plan, label analysis, `complete`)."""
    from kfx.models import kinds, tasks

    return ("kfx.models.preprocess", "kfx.components.transform.graph", "kfx.pipeline.artifacts.graph",
            "kfx.pipeline.artifacts.examples", *kinds.modules(), *tasks.modules())


SPEC = ComponentSpec(name="transform", config=TransformConfig, inputs=("examples", "schema"), outputs=(TRANSFORM_GRAPH,), run=run,
                     code=_code(), user_code=preprocessing_code)
