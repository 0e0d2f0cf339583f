"""Artifact types: each one's name, its files, and its reader and writer.

Components read each other's outputs only through this module (as TFX's standard artifacts
and their readers); no component imports another. Every path goes through kfx.pipeline.fs
(tf.io.gfile for URIs) or Arrow's filesystems, so an artifact may live on any filesystem
TensorFlow reaches (gs://, s3://, hdfs://).

| type            | written by     | what is in it                                                |
|-----------------|----------------|--------------------------------------------------------------|
| examples        | ingest         | Split-<name>/ gzip tf.Example and Parquet shards (examples.py), columns.json, counts.json |
| rejected        | ingest         | rejected.jsonl: file, line and reason of each malformed row    |
| statistics      | statistics     | Split-<name>/FeatureStats.pb (TFDV DatasetFeatureStatisticsList), stats.txt |
| schema          | schema         | schema.pbtxt (tensorflow_metadata Schema)                     |
| anomalies       | validate       | SchemaDiff.pb (tensorflow_metadata Anomalies), anomalies.json |
| transform_graph | transform      | transform.json (the Keras preprocessing's state), analyzers.json |
| hyperparameters | tune           | best.json, trials.json                                       |
| model           | train          | a SavedModel (raw features in) with warmup requests          |
| evaluation      | evaluate       | evaluation.json, report.html                                 |
| blessing        | evaluate       | blessing.json (every check), BLESSED / NOT_BLESSED marker    |
| infra_blessing  | infra_validate | infra_blessing.json, INFRA_BLESSED / INFRA_NOT_BLESSED marker |
| pushed_model    | push           | pushed.json (version, path, model)                           |
"""
from __future__ import annotations

import json
from typing import Any

from kfx.pipeline.component import ComponentError

# ------------------------------------------------------------------ names (outputs of the built-ins)
EXAMPLES, REJECTED = "examples", "rejected"
STATISTICS, SCHEMA, ANOMALIES = "statistics", "schema", "anomalies"
TRANSFORM_GRAPH, HYPERPARAMETERS = "transform_graph", "hyperparameters"
MODEL, MODEL_RUN = "model", "model_run"
EVALUATION, BLESSING, PREDICTIONS = "evaluation", "blessing", "predictions"
INFRA_BLESSING, PUSHED_MODEL = "infra_blessing", "pushed_model"

# ------------------------------------------------------------------ files
COLUMNS_FILE, COUNTS_FILE = "columns.json", "counts.json"
STATS_FILE = "FeatureStats.pb"
SCHEMA_FILE = "schema.pbtxt"
LABEL_TAG, SENSITIVE_TAG = "label", "sensitive"
IMAGE_SHAPE_TAG = "image_shape:"  # schema tag of an image feature's shape, e.g. "image_shape:28x28x1" ('*': any)
BEST_FILE, TRIALS_FILE = "best.json", "trials.json"
BLESSING_FILE = "blessing.json"
INFRA_BLESSING_FILE = "infra_blessing.json"
PUSHED_FILE = "pushed.json"


class ArtifactError(ComponentError):
    """An artifact that cannot be read as its type; the message names the file."""


def read_json(uri: str, name: str) -> Any:
    """`<uri>/<name>` parsed as JSON."""
    from kfx.pipeline import fs

    path = f"{uri}/{name}"
    try:
        with fs.open_binary(path) as f:
            return json.loads(f.read())
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{path} is not valid JSON: {err}") from None


def write_json(uri: str, name: str, obj: Any) -> None:
    """Write `obj` as `<uri>/<name>` (sorted keys: artifacts compare byte for byte)."""
    from kfx.pipeline import fs

    with fs.open_write(f"{uri}/{name}") as f:
        json.dump(obj, f, indent=1, sort_keys=True, default=str)


# ------------------------------------------------------------------ examples
def split_dir(examples_uri: str, split: str) -> str:
    """Where a split's shards live (TFX layout)."""
    return f"{examples_uri}/Split-{split}"


def read_columns(examples_uri: str) -> dict:
    """The examples artifact's column types, label and split names (columns.json, see `write_columns`)."""
    return read_json(examples_uri, COLUMNS_FILE)


def write_columns(examples_uri: str, columns: dict[str, str], label: str | None, splits, text_columns=(),
                  images: dict | None = None, columnar: bool = False) -> None:
    """columns.json of an examples artifact, always with the same keys.

    Args:
        examples_uri: the examples artifact.
        columns: column -> int | float | string, in the examples' column order (kept: statistics
            and the schema list features in it).
        label: the label column, or None.
        splits: split names, in order.
        text_columns: free-text columns.
        images: image column -> expected [height, width, channels] (entries may be None) or None.
        columnar: every split also has Parquet shards (pipeline/artifacts/examples.py).
    """
    from kfx.pipeline import fs

    obj = {"columns": dict(columns), "label": label, "splits": list(splits), "text_columns": list(text_columns),
           "images": {c: list(s) if s else None for c, s in (images or {}).items()}}
    if columnar:
        obj["columnar"] = True
    with fs.open_write(f"{examples_uri}/{COLUMNS_FILE}") as f:
        json.dump(obj, f, indent=2)


