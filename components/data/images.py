"""Image data through the data stages: reading, checking, statistics, schema and validation.

- ingest: the `image_folder` source (one subfolder per class, the layout of
  keras.utils.image_dataset_from_directory), base64 text columns decoded to bytes, every
  encoded image decoded once (undecodable or wrong-shaped images are rejected with the reason),
  fixed-shape pixel arrays checked by their number of values.
- statistics: per image feature, the decoded shapes, per-channel pixel mean and std and the
  count of undecodable images, computed with tf.data (decoding in parallel C++, undecodable
  images dropped by `ignore_errors` and counted as the difference), stored as custom_stats on
  the feature (as TFDV's image statistics are) and in stats.txt.
- schema: a feature whose statistics say it is an image gets an `image_domain` (its
  minimum_supported_image_fraction is the train split's) and, when the train images agree on
  a shape or a channel count, the annotation tag `image_shape:HxWxC` (`*` for a free size).
- validate: images of another shape or channel count than the schema's, and a decodable
  fraction below the domain's, are anomalies.

Shapes are (height, width, channels); a None dimension (`*` in text) matches any size.
"""
from __future__ import annotations

import base64
import binascii
import math
import re
from typing import Any, Iterable

import numpy as np

from kfx.pipeline.artifacts import IMAGE_SHAPE_TAG, image_shape

Shape = tuple  # (height, width, channels), entries int or None

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".bmp")
FILES_PER_CHUNK = 256  # images per Beam element of a folder source (bounded memory)
MAX_CHANNELS = 4
MAX_SHAPES = 64  # distinct shapes kept per feature (photos of many sizes)

# custom_stats names (domain_info is TFDV's: it tells schema inference the feature's domain)
DOMAIN_INFO, IMAGE_DOMAIN = "domain_info", "image_domain {}"
DECODED, UNDECODABLE, SHAPES = "image_decoded", "image_undecodable", "image_shapes"
MAX_HEIGHT, MAX_WIDTH = "image_max_height", "image_max_width"


def shape_text(shape: Iterable) -> str:
    """(8, 8, None) -> '8x8x*'."""
    return "x".join("*" if d is None else str(int(d)) for d in shape)


def parse_shape_text(text: str) -> Shape:
    """'8x8x*' -> (8, 8, None).

    Raises:
        ValueError: not three dimensions of digits or '*'.
    """
    parts = text.split("x")
    if len(parts) != 3 or not all(p == "*" or p.isdigit() for p in parts):
        raise ValueError(f"image shape {text!r} is not HxWxC (digits or '*')")
    return tuple(None if p == "*" else int(p) for p in parts)


def matches(shape: Iterable, expected: Shape | None) -> bool:
    return expected is None or all(e is None or int(d) == e for d, e in zip(shape, expected))


# ------------------------------------------------------------------ ingest
def expected_shapes(cfg) -> dict[str, Shape | None]:
    """{image column: expected shape or None} from ingest.image_columns and ingest.image_shape."""
    shape = cfg.image_shape
    if isinstance(shape, dict):
        return {c: shape.get(c) for c in cfg.image_columns}
    return {c: shape for c in cfg.image_columns}


def pixel_shapes(cfg) -> dict[str, Shape]:
    """{numeric column: shape} of fixed-shape pixel arrays: image_shape entries that are not image columns."""
    if not isinstance(cfg.image_shape, dict):
        return {}
    return {c: s for c, s in cfg.image_shape.items() if c not in cfg.image_columns}


def check_columns(cfg, columns: dict[str, str]) -> None:
    """Raise ValueError when the image settings do not fit the source's columns (name, type)."""
    bad = [c for c in cfg.image_columns if columns.get(c) != "string"]
    if bad:
        raise ValueError(f"image_columns {bad} must be string (bytes) columns; columns are {columns}")
    if cfg.image_shape is not None and not isinstance(cfg.image_shape, dict) and not cfg.image_columns:
        raise ValueError(f"image_shape {shape_text(cfg.image_shape)} needs ingest.image_columns (which columns "
                         f"are images); columns are {columns}")
    bad = [c for c in cfg.base64_columns if columns.get(c) != "string"]
    if bad:
        raise ValueError(f"base64_columns {bad} must be string columns; columns are {columns}")
    if cfg.format == "csv":
        bad = [c for c in cfg.image_columns if c not in cfg.base64_columns]
        if bad:
            raise ValueError(f"CSV image columns {bad} hold text: list them in ingest.base64_columns too "
                             f"(images in CSV are base64-encoded)")
    for c, shape in pixel_shapes(cfg).items():
        if columns.get(c) not in ("int", "float"):
            raise ValueError(f"image_shape names {c!r}, which is neither in image_columns nor a numeric "
                             f"(pixel array) column; columns are {columns}")
        if None in shape:
            raise ValueError(f"image_shape of pixel array column {c!r} must be fully known, got {shape_text(shape)}")


