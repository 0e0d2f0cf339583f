"""binary: two classes, the last of the sorted vocabulary positive (sigmoid head, log loss).

Exports Classify (both classes' scores) and Regress (P(positive)). Evaluation decides with a
threshold on P(positive); fairness is fairlearn's confusion-rate gaps (demographic parity,
equalized odds, equal opportunity) with bootstrap intervals, and decisions may be mitigated
with per-group thresholds.
"""
from __future__ import annotations

import numpy as np

from kfx.models.tasks.base import OUTPUT, REGRESS, REGRESS_METHOD, Outcomes
from kfx.models.tasks.multiclass import Multiclass

OUTPUTS = "outputs"


class Binary(Multiclass):
    NAME = "binary"
    MONITORS = {"val_loss": "min", "val_auc": "max", "val_accuracy": "max"}
    METRICS = ("accuracy", "precision", "recall", "auc", "pr_auc", "log_loss", "ece")
    FAIRNESS_METRICS = ("equalized_odds_difference", "equal_opportunity_difference",
                        "demographic_parity_difference", "demographic_parity_ratio")
    HEADLINE = ("accuracy", "auc")
    SLICE_PLOT = ("accuracy", "auc")
    MITIGABLE = True

    @property
    def positive(self) -> str:
        return self.classes[1]

    def analyze_label(self, statistic: dict) -> tuple[dict, dict]:
        """As multiclass, plus: exactly two classes, the last one positive.

        Raises:
            ValueError: not two classes, or values outside a configured vocabulary.
        """
        info, report = super().analyze_label(statistic)
        if len(info["vocabulary"]) != 2:
            raise ValueError(f"task binary needs 2 classes, label vocabulary is {info['vocabulary']}")
        return {**info, "positive": info["vocabulary"][-1]}, report

    # ------------------------------------------------------------ training
    def output(self, x):
        import keras

        return keras.layers.Dense(1, activation="sigmoid", dtype="float32", name=OUTPUT)(x)

    def compile_args(self):
        import keras

        return "binary_crossentropy", [keras.metrics.BinaryAccuracy(name="accuracy"),
                                       keras.metrics.AUC(name="auc", num_thresholds=1000)]

    # ------------------------------------------------------------ export
    def probabilities(self, y):
        import tensorflow as tf

        p = tf.cast(y, tf.float32)
        return tf.concat([1.0 - p, p], axis=1)

    def example_signatures(self) -> dict:
        return {**super().example_signatures(),
                REGRESS: (REGRESS_METHOD, lambda y: {OUTPUTS: self.probabilities(y)[:, 1]})}

    # ------------------------------------------------------------ evaluation
    def outcomes(self, labels, scores, threshold: float = 0.5) -> Outcomes:
        o = super().outcomes(labels, scores, threshold)
        # Column 1 is the positive class: the transform sorts the vocabulary and takes the last.
        p = o.probs[:, 1]
        return Outcomes(y=(o.y == 1).astype(np.int8), score=p, pred=(p >= threshold).astype(np.int8), probs=o.probs)

    def metrics(self, o, mask=None, pred=None, bins=10, confusion_thresholds=()) -> dict:
        from kfx.components.evaluation.metrics import binary_metrics

        m = slice(None) if mask is None else mask
        p = o.pred if pred is None else pred
        return binary_metrics(o.y[m], o.score[m], p[m], bins, confusion_thresholds if mask is None else ())

    def curves(self, o, bins: int) -> dict:
        from kfx.components.evaluation.metrics import calibration, roc_points

        return {"roc": roc_points(o.y, o.score), "calibration": calibration(o.y, o.score, bins)["bins"]}

    def fairness(self, o, pred, groups, names, boot, confidence) -> dict:
        from kfx.components.evaluation.fairness import group_fairness

        return group_fairness(groups, names, o.y, pred, boot, confidence)

    # ------------------------------------------------------------ report
    def report_summary(self, ev: dict) -> str:
        from kfx.components.evaluation.report import _e

        return f", positive class <b>{_e(self.positive)}</b>, decision threshold {ev['threshold']}"

    def report_sections(self, ev: dict) -> tuple[list[str], list[str]]:
        from kfx.components.evaluation.report import line_chart, table

        overall, tables = ev["overall"], []
        if "confusion_at" in overall:
            tables.append(table(["threshold", "tn", "fp", "fn", "tp"],
                                [[t, c["tn"], c["fp"], c["fn"], c["tp"]] for t, c in overall["confusion_at"].items()]))
        curves = {"candidate": ev["curves"]}
        if ev["baseline"].get("curves"):
            curves["baseline"] = ev["baseline"]["curves"]
        roc = {k: (c["roc"]["fpr"], c["roc"]["tpr"]) for k, c in curves.items()}
        cal = {k: ([b["mean_predicted"] for b in c["calibration"]], [b["fraction_positive"] for b in c["calibration"]])
               for k, c in curves.items()}
        return tables, [line_chart("roc", "ROC curve", roc, "false positive rate", "true positive rate"),
                        line_chart("calibration", "Calibration (reliability)", cal, "mean predicted P(positive)",
                                   "fraction positive")]
