"""clustering: rows grouped into the units of a map (family som), learnt without the label.

Training ignores the label (the target is zeros; the family trains by its own rule through its
`compile`/`fit` hooks, models/som.py); the label column is read only by evaluation. A clustering
model returns a dict with at least `cluster` (the unit id, int64) and `distance` (to the unit's
prototype); every entry of it is a serving output (the SOM adds the unit's map coordinates `row`
and `col`). The task has no head of its own: a family that does not cluster cannot serve it.

Evaluation (components/evaluation/clusters.py):
  * `purity`: each cluster's majority label, its rows summed over the clusters, / N;
  * `silhouette`: sklearn's silhouette score of the clusters on the model's transformed inputs
    (flattened, ids one-hot: components/evaluation/references.py), of all evaluated rows up to
    SILHOUETTE_SAMPLE and of a seeded sample of that many beyond;
  * `clusters_used`: how many clusters hold at least one evaluated row;
  * the map: per unit its rows, majority label and share, and its prototype, drawn as an image
    for a model on one image feature (a grid of images in the report), else an assignment plot.
Fairness: per group, the share of rows in their cluster's majority label (its mean over all rows
is the purity); gap `purity_difference`.
"""
from __future__ import annotations

import numpy as np

from kfx.models.tasks.base import COUNTS, Outcomes, Task

CLUSTER, DISTANCE = "cluster", "distance"
PURITY = "purity"
FEATURES = "features"  # model_data's transformed inputs
PURITY_DIFFERENCE = "purity_difference"


class Clustering(Task):
    NAME = "clustering"
    LABEL_STATISTIC = COUNTS
    MONITORS = {"val_loss": "min"}  # the family's loss (the SOM: its quantization error)
    METRICS = ("purity", "silhouette", "clusters_used")
    FAIRNESS_METRICS = (PURITY_DIFFERENCE,)
    HEADLINE = ("purity",)
    SLICE_PLOT = ("purity",)
    SCORE_OUTPUT = CLUSTER

    # ------------------------------------------------------------ transform
    def analyze_label(self, statistic: dict) -> tuple[dict, dict]:
        """The label's value counts (for the record: no classes are learnt)."""
        counts = {(k.decode("utf-8", "replace") if isinstance(k, bytes) else str(k)): int(c)
                  for k, c in statistic.items()}
        return {**self.info, "label_counts": counts}, {"class_counts": counts}

    # ------------------------------------------------------------ training
    def target_encoder(self):
        import tensorflow as tf

        return lambda y, features: tf.zeros([tf.shape(y)[0]], tf.float32)  # the label is not learnt

    def output(self, x):
        raise ValueError("task clustering has no head: use a family that clusters (model: som)")

    def compile_args(self):
        raise ValueError("task clustering has no loss: use a family that clusters (model: som), which "
                         "compiles and trains itself")

    # ------------------------------------------------------------ export
    def serving_outputs(self, y) -> dict:
        import tensorflow as tf

        if not isinstance(y, dict) or CLUSTER not in y or DISTANCE not in y:
            raise ValueError(f"a clustering model must return a dict with {CLUSTER!r} and {DISTANCE!r}; got "
                             f"{sorted(y) if isinstance(y, dict) else type(y).__name__}")
        return {k: tf.cast(v, tf.int64) if v.dtype.is_integer else tf.cast(v, tf.float32) for k, v in y.items()}

    # ------------------------------------------------------------ evaluation
    def outcomes(self, labels, scores, threshold: float = 0.5) -> Outcomes:
        from kfx.models.tasks.multiclass import label_text

        y = np.array(label_text(labels), dtype=object)
        cluster = np.asarray(scores).reshape(-1)
        if len(cluster) != len(y):
            raise ValueError(f"the model returns {len(cluster)} clusters for {len(y)} rows")
        return Outcomes(y=y, score=cluster.astype(np.float64), pred=cluster.astype(np.int64))

    def add_model_inputs(self, o, model_uri, serialized, read_split=None) -> Outcomes:
        """The rows' transformed inputs (silhouette) and the model's map (the report)."""
        from kfx.components.evaluation.clusters import read_map
        from kfx.components.evaluation.references import design_matrix, model_inputs

        inputs = model_inputs(model_uri, serialized)
        o.model_data = {FEATURES: design_matrix(inputs)[0], **read_map(model_uri, inputs)}
        return o

    def metrics(self, o, mask=None, pred=None, bins=10, confusion_thresholds=()) -> dict:
        from kfx.components.evaluation.clusters import cluster_metrics, map_units

        m = slice(None) if mask is None else mask
        data = o.model_data or {}
        out = cluster_metrics(o.y[m], o.pred[m], data[FEATURES][m] if FEATURES in data else None)
        if mask is None:
            out["map"] = map_units(o.y, o.pred, data)
        return out

    def fairness(self, o, pred, groups, names, boot, confidence) -> dict:
        from kfx.components.evaluation.clusters import in_majority
        from kfx.components.evaluation.fairness import ratio_fairness

        agree = in_majority(o.y, pred).astype(np.float64)
        return ratio_fairness(groups, names, {PURITY: (agree, np.ones_like(agree))}, {PURITY_DIFFERENCE: (PURITY,)},
                              boot, confidence)

    # ------------------------------------------------------------ report
    def report_summary(self, ev: dict) -> str:
        o = ev["overall"]
        return f", {int(o['clusters_used'])} clusters used" if o.get("clusters_used") is not None else ""

    def report_sections(self, ev: dict) -> tuple[list[str], list[str]]:
        from kfx.components.evaluation.clusters import render_map

        return render_map(ev["overall"].get("map"))

    def slice_plot_max(self) -> float | None:
        return 1.0
