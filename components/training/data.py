"""tf.data input for tune and train: TFRecord artifacts -> parsed, preprocessed batches.

Parsing is vectorised (tf.io.parse_example on blocks of rows, in parallel), the preprocessing
layer runs inside the pipeline (the same layer the exported model embeds), and when the data
fits (`cache`) the preprocessed blocks are cached in memory so later epochs only shuffle and
re-batch them.
"""
from __future__ import annotations

PARSE_BATCH = 1024  # rows parsed and preprocessed per call; independent of the training batch


def split_files(examples_uri: str, split: str) -> list[str]:
    """The TFRecord shards of one split, sorted.

    Raises:
        ComponentError: the split has no files.
    """
    from kfx.pipeline.artifacts.examples import tfrecord_files
    from kfx.pipeline.component import ComponentError

    files = tfrecord_files(examples_uri, split)
    if not files:
        raise ComponentError(f"no TFRecord files for split {split!r} under {examples_uri}")
    return files


def _records(files: list[str], rows: int | None, total: int | None = None):
    import tensorflow as tf

    ds = tf.data.TFRecordDataset(files, compression_type="GZIP", num_parallel_reads=tf.data.AUTOTUNE)
    if rows and total and rows < total:
        # `rows` of `total` picked by a hash of each record, spread over the whole split: the
        # first rows of data stored sorted (by class, by time) would be a biased subset. The
        # margin makes `rows` records (almost) always available to `take`.
        keep = int(min(1.0, (rows * 1.05 + 64) / total) * (1 << 30))
        ds = ds.filter(lambda r: tf.strings.to_hash_bucket_fast(r, 1 << 30) < keep)
    return ds.take(rows) if rows else ds


def raw_dataset(examples_uri: str, split: str, spec: dict, batch_size: int, rows: int | None = None):
    """Batches of (raw feature dict, raw label), in file order: what serving clients send."""
    import tensorflow as tf

    from kfx.models.preprocess import raw_feature_spec

    parse_spec = raw_feature_spec(spec, with_label=True)
    label = spec["task"]["label"]

    def parse(batch):
        parsed = tf.io.parse_example(batch, parse_spec)
        y = parsed.pop(label)
        return parsed, y

    return (_records(split_files(examples_uri, split), rows).batch(batch_size)
            .map(parse, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE))


def dataset(examples_uri: str, split: str, spec: dict, preprocessor, batch_size: int, *,
            shuffle: bool = False, shuffle_buffer: int = 50000, cache: bool = True, seed: int = 42,
            rows: int | None = None, shard_by_data: bool = False, targets=None, augment=None):
    """Batches of (transformed feature dict, training target) for `model.fit` / `evaluate`, of the
    rows the task trains on (`Task.training_rows`: all, or e.g. an anomaly task's normal rows).

    Args:
        examples_uri: the examples artifact.
        split: split name (train, eval, test).
        spec: transform.json contents.
        preprocessor: the layer from `make_preprocessor(spec)`.
        batch_size: rows per training batch.
        shuffle: reshuffle rows every epoch (training).
        shuffle_buffer: rows in the shuffle buffer.
        cache: keep preprocessed rows in memory after the first pass.
        seed: shuffle seed.
        rows: use only `rows` records (tuning on a subset): of the train split, a sample spread
            over the whole split; of the others, the first ones.
        shard_by_data: multi-worker training: every worker reads all files and keeps its share
            of elements (safe whatever the number of files).
        targets: the model family's `targets(features, label) -> (inputs, targets)` hook, for
            training that is not (features -> label): an autoencoder's inputs are its targets.
        augment: features dict -> features dict applied to every batch after the cache (new
            random draws each epoch), before `targets` (models/augment.py; training only).

    Returns:
        A tf.data.Dataset.
    """
    import tensorflow as tf

    from kfx.models import tasks
    from kfx.models.preprocess import raw_feature_spec

    parse_spec = raw_feature_spec(spec, with_label=True)
    label = spec["task"]["label"]
    task = tasks.of(spec["task"])
    encode_target = task.target_encoder()  # eagerly: its layers cannot be made in the map
    keep = task.training_rows()  # e.g. the anomaly task learns from normal rows only

    def parse_and_preprocess(batch):
        parsed = tf.io.parse_example(batch, parse_spec)
        y = encode_target(parsed.pop(label), parsed)
        return preprocessor(parsed), y

    # Rows are parsed, preprocessed (and cached) in blocks of PARSE_BATCH: every later step is
    # vectorised. Shuffling is by block order plus a permutation inside each block, then the
    # blocks are re-cut into training batches (per-row shuffle/batch would cost ~3x throughput).
    # The serialized rows are shuffled before they are cut into blocks (once, when the blocks are
    # cached), so data stored sorted (by class folder, by time) does not give one-class blocks.
    ds = _records(split_files(examples_uri, split), rows, spec.get("train_rows") if split == "train" else None)
    if keep is not None:
        label_spec = {label: parse_spec[label]}
        ds = ds.filter(lambda r: keep(tf.io.parse_single_example(r, label_spec)[label]))
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=not cache)
    ds = ds.batch(PARSE_BATCH).map(parse_and_preprocess, num_parallel_calls=tf.data.AUTOTUNE)
    if cache:
        ds = ds.cache()
    if shuffle:
        ds = ds.shuffle(max(1, shuffle_buffer // PARSE_BATCH), seed=seed, reshuffle_each_iteration=True)

        def permute(x, y):
            order = tf.random.shuffle(tf.range(tf.shape(y)[0]), seed=seed)
            return {k: tf.gather(v, order) for k, v in x.items()}, tf.gather(y, order)

        ds = ds.map(permute, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.rebatch(batch_size)
    if augment is not None:
        ds = ds.map(lambda x, y: (augment(x), y), num_parallel_calls=tf.data.AUTOTUNE)
    if targets is not None:
        ds = ds.map(targets, num_parallel_calls=tf.data.AUTOTUNE)
    if shard_by_data:
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        ds = ds.with_options(options)
    return ds.prefetch(tf.data.AUTOTUNE)
