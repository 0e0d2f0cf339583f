"""statistics: per split, per feature statistics as TFDV's DatasetFeatureStatisticsList.

Each Beam worker reads whole shards: the examples' columnar (Parquet) shards as Arrow record
batches reduced with pyarrow.compute and numpy (feature_stats.py: neither the workers nor this
launching process import TensorFlow on that path, and a multi-processing DirectRunner runs the
workers as threads, see `beam_options`); or, for text and image features and for
artifacts of the previous format, the tf.Example shards with tf.data and `tf.io.parse_example`
(vectorised C++, not per-row Python). Either way it folds each batch into mergeable accumulators
(moments, a compacting quantile sketch, a K-minimum-values distinct counter, bounded value
counts), and the accumulators are merged per split in shard order, so the output is the same
on every runner. Memory is bounded by the sketch sizes, not by
the rows.

String features marked as text also get token and length distributions (text_stats.py).
Image features (ingest's `images` in columns.json) also get their decoded shapes, channel
mean/std and undecodable count as custom_stats (components/data/images.py).

Output `statistics`: Split-<name>/FeatureStats.pb (binary DatasetFeatureStatisticsList, as TFX
writes it: TFDV and Facets read it) and stats.txt, a readable table.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np

from kfx.components.data import images, text_stats
from kfx.components.data.feature_stats import FeatureAcc, QuantileSketch, to_proto  # noqa: F401 - the stage's API
from kfx.components.data.feature_stats import STRING_HASH_SPACE, group_stats, merge, merge_in_order, shard_groups, shard_stats, write_split
from kfx.pipeline.artifacts import examples as columnar
from kfx.pipeline.artifacts import EXAMPLES, STATISTICS, load_statistics, read_columns, split_dir, write_statistics  # noqa: F401
from kfx.pipeline.config import StatisticsConfig
from kfx.pipeline.component import ComponentSpec, Context

def _batch_reducer(columns: dict[str, str], text: frozenset = frozenset(), image: frozenset = frozenset()):
    """A tf.function: serialized examples -> per feature reductions, all in TensorFlow ops.

    Counting, moments and distinct values happen in C++ (and in parallel across batches via
    tf.data); Python only folds the small results. Image columns get no value counts (only the
    hashes of their bytes, for the distinct count): their values are whole images.
    """
    import tensorflow as tf

    dtypes = {"int": tf.int64, "float": tf.float32, "string": tf.string}
    spec = {k: tf.io.RaggedFeature(dtypes[t], row_splits_dtype=tf.int64) for k, t in columns.items()}

    @tf.function
    def reduce(serialized):
        parsed = tf.io.parse_example(serialized, spec)
        out = {}
        for name, rt in parsed.items():
            lengths = rt.row_lengths()
            vals = rt.flat_values
            has = lengths > 0
            r = {"rows": tf.size(lengths, out_type=tf.int64),
                 "present": tf.math.count_nonzero(has, dtype=tf.int64),
                 "num_values": tf.reduce_sum(lengths),
                 "min_nv": tf.reduce_min(tf.where(has, lengths, tf.int64.max)),
                 "max_nv": tf.reduce_max(tf.concat([lengths, [0]], 0))}
            if name in image:
                r.update(bytes=tf.reduce_sum(tf.strings.length(vals, "BYTE")),
                         hashes=tf.strings.to_hash_bucket_fast(vals, int(STRING_HASH_SPACE)))
            elif columns[name] == "string":
                uniq, _, counts = tf.unique_with_counts(vals, out_idx=tf.int64)
                r.update(unique=uniq, counts=counts, bytes=tf.reduce_sum(tf.strings.length(vals, "BYTE")),
                         hashes=tf.strings.to_hash_bucket_fast(uniq, int(STRING_HASH_SPACE)))
                if name in text:
                    r.update(text_stats.reduce_batch(rt))
            else:
                v = tf.cast(vals, tf.float64)
                r.update(values=v, sum=tf.reduce_sum(v), sum_sq=tf.reduce_sum(v * v),
                         min=tf.reduce_min(tf.concat([v, [np.inf]], 0)),
                         max=tf.reduce_max(tf.concat([v, [-np.inf]], 0)),
                         zeros=tf.math.count_nonzero(tf.equal(v, 0.0), dtype=tf.int64))
            out[name] = r
        return out

    return reduce


_shard_stats, _merge = shard_stats, merge  # the names tests and callers used


def _file_stats(item: tuple[str, str], columns: dict[str, str], batch_size: int, max_counts: int,
                text: frozenset = frozenset(), max_text_tokens: int = 0,
                image_columns: tuple[str, ...] = ()):
    """Statistics of one tf.Example shard: (split, ({feature: FeatureAcc}, rows))."""
    import tensorflow as tf

    split, path = item
    image = images.file_stats(path, image_columns, batch_size)
    accs = {k: FeatureAcc(t, text_stats.TextAcc(max_text_tokens) if k in text else None, image.get(k))
            for k, t in columns.items()}
    rows = 0
    ds = (tf.data.TFRecordDataset(path, compression_type="GZIP", num_parallel_reads=1).batch(batch_size)
          .map(_batch_reducer(columns, text, frozenset(image)), num_parallel_calls=tf.data.AUTOTUNE).prefetch(2))
    for batch in ds.as_numpy_iterator():
        for name, r in batch.items():
            accs[name].add(r, max_counts)
        if batch:
            rows += int(next(iter(batch.values()))["rows"])
    yield split, (accs, rows)


def summary_text(stats: dict[str, Any]) -> str:
    """A readable table of the statistics, one block per split."""
    lines = []
    for split, ds in stats.items():
        lines.append(f"== split {split}: {ds.num_examples:,} examples")
        lines.append(f"{'feature':<22}{'type':<7}{'count':>9}{'missing':>9}{'mean':>12}{'std':>12}"
                     f"{'min':>10}{'median':>10}{'max':>12}{'unique':>8}  top values")
        for f in ds.features:
            name = f.path.step[0]
            if f.HasField("string_stats"):
                s = f.string_stats
                top = ", ".join(f"{v.value}={int(v.frequency)}" for v in s.top_values[:3])
                lines.append(f"{name:<22}{'STRING':<7}{s.common_stats.num_non_missing:>9}"
                             f"{s.common_stats.num_missing:>9}{'':>12}{'':>12}{'':>10}{'':>10}{'':>12}"
                             f"{s.unique:>8}  {top}")
                lines.extend(images.summary_lines(name, f))
            else:
                n = f.num_stats
                uniq = int(f.custom_stats[0].num) if f.custom_stats else 0
                lines.append(f"{name:<22}{('INT' if f.type == f.INT else 'FLOAT'):<7}"
                             f"{n.common_stats.num_non_missing:>9}{n.common_stats.num_missing:>9}"
                             f"{n.mean:>12.4g}{n.std_dev:>12.4g}{n.min:>10.4g}{n.median:>10.4g}{n.max:>12.4g}{uniq:>8}")
        lines.extend(text_stats.summary_lines(ds))
        lines.append("")
    return "\n".join(lines)


def beam_options(ctx: Context, threads: bool):
    """The pipeline's Beam options, workers as threads with `threads` (see `Context.beam_options`)."""
    return ctx.beam_options(threads)


