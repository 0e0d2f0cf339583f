"""Image data through ingest, statistics, schema and validate, on tiny images made here:
a class-per-subfolder folder of PNG and JPEG files (a corrupt and a wrong-sized one quarantined
with their paths), base64 images in CSV (bad base64 and non-images quarantined with their line),
binary Parquet columns, fixed-shape pixel arrays up to transform; image statistics equal numpy's
on the decoded pixels; validate flags a channel mismatch and undecodable images, passes good data.
"""
from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import yaml

from kfx.components.data import images
from kfx.pipeline.artifacts import load_schema, load_statistics, read_columns

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

H, W = 6, 5
STAGES = [
    {"name": "ingest", "component": "ingest"},
    {"name": "statistics", "component": "statistics", "inputs": {"examples": "ingest.examples"}},
    {"name": "schema", "component": "schema", "inputs": {"statistics": "statistics.statistics"}},
    {"name": "validate", "component": "validate",
     "inputs": {"statistics": "statistics.statistics", "schema": "schema.schema"}},
]


def _image(rng, channels: int = 3, height: int = H, width: int = W) -> np.ndarray:
    return rng.integers(0, 256, (height, width, channels), dtype=np.uint8)


def _png(image) -> bytes:
    return tf.io.encode_png(image).numpy()


def _run(tmp: Path, name: str, sections: dict, stages=STAGES, **kwargs) -> dict:
    from kfx.pipeline.config import load_config
    from kfx.pipeline.runner import run_pipeline

    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "root": str(tmp / "runs"), "max_parallel": 1,
                                    "beam_args": ["--direct_running_mode=in_memory"], "stages": stages,
                                    **sections}))
    return run_pipeline(load_config(path), **kwargs)


