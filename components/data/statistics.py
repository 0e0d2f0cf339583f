"""statistics: per split, per feature statistics as TFDV's DatasetFeatureStatisticsList.

Each Beam worker reads whole shards: the examples' columnar (Parquet) shards as Arrow record
batches reduced with pyarrow.compute and numpy, without TensorFlow; or, for text and image
features and for artifacts of the previous format, the tf.Example shards with tf.data and
`tf.io.parse_example` (vectorised C++, not per-row Python). Either way it folds each batch into mergeable accumulators (moments, a compacting
quantile sketch, a K-minimum-values distinct counter, bounded value counts), and the
accumulators are merged per split. Memory is bounded by the sketch sizes, not by the rows.

String features marked as text also get token and length distributions (text_stats.py).
Image features (ingest's `images` in columns.json) also get their decoded shapes, channel
mean/std and undecodable count as custom_stats (components/data/images.py).

Output `statistics`: Split-<name>/FeatureStats.pb (binary DatasetFeatureStatisticsList, as TFX
writes it: TFDV and Facets read it) and stats.txt, a readable table.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from kfx.components.data import images, text_stats
from kfx.pipeline.artifacts import examples as columnar
from kfx.pipeline.artifacts import EXAMPLES, STATISTICS, load_statistics, read_columns, split_dir, write_statistics  # noqa: F401
from kfx.pipeline.config import StatisticsConfig
from kfx.pipeline.component import ComponentSpec, Context

_SKETCH_K = 4096
_KMV_K = 4096
_STRING_HASH_SPACE = 2.0**62  # string values hash into [0, 2**62) (tf.strings.to_hash_bucket_fast)


class QuantileSketch:
    """A small KLL-style compactor: level i holds samples of weight 2**i, at most K each."""

    def __init__(self, k: int = _SKETCH_K):
        self.k = k
        self.levels: list[np.ndarray] = []
        self._flip = 0  # alternate the kept half so compaction does not bias one way

    def add(self, values: np.ndarray, level: int = 0) -> None:
        while len(self.levels) <= level:
            self.levels.append(np.empty(0))
        self.levels[level] = np.concatenate([self.levels[level], values.astype(np.float64)])
        while len(self.levels[level]) > self.k:
            items = np.sort(self.levels[level])
            self.levels[level] = np.empty(0)
            self._flip ^= 1
            self.add(items[self._flip::2], level + 1)
            level += 1

    def merge(self, other: "QuantileSketch") -> "QuantileSketch":
        for level, items in enumerate(other.levels):
            if len(items):
                self.add(items, level)
        return self

    def weighted(self) -> tuple[np.ndarray, np.ndarray]:
        values = np.concatenate(self.levels) if self.levels else np.empty(0)
        weights = np.concatenate([np.full(len(v), 2.0**i) for i, v in enumerate(self.levels)]) if self.levels else np.empty(0)
        order = np.argsort(values, kind="stable")
        return values[order], weights[order]

    def quantiles(self, qs: np.ndarray) -> np.ndarray:
        values, weights = self.weighted()
        if not len(values):
            return np.full(len(qs), np.nan)
        cdf = (np.cumsum(weights) - weights / 2) / weights.sum()
        return np.interp(qs, cdf, values)


def _hash(values: np.ndarray) -> np.ndarray:
    import pandas as pd

    return pd.util.hash_array(values, categorize=False)


class FeatureAcc:
    """Mergeable statistics of one feature."""

    def __init__(self, kind: str, text: "text_stats.TextAcc | None" = None, image: "images.ImageAcc | None" = None):
        self.kind = kind
        self.text = text  # a natural-language feature's token statistics
        self.image = image  # an image feature's decoded statistics: its bytes are not counted as values
        self.present = self.missing = self.num_values = 0
        self.min_nv, self.max_nv = np.inf, 0
        self.total = self.total_sq = 0.0
        self.vmin, self.vmax = np.inf, -np.inf
        self.zeros = 0
        self.sketch = QuantileSketch() if kind != "string" else None
        self.kmv = np.empty(0, dtype=np.uint64)
        self.counts: dict[bytes, int] = {}
        self.bytes_len = 0
        self.truncated = False

    def add(self, r: dict, max_counts: int) -> None:
        """Fold one batch's reductions (see `_batch_reducer`) into the accumulator."""
        self.present += int(r["present"])
        self.missing += int(r["rows"]) - int(r["present"])
        self.num_values += int(r["num_values"])
        if r["present"]:
            self.min_nv = min(self.min_nv, int(r["min_nv"]))
            self.max_nv = max(self.max_nv, int(r["max_nv"]))
        if not r["num_values"]:
            return
        if self.kind == "string":
            hashes = r["hashes"].astype(np.uint64)
            if self.image is None:  # an image's reductions have no value counts (see `_batch_reducer`)
                for v, c in zip(r["unique"].tolist(), r["counts"].tolist()):
                    self.counts[v] = self.counts.get(v, 0) + c
            self.bytes_len += int(r["bytes"])
            self._prune(max_counts)
            if self.text is not None:
                self.text.add(r)
        else:
            v = r["values"]
            self.total += float(r["sum"])
            self.total_sq += float(r["sum_sq"])
            self.vmin = min(self.vmin, float(r["min"]))
            self.vmax = max(self.vmax, float(r["max"]))
            self.zeros += int(r["zeros"])
            self.sketch.add(v)
            hashes = _hash(np.unique(v))
        self.kmv = np.unique(np.concatenate([self.kmv, hashes]))[:_KMV_K]

    def _prune(self, max_counts: int) -> None:
        # Bounded memory on unbounded vocabularies: keep the most frequent values.
        if len(self.counts) > 4 * max_counts:
            keep = sorted(self.counts.items(), key=lambda kv: -kv[1])[: 2 * max_counts]
            self.counts = dict(keep)
            self.truncated = True

    def merge(self, o: "FeatureAcc", max_counts: int) -> "FeatureAcc":
        self.present += o.present
        self.missing += o.missing
        self.num_values += o.num_values
        self.min_nv, self.max_nv = min(self.min_nv, o.min_nv), max(self.max_nv, o.max_nv)
        self.total += o.total
        self.total_sq += o.total_sq
        self.vmin, self.vmax = min(self.vmin, o.vmin), max(self.vmax, o.vmax)
        self.zeros += o.zeros
        if self.sketch is not None:
            self.sketch.merge(o.sketch)
        self.kmv = np.unique(np.concatenate([self.kmv, o.kmv]))[:_KMV_K]
        for v, c in o.counts.items():
            self.counts[v] = self.counts.get(v, 0) + c
        self.bytes_len += o.bytes_len
        self.truncated |= o.truncated
        if self.image is not None:
            self.image.merge(o.image)
        self._prune(max_counts)
        if self.text is not None:
            self.text.merge(o.text)
        return self

    def unique(self) -> int:
        if len(self.kmv) < _KMV_K:
            return len(self.kmv)
        space = _STRING_HASH_SPACE if self.kind == "string" else 2.0**64  # the hashes' range
        return int(round((_KMV_K - 1) * space / float(self.kmv[-1])))


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
                         hashes=tf.strings.to_hash_bucket_fast(vals, int(_STRING_HASH_SPACE)))
            elif columns[name] == "string":
                uniq, _, counts = tf.unique_with_counts(vals, out_idx=tf.int64)
                r.update(unique=uniq, counts=counts, bytes=tf.reduce_sum(tf.strings.length(vals, "BYTE")),
                         hashes=tf.strings.to_hash_bucket_fast(uniq, int(_STRING_HASH_SPACE)))
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


