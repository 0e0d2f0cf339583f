"""Sample images with their predictions, for the evaluation report of image models.

An image column is a string column of the split whose values are all encoded images (PNG, JPEG,
GIF or BMP bytes, recognised by their signature): what the model's `encoded_image` feature
reads. The samples are stored in evaluation.json (base64, a few hundred bytes each for MNIST
sizes) so the report renders from that file alone, as inline data URIs.
"""
from __future__ import annotations

import base64

import numpy as np

SAMPLES = 16
SIGNATURES = {b"\x89PNG\r\n\x1a\n": "image/png", b"\xff\xd8\xff": "image/jpeg", b"GIF87a": "image/gif",
              b"GIF89a": "image/gif", b"BM": "image/bmp"}


def mime_type(data) -> str | None:
    """The image MIME type of encoded bytes, or None when they are not a known image format."""
    if not isinstance(data, bytes):
        return None
    return next((mime for magic, mime in SIGNATURES.items() if data.startswith(magic)), None)


def image_columns(frame: dict[str, np.ndarray], missing: dict[str, np.ndarray]) -> list[str]:
    """Columns (sorted) whose present values are all encoded images (at least one present)."""
    out = []
    for name, values in sorted(frame.items()):
        if values.dtype != object:
            continue
        present = values[~missing[name]]
        if len(present) and all(mime_type(v) for v in present):
            out.append(name)
    return out


def image_samples(task, o, frame: dict[str, np.ndarray], missing: dict[str, np.ndarray],
                  n: int = SAMPLES) -> dict | None:
    """Up to `n` rows of the first image column with true and predicted label, misclassified first.

    Args:
        task: the model's task (models/tasks/); its `prediction_labels` names labels and predictions.
        o: the task's Outcomes on the split.
        frame, missing: the split's columns (pipeline/artifacts/scoring.py `Split`).
        n: how many images.

    Returns:
        {"feature", "misclassified", "rows": [{"row", "label", "prediction", "score", "correct",
        "mime", "data" (base64)}]}, or None when the split has no image column.
    """
    columns = image_columns(frame, missing)
    if not columns:
        return None
    feature = columns[0]
    values, present = frame[feature], ~missing[feature]
    classified = task.classes is not None
    wrong = (o.y != o.pred) if classified else np.zeros(len(o.y), bool)
    # Misclassified rows first, then the others, each in row order; rows without an image skipped.
    order = [i for i in np.concatenate([np.flatnonzero(wrong), np.flatnonzero(~wrong)]) if present[i]][:n]
    labels, predictions = task.prediction_labels(o, o.y), task.prediction_labels(o, o.pred)
    rows = [{"row": int(i), "label": _plain(labels[i]), "prediction": _plain(predictions[i]),
             "score": float(o.score[i]), "correct": bool(not wrong[i]) if classified else None,
             "mime": mime_type(values[i]), "data": base64.b64encode(values[i]).decode("ascii")} for i in order]
    return {"feature": feature, "misclassified": int(wrong.sum()), "rows": rows}


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def render(samples: dict) -> str:
    """The report section: a grid of the images, each captioned 'true -> predicted' (red when wrong)."""
    from kfx.components.evaluation.report import _e, _fmt

    cells = []
    for r in samples["rows"]:
        cls = {True: "right", False: "wrong", None: ""}[r["correct"]]
        cells.append(f"<figure class='sample {cls}'><img src='data:{r['mime']};base64,{r['data']}' "
                     f"alt='row {r['row']}: true {_e(r['label'])}, predicted {_e(r['prediction'])}'>"
                     f"<figcaption>{_e(r['label'])} &rarr; {_e(r['prediction'])}<br>"
                     f"<small>row {r['row']}, score {_fmt(r['score'], 2)}</small></figcaption></figure>")
    return (f"<h2>Sample images</h2><p>{len(samples['rows'])} images of <b>{_e(samples['feature'])}</b> with "
            f"true &rarr; predicted label; misclassified first, in red ({samples['misclassified']:,} "
            f"misclassified in the split).</p><div class='samples'>{''.join(cells)}</div>")