def _rejected(summary: dict) -> list[dict]:
    path = Path(summary["components"]["ingest"]["outputs"]["rejected"], "rejected.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


def _examples(examples_uri: str, split: str = "*") -> list:
    files = tf.io.gfile.glob(f"{examples_uri}/Split-{split}/*.gz")
    return [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]


def _feature(stats, name: str):
    return {f.path.step[0]: f for f in stats.features}[name]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """photos/{cat,dog}/: 12 PNG and 6 JPEG RGB images, a corrupt PNG, a 10x10 image, a text file;
    ingest (image_shape [6, 5, 3]) -> statistics -> schema -> validate."""
    tmp = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    files = {}
    for label in ("cat", "dog"):
        (tmp / "photos" / label).mkdir(parents=True)
        for i in range(9):
            image = _image(rng)
            data = tf.io.encode_jpeg(image, quality=95).numpy() if i % 3 == 2 else _png(image)
            rel = f"{label}/{i}.{'jpg' if i % 3 == 2 else 'png'}"
            (tmp / "photos" / rel).write_bytes(data)
            files[rel] = data
    (tmp / "photos" / "dog" / "broken.png").write_bytes(_png(_image(rng))[:40])
    (tmp / "photos" / "cat" / "big.png").write_bytes(_png(_image(rng, height=10, width=10)))
    (tmp / "photos" / "cat" / "notes.txt").write_text("not an image: ignored, as keras does")
    summary = _run(tmp, "folder", {
        "ingest": {"format": "image_folder", "image_shape": [H, W, 3], "max_rejected_fraction": 0.2,
                   "inputs": [{"pattern": str(tmp / "photos"), "splits": {"train": 3, "eval": 1}}]},
        "schema": {"label": "label"}})
    assert summary["status"] == "succeeded", summary["error"]
    return {"summary": summary, "files": files, "tmp": tmp,
            "outputs": {k: c["outputs"] for k, c in summary["components"].items()}}


def test_folder_gives_labels_from_subfolders_and_quarantines_bad_files_with_their_path(folder):
    metrics = folder["summary"]["components"]["ingest"]["metrics"]
    assert (metrics["read"], metrics["rows"], metrics["rejected"]) == (20, 18, 2)
    by_input = {Path(r["input"]).relative_to(folder["tmp"] / "photos").as_posix(): r for r in _rejected(folder["summary"])}
    assert set(by_input) == {"dog/broken.png", "cat/big.png"}
    assert all("line" not in r for r in by_input.values())  # a file, not a line of one
    assert by_input["dog/broken.png"]["reason"].startswith("column 'image': undecodable image (40 bytes): Invalid PNG")
    assert by_input["cat/big.png"]["reason"] == "column 'image': image shape 10x10x3, expected 6x5x3"
    examples = folder["outputs"]["ingest"]["examples"]
    got = {ex.features.feature["image"].bytes_list.value[0]: ex.features.feature["label"].bytes_list.value[0].decode()
           for ex in _examples(examples)}
    assert got == {data: rel.split("/")[0] for rel, data in folder["files"].items()}
    meta = read_columns(examples)
    assert meta["columns"] == {"image": "string", "label": "string"} and meta["label"] == "label"
    assert meta["images"] == {"image": [H, W, 3]} and meta["text_columns"] == []


def test_image_statistics_equal_numpy_on_the_decoded_pixels(folder):
    stats = load_statistics(folder["outputs"]["statistics"]["statistics"])
    for split in ("train", "eval"):
        pixels = np.stack([tf.io.decode_image(ex.features.feature["image"].bytes_list.value[0]).numpy()
                           for ex in _examples(folder["outputs"]["ingest"]["examples"], split)]).astype(np.float64)
        s = images.image_stats(_feature(stats[split], "image"))
        assert s["decoded"] == len(pixels) and s["undecodable"] == 0
        assert s["shapes"] == {"6x5x3": len(pixels)}
        np.testing.assert_allclose(s["channel_mean"], pixels.mean(axis=(0, 1, 2)), rtol=1e-9)
        np.testing.assert_allclose(s["channel_std"], pixels.std(axis=(0, 1, 2)), rtol=1e-9)
        assert not _feature(stats[split], "image").string_stats.top_values  # no image bytes as "values"
    text = Path(folder["outputs"]["statistics"]["statistics"], "stats.txt").read_text()
    assert "image: " in text and "0 undecodable; shapes 6x5x3=" in text and "channel mean [" in text


def test_schema_records_the_image_domain_and_shape_and_validate_passes(folder):
    schema = load_schema(folder["outputs"]["schema"]["schema"])
    f = {f.name: f for f in schema.feature}["image"]
    assert f.image_domain.minimum_supported_image_fraction == 1.0
    assert images.schema_shape(f) == (H, W, 3) and not f.HasField("domain")
    assert folder["summary"]["components"]["validate"]["metrics"]["anomalies"] == 0


def test_validate_flags_channel_mismatch_and_undecodable_images(folder, tmp_path):
    """Hand-made examples (gray images and a blob no ingest checked) against the folder's schema."""
    rng = np.random.default_rng(1)
    blobs = [_png(_image(rng)) for _ in range(3)] + [_png(_image(rng, channels=1)) for _ in range(2)] + [b"junk"]
    examples = tmp_path / "examples"
    (examples / "Split-train").mkdir(parents=True)
    with tf.io.TFRecordWriter(str(examples / "Split-train" / "data_tfrecord-0.gz"), "GZIP") as w:
        for i, blob in enumerate(blobs):
            w.write(tf.train.Example(features=tf.train.Features(feature={
                "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[blob])),
                "label": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"cat" if i % 2 else b"dog"]))}))
                .SerializeToString())
    (examples / "columns.json").write_text(json.dumps({"columns": {"image": "string", "label": "string"},
                                                       "label": "label", "splits": ["train"],
                                                       "images": {"image": None}}))
    summary = _run(tmp_path, "bad", {"ingest": {"inputs": [{"pattern": "unused"}]}}, only=["statistics", "validate"],
                   given_inputs={"examples": str(examples), "schema": folder["outputs"]["schema"]["schema"]})
    assert summary["status"] == "failed"
    s = images.image_stats(_feature(load_statistics(summary["components"]["statistics"]["outputs"]["statistics"])["train"],
                                    "image"))
    assert (s["decoded"], s["undecodable"], s["shapes"]) == (5, 1, {"6x5x3": 3, "6x5x1": 2})
    assert len(s["channel_mean"]) == 3
    gray = np.stack([tf.io.decode_png(b).numpy() for b in blobs[3:5]]).astype(np.float64)
    rgb = np.stack([tf.io.decode_png(b).numpy() for b in blobs[:3]]).astype(np.float64)
    channel0 = np.concatenate([gray[..., 0].ravel(), rgb[..., 0].ravel()])  # channel 0 of every image
    assert np.isclose(s["channel_mean"][0], channel0.mean()) and np.isclose(s["channel_std"][0], channel0.std())
    error = summary["error"]
    assert ("feature 'image' (split train): Unexpected image channels: 2 images have another channel count than "
            "the schema's image shape 6x5x3: 6x5x1 (2).") in error
    assert "feature 'image' (split train): Undecodable images: 1 of 6 images do not decode" in error
    assert "Unexpected image size" not in error


