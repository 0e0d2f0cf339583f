"""Clustering evaluation: purity, silhouette, the map of units and its report section.

Used by the clustering task (models/tasks/clustering.py). The map is read from the exported model
itself: a variable named `prototypes` of shape [rows, cols, D] (the SOM layer's,
models/prototype_layers.py). When the model reads one image feature, each prototype is drawn as
an image (min-max scaled to 0-255, PNG) in a grid laid out as the map, captioned with the unit's
majority label and counts; otherwise the report shows the assignment as a table of the grid
(majority label, rows) and a chart of rows per cluster.
"""
from __future__ import annotations

import base64

import numpy as np

SILHOUETTE_SAMPLE, SILHOUETTE_SEED = 2000, 0
PROTOTYPES = "prototypes"
IMAGE_SHAPE = "image_shape"


def _majorities(y: np.ndarray, cluster: np.ndarray) -> dict[int, tuple[str, int, int]]:
    """cluster -> (majority label, its rows, the cluster's rows); ties go to the smallest label."""
    out = {}
    for c in np.unique(cluster):
        labels, counts = np.unique(y[cluster == c].astype(str), return_counts=True)
        k = int(np.argmax(counts))
        out[int(c)] = (str(labels[k]), int(counts[k]), int(counts.sum()))
    return out


def purity(y: np.ndarray, cluster: np.ndarray) -> float | None:
    """Sum over clusters of the rows of the cluster's majority label, / N (None without rows)."""
    if not len(y):
        return None
    return sum(m for _, m, _ in _majorities(y, cluster).values()) / len(y)


def in_majority(y: np.ndarray, cluster: np.ndarray) -> np.ndarray:
    """Per row: its label is its cluster's majority label (the mean is the purity)."""
    major = _majorities(y, cluster)
    return np.array([str(v) == major[int(c)][0] for v, c in zip(y, cluster)], dtype=bool)


def silhouette(features: np.ndarray, cluster: np.ndarray) -> float | None:
    """sklearn's silhouette score (Euclidean) of all rows up to SILHOUETTE_SAMPLE, else of a seeded
    sample of that many; None unless 2 <= clusters < rows."""
    from sklearn.metrics import silhouette_score

    k = len(np.unique(cluster))
    if not 2 <= k < len(cluster):
        return None
    sample = SILHOUETTE_SAMPLE if len(cluster) > SILHOUETTE_SAMPLE else None
    return float(silhouette_score(features, cluster, sample_size=sample, random_state=SILHOUETTE_SEED))


def cluster_metrics(y: np.ndarray, cluster: np.ndarray, features: np.ndarray | None) -> dict:
    """count, purity, silhouette (None without features) and clusters_used of the rows."""
    return {"count": int(len(y)), "purity": purity(y, cluster),
            "silhouette": silhouette(features, cluster) if features is not None else None,
            "clusters_used": float(len(np.unique(cluster)))}


def read_map(model_uri: str, inputs: dict[str, np.ndarray]) -> dict:
    """{prototypes: [rows, cols, D], image_shape: [h, w, c] or None} of an exported model with a
    map, {} for one without (a `prototypes` variable of rank 3)."""
    from kfx.pipeline.artifacts.scoring import load

    found = [v for v in load(model_uri).variables if v.name.split(":")[0].endswith(PROTOTYPES) and v.shape.rank == 3]
    if len(found) != 1:
        return {}
    images = [v.shape[1:] for v in inputs.values() if v.ndim == 4]
    return {PROTOTYPES: found[0].numpy(), IMAGE_SHAPE: list(images[0]) if len(inputs) == 1 and images else None}


def _png(prototype: np.ndarray, shape: list[int]) -> str:
    import tensorflow as tf

    lo, hi = float(prototype.min()), float(prototype.max())
    pixels = np.round((prototype - lo) / (hi - lo or 1.0) * 255).astype(np.uint8).reshape(shape)
    return base64.b64encode(tf.io.encode_png(pixels).numpy()).decode("ascii")


def map_units(y: np.ndarray, cluster: np.ndarray, data: dict) -> dict:
    """The map for evaluation.json: {rows, cols, units: [{id, row, col, count, majority,
    majority_count, png (base64, image prototypes only)}]}; without a map (rows, cols None) the
    units are the clusters holding rows."""
    major = _majorities(y, cluster)
    protos = data.get(PROTOTYPES)
    if protos is None:
        return {"rows": None, "cols": None, "units": [{"id": c, "row": None, "col": None, "count": n,
                                                      "majority": m, "majority_count": k, "png": None}
                                                     for c, (m, k, n) in sorted(major.items())]}
    rows, cols = protos.shape[:2]
    shape = data.get(IMAGE_SHAPE)
    units = []
    for r in range(rows):
        for c in range(cols):
            i = r * cols + c
            m, k, n = major.get(i, (None, 0, 0))
            units.append({"id": i, "row": r, "col": c, "count": n, "majority": m, "majority_count": k,
                          "png": _png(protos[r, c], shape) if shape else None})
    return {"rows": int(rows), "cols": int(cols), "units": units}


def render_map(m: dict | None) -> tuple[list[str], list[str]]:
    """(HTML tables, SVG plots) of the map: prototype images in the map's grid, or the assignment."""
    from kfx.components.evaluation.report import _e, bar_chart, table

    if not m or not m["units"]:
        return [], []
    units = m["units"]
    used = [u for u in units if u["count"]]
    plot = bar_chart("clusters", "Rows per cluster (majority label)",
                     [f"{u['id']} ({u['majority']})" for u in used], {"rows": [u["count"] for u in used]})
    if m["rows"] is None:
        return [table(["cluster", "rows", "majority label", "majority rows"],
                      [[u["id"], u["count"], u["majority"], u["majority_count"]] for u in units])], [plot]
    intro = (f"<h3>The map: {m['rows']} x {m['cols']} units</h3><p>Each unit's prototype, with its majority "
             f"label and (rows of that label / rows) among the evaluated rows.</p>")
    if units[0]["png"]:
        cells = [f"<figure class='sample'><img src='data:image/png;base64,{u['png']}' "
                 f"alt='unit {u['id']} (row {u['row']}, col {u['col']})'><figcaption>"
                 f"{_e(u['majority'] if u['count'] else '-')} ({u['majority_count']}/{u['count']})<br>"
                 f"<small>unit {u['id']}</small></figcaption></figure>" for u in units]
        grid = (f"<div class='map' style='display:grid;grid-template-columns:repeat({m['cols']},auto);gap:6px;"
                f"justify-content:start'>{''.join(cells)}</div>")
        return [intro + grid], [plot]
    grid = [[r, *(f"{u['majority']} ({u['majority_count']}/{u['count']})" if u["count"] else "-"
                  for u in units[r * m["cols"]:(r + 1) * m["cols"]])] for r in range(m["rows"])]
    return [intro + table(["row \\ col", *map(str, range(m["cols"]))], grid)], [plot]
