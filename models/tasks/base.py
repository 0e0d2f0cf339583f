"""The task interface: everything a stage needs to know about the kind of problem being learned.

A task (binary, multiclass, regression; later anomaly scoring, generation, ...) is one class in
one module of this package. It is built from the transform's task description (the `task` dict
of transform.json, also saved inside every exported model as `TASK_ASSET`) and supplies:
  * transform: the label analysis (`plan`, `LABEL_STATISTIC`, `analyze_label`);
  * training: the training target (`target`), the output head (`output`), loss and metrics
    (`compile_args`), the monitors tune and early stopping may watch (`MONITORS`, `objective`),
    class weights;
  * export: the serving outputs and the tf.Example signatures (`serving_outputs`,
    `example_signatures`: Classify only for classification, Regress where it applies), or the
    task's own endpoints and their warmup/canary inputs (`serving_functions`, `request_inputs`:
    generation maps noise and a class to images);
  * evaluation: scoring of the serving outputs (`SCORE_OUTPUT`, `outcomes`), metrics and the
    names the gate may use (`METRICS`, `LOWER_IS_BETTER`), fairness metrics with bootstrap
    intervals (`fairness`, `FAIRNESS_METRICS`), curves and the report's sections; or the task's
    own evaluation (`evaluate`, with `SCORES_ROWS` false when the export does not score rows).
Nothing here imports TensorFlow at module level: the config loader reads the class attributes.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import numpy as np

TASK_ASSET = "assets.extra/kfx_task.json"  # the task description inside an exported model
OUTPUT = "output"  # the trainer model's output layer name
COUNTS, MOMENTS = "vocab", "moments"  # the transform analyzers a label can need
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
CLASSIFY, REGRESS = "classify", "regress"


@dataclass
class Outcomes:
    """What a model said about a split, in the task's terms.

    Attributes:
        y: the labels as the task compares them (class index, 0/1, value).
        score: one number per row for the predictions file (P(positive), top probability, value).
        pred: the decisions (class index, 0/1) or predicted values.
        probs: class probabilities [N, C] (classification only).
        baselines: reference predictions of the same rows by name (forecast: naive, seasonal_naive;
            regression: linear).
        model_data: what `add_model_inputs` read from the model itself by name (clustering: the rows'
            transformed inputs, the map's prototypes).
    """

    y: np.ndarray
    score: np.ndarray
    pred: np.ndarray
    probs: np.ndarray | None = None
    baselines: dict | None = None
    model_data: dict | None = None


class Task:
    """Base of every task; subclasses set the class attributes and implement the methods."""

    NAME: ClassVar[str]
    LABEL_STATISTIC: ClassVar[str]  # COUNTS or MOMENTS
    MONITORS: ClassVar[dict[str, str]]  # Keras validation metric -> "min" | "max"
    METRICS: ClassVar[tuple[str, ...]]  # evaluation metrics the gate may use
    LOWER_IS_BETTER: ClassVar[frozenset[str]] = frozenset()
    FAIRNESS_METRICS: ClassVar[tuple[str, ...]]  # across-group gaps the gate may use; the first is logged
    HEADLINE: ClassVar[tuple[str, ...]]  # the metrics train logs per split
    SLICE_PLOT: ClassVar[tuple[str, ...]]  # metrics plotted per slice in the report
    SCORE_OUTPUT: ClassVar[str]  # the serving_default output evaluate scores
    MITIGABLE: ClassVar[bool] = False  # per-group decision thresholds apply
    SCORES_ROWS: ClassVar[bool] = True  # serving_default scores a split's rows (train's eval/test metrics)
    CALIBRATES: ClassVar[bool] = False  # `calibrate` needs the eval split: train fails without one

    def __init__(self, info: dict):
        if info.get("type") != self.NAME:
            raise ValueError(f"task description of type {info.get('type')!r} given to task {self.NAME!r}")
        self.info = dict(info)

    @property
    def label(self) -> str:
        return self.info["label"]

    @property
    def classes(self) -> list[str] | None:
        """Class names in index order (None when the task has no classes)."""
        return self.info.get("vocabulary")

    # ------------------------------------------------------------ transform
    @classmethod
    def plan(cls, label: str, label_dtype: str, vocabulary: list[str] | None) -> dict:
        """The task description before analysis.

        Args:
            label: the label column.
            label_dtype: "int64", "float32" or "string".
            vocabulary: configured or schema-domain class names, if any.

        Raises:
            ValueError: the label cannot serve this task.
        """
        return {"type": cls.NAME, "label": label, "label_dtype": label_dtype, "vocabulary": None, "positive": None}

    def analyze_label(self, statistic) -> tuple[dict, dict]:
        """(task description, analyzers.json label report) from the label's analyzer result."""
        raise NotImplementedError

    def complete(self, spec: dict) -> dict:
        """The task description completed from the finished transform spec (transform.json: the
        transforms' states, train rows); as it is by default.

        Raises:
            ValueError: the transforms cannot serve this task.
        """
        return self.info

    # ------------------------------------------------------------ training
    def target(self) -> Callable:
        """Raw label tensor -> training target tensor."""
        import tensorflow as tf

        return lambda y: tf.cast(y, tf.float32)

    def target_encoder(self) -> Callable:
        """(raw label, raw features) -> training target (default: `target` of the label). Its
        layers are made here, eagerly: a Keras lookup layer with a tensor vocabulary cannot be
        made inside tf.data's traced map, where the encoder runs."""
        target = self.target()
        return lambda y, features: target(y)

    def training_rows(self) -> Callable | None:
        """Raw label tensor of one row -> bool tensor: whether training (and the val loss) uses the row;
        None (the default) keeps every row. The anomaly task learns from normal rows only."""
        return None

    def training_row_count(self, rows: int, train_rows: int) -> int:
        """Rows an epoch trains on (its steps, the learning-rate schedule) when `rows` of the
        `train_rows` train rows are read: all of them by default (see `training_rows`)."""
        return rows

    def calibrate(self, labels: np.ndarray, scores: np.ndarray) -> dict:
        """The task description after training, given the eval split's labels and `SCORE_OUTPUT`
        values (train calls it before export, so the exported model carries what it picked, such as
        a decision threshold); unchanged by default. What it picks must not change the
        `SCORE_OUTPUT` values, only what is decided from them."""
        return self.info

    def decode_output(self, y, features):
        """The model output `y` in the label's units, given the raw features (inside the exported
        model, before `serving_outputs`); unchanged by default."""
        return y

    def output(self, x):
        """The model's output tensor (float32 even under mixed precision) on the last hidden `x`."""
        raise NotImplementedError

    def compile_args(self) -> tuple[Any, list]:
        """(loss, metrics) for `model.compile`; metric names give the `MONITORS`."""
        raise NotImplementedError

    def objective(self, metric: str) -> tuple[str, str]:
        """(metric, direction) for tune's objective and train's early stopping.

        Raises:
            ValueError: a metric this task's model does not report.
        """
        if metric not in self.MONITORS:
            raise ValueError(f"metric {metric!r} is not reported for a {self.NAME} task; "
                             f"choose one of {list(self.MONITORS)}")
        return metric, self.MONITORS[metric]

    def class_weight(self, setting) -> dict[int, float] | None:
        """Keras class_weight for `train.class_weights` (none for tasks without classes)."""
        return None

    # ------------------------------------------------------------ export
    def serving_outputs(self, y) -> dict:
        """serving_default's named outputs from the model output `y`."""
        raise NotImplementedError

    def example_signatures(self) -> dict[str, tuple[str, Callable]]:
        """Signatures on serialized tf.Example: name -> (method name, model output -> outputs)."""
        return {}

    def serving_functions(self, preprocessor, model, spec: dict) -> dict | None:
        """The export's endpoints, name -> (function, input signature), when this task's model is
        not served on the raw features (generation: noise and a class in, images out); None by
        default: serving_default on the raw features through `preprocessor` (training/export.py)."""
        return None

    def request_inputs(self, specs: dict, n: int) -> dict | None:
        """`n` requests' inputs (argument name -> numpy array) for a signature whose inputs `specs`
        (argument name -> tf.TensorSpec) are not columns of the examples, for warmup and canary
        requests; None by default: real rows of the examples."""
        return None

    # ------------------------------------------------------------ evaluation
    def evaluate(self, ctx, model: str) -> dict | None:
        """The evaluate stage's run (outputs written, run-summary metrics returned) for a task
        whose model is not judged by scoring the split's rows with serving_default (generation:
        samples scored by a classifier); None by default: evaluate scores the rows."""
        return None

    def outcomes(self, labels: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> Outcomes:
        """Labels (strings, bytes or numbers) and the `SCORE_OUTPUT` values -> Outcomes.

        Raises:
            ValueError: labels the model cannot have predicted (unknown classes).
        """
        raise NotImplementedError

    def add_inputs(self, o: Outcomes, frame: dict) -> Outcomes:
        """`o` with what the task derives from the rows' raw columns (`frame`: column -> values), such as
        baseline predictions; unchanged by default."""
        return o

    def add_model_inputs(self, o: Outcomes, model_uri: str, serialized: list[bytes],
                         read_split: Callable | None = None) -> Outcomes:
        """`o` with what the task derives from the model itself on the rows (`serialized`: their
        tf.Examples, e.g. through its transform_features signature) or from another split of the
        examples (`read_split(name)` -> pipeline.artifacts.scoring.Split; None: not available);
        unchanged by default."""
        return o

    def metrics(self, o: Outcomes, mask: np.ndarray | None = None, pred: np.ndarray | None = None,
                bins: int = 10, confusion_thresholds: tuple[float, ...] = ()) -> dict:
        """Evaluation metrics of the rows in `mask` (all by default), with decisions `pred`."""
        raise NotImplementedError

    def headline(self, o: Outcomes) -> dict[str, float]:
        """The few numbers train logs for a split."""
        m = self.metrics(o)
        return {k: m[k] for k in self.HEADLINE}

    def curves(self, o: Outcomes, bins: int) -> dict:
        """Curves for the report (ROC, calibration, ...); none by default."""
        return {}

    def fairness(self, o: Outcomes, pred: np.ndarray, groups: np.ndarray, names: list[str],
                 boot: np.ndarray | None, confidence: float) -> dict:
        """{"groups": {name: {...}}, "gaps": {metric: {value, lower, upper}}, "resamples"}."""
        raise NotImplementedError

    def prediction_labels(self, o: Outcomes, pred: np.ndarray) -> np.ndarray:
        """The predictions file's `prediction` column."""
        return pred

    # ------------------------------------------------------------ report
    def report_summary(self, ev: dict) -> str:
        """HTML fragment appended to the report's first line (after the label)."""
        return ""

    def report_sections(self, ev: dict) -> tuple[list[str], list[str]]:
        """(HTML tables, SVG plots) of this task for the report's overall part."""
        return [], []

    def slice_plot_max(self) -> float | None:
        """x-axis maximum of the per-slice plots (None: from the data)."""
        return None


def save(model_dir: str, info: dict) -> None:
    """Write the task description into an exported model (read back by `load`)."""
    import tensorflow as tf

    tf.io.gfile.makedirs(f"{model_dir}/assets.extra")
    with tf.io.gfile.GFile(f"{model_dir}/{TASK_ASSET}", "w") as f:
        json.dump(info, f, indent=1, sort_keys=True)


def load(model_dir: str) -> dict:
    """The task description saved in an exported model.

    Raises:
        FileNotFoundError: the model has no task description (not exported by kfx).
    """
    import tensorflow as tf

    path = f"{model_dir}/{TASK_ASSET}"
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"model {model_dir} has no task description ({TASK_ASSET}); "
                                f"it was not exported by kfx's train")
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)