# ------------------------------------------------------------------ statistics
def load_statistics(uri: str) -> dict[str, Any]:
    """{split: DatasetFeatureStatistics} of a statistics artifact."""
    from tensorflow_metadata.proto.v0 import statistics_pb2 as st

    from kfx.pipeline import fs

    out = {}
    for d in sorted(fs.glob(f"{uri}/Split-*")):
        lst = st.DatasetFeatureStatisticsList()
        with fs.open_binary(f"{d}/{STATS_FILE}") as f:
            lst.ParseFromString(f.read())
        out[d.rsplit("Split-", 1)[1]] = lst.datasets[0]
    return out


def write_statistics(uri: str, split: str, stats) -> None:
    """One split's DatasetFeatureStatistics, as TFDV writes it."""
    from tensorflow_metadata.proto.v0 import statistics_pb2 as st

    from kfx.pipeline import fs

    fs.makedirs(f"{uri}/Split-{split}")
    with fs.open_write(f"{uri}/Split-{split}/{STATS_FILE}", binary=True) as f:
        f.write(st.DatasetFeatureStatisticsList(datasets=[stats]).SerializeToString())


# ------------------------------------------------------------------ schema
def parse_schema_text(text: str, where: str):
    """Parse a Schema text proto.

    Raises:
        ArtifactError: not a Schema text proto; names the file and the line.
    """
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2

    try:
        return text_format.Parse(text, schema_pb2.Schema())
    except text_format.ParseError as err:
        raise ArtifactError(f"schema {where} is not a valid Schema text proto: {err}") from None


def load_schema(uri: str):
    """The Schema of a schema artifact (or of a .pbtxt file path)."""
    import tensorflow as tf

    path = uri if uri.endswith(".pbtxt") else f"{uri}/{SCHEMA_FILE}"
    with tf.io.gfile.GFile(path) as f:
        return parse_schema_text(f.read(), path)


def write_schema(uri: str, schema) -> None:
    import tensorflow as tf
    from google.protobuf import text_format

    with tf.io.gfile.GFile(f"{uri}/{SCHEMA_FILE}", "w") as f:
        f.write(text_format.MessageToString(schema))


def tagged(schema, tag: str) -> list[str]:
    """Features whose annotation carries `tag`, in schema order."""
    return [f.name for f in schema.feature if tag in f.annotation.tag]


def label_key(schema) -> str | None:
    labels = tagged(schema, LABEL_TAG)
    return labels[0] if labels else None


def sensitive_keys(schema) -> list[str]:
    return tagged(schema, SENSITIVE_TAG)


def image_features(schema) -> list[str]:
    """Features the schema marks as images (image_domain), in schema order."""
    return [f.name for f in schema.feature if f.HasField("image_domain")]


def image_shape(feature) -> list[int | None] | None:
    """[height, width, channels] (None for '*') that the schema's `image_shape:` tag records
    for an image feature (one with an image_domain), or None without the tag."""
    for tag in feature.annotation.tag:
        if tag.startswith(IMAGE_SHAPE_TAG):
            return [None if d == "*" else int(d) for d in tag[len(IMAGE_SHAPE_TAG):].split("x")]
    return None


def string_domain(schema, feature) -> list[str] | None:
    """The allowed values of a string feature (inline or named domain), or None."""
    if feature.HasField("string_domain"):
        return list(feature.string_domain.value)
    if feature.HasField("domain"):
        for d in schema.string_domain:
            if d.name == feature.domain:
                return list(d.value)
    return None


# ------------------------------------------------------------------ hyperparameters
def load_hyperparameters(uri: str) -> dict:
    """best.json of a hyperparameters artifact: family, values, source, score."""
    return read_json(uri, BEST_FILE)


# ------------------------------------------------------------------ blessing, infra_blessing, pushed_model
def load_blessing(uri: str) -> dict:
    """blessing.json of a blessing artifact (`blessed` and every check)."""
    return read_json(uri, BLESSING_FILE)


def load_infra_blessing(uri: str) -> dict:
    """infra_blessing.json of an infra_blessing artifact."""
    return read_json(uri, INFRA_BLESSING_FILE)


def load_pushed(uri: str) -> dict:
    """pushed.json of a pushed_model artifact."""
    return read_json(uri, PUSHED_FILE)