def run(ctx: Context) -> dict[str, Any]:
    import apache_beam as beam
    from tensorflow_metadata.proto.v0 import statistics_pb2 as st

    from kfx.pipeline import fs

    cfg = ctx.config
    examples = ctx.inputs[EXAMPLES]
    meta = read_columns(examples)
    columns = meta["columns"]
    max_counts = cfg.max_rank_values
    text = frozenset(text_stats.text_features(meta, cfg))
    image_columns = tuple(meta.get("images") or ())
    # Columnar shards are read as Arrow batches, without TensorFlow; text and image features need
    # TensorFlow's tokenizer and decoders, and an artifact of the previous format has only tf.Example shards.
    arrow = columnar.has_columnar(meta) and not text and not image_columns
    if arrow:
        items = [(split, path) for split in meta["splits"] for path in columnar.shards(split_dir(examples, split))]
        stats_fn, args = shard_stats, (columns, cfg.batch_size, max_counts)
    else:
        items = [(split, path) for split in meta["splits"]
                 for path in columnar.tfrecord_files(examples, split)]
        stats_fn, args = _file_stats, (columns, cfg.batch_size, max_counts, text, cfg.text_max_tokens, image_columns)
    out = ctx.outputs[STATISTICS]
    # The workers get the settings as a plain namespace: unpickling it imports no config classes.
    settings = SimpleNamespace(**cfg.model_dump())

    # Each split's shards are read in fixed groups and merged in shard order (not as the workers
    # finish): the same FeatureStats.pb on every runner and running mode (feature_stats.shard_groups).
    with beam.Pipeline(options=beam_options(ctx, threads=arrow)) as p:
        _ = (p | "Shards" >> beam.Create(shard_groups(items))  # Create reshuffles: groups spread over the workers
             | "FileStats" >> beam.FlatMap(group_stats, stats_fn, args, max_counts)
             | "Group" >> beam.GroupByKey()
             | "MergeSplit" >> beam.Map(merge_in_order, max_counts)
             | "Write" >> beam.Map(write_split, out, settings))

    stats = load_statistics(out)
    missing = [s for s in meta["splits"] if s not in stats]
    for split in missing:  # a split with no rows still gets (empty) statistics
        write_statistics(out, split, st.DatasetFeatureStatistics(name=split, num_examples=0))
    stats = load_statistics(out)
    with fs.open_write(f"{out}/stats.txt") as f:
        f.write(summary_text(stats))
    return {"rows": sum(int(d.num_examples) for d in stats.values()),
            "splits": {k: int(d.num_examples) for k, d in stats.items()},
            "features": len(columns)}


SPEC = ComponentSpec(name="statistics", config=StatisticsConfig, inputs=(EXAMPLES,), outputs=(STATISTICS,), run=run,
                     code=("kfx.pipeline.artifacts", "kfx.pipeline.artifacts.examples", "kfx.pipeline.fs", "kfx.components.data.feature_stats", "kfx.components.data.images", "kfx.components.data.text_stats",
                           "kfx.models.kinds.text"))
