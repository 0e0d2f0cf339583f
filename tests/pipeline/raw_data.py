"""Tiny raw-modality data and pipeline pieces shared by the image and text pipeline tests.

Images: noisy 8x8 grayscale stripes, horizontal (class "h") or vertical ("v"), as encoded
PNG/JPEG bytes in a TFRecord. Text: short synthetic reviews, fresh or rotten, in the CSV layout
of the `reviews` built-in. Plus the data stages of an image or text pipeline graph, one
`kfx serve` process serving several exports, and a REST Predict call to it.
"""
from __future__ import annotations

import contextlib
import csv
import json
import shutil
import urllib.request
from pathlib import Path

import numpy as np

IMAGE, LABEL = "image", "label"
CLASSES = ["h", "v"]  # horizontal or vertical stripes
SIZE = 8
GARBAGE = b"\x89PNG\r\n\x1a\n but not really an image"

TEXT, TEXT_LABEL = "text", "category"
GOOD = ("wonderful", "moving", "brilliant", "delightful", "superb")
BAD = ("dull", "tedious", "awful", "clumsy", "boring")
FILLER = ("the", "film", "cast", "story", "is", "a", "and", "plot", "really", "quite")
TEXT_CLASSES = ["fresh", "rotten"]  # the schema's domain, sorted: the second is the positive class

# ingest -> statistics -> schema -> transform; train stages are added by the tests.
DATA_STAGES = [
    {"name": "ingest", "component": "ingest"},
    {"name": "statistics", "component": "statistics", "inputs": {"examples": "ingest.examples"}},
    {"name": "schema", "component": "schema", "inputs": {"statistics": "statistics.statistics"}},
    {"name": "transform", "component": "transform", "inputs": {"examples": "ingest.examples", "schema": "schema.schema"}},
]


def train_stage(name: str) -> dict:
    """A stage `name` of the train component fed by DATA_STAGES."""
    return {"name": name, "component": "train", "inputs": {
        "examples": "ingest.examples", "schema": "schema.schema", "transform_graph": "transform.transform_graph"}}


def stripes(kind: str, rng) -> np.ndarray:
    """A uint8 [SIZE, SIZE, 1] image: bright stripes on every other row (h) or column (v), noisy."""
    base = np.zeros((SIZE, SIZE), np.float64)
    if kind == "h":
        base[::2, :] = 200
    else:
        base[:, ::2] = 200
    noisy = base + rng.normal(0, 20, base.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)[..., None]


def write_images(path: Path, n: int = 60) -> list[np.ndarray]:
    """n labelled images (every 6th as JPEG, the rest PNG) plus one undecodable blob as the last record."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    images = []
    with tf.io.TFRecordWriter(str(path)) as writer:
        for i in range(n + 1):
            kind = CLASSES[i % 2]
            if i < n:
                image = stripes(kind, rng)
                images.append(image)
                data = (tf.io.encode_jpeg(image, quality=100) if i % 6 == 5 else tf.io.encode_png(image)).numpy()
            else:
                data = GARBAGE
            ex = tf.train.Example(features=tf.train.Features(feature={
                IMAGE: tf.train.Feature(bytes_list=tf.train.BytesList(value=[data])),
                LABEL: tf.train.Feature(bytes_list=tf.train.BytesList(value=[kind.encode()]))}))
            writer.write(ex.SerializeToString())
    return images


def pngs(images) -> list[bytes]:
    """Each uint8 image encoded as PNG bytes."""
    import tensorflow as tf

    return [tf.io.encode_png(image).numpy() for image in images]


def sentence(rng, words) -> str:
    """Five filler words and one of `words`, shuffled, as a capitalized sentence."""
    chosen = list(rng.choice(FILLER, 5)) + [rng.choice(words)]
    rng.shuffle(chosen)
    return " ".join(chosen).capitalize() + "."


def write_reviews(path: Path, rows: int = 400, seed: int = 0) -> None:
    """`rows` reviews alternating fresh and rotten, plus one 'plot' row that ingest drops."""
    rng = np.random.default_rng(seed)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow([TEXT_LABEL, TEXT, "movie_name", "has_plot_and_reviews"])
        for i in range(rows):
            fresh = i % 2 == 0
            w.writerow(["fresh" if fresh else "rotten", sentence(rng, GOOD if fresh else BAD), f"m{i % 7}", "False"])
        w.writerow(["plot", "A plot summary that is not a review.", "m0", "True"])


def rest_predict(port: int, model: str, body: dict) -> tuple[int, dict]:
    """POST `body` to /v1/models/<model>:predict; (status, JSON body). HTTP errors raise HTTPError."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/models/{model}:predict", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, json.loads(response.read())


@contextlib.contextmanager
def serving(tmp: Path, exports: dict[str, str]):
    """One `python -m kfx.serving` (gRPC + REST) serving each export as model <name>, version 1;
    yields (process, client) once every model is available."""
    from kfx.serving.client import ServingClient
    from tests.serving.conftest import ServerProcess, write_config

    for name, path in exports.items():
        shutil.copytree(path, tmp / "models" / name / "1")
    config = write_config(str(tmp / "models.config"), [(name, str(tmp / "models" / name), "") for name in exports])
    process = ServerProcess(tmp, f"--model_config_file={config}", rest=True)
    try:
        process.wait_serving()
        with ServingClient(process.target, timeout=30, retries=0) as client:
            for name in exports:
                client.wait_until_available(name, timeout=120)
            yield process, client
    finally:
        process.stop()
