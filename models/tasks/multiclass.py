"""multiclass: one of C classes (softmax head, cross-entropy), e.g. penguin species.

Also the base of binary classification (models/tasks/binary.py), which shares the label
analysis (class counts, vocabulary), the class weights, the Classify signature and the mapping
of labels to class indices.

Fairness: per group, accuracy and the recall of every class; gaps are max - min over groups:
`accuracy_difference`, `recall_difference` (the worst class) and `recall_difference[<class>]`
per class, each with bootstrap intervals.
"""
from __future__ import annotations

import numpy as np

from kfx.models.tasks.base import CLASSIFY, CLASSIFY_METHOD, COUNTS, OUTPUT, Outcomes, Task

ACCURACY, RECALL = "accuracy", "recall"
ACCURACY_DIFFERENCE, RECALL_DIFFERENCE = "accuracy_difference", "recall_difference"
PROBABILITIES, CLASSES, CLASS_IDS, SCORES = "probabilities", "classes", "class_ids", "scores"


def _decode(v) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def label_text(values) -> list[str]:
    """Labels as the class names the vocabulary holds: strings as they are, numbers without ".0"."""
    out = []
    for v in np.asarray(values, dtype=object).reshape(-1).tolist():
        if isinstance(v, (bytes, str)):
            out.append(_decode(v))
        else:
            out.append(str(int(v)) if np.isfinite(v) else "")
    return out


def _recall(cls: str) -> str:
    return f"{RECALL}[{cls}]"