def check_image(column: str, data: bytes, expected: Shape | None = None) -> tuple[int, int, int]:
    """Decode `data` (the decoder the encoded_image kind runs in the model) and return its shape.

    Raises:
        ValueError: naming `column` and the decoder's reason when `data` is not a whole image, or
            the shape found and the one expected.
    """
    import tensorflow as tf

    try:
        shape = tuple(int(d) for d in tf.io.decode_image(data, expand_animations=False).shape)
    except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as err:
        # TensorFlow prefixes the reason with its graph node ("{{function_node ...}} Invalid PNG ...").
        reason = re.sub(r"^\{\{function_node [^}]*\}\}\s*", "", err.message.splitlines()[0]) if err.message \
            else type(err).__name__
        raise ValueError(f"column {column!r}: undecodable image ({len(data)} bytes): {reason}") from None
    if not matches(shape, expected):
        raise ValueError(f"column {column!r}: image shape {shape_text(shape)}, expected {shape_text(expected)}")
    return shape


def check_pixels(column: str, values: list, shape: Shape) -> None:
    """Raise ValueError when a pixel array does not have height * width * channels values."""
    if len(values) != math.prod(shape):
        raise ValueError(f"column {column!r}: {len(values)} pixel values, expected {shape_text(shape)} = "
                         f"{math.prod(shape)}")


def decode_base64(column: str, text: str | bytes) -> bytes:
    """Standard base64 (line breaks and surrounding spaces ignored) -> bytes.

    Raises:
        ValueError: naming the column and the decoder's reason.
    """
    compact = "".join(text.split()) if isinstance(text, str) else b"".join(text.split())
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as err:
        raise ValueError(f"column {column!r}: invalid base64 ({len(compact)} characters): {err}") from None


def folder_files(root: str) -> list[tuple[str, str]]:
    """(relative path, class) of every image file in `root`'s class subfolders, sorted.

    As keras.utils.image_dataset_from_directory: the class is the subfolder's name, files are
    chosen by extension (case-insensitive), other files and files directly in `root` are ignored.
    """
    from kfx.pipeline import fs

    out = []
    for sub in sorted(fs.listdir(root)):
        label = sub.rstrip("/")
        if not fs.isdir(f"{root}/{label}"):
            continue
        for name in sorted(fs.listdir(f"{root}/{label}")):
            if name.lower().endswith(IMAGE_EXTENSIONS):
                out.append((f"{label}/{name}", label))
    return out


def folder_items(input_idx: int, root: str) -> list[tuple[int, tuple[str, list]]]:
    """Beam elements of one folder source: (input, (root, [(relative path, class)] * FILES_PER_CHUNK))."""
    files = folder_files(root)
    return [(input_idx, (root, files[i:i + FILES_PER_CHUNK])) for i in range(0, len(files), FILES_PER_CHUNK)]


def read_folder_chunk(item) -> Iterable[tuple[int, str, list]]:
    """One element of `folder_items` -> (input, root, [(relative path, [image bytes, class])])."""
    import tensorflow as tf

    input_idx, (root, files) = item
    rows = []
    for rel, label in files:
        with tf.io.gfile.GFile(f"{root}/{rel}", "rb") as f:
            rows.append((rel, [f.read(), label]))
    yield input_idx, root, rows


