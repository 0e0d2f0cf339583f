"""Mergeable feature statistics: the accumulators of the statistics stage and their TFDV proto.

What the Beam workers of the statistics stage run on columnar examples: each worker reads whole
Parquet shards as Arrow record batches, reduces every batch with pyarrow.compute and numpy over
the Arrow buffers (`arrow_reduce`), and folds the small results into per-feature accumulators
(moments, a compacting quantile sketch, a K-minimum-values distinct counter, bounded value
counts) that merge per split. This module imports only numpy at its top (pyarrow, pandas and the
protos where they are used) and never TensorFlow, so a worker that unpickles the stage's
functions starts in the time Beam itself takes. statistics.py wires it into the stage and keeps
the tf.Example path (text and image features, artifacts of the previous format).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from kfx.components.data import text_stats

SKETCH_K = 4096
KMV_K = 4096
STRING_HASH_SPACE = 2.0**62  # string values hash into [0, 2**62) (tf.strings.to_hash_bucket_fast)
_NO_VALUES = np.iinfo(np.int64).max
MAX_GROUPS = 32  # work items per split of the statistics stage (`shard_groups`)


class QuantileSketch:
    """A small KLL-style compactor: level i holds samples of weight 2**i, at most K each."""

    def __init__(self, k: int = SKETCH_K):
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


def hash_numbers(values: np.ndarray) -> np.ndarray:
    """uint64 hashes of float64 values, equal to pandas.util.hash_array(values, categorize=False)
    (-0.0 hashes as 0.0), in numpy: a worker needs no pandas for numeric features."""
    x = (np.asarray(values, dtype=np.float64) + 0.0).view(np.uint64)
    x = x ^ (x >> np.uint64(30))
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def hash_strings(values: np.ndarray) -> np.ndarray:
    """Hashes of bytes values in [0, 2**62), the range the distinct-count estimate assumes (`FeatureAcc.unique`)."""
    import pandas as pd

    return (pd.util.hash_array(values, categorize=False) >> np.uint64(2)).astype(np.int64)


class FeatureAcc:
    """Mergeable statistics of one feature."""

    def __init__(self, kind: str, text: "text_stats.TextAcc | None" = None, image: Any = None):
        self.kind = kind
        self.text = text  # a natural-language feature's token statistics
        self.image = image  # an image feature's decoded statistics (images.ImageAcc): its bytes are not counted as values
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
        """Fold one batch's reductions (see `arrow_reduce`) into the accumulator.

        A numeric batch may give its `values` without `hashes`: they are hashed here, after
        dropping the values whose hash cannot enter the K smallest (the same K smallest result,
        without sorting a whole batch once the sketch is full).
        """
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
            if self.image is None:  # an image's reductions have no value counts
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
            hashes = hash_numbers(v)
        if len(self.kmv) >= KMV_K:
            hashes = hashes[hashes <= self.kmv[-1]]
        self.kmv = np.unique(np.concatenate([self.kmv, hashes]))[:KMV_K]

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
        self.kmv = np.unique(np.concatenate([self.kmv, o.kmv]))[:KMV_K]
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
        if len(self.kmv) < KMV_K:
            return len(self.kmv)
        space = STRING_HASH_SPACE if self.kind == "string" else 2.0**64  # the hashes' range
        return int(round((KMV_K - 1) * space / float(self.kmv[-1])))


def arrow_reduce(batch, columns: dict[str, str]) -> dict[str, dict]:
    """One RecordBatch of the columnar shards -> the per feature reductions `FeatureAcc.add` folds
    (those of statistics._batch_reducer on tf.Example), with pyarrow.compute and numpy over the Arrow buffers."""
    import pyarrow.compute as pc

    out = {}
    for name, kind in columns.items():
        col = batch.column(name)
        lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False)
        has = lengths > 0
        present = int(np.count_nonzero(has))
        r = {"rows": len(lengths), "present": present, "num_values": int(lengths.sum()),
             "min_nv": int(lengths[has].min()) if present else _NO_VALUES,
             "max_nv": int(lengths.max()) if len(lengths) else 0}
        flat = col.flatten()
        if kind == "string" and getattr(flat, "dictionary", None) is not None and not flat.null_count:
            # dictionary-encoded values (see `read_batches`): count the indices, hash the dictionary
            counts = np.bincount(flat.indices.to_numpy(zero_copy_only=False), minlength=len(flat.dictionary))
            seen = np.flatnonzero(counts)
            values = flat.dictionary.take(seen)
            uniq = values.to_numpy(zero_copy_only=False)
            lengths = pc.binary_length(values).to_numpy(zero_copy_only=False)
            r.update(unique=uniq, counts=counts[seen], bytes=int(lengths @ counts[seen]), hashes=hash_strings(uniq))
        elif kind == "string":
            if getattr(flat, "dictionary", None) is not None:
                flat = flat.dictionary_decode()
            vc = pc.value_counts(flat)
            uniq = vc.field("values").to_numpy(zero_copy_only=False)
            r.update(unique=uniq, counts=vc.field("counts").to_numpy(zero_copy_only=False),
                     bytes=int(pc.sum(pc.binary_length(flat)).as_py() or 0), hashes=hash_strings(uniq))
        else:
            v = flat.to_numpy(zero_copy_only=False).astype(np.float64)
            # einsum, not v @ v: OpenBLAS splits a dot of > 10,000 values across threads, which on a
            # busy machine spins for milliseconds per call (and its partial sums depend on the cores)
            r.update(values=v, sum=float(v.sum()), sum_sq=float(np.einsum("i,i->", v, v)),
                     min=float(v.min()) if len(v) else np.inf, max=float(v.max()) if len(v) else -np.inf,
                     zeros=int(np.count_nonzero(v == 0)))
        out[name] = r
    return out


def read_batches(shard_uri: str, columns: dict[str, str], batch_rows: int):
    """The RecordBatches of one Parquet shard, streamed, with string values read as dictionaries
    (Parquet stores them dictionary-encoded: decoding the dictionary, not every value, costs
    less than half the read, and counting values becomes counting indices)."""
    import pyarrow.parquet as pq

    from kfx.pipeline.artifacts import examples as columnar

    fs, path = columnar._fs(shard_uri)
    strings = [f"{name}.list.element" for name, kind in columns.items() if kind == "string"]
    with fs.open_input_file(path) as f:
        yield from pq.ParquetFile(f, read_dictionary=strings).iter_batches(batch_size=batch_rows)


def shard_stats(item: tuple[str, str], columns: dict[str, str], batch_size: int, max_counts: int):
    """Statistics of one columnar shard, read as Arrow record batches: yields (split, ({feature: FeatureAcc}, rows))."""
    split, path = item
    accs = {k: FeatureAcc(t) for k, t in columns.items()}
    rows = 0
    for batch in read_batches(path, columns, batch_size):
        for name, r in arrow_reduce(batch, columns).items():
            accs[name].add(r, max_counts)
        rows += batch.num_rows
    yield split, (accs, rows)


def merge(parts, max_counts: int):
    """Merge the (accumulators, rows) of a split's shards."""
    accs, rows = None, 0
    for part_accs, part_rows in parts:
        rows += part_rows
        if accs is None:
            accs = part_accs
        else:
            for k, a in part_accs.items():
                accs[k].merge(a, max_counts)
    return accs, rows