def _file_stats(item: tuple[str, str], columns: dict[str, str], batch_size: int, max_counts: int,
                text: frozenset = frozenset(), max_text_tokens: int = 0,
                image_columns: tuple[str, ...] = ()):
    """Statistics of one shard: (split, ({feature: FeatureAcc}, rows))."""
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


def _arrow_reduce(batch, columns: dict[str, str]) -> dict[str, dict]:
    """One RecordBatch of the columnar shards -> the per feature reductions `FeatureAcc.add` folds
    (those of `_batch_reducer`), with pyarrow.compute and numpy over the Arrow buffers."""
    import pyarrow.compute as pc

    out = {}
    for name, kind in columns.items():
        col = batch.column(name)
        lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False)
        has = lengths > 0
        r = {"rows": len(lengths), "present": int(has.sum()), "num_values": int(lengths.sum()),
             "min_nv": int(lengths[has].min()) if has.any() else np.iinfo(np.int64).max,
             "max_nv": int(lengths.max()) if len(lengths) else 0}
        flat = col.flatten()
        if kind == "string":
            vc = pc.value_counts(flat)
            uniq = vc.field("values").to_numpy(zero_copy_only=False)
            # hashes in [0, 2**62), the range the distinct-count estimate assumes (see FeatureAcc.unique)
            r.update(unique=uniq, counts=vc.field("counts").to_numpy(zero_copy_only=False),
                     bytes=int(pc.sum(pc.binary_length(flat)).as_py() or 0),
                     hashes=(_hash(uniq) >> np.uint64(2)).astype(np.int64))
        else:
            v = flat.to_numpy(zero_copy_only=False).astype(np.float64)
            r.update(values=v, sum=float(v.sum()), sum_sq=float(v @ v),
                     min=float(v.min()) if len(v) else np.inf, max=float(v.max()) if len(v) else -np.inf,
                     zeros=int((v == 0).sum()))
        out[name] = r
    return out


