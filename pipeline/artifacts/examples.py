"""The columnar shards of an examples artifact: Split-<name>/part-*.parquet beside the tf.Example shards.

Each split is stored twice by ingest: gzip TFRecord of tf.Example (what training and tuning
read with tf.data: bench/training_input.py holds it at in-memory speed) and Parquet shards of the
same rows, in the same column order, one list column per feature (int64, float32 or binary
values; null where the row has no value), which statistics, the transform analyzers and
evaluate read as Arrow record batches (`read_lists`) without TensorFlow. An examples artifact written before the Parquet shards existed (or by
a writer that makes only tf.Example shards, such as the time-series and graph ingests) has no
part-*.parquet: readers then use the tf.Example shards (`has_columnar`).

Every path goes through Arrow's filesystems (local, gs://, s3://, hdfs://), never open().
"""
from __future__ import annotations

import hashlib
from typing import Iterator

PARQUET_PREFIX, PARQUET_SUFFIX = "part-", ".parquet"
TFRECORD_GLOB = "*.gz"
COLUMNAR_KEY = "columnar"  # columns.json: true when every split has Parquet shards (possibly none: no rows)
_ARROW_TYPES = {"int": "int64", "float": "float32", "string": "binary"}


def _fs(uri: str):
    """(pyarrow FileSystem, path inside it) of a URI or a local path."""
    import pyarrow.fs as pafs

    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), uri


def arrow_schema(columns: dict[str, str]):
    """The Arrow schema of the shards: one list column per feature, in the examples' column order."""
    import pyarrow as pa

    return pa.schema([(n, pa.list_(pa.type_for_alias(_ARROW_TYPES[k]))) for n, k in columns.items()])


def record_batch(columns: dict[str, str], rows: list[dict[str, list]]):
    """A RecordBatch of typed rows ({feature: [values]}; an absent feature is null)."""
    import pyarrow as pa

    schema = arrow_schema(columns)
    return pa.RecordBatch.from_arrays(
        [pa.array([r.get(n) for r in rows], type=schema.field(n).type) for n in columns], schema=schema)


def shard_name(key: str) -> str:
    """A deterministic shard file name for a chunk key (a retried chunk overwrites its own shard)."""
    return f"{PARQUET_PREFIX}{hashlib.sha1(key.encode()).hexdigest()[:20]}{PARQUET_SUFFIX}"


def write_shard(split_uri: str, name: str, batch) -> None:
    """Write one RecordBatch as the Parquet shard `<split_uri>/<name>`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, path = _fs(split_uri)
    fs.create_dir(path, recursive=True)
    pq.write_table(pa.Table.from_batches([batch]), f"{path}/{name}", filesystem=fs, compression="zstd")


def shards(split_uri: str) -> list[str]:
    """The Parquet shards of one split, sorted (URIs keep their scheme)."""
    import pyarrow.fs as pafs

    fs, path = _fs(split_uri)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path))
    prefix = split_uri[: len(split_uri) - len(path)]
    return sorted(prefix + i.path for i in infos
                  if i.base_name.startswith(PARQUET_PREFIX) and i.base_name.endswith(PARQUET_SUFFIX))


def has_columnar(meta: dict) -> bool:
    """True when the artifact (its columns.json, `meta`) was written with columnar shards."""
    return bool(meta.get(COLUMNAR_KEY))


def tfrecord_files(examples_uri: str, split: str) -> list[str]:
    """The gzip tf.Example shards of one split, sorted (what tf.data readers take)."""
    import tensorflow as tf

    from kfx.pipeline.artifacts import split_dir

    return sorted(tf.io.gfile.glob(f"{split_dir(examples_uri, split)}/{TFRECORD_GLOB}"))


def read_batches(shard_uri: str, batch_rows: int = 65536) -> Iterator:
    """The RecordBatches of one Parquet shard, streamed (never the whole shard in memory)."""
    import pyarrow.parquet as pq

    fs, path = _fs(shard_uri)
    with fs.open_input_file(path) as f:
        yield from pq.ParquetFile(f).iter_batches(batch_size=batch_rows)


def read_lists(shard_uri: str, names: list[str], batch_rows: int = 65536) -> Iterator[tuple[int, dict]]:
    """Per RecordBatch of one Parquet shard, (rows, {name: (flat values, values per row)}) as numpy
    over Arrow's buffers, without TensorFlow: int64 / float32 values, strings as an object array of
    bytes (what tf.io.parse_example gives); a row without a value (null or empty list) counts 0."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    fs, path = _fs(shard_uri)
    with fs.open_input_file(path) as f:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_rows, columns=list(names)):
            cols = {}
            for name in names:
                col = batch.column(name)
                lengths = pc.list_value_length(col).fill_null(0).to_numpy(zero_copy_only=False).astype("int64")
                cols[name] = (col.flatten().to_numpy(zero_copy_only=False), lengths)
            yield batch.num_rows, cols
