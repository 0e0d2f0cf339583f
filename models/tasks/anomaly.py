"""anomaly: learn what normal rows look like, score how far a row is from it (autoencoders, VAE).

The label only says which rows are normal (`transform.anomaly.normal_values`, e.g. digit 0):
training and the val loss use the normal rows alone (`training_rows`), and the model, a
reconstruction family (models/autoencoder.py, denoising_autoencoder.py, vae.py), outputs one
anomaly score per row, the mean squared reconstruction error of its transformed input or the
VAE's negative ELBO. That score is the training loss, so the training target is unused.

After training, `calibrate` picks the decision threshold on the eval split's normal rows so that
at most `false_positive_rate` of them score above it; the exported model carries it and
serving_default returns `score` and `anomaly` (1 when score > threshold). Evaluation compares
the score with "is not a normal value" on held-out labels: `anomaly_auc` (ROC AUC), `pr_auc`,
and at the threshold `precision`, `recall` and the `false_positive_rate` observed. Fairness: per
group, the false positive rate (normal rows flagged) and the recall (anomalies flagged); gaps
are max - min over groups.
"""
from __future__ import annotations

import numpy as np

from kfx.models.tasks.base import COUNTS, OUTPUT, REGRESS, REGRESS_METHOD, Outcomes, Task
from kfx.models.tasks.multiclass import label_text

NORMAL_VALUES, FALSE_POSITIVE_RATE, THRESHOLD = "normal_values", "false_positive_rate", "threshold"
SCORE, ANOMALY, OUTPUTS = "score", "anomaly", "outputs"
FPR, RECALL = "false_positive_rate", "recall"