# ------------------------------------------------------------------ statistics
class ImageAcc:
    """Mergeable statistics of one image feature's decoded images.

    Pixels are counted per channel index (0..3) over the images that have that channel.
    """

    def __init__(self):
        self.decoded = 0
        self.shapes: dict[tuple[int, int, int], int] = {}
        self.truncated = False
        self.max_height = self.max_width = 0
        self.pixels = np.zeros(MAX_CHANNELS)
        self.total = np.zeros(MAX_CHANNELS)
        self.total_sq = np.zeros(MAX_CHANNELS)

    def add(self, shapes: np.ndarray, sums: np.ndarray, sums_sq: np.ndarray) -> None:
        """Fold a batch: shapes [n, 3], per-channel sums and sums of squares [n, MAX_CHANNELS]."""
        self.decoded += len(shapes)
        if not len(shapes):
            return
        uniq, counts = np.unique(shapes, axis=0, return_counts=True)
        for s, c in zip(map(tuple, uniq.tolist()), counts.tolist()):
            self.shapes[s] = self.shapes.get(s, 0) + c
        self.max_height = max(self.max_height, int(shapes[:, 0].max()))
        self.max_width = max(self.max_width, int(shapes[:, 1].max()))
        area = (shapes[:, 0] * shapes[:, 1]).astype(np.float64)
        has = np.arange(MAX_CHANNELS)[None, :] < shapes[:, 2:3]
        self.pixels += (area[:, None] * has).sum(axis=0)
        self.total += sums.sum(axis=0)
        self.total_sq += sums_sq.sum(axis=0)
        self._prune()

    def merge(self, o: "ImageAcc") -> "ImageAcc":
        self.decoded += o.decoded
        for s, c in o.shapes.items():
            self.shapes[s] = self.shapes.get(s, 0) + c
        self.truncated |= o.truncated
        self.max_height, self.max_width = max(self.max_height, o.max_height), max(self.max_width, o.max_width)
        self.pixels += o.pixels
        self.total += o.total
        self.total_sq += o.total_sq
        self._prune()
        return self

    def _prune(self) -> None:
        if len(self.shapes) > 2 * MAX_SHAPES:
            self.shapes = dict(sorted(self.shapes.items(), key=lambda kv: -kv[1])[:MAX_SHAPES])
            self.truncated = True

    def channel_moments(self) -> tuple[list[float], list[float]]:
        """(mean, std) per channel index present in some image."""
        n = int(np.count_nonzero(self.pixels))
        mean = self.total[:n] / self.pixels[:n]
        std = np.sqrt(np.maximum(self.total_sq[:n] / self.pixels[:n] - mean * mean, 0.0))
        return mean.tolist(), std.tolist()


def _image_moments(data):
    """Encoded image -> (shape [3], per-channel sum [MAX_CHANNELS], sum of squares [MAX_CHANNELS])."""
    import tensorflow as tf

    image = tf.io.decode_image(data, expand_animations=False)
    x = tf.cast(image, tf.float64)
    pad = [[0, MAX_CHANNELS - tf.shape(image)[2]]]
    return (tf.cast(tf.shape(image), tf.int64), tf.pad(tf.reduce_sum(x, [0, 1]), pad),
            tf.pad(tf.reduce_sum(x * x, [0, 1]), pad))