def _shard_stats(item: tuple[str, str], columns: dict[str, str], batch_size: int, max_counts: int):
    """Statistics of one columnar shard, read as Arrow record batches: (split, ({feature: FeatureAcc}, rows))."""
    from kfx.pipeline.artifacts import examples as columnar

    split, path = item
    accs = {k: FeatureAcc(t) for k, t in columns.items()}
    rows = 0
    for batch in columnar.read_batches(path, batch_size):
        for name, r in _arrow_reduce(batch, columns).items():
            accs[name].add(r, max_counts)
        rows += batch.num_rows
    yield split, (accs, rows)


def _merge(parts, max_counts: int):
    accs, rows = None, 0
    for part_accs, part_rows in parts:
        rows += part_rows
        if accs is None:
            accs = part_accs
        else:
            for k, a in part_accs.items():
                accs[k].merge(a, max_counts)
    return accs, rows


def to_proto(split: str, accs: dict[str, FeatureAcc], rows: int, cfg) -> Any:
    """Accumulators -> tensorflow_metadata DatasetFeatureStatistics."""
    from tensorflow_metadata.proto.v0 import statistics_pb2 as st

    ds = st.DatasetFeatureStatistics(name=split, num_examples=rows)
    for name, a in accs.items():
        f = ds.features.add()
        f.path.step.append(name)
        f.type = {"int": st.FeatureNameStatistics.INT, "float": st.FeatureNameStatistics.FLOAT,
                  "string": st.FeatureNameStatistics.STRING}[a.kind]
        common = st.CommonStatistics(
            num_non_missing=a.present, num_missing=a.missing, tot_num_values=a.num_values,
            min_num_values=int(a.min_nv) if a.present else 0, max_num_values=int(a.max_nv),
            avg_num_values=a.num_values / a.present if a.present else 0.0)
        if a.kind == "string":
            s = f.string_stats
            s.common_stats.CopyFrom(common)
            s.unique = a.unique()
            s.avg_length = a.bytes_len / a.num_values if a.num_values else 0.0
            ranked = sorted(a.counts.items(), key=lambda kv: (-kv[1], kv[0]))
            for v, c in ranked[: cfg.top_k]:
                s.top_values.add(value=v.decode("utf-8", "replace"), frequency=c)
            for i, (v, c) in enumerate(ranked[: cfg.max_rank_values]):
                s.rank_histogram.buckets.add(low_rank=i, high_rank=i, label=v.decode("utf-8", "replace"),
                                             sample_count=c)
            if a.image is not None:
                images.add_custom_stats(f, a.image, a.num_values)
        else:
            n = f.num_stats
            n.common_stats.CopyFrom(common)
            if a.num_values:
                mean = a.total / a.num_values
                n.mean = mean
                n.std_dev = float(np.sqrt(max(a.total_sq / a.num_values - mean * mean, 0.0)))
                n.min, n.max, n.num_zeros = a.vmin, a.vmax, a.zeros
                n.median = float(a.sketch.quantiles(np.array([0.5]))[0])
                _histograms(n, a, cfg)
            f.custom_stats.add(name="unique", num=a.unique())
        if a.text is not None:
            text_stats.to_proto(f, a.text, cfg)
    return ds