class Anomaly(Task):
    NAME = "anomaly"
    LABEL_STATISTIC = COUNTS
    MONITORS = {"val_loss": "min"}
    METRICS = ("anomaly_auc", "pr_auc", "precision", "recall", "false_positive_rate")
    LOWER_IS_BETTER = frozenset({"false_positive_rate"})
    FAIRNESS_METRICS = (f"{FPR}_difference", f"{RECALL}_difference")
    HEADLINE = ("anomaly_auc",)
    SLICE_PLOT = ("recall", "false_positive_rate")
    SCORE_OUTPUT = SCORE
    CALIBRATES = True  # the threshold is picked on the eval split

    @property
    def normal(self) -> list[str]:
        return list(self.info[NORMAL_VALUES])

    @property
    def threshold(self) -> float:
        """Scores above it are anomalies (+inf until `calibrate` picked it: nothing is flagged)."""
        t = self.info.get(THRESHOLD)
        return float("inf") if t is None else float(t)

    # ------------------------------------------------------------ transform
    @classmethod
    def plan(cls, label: str, label_dtype: str, vocabulary: list[str] | None) -> dict:
        if label_dtype == "float32":
            raise ValueError(f"task anomaly needs a string or integer label marking the normal rows; "
                             f"{label!r} is a float")
        return super().plan(label, label_dtype, vocabulary)

    def analyze_label(self, statistic: dict) -> tuple[dict, dict]:
        """Label value counts -> the normal values checked against them, and the normal row count.

        Raises:
            ValueError: no normal values configured, or one that no train row has.
        """
        if not self.info.get(NORMAL_VALUES):
            raise ValueError("task anomaly needs transform.anomaly.normal_values (the label values of normal rows)")
        counts = {label_text([k])[0]: int(c) for k, c in statistic.items()}
        unknown = [v for v in self.normal if v not in counts]
        if unknown:
            raise ValueError(f"transform.anomaly.normal_values {unknown} are not values of label {self.label!r} in "
                             f"the train split (its values: {sorted(counts)[:20]})")
        normal_rows = sum(counts[v] for v in self.normal)
        return ({**self.info, "normal_rows": normal_rows},
                {"class_counts": counts, "normal_rows": normal_rows, "anomalous_rows": sum(counts.values()) - normal_rows})

    # ------------------------------------------------------------ training
    def training_rows(self):
        import tensorflow as tf

        if self.info["label_dtype"] == "string":
            values = self.normal
            return lambda y: tf.reduce_any(tf.equal(tf.reshape(y, [-1]), tf.constant(values, tf.string)))
        ints = [int(v) for v in self.normal]
        return lambda y: tf.reduce_any(tf.equal(tf.cast(tf.reshape(y, [-1]), tf.int64), tf.constant(ints, tf.int64)))

    def training_row_count(self, rows: int, train_rows: int) -> int:
        """The normal share of `rows` (the counted `normal_rows` of the train split's `train_rows`)."""
        normal = self.info.get("normal_rows")
        return rows if normal is None or not train_rows else max(1, round(rows * normal / train_rows))

    def target_encoder(self):
        import tensorflow as tf

        # The model's output is its own loss (the score): the target is a placeholder.
        return lambda y, features: tf.zeros(tf.shape(y)[:1], tf.float32)

    def output(self, x):
        """The family's per-row score [N] as the model output (float32)."""
        import keras

        return keras.layers.Activation("linear", dtype="float32", name=OUTPUT)(x)

    def compile_args(self):
        def mean_score(y_true, y_pred):
            return y_pred

        return mean_score, []

    def calibrate(self, labels, scores) -> dict:
        """The threshold: midway between the eval normal rows' scores that leave `false_positive_rate`
        of them above it (the highest normal score when that share is below one row).

        Raises:
            ValueError: the eval split has no normal row.
        """
        normal = np.sort(np.asarray(scores, np.float64).reshape(-1)[self.is_normal(labels)])
        if not len(normal):
            raise ValueError(f"the eval split has no normal row (label {self.label!r} in {self.normal}) to pick "
                             f"the anomaly threshold on")
        allowed = int(np.floor(self.info[FALSE_POSITIVE_RATE] * len(normal) + 1e-9))
        cut = len(normal) - 1 - allowed
        # Midway to the next score up: a served model's float noise does not move a row across it.
        threshold = float(normal[cut] if allowed == 0 else (normal[cut] + normal[cut + 1]) / 2)
        observed = float(np.mean(normal > threshold))
        return {**self.info, THRESHOLD: threshold, "threshold_rows": len(normal), "eval_false_positive_rate": observed}

    # ------------------------------------------------------------ export
    def serving_outputs(self, y) -> dict:
        import tensorflow as tf

        score = tf.reshape(tf.cast(y, tf.float32), [-1])
        return {SCORE: score, ANOMALY: tf.cast(score > self.threshold, tf.int64)}

    def example_signatures(self) -> dict:
        import tensorflow as tf

        return {REGRESS: (REGRESS_METHOD, lambda y: {OUTPUTS: tf.reshape(tf.cast(y, tf.float32), [-1])})}

    # ------------------------------------------------------------ evaluation
    def is_normal(self, labels) -> np.ndarray:
        """Per label: is it one of the normal values."""
        return np.isin(np.array(label_text(labels), dtype=object), self.normal)

    def outcomes(self, labels, scores, threshold: float = 0.5) -> Outcomes:
        """y: 1 for anomalies (labels not normal); the decision is the model's own threshold, not `threshold`."""
        score = np.asarray(scores, dtype=np.float64).reshape(-1)
        y = (~self.is_normal(labels)).astype(np.int8)
        if len(score) != len(y):
            raise ValueError(f"the model returns {len(score)} scores for {len(y)} rows")
        return Outcomes(y=y, score=score, pred=(score > self.threshold).astype(np.int8))

    def metrics(self, o, mask=None, pred=None, bins=10, confusion_thresholds=()) -> dict:
        from kfx.components.evaluation.metrics import average_precision, confusion, roc_auc

        m = slice(None) if mask is None else mask
        y, score, p = o.y[m], o.score[m], (o.pred if pred is None else pred)[m]
        cm = confusion(y, p)

        def ratio(a, b):
            return a / b if b else None

        return {"count": int(len(y)), "anomalies": int(y.sum()), "anomaly_auc": roc_auc(y, score),
                "pr_auc": average_precision(y, score), "precision": ratio(cm["tp"], cm["tp"] + cm["fp"]),
                "recall": ratio(cm["tp"], cm["tp"] + cm["fn"]), FPR: ratio(cm["fp"], cm["fp"] + cm["tn"]),
                "threshold": self.info.get(THRESHOLD), "confusion": cm}

    def curves(self, o, bins: int) -> dict:
        from kfx.components.evaluation.metrics import roc_points

        return {"roc": roc_points(o.y, o.score)}

    def fairness(self, o, pred, groups, names, boot, confidence) -> dict:
        from kfx.components.evaluation.fairness import ratio_fairness

        flagged, anomalous = pred.astype(np.float64), o.y.astype(np.float64)
        ratios = {FPR: (flagged * (1 - anomalous), 1 - anomalous), RECALL: (flagged * anomalous, anomalous)}
        return ratio_fairness(groups, names, ratios, {f"{FPR}_difference": (FPR,), f"{RECALL}_difference": (RECALL,)},
                              boot, confidence)

    def prediction_labels(self, o, pred) -> np.ndarray:
        return np.asarray(pred)

    # ------------------------------------------------------------ report
    def report_summary(self, ev: dict) -> str:
        from kfx.components.evaluation.report import _e, _fmt

        return (f", normal values <b>{_e(', '.join(self.normal))}</b>, anomaly when the score exceeds "
                f"{_fmt(self.threshold)} (picked on the eval split at false positive rate "
                f"{self.info[FALSE_POSITIVE_RATE]})")

    def report_sections(self, ev: dict) -> tuple[list[str], list[str]]:
        from kfx.components.evaluation.report import line_chart, table

        cm = ev["overall"]["confusion"]
        tables = ["<h3>At the threshold (1 = anomaly)</h3>",
                  table(["", "predicted normal", "predicted anomaly"],
                        [["normal", cm["tn"], cm["fp"]], ["anomaly", cm["fn"], cm["tp"]]])]
        curves = {"candidate": ev["curves"]}
        if ev["baseline"].get("curves"):
            curves["baseline"] = ev["baseline"]["curves"]
        roc = {k: (c["roc"]["fpr"], c["roc"]["tpr"]) for k, c in curves.items()}
        return tables, [line_chart("roc", "ROC curve of the anomaly score", roc, "false positive rate",
                                   "true positive rate")]

    def slice_plot_max(self) -> float | None:
        return 1.0