def shard_groups(items: list[tuple[str, str]], max_groups: int = MAX_GROUPS) -> list[tuple[str, tuple[str, ...]]]:
    """(split, shard) items -> per split its shards, sorted, in at most `max_groups` runs of
    consecutive shards: (split, shards) work items for `group_stats`.

    The groups depend only on the shard list, never on the runner or its workers, so every
    runner folds the same rows into the same accumulators in the same order (`merge_in_order`):
    FeatureStats.pb is byte-identical across runners and running modes. `max_groups` bounds
    what the final merge holds at once (one accumulator set per group) and the parallelism.
    """
    paths: dict[str, list[str]] = {}
    for split, path in items:
        paths.setdefault(split, []).append(path)
    out = []
    for split, shards in paths.items():
        shards = sorted(shards)
        size = -(-len(shards) // max_groups)
        out += [(split, tuple(shards[i:i + size])) for i in range(0, len(shards), size)]
    return out


def group_stats(item: tuple[str, tuple[str, ...]], stats_fn, args: tuple, max_counts: int):
    """One group of a split's shards (see `shard_groups`) -> (split, (first shard, (accumulators, rows))),
    the shards' statistics (`stats_fn((split, shard), *args)`) merged in their order."""
    split, shards = item
    parts = (part for shard in shards for _, part in stats_fn((split, shard), *args))
    yield split, (shards[0], merge(parts, max_counts))


def merge_in_order(kv, max_counts: int):
    """(split, [(first shard, part)]) of a split's groups -> (split, (accumulators, rows)), merged in
    shard order, whatever order the groups arrived in."""
    split, parts = kv
    return split, merge([part for _, part in sorted(parts, key=lambda p: p[0])], max_counts)


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
                from kfx.components.data import images

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


def write_split(kv, out: str, cfg) -> tuple[str, int]:
    """Write one split's merged (split, (accumulators, rows)) to the statistics artifact `out`."""
    from kfx.pipeline.artifacts import write_statistics

    split, (accs, rows) = kv
    write_statistics(out, split, to_proto(split, accs, rows, cfg))
    return split, rows
