"""components/evaluation/samples.py: the schema's image column, large images as thumbnails, which rows are shown (misclassified
first, rows without an image skipped, at most n), and the report section's images and captions."""
from __future__ import annotations

import base64
import re

import numpy as np

from kfx.models import tasks
from kfx.models.tasks import Outcomes
from tests.models.test_families import task_info

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 8
JPEG = b"\xff\xd8\xff\xe0" + b"\x01" * 8
CLASSES = ["cat", "dog", "owl"]


def _split(rows: int = 6):
    images = np.array([PNG if i % 2 else JPEG for i in range(rows)], dtype=object)
    images[2] = ""  # missing image
    frame = {"photo": images, "caption": np.array(["a cat"] * rows, dtype=object),
             "size": np.arange(rows, dtype=np.float64)}
    missing = {"photo": images == "", "caption": np.zeros(rows, bool), "size": np.zeros(rows, bool)}
    return frame, missing


def test_mime_types_and_large_images_are_stored_as_small_thumbnails():
    import tensorflow as tf

    from kfx.components.evaluation.samples import THUMBNAIL, mime_type, stored_image

    assert (mime_type(PNG), mime_type(JPEG), mime_type(b"GIF89a..."), mime_type(b"plain"), mime_type("text")) == \
        ("image/png", "image/jpeg", "image/gif", None, None)
    assert stored_image(PNG) == ("image/png", PNG) and stored_image(b"plain") is None
    noise = np.random.default_rng(0).integers(0, 256, (300, 200, 3), dtype=np.uint8)
    big = tf.io.encode_png(noise).numpy()  # incompressible: ~180 KB
    assert len(big) > 64 * 1024
    mime, small = stored_image(big)
    assert mime == "image/jpeg" and len(small) < 64 * 1024
    assert tf.io.decode_jpeg(small).shape == (THUMBNAIL, THUMBNAIL * 2 // 3, 3)  # aspect kept
    assert stored_image(big[:1000] + b"\x00" * 70000) is None  # a PNG signature that does not decode


def test_samples_put_misclassified_rows_first_and_skip_rows_without_an_image():
    from kfx.components.evaluation.samples import image_samples, render

    frame, missing = _split()
    task = tasks.of(task_info(tasks.MULTICLASS, np.array(CLASSES * 2, dtype=object)))
    y = np.array([0, 1, 2, 0, 1, 2])
    pred = np.array([0, 2, 1, 0, 0, 2])  # rows 1, 2 (no image) and 4 wrong
    o = Outcomes(y=y, score=np.full(6, 0.9), pred=pred)

    assert image_samples(task, o, frame, missing, ["caption"], n=4)["rows"] == []  # not images: none shown
    got = image_samples(task, o, frame, missing, ["scan", "photo"], n=4)  # the schema's image features
    assert got["feature"] == "photo" and got["misclassified"] == 3
    assert [(r["row"], r["label"], r["prediction"], r["correct"]) for r in got["rows"]] == [
        (1, "dog", "owl", False), (4, "dog", "cat", False), (0, "cat", "cat", True), (3, "cat", "cat", True)]
    assert base64.b64decode(got["rows"][0]["data"]) == PNG and got["rows"][2]["mime"] == "image/jpeg"

    html = render(got)
    imgs = re.findall(r"<img src='data:(image/\w+);base64,[^']+' alt='row (\d+): true (\w+), predicted (\w+)'>", html)
    assert imgs == [("image/png", "1", "dog", "owl"), ("image/jpeg", "4", "dog", "cat"),
                    ("image/jpeg", "0", "cat", "cat"), ("image/png", "3", "cat", "cat")]
    assert html.count("class='sample wrong'") == 2 and "3 misclassified in the split" in html

    frame.pop("photo"), missing.pop("photo")
    assert image_samples(task, o, frame, missing, ["photo"]) is None