class Multiclass(Task):
    NAME = "multiclass"
    LABEL_STATISTIC = COUNTS
    MONITORS = {"val_loss": "min", "val_accuracy": "max"}
    METRICS = ("accuracy", "precision", "recall", "log_loss", "ece")
    LOWER_IS_BETTER = frozenset({"log_loss", "ece"})
    FAIRNESS_METRICS = (ACCURACY_DIFFERENCE, RECALL_DIFFERENCE)
    HEADLINE = ("accuracy",)
    SLICE_PLOT = ("accuracy", "recall")
    SCORE_OUTPUT = PROBABILITIES

    # ------------------------------------------------------------ transform
    @classmethod
    def plan(cls, label: str, label_dtype: str, vocabulary: list[str] | None) -> dict:
        return {**super().plan(label, label_dtype, vocabulary), "vocabulary": vocabulary}

    def analyze_label(self, statistic: dict) -> tuple[dict, dict]:
        """Class counts -> vocabulary (configured, the schema domain, or the train values sorted).

        Raises:
            ValueError: label values outside a configured vocabulary.
        """
        info = self.info
        counts = {_decode(k): int(c) for k, c in statistic.items()}
        numeric = info["label_dtype"] != "string"
        vocab = info["vocabulary"] or sorted(counts, key=lambda v: int(v) if numeric else v)
        unknown = sorted(set(counts) - set(vocab))
        if unknown:
            raise ValueError(f"label {info['label']!r} has values {unknown[:10]} outside the label vocabulary "
                             f"{vocab} (transform.label_vocabulary or the schema domain)")
        class_counts = {v: counts.get(v, 0) for v in vocab}
        return {**info, "vocabulary": vocab, "class_counts": class_counts}, {"class_counts": class_counts}

    # ------------------------------------------------------------ training
    def target(self):
        import keras
        import tensorflow as tf

        if self.info["label_dtype"] == "string":
            return keras.layers.StringLookup(vocabulary=self.classes, num_oov_indices=0)
        return keras.layers.IntegerLookup(vocabulary=tf.constant([int(v) for v in self.classes], tf.int64),
                                          num_oov_indices=0)

    def output(self, x):
        import keras

        return keras.layers.Dense(len(self.classes), activation="softmax", dtype="float32", name=OUTPUT)(x)

    def compile_args(self):
        import keras

        return "sparse_categorical_crossentropy", [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]

    def class_weight(self, setting) -> dict[int, float] | None:
        """none, balanced (n / (k * n_c)) or {class name: weight}, by class index.

        Raises:
            ValueError: a configured class name that is not a class of the label.
        """
        vocab = self.classes
        if setting == "none":
            return None
        if setting == "balanced":
            counts = self.info["class_counts"]
            total = sum(counts.values())
            return {i: total / (len(vocab) * max(counts[c], 1)) for i, c in enumerate(vocab)}
        unknown = sorted(set(setting) - set(vocab))
        if unknown:
            raise ValueError(f"names {unknown}, not classes of the label; classes: {vocab}")
        return {i: float(setting.get(c, 1.0)) for i, c in enumerate(vocab)}

    # ------------------------------------------------------------ export
    def probabilities(self, y):
        """Class probabilities [N, C] from the model output."""
        import tensorflow as tf

        return tf.cast(y, tf.float32)

    def serving_outputs(self, y) -> dict:
        import tensorflow as tf

        p = self.probabilities(y)
        ids = tf.argmax(p, axis=1)
        return {PROBABILITIES: p, CLASSES: tf.gather(tf.constant(self.classes, tf.string), ids), CLASS_IDS: ids}

    def example_signatures(self) -> dict:
        import tensorflow as tf

        def classify(y):
            p = self.probabilities(y)
            vocab = tf.constant(self.classes, tf.string)
            return {CLASSES: tf.tile(tf.expand_dims(vocab, 0), [tf.shape(p)[0], 1]), SCORES: p}

        return {CLASSIFY: (CLASSIFY_METHOD, classify)}

    # ------------------------------------------------------------ evaluation
    def class_ids(self, labels) -> np.ndarray:
        """Class index per label.

        Raises:
            ValueError: labels that are not classes of the model.
        """
        text = label_text(labels)
        index = {v: i for i, v in enumerate(self.classes)}
        ids = np.array([index.get(v, -1) for v in text], dtype=np.int64)
        if (ids < 0).any():
            unknown = sorted({t for t, i in zip(text, ids) if i < 0})[:5]
            raise ValueError(f"labels {unknown} are not among the model's classes {self.classes}")
        return ids

    def outcomes(self, labels, scores, threshold: float = 0.5) -> Outcomes:
        probs = np.asarray(scores, dtype=np.float64)
        if probs.ndim != 2 or probs.shape[1] != len(self.classes):
            raise ValueError(f"the model returns probabilities of shape {list(probs.shape)}, "
                             f"expected [N, {len(self.classes)}] for classes {self.classes}")
        return Outcomes(y=self.class_ids(labels), score=probs.max(axis=1), pred=probs.argmax(axis=1), probs=probs)

    def metrics(self, o, mask=None, pred=None, bins=10, confusion_thresholds=()) -> dict:
        from kfx.components.evaluation.metrics import multiclass_metrics

        m = slice(None) if mask is None else mask
        return multiclass_metrics(o.y[m], o.probs[m], bins, self.classes if mask is None else None)

    def fairness(self, o, pred, groups, names, boot, confidence) -> dict:
        from kfx.components.evaluation.fairness import ratio_fairness

        correct = (pred == o.y).astype(np.float64)
        ones = np.ones_like(correct)
        ratios = {ACCURACY: (correct, ones)}
        for k, cls in enumerate(self.classes):
            of_class = (o.y == k).astype(np.float64)
            ratios[_recall(cls)] = (correct * of_class, of_class)
        recalls = tuple(_recall(c) for c in self.classes)
        gap_of = {ACCURACY_DIFFERENCE: (ACCURACY,), RECALL_DIFFERENCE: recalls,
                  **{f"{RECALL_DIFFERENCE}[{c}]": (_recall(c),) for c in self.classes}}
        return ratio_fairness(groups, names, ratios, gap_of, boot, confidence)

    def prediction_labels(self, o, pred) -> np.ndarray:
        return np.array(self.classes, dtype=object)[pred]

    # ------------------------------------------------------------ report
    def report_sections(self, ev: dict) -> tuple[list[str], list[str]]:
        from kfx.components.evaluation.report import bar_chart, table

        overall = ev["overall"]
        per_class, confusion = overall.get("per_class", {}), overall.get("confusion", {})
        tables = ["<h3>Per class</h3>", table(["class", "rows", "precision", "recall"],
                                              [[c, v["count"], v["precision"], v["recall"]]
                                               for c, v in per_class.items()]),
                  "<h3>Confusion matrix (rows: true class, columns: predicted)</h3>",
                  table(["true \\ predicted", *confusion], [[t, *row.values()] for t, row in confusion.items()])]
        plots = [bar_chart("per-class", "Precision and recall by class", list(per_class),
                           {m: [v[m] for v in per_class.values()] for m in ("precision", "recall")}, xmax=1.0)]
        return tables, plots

    def slice_plot_max(self) -> float | None:
        return 1.0
