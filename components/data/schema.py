"""schema: the data contract, a tensorflow_metadata Schema (TFDV's format).

Taken from a curated text proto (`schema.path`, e.g. schemas/adult.pbtxt) or inferred from
the train statistics. The schema is the one source of truth for feature names, types, the
label (annotation tag "label") and the sensitive features (tag "sensitive"); later stages read
them from here, never from string literals.

Output `schema`: schema.pbtxt.
"""
from __future__ import annotations

from typing import Any

from kfx.components.data import images
from kfx.components.data.text_stats import is_text
from kfx.pipeline.config import SchemaConfig
from kfx.pipeline.artifacts import (LABEL_TAG, SCHEMA, SCHEMA_FILE, SENSITIVE_TAG, label_key, load_schema,  # noqa: F401
                                    load_statistics, parse_schema_text, sensitive_keys, string_domain, tagged,
                                    write_schema)
from kfx.pipeline.component import ComponentError, ComponentSpec, Context

def infer_schema(train_stats, cfg) -> Any:
    """A Schema from one split's DatasetFeatureStatistics, TFDV-style."""
    from tensorflow_metadata.proto.v0 import schema_pb2, statistics_pb2 as st

    schema = schema_pb2.Schema()
    for fs in train_stats.features:
        f = schema.feature.add(name=fs.path.step[0])
        f.type = {st.FeatureNameStatistics.INT: schema_pb2.INT, st.FeatureNameStatistics.FLOAT: schema_pb2.FLOAT,
                  st.FeatureNameStatistics.STRING: schema_pb2.BYTES}[fs.type]
        common = fs.string_stats.common_stats if fs.HasField("string_stats") else fs.num_stats.common_stats
        f.presence.min_count = 1
        f.presence.min_fraction = 1.0 if common.num_missing == 0 else 0.0
        if common.max_num_values <= 1:
            f.value_count.min = 1
            f.value_count.max = 1
        if images.infer_domain(f, fs):  # an image: no string domain of its bytes
            continue
        if is_text(fs):  # TFDV's domain_info hint from statistics: transform gives it the text kind
            f.natural_language_domain.SetInParent()
        elif fs.HasField("string_stats") and 0 < fs.string_stats.unique <= cfg.max_domain_values:
            dom = schema.string_domain.add(name=f.name)
            dom.value.extend(sorted(b.label for b in fs.string_stats.rank_histogram.buckets))
            f.domain = f.name
    return schema


def _mark(schema, cfg) -> None:
    names = {f.name for f in schema.feature}
    for key in ([cfg.label] if cfg.label else []) + list(cfg.sensitive):
        if key not in names:
            raise ComponentError(f"schema: configured feature {key!r} is not in the schema; features are {sorted(names)}")
    for f in schema.feature:
        if f.name == cfg.label and LABEL_TAG not in f.annotation.tag:
            f.annotation.tag.append(LABEL_TAG)
            f.not_in_environment.append("SERVING")
        if f.name in cfg.sensitive and SENSITIVE_TAG not in f.annotation.tag:
            f.annotation.tag.append(SENSITIVE_TAG)
    if cfg.label and not schema.default_environment:
        schema.default_environment.extend(["TRAINING", "SERVING"])


def run(ctx: Context) -> dict[str, Any]:
    import tensorflow as tf

    from kfx.pipeline.config import resolve_path

    cfg = ctx.config
    if cfg.path:
        path = resolve_path(cfg.path)
        if not tf.io.gfile.exists(path):
            raise ComponentError(f"schema: curated schema file {cfg.path!r} does not exist")
        schema = load_schema(path)
        source = path
    else:
        stats = load_statistics(ctx.inputs["statistics"])
        if "train" not in stats:
            raise ComponentError(f"schema: inference needs a 'train' split; statistics have {sorted(stats)}")
        schema = infer_schema(stats["train"], cfg)
        source = "inferred from train statistics"
    _mark(schema, cfg)
    write_schema(ctx.outputs[SCHEMA], schema)
    return {"features": len(schema.feature), "label": label_key(schema),
            "sensitive": sensitive_keys(schema), "source": source}


def source_fingerprint(cfg) -> str:
    """A curated schema file is read from outside the store: its content is part of the cache key."""
    import hashlib

    from kfx.pipeline import fs
    from kfx.pipeline.config import resolve_path

    if not cfg.path or not fs.exists(resolve_path(cfg.path)):
        return ""
    with fs.open_binary(resolve_path(cfg.path)) as f:
        return hashlib.sha256(f.read()).hexdigest()


SPEC = ComponentSpec(name="schema", config=SchemaConfig, inputs=("statistics",), outputs=(SCHEMA,), run=run,
                     source_fingerprint=source_fingerprint,
                     code=("kfx.pipeline.artifacts", "kfx.components.data.images", "kfx.components.data.text_stats"))