def test_base64_csv_quarantines_bad_rows_with_their_line(tmp_path):
    rng = np.random.default_rng(2)
    pngs = [_png(_image(rng, channels=1)) for _ in range(6)]
    lines = ["id,image,label"] + [f"{i},{base64.b64encode(p).decode()},{'ab'[i % 2]}" for i, p in enumerate(pngs)]
    lines.insert(3, "90,@@not base64@@,a")  # line 4
    lines.insert(5, f"91,{base64.b64encode(b'plain bytes, no image').decode()},b")  # line 6
    lines.append(f"92,{base64.b64encode(_png(_image(rng, channels=3))).decode()},a")  # line 10: 3 channels
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    ingest = {"format": "csv", "label": "label", "image_columns": ["image"], "base64_columns": ["image"],
              "image_shape": {"image": [None, None, 1]}, "max_rejected_fraction": 0.5,
              "inputs": [{"pattern": str(tmp_path / "d.csv"), "splits": {"train": 1}}]}
    summary = _run(tmp_path, "b64", {"ingest": ingest}, stages=STAGES[:1])
    assert summary["status"] == "succeeded", summary["error"]
    rejected = {r["line"]: r["reason"] for r in _rejected(summary)}
    assert set(rejected) == {4, 6, 10}
    assert rejected[4].startswith("column 'image': invalid base64 (13 characters): Only base64 data is allowed")
    assert rejected[6].startswith("column 'image': undecodable image (21 bytes)")
    assert rejected[10] == "column 'image': image shape 6x5x3, expected *x*x1"
    stored = sorted(ex.features.feature["image"].bytes_list.value[0]
                    for ex in _examples(summary["components"]["ingest"]["outputs"]["examples"]))
    assert stored == sorted(pngs)

    without = _run(tmp_path, "b64", {"ingest": {**ingest, "base64_columns": []}}, stages=STAGES[:1])
    assert without["status"] == "failed" and "list them in ingest.base64_columns" in without["error"]