def _histograms(n, a: FeatureAcc, cfg) -> None:
    from tensorflow_metadata.proto.v0 import statistics_pb2 as st

    values, weights = a.sketch.weighted()
    scale = a.num_values / weights.sum()
    edges = np.linspace(a.vmin, a.vmax, cfg.num_histogram_buckets + 1)
    if a.vmin == a.vmax:
        edges = np.array([a.vmin, a.vmax])
    counts, _ = np.histogram(values, bins=edges, weights=weights * scale)
    h = n.histograms.add(type=st.Histogram.STANDARD)
    for lo, hi, c in zip(edges[:-1], edges[1:], counts):
        h.buckets.add(low_value=float(lo), high_value=float(hi), sample_count=float(c))
    qs = a.sketch.quantiles(np.linspace(0, 1, cfg.num_quantiles + 1))
    qs[0], qs[-1] = a.vmin, a.vmax
    h = n.histograms.add(type=st.Histogram.QUANTILES)
    for lo, hi in zip(qs[:-1], qs[1:]):
        h.buckets.add(low_value=float(lo), high_value=float(hi), sample_count=a.num_values / cfg.num_quantiles)


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


def run(ctx: Context) -> dict[str, Any]:
    import apache_beam as beam
    import tensorflow as tf
    from tensorflow_metadata.proto.v0 import statistics_pb2 as st

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
        stats_fn = beam.FlatMap(_shard_stats, columns, cfg.batch_size, cfg.max_rank_values)
    else:
        items = [(split, path) for split in meta["splits"]
                 for path in columnar.tfrecord_files(examples, split)]
        stats_fn = beam.FlatMap(_file_stats, columns, cfg.batch_size, cfg.max_rank_values, text, cfg.text_max_tokens,
                                image_columns)
    out = ctx.outputs[STATISTICS]

    def write(kv):
        split, (accs, rows) = kv
        write_statistics(out, split, to_proto(split, accs, rows, cfg))
        return split, rows

    with beam.Pipeline(options=ctx.beam_options()) as p:
        _ = (p | "Shards" >> beam.Create(items)
             | "Spread" >> beam.Reshuffle()
             | "FileStats" >> stats_fn
             | "MergeSplit" >> beam.CombinePerKey(lambda parts: _merge(parts, max_counts))
             | "Write" >> beam.Map(write))

    stats = load_statistics(out)
    missing = [s for s in meta["splits"] if s not in stats]
    for split in missing:  # a split with no rows still gets (empty) statistics
        write_statistics(out, split, st.DatasetFeatureStatistics(name=split, num_examples=0))
    stats = load_statistics(out)
    with tf.io.gfile.GFile(f"{out}/stats.txt", "w") as f:
        f.write(summary_text(stats))
    return {"rows": sum(int(d.num_examples) for d in stats.values()),
            "splits": {k: int(d.num_examples) for k, d in stats.items()},
            "features": len(columns)}


SPEC = ComponentSpec(name="statistics", config=StatisticsConfig, inputs=(EXAMPLES,), outputs=(STATISTICS,), run=run,
                     code=("kfx.pipeline.artifacts", "kfx.pipeline.artifacts.examples", "kfx.components.data.images", "kfx.components.data.text_stats",
                           "kfx.models.kinds.text"))