def file_stats(path: str, image_columns: Iterable[str], batch_size: int) -> dict[str, ImageAcc]:
    """ImageAcc of each image column of one gzip TFRecord shard of tf.Examples.

    Every image is decoded in tf.data's parallel map; images that do not decode are dropped
    (ignore_errors) and are the difference between the feature's values and `decoded`.
    """
    import tensorflow as tf

    out = {}
    for name in image_columns:
        spec = {name: tf.io.RaggedFeature(tf.string, row_splits_dtype=tf.int64)}
        acc = ImageAcc()
        ds = (tf.data.TFRecordDataset(path, compression_type="GZIP").batch(batch_size)
              .map(lambda s, spec=spec, name=name: tf.io.parse_example(s, spec)[name].flat_values)
              .unbatch().map(_image_moments, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors()
              .batch(1024))
        for shapes, sums, sums_sq in ds.as_numpy_iterator():
            acc.add(shapes, sums, sums_sq)
        out[name] = acc
    return out


def add_custom_stats(f, acc: ImageAcc, num_values: int) -> None:
    """Write an image feature's statistics as custom_stats of its FeatureNameStatistics `f`."""
    f.custom_stats.add(name=DOMAIN_INFO, str=IMAGE_DOMAIN)
    f.custom_stats.add(name=DECODED, num=acc.decoded)
    f.custom_stats.add(name=UNDECODABLE, num=num_values - acc.decoded)
    f.custom_stats.add(name=MAX_HEIGHT, num=acc.max_height)
    f.custom_stats.add(name=MAX_WIDTH, num=acc.max_width)
    hist = f.custom_stats.add(name=SHAPES).rank_histogram
    for i, (shape, count) in enumerate(sorted(acc.shapes.items(), key=lambda kv: (-kv[1], kv[0]))):
        hist.buckets.add(low_rank=i, high_rank=i, label=shape_text(shape), sample_count=count)
    for c, (mean, std) in enumerate(zip(*acc.channel_moments())):
        f.custom_stats.add(name=f"image_channel_{c}_mean", num=mean)
        f.custom_stats.add(name=f"image_channel_{c}_std", num=std)


def image_stats(f) -> dict[str, Any] | None:
    """The image statistics of a FeatureNameStatistics (None when it is not an image feature):
    decoded, undecodable, shapes {text: count}, channel_mean, channel_std."""
    custom = {c.name: c for c in f.custom_stats}
    if DOMAIN_INFO not in custom or custom[DOMAIN_INFO].str != IMAGE_DOMAIN:
        return None
    channels = sorted(int(k.split("_")[2]) for k in custom if k.startswith("image_channel_") and k.endswith("_mean"))
    return {"decoded": int(custom[DECODED].num), "undecodable": int(custom[UNDECODABLE].num),
            "shapes": {b.label: int(b.sample_count) for b in custom[SHAPES].rank_histogram.buckets},
            "channel_mean": [custom[f"image_channel_{c}_mean"].num for c in channels],
            "channel_std": [custom[f"image_channel_{c}_std"].num for c in channels]}


def summary_lines(name: str, f) -> list[str]:
    """stats.txt lines of an image feature (none for other features)."""
    s = image_stats(f)
    if s is None:
        return []
    shapes = ", ".join(f"{k}={v}" for k, v in list(s["shapes"].items())[:5])
    mean = ", ".join(f"{v:.4g}" for v in s["channel_mean"])
    std = ", ".join(f"{v:.4g}" for v in s["channel_std"])
    return [f"{'':<22}image: {s['decoded']} decoded, {s['undecodable']} undecodable; shapes {shapes or '-'}; "
            f"channel mean [{mean}] std [{std}]"]


# ------------------------------------------------------------------ schema and validate
def infer_domain(feature, fs) -> bool:
    """Mark schema `feature` as an image from its train statistics `fs`; False if not an image.

    The domain's minimum_supported_image_fraction is the train split's decoded fraction; the
    expected shape (tag `image_shape:HxWxC`) is the train images' one shape, else their one
    channel count with free size (`*x*xC`), else none.
    """
    s = image_stats(fs)
    if s is None:
        return False
    total = s["decoded"] + s["undecodable"]
    feature.image_domain.minimum_supported_image_fraction = s["decoded"] / total if total else 1.0
    shapes = [parse_shape_text(k) for k in s["shapes"]]
    if len(shapes) == 1:
        feature.annotation.tag.append(IMAGE_SHAPE_TAG + shape_text(shapes[0]))
    elif shapes and len({c for _, _, c in shapes}) == 1:
        feature.annotation.tag.append(IMAGE_SHAPE_TAG + shape_text((None, None, shapes[0][2])))
    return True


def schema_shape(feature) -> Shape | None:
    """The expected shape the schema records for an image feature (annotation tag), or None."""
    shape = image_shape(feature)
    return tuple(shape) if shape else None


def check(findings, split: str, feature, fs) -> None:
    """Anomalies of an image feature's statistics `fs` against schema `feature`: undecodable
    images below the domain's supported fraction, channel counts and sizes other than expected."""
    s = image_stats(fs)
    if s is None or not feature.HasField("image_domain"):
        return
    name, total = feature.name, s["decoded"] + s["undecodable"]
    least = feature.image_domain.minimum_supported_image_fraction
    if total and feature.image_domain.HasField("minimum_supported_image_fraction") and s["decoded"] / total < least:
        findings.add(split, name, "LOW_SUPPORTED_IMAGE_FRACTION", "Undecodable images",
                     f"{s['undecodable']} of {total} images do not decode ({s['decoded'] / total:.2%} decodable, "
                     f"expected at least {least:.2%}).")
    expected = schema_shape(feature)
    if expected is None:
        return
    shapes = {parse_shape_text(k): v for k, v in s["shapes"].items()}
    bad_channels = {k: v for k, v in shapes.items() if expected[2] is not None and k[2] != expected[2]}
    bad_size = {k: v for k, v in shapes.items() if k not in bad_channels and not matches(k, expected)}
    for bad, short, what in ((bad_channels, "Unexpected image channels", "channel count"),
                             (bad_size, "Unexpected image size", "height and width")):
        if bad:
            shown = ", ".join(f"{shape_text(k)} ({v})" for k, v in sorted(bad.items(), key=lambda kv: -kv[1])[:5])
            findings.add(split, name, "INVALID_FEATURE_SHAPE", short,
                         f"{sum(bad.values())} images have another {what} than the schema's image shape "
                         f"{shape_text(expected)}: {shown}.")