def test_parquet_binary_images_and_pixel_arrays_through_transform(tmp_path):
    """Parquet: a binary column of PNGs (a junk blob quarantined) and a pixel array column
    (4x4x1 numbers, a short row quarantined) -> transform's `image` kind reshapes and scales it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(3)
    n = 24
    pixels = [rng.integers(0, 256, 16).astype(np.float32).tolist() for _ in range(n)]
    pixels[5] = pixels[5][:15]
    blobs = [_png(_image(rng, channels=1)) for _ in range(n)]
    blobs[7] = b"\x89PNG junk"
    pq.write_table(pa.table({"png": pa.array(blobs, pa.binary()), "pixels": pixels,
                             "label": ["ab"[i % 2] for i in range(n)]}), tmp_path / "d.parquet")
    stages = STAGES[:3] + [{"name": "transform", "component": "transform",
                            "inputs": {"examples": "ingest.examples", "schema": "schema.schema"}}]
    summary = _run(tmp_path, "pq", {
        "ingest": {"format": "parquet", "label": "label", "image_columns": ["png"],
                   "image_shape": {"pixels": [4, 4, 1]}, "max_rejected_fraction": 0.2,
                   "inputs": [{"pattern": str(tmp_path / "d.parquet"), "splits": {"train": 1}}]},
        "schema": {"label": "label"},
        "transform": {"task": "binary", "exclude": ["png"],
                      "features": {"pixels": {"kinds": ["image"], "image_shape": [4, 4, 1]}}}}, stages=stages)
    assert summary["status"] == "succeeded", summary["error"]
    rejected = {r["line"]: r["reason"] for r in _rejected(summary)}
    assert rejected[6] == "column 'pixels': 15 pixel values, expected 4x4x1 = 16"
    assert rejected[8].startswith("column 'png': undecodable image (9 bytes)")
    stats = load_statistics(summary["components"]["statistics"]["outputs"]["statistics"])["train"]
    assert images.image_stats(_feature(stats, "png"))["shapes"] == {"6x5x1": n - 2}
    assert images.image_stats(_feature(stats, "pixels")) is None

    from kfx.models.preprocess import load_transform, make_preprocessor

    spec = load_transform(summary["components"]["transform"]["outputs"]["transform_graph"])
    kept = np.array([p for i, p in enumerate(pixels) if i not in (5, 7)], np.float64)
    state = next(t["state"] for t in spec["transforms"] if t["state"].get("shape") == [4, 4, 1])
    assert np.isclose(state["mean"], kept.mean()) and np.isclose(state["std"], kept.std())
    out = make_preprocessor(spec)({"pixels": tf.constant(kept[:2], tf.float32)})["pixels"].numpy()
    np.testing.assert_allclose(out, ((kept[:2] - state["mean"]) / state["std"]).reshape(2, 4, 4, 1), rtol=1e-5)


def test_image_settings_that_do_not_fit_fail_clearly(tmp_path):
    from kfx.pipeline.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError, match=r"ingest.image_shape.*must be > 0 or null, got \[0, 5, 3\]"):
        config_from_dict({"name": "x", "ingest": {"format": "image_folder", "image_shape": [0, 5, 3],
                                                  "inputs": [{"pattern": "p"}]}, "stages": STAGES[:1]})
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    summary = _run(tmp_path, "empty", {"ingest": {"format": "image_folder",
                                                  "inputs": [{"pattern": str(tmp_path / "empty")}]}}, stages=STAGES[:1])
    assert summary["status"] == "failed" and "matches no image in class subfolders" in summary["error"]
    (tmp_path / "d.csv").write_text("x,label\n1,a\n")
    summary = _run(tmp_path, "shape", {"ingest": {"image_shape": [2, 2, 1], "label": "label",
                                                  "inputs": [{"pattern": str(tmp_path / "d.csv")}]}}, stages=STAGES[:1])
    assert summary["status"] == "failed" and "image_shape 2x2x1 needs ingest.image_columns" in summary["error"]
    with pytest.raises(ValueError, match="invalid base64"):
        images.decode_base64("c", "abc")


def test_moving_an_image_to_another_class_changes_the_source_fingerprint(tmp_path):
    from kfx.components.data.ingest import source_fingerprint
    from kfx.pipeline.config import IngestConfig

    for label in ("a", "b"):
        (tmp_path / label).mkdir()
    (tmp_path / "a" / "x.png").write_bytes(_png(_image(np.random.default_rng(4))))
    cfg = IngestConfig(format="image_folder", inputs=[{"pattern": str(tmp_path)}])
    before = source_fingerprint(cfg)
    (tmp_path / "a" / "x.png").rename(tmp_path / "b" / "x.png")
    assert source_fingerprint(cfg) != before


def test_first_rejection_names_a_file_without_a_line(tmp_path):
    from kfx.components.data.ingest import first_rejection

    (tmp_path / "rejected.jsonl").write_text(json.dumps({"input": "photos/cat/big.png", "reason": "too big"}) + "\n")
    assert first_rejection(str(tmp_path)) == "photos/cat/big.png: too big"
    (tmp_path / "rejected.jsonl").write_text(json.dumps({"input": "d.csv", "line": 3, "reason": "bad"}) + "\n")
    assert first_rejection(str(tmp_path)) == "d.csv line 3: bad"
