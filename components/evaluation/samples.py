"""Sample images with their predictions, for the evaluation report of image models.

The image columns are the schema's image features (image_domain, as the schema stage marks
encoded images): what the model's `encoded_image` feature reads. The samples are stored in
evaluation.json (base64) so the report renders from that file alone, as inline data URIs; an
image above MAX_BYTES is stored as a JPEG thumbnail (at most THUMBNAIL pixels a side), so
evaluation.json stays small whatever the photos' size.
"""
from __future__ import annotations

import base64

import numpy as np

SAMPLES = 16
MAX_BYTES, THUMBNAIL = 64 * 1024, 128
SIGNATURES = {b"\x89PNG\r\n\x1a\n": "image/png", b"\xff\xd8\xff": "image/jpeg", b"GIF87a": "image/gif",
              b"GIF89a": "image/gif", b"BM": "image/bmp"}


def mime_type(data) -> str | None:
    """The image MIME type of encoded bytes, or None when they are not a known image format."""
    if not isinstance(data, bytes):
        return None
    return next((mime for magic, mime in SIGNATURES.items() if data.startswith(magic)), None)


def stored_image(data: bytes, max_bytes: int = MAX_BYTES) -> tuple[str, bytes] | None:
    """(mime, bytes) to store for an encoded image: itself up to `max_bytes`, else a JPEG
    thumbnail; None when it is not a known image format or does not decode."""
    mime = mime_type(data)
    if mime is None or len(data) <= max_bytes:
        return (mime, data) if mime else None
    import tensorflow as tf

    try:
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
    except (tf.errors.InvalidArgumentError, ValueError):
        return None
    small = tf.image.resize(image, [THUMBNAIL, THUMBNAIL], preserve_aspect_ratio=True, antialias=True)
    return "image/jpeg", tf.io.encode_jpeg(tf.cast(tf.round(small), tf.uint8), quality=85).numpy()


def image_samples(task, o, frame: dict[str, np.ndarray], missing: dict[str, np.ndarray], images: list[str],
                  n: int = SAMPLES, max_bytes: int = MAX_BYTES) -> dict | None:
    """Up to `n` rows of the first image column with true and predicted label, misclassified first.

    Args:
        task: the model's task (models/tasks/); its `prediction_labels` names labels and predictions.
        o: the task's Outcomes on the split.
        frame, missing: the split's columns (pipeline/artifacts/scoring.py `Split`).
        images: the schema's image features (pipeline.artifacts.image_features).
        n: how many images.
        max_bytes: larger images are stored as thumbnails.

    Returns:
        {"feature", "misclassified", "rows": [{"row", "label", "prediction", "score", "correct",
        "mime", "data" (base64)}]}, or None when the split has no image column.
    """
    feature = next((c for c in images if c in frame), None)
    if feature is None:
        return None
    values, present = frame[feature], ~missing[feature]
    classified = task.classes is not None
    wrong = (o.y != o.pred) if classified else np.zeros(len(o.y), bool)
    labels, predictions = task.prediction_labels(o, o.y), task.prediction_labels(o, o.pred)
    # Misclassified rows first, then the others, each in row order; rows without an image skipped.
    rows = []
    for i in np.concatenate([np.flatnonzero(wrong), np.flatnonzero(~wrong)]):
        stored = stored_image(values[i], max_bytes) if present[i] else None
        if stored is None:
            continue
        rows.append({"row": int(i), "label": _plain(labels[i]), "prediction": _plain(predictions[i]),
                     "score": float(o.score[i]), "correct": bool(not wrong[i]) if classified else None,
                     "mime": stored[0], "data": base64.b64encode(stored[1]).decode("ascii")})
        if len(rows) == n:
            break
    return {"feature": feature, "misclassified": int(wrong.sum()), "rows": rows}


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def render(samples: dict) -> str:
    """The report section: a grid of the images, each captioned 'true -> predicted' (red when wrong)."""
    from kfx.components.evaluation.report import _e

    cells = [figure(r) for r in samples["rows"]]
    return (f"<h2>Sample images</h2><p>{len(samples['rows'])} images of <b>{_e(samples['feature'])}</b> with "
            f"true &rarr; predicted label; misclassified first, in red ({samples['misclassified']:,} "
            f"misclassified in the split).</p><div class='samples'>{''.join(cells)}</div>")


def figure(r: dict) -> str:
    """One image of a samples' row, captioned 'true -> predicted' (red when wrong), row and score;
    `name` (alt text) and `note` (under the caption), when given, replace the row and score."""
    from kfx.components.evaluation.report import _e, _fmt

    cls = {True: "right", False: "wrong", None: ""}[r["correct"]]
    name = r.get("name") or f"row {r['row']}"
    note = r.get("note") or f"row {r['row']}, score {_fmt(r['score'], 2)}"
    return image_figure(r, f"{_e(name)}: true {_e(r['label'])}, predicted {_e(r['prediction'])}",
                        f"{_e(r['label'])} &rarr; {_e(r['prediction'])}<br><small>{_e(note)}</small>", cls)


def image_figure(image: dict, alt: str, caption: str = "", cls: str = "") -> str:
    """One stored image ({"mime", "data" (base64)}) as an HTML figure; `alt` and `caption` are HTML."""
    text = f"<figcaption>{caption}</figcaption>" if caption else ""
    return (f"<figure class='sample {cls}'><img src='data:{image['mime']};base64,{image['data']}' alt='{alt}'>"
            f"{text}</figure>")
