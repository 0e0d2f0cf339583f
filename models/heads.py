"""Output heads, losses and metrics per task type, shared by every family.

The task comes from the transform artifact (`task` in transform.json): its type is
"binary", "multiclass" or "regression", with the label vocabulary for classification.
"""
from __future__ import annotations

OUTPUT = "output"  # the trainer model's output layer name


def output_layer(task: dict):
    """The last layer: sigmoid unit (binary), softmax (multiclass) or linear unit (regression).

    It is float32 even under a mixed-precision policy, so the loss is computed in float32.
    """
    import keras

    kind = task["type"]
    if kind == "binary":
        return keras.layers.Dense(1, activation="sigmoid", dtype="float32", name=OUTPUT)
    if kind == "multiclass":
        return keras.layers.Dense(len(task["vocabulary"]), activation="softmax", dtype="float32", name=OUTPUT)
    if kind == "regression":
        return keras.layers.Dense(1, dtype="float32", name=OUTPUT)
    raise ValueError(f"unknown task type {kind!r}; expected binary, multiclass or regression")


def loss_and_metrics(task: dict) -> tuple:
    """(loss, metrics) for `model.compile`; metric names give val_auc / val_accuracy / val_rmse."""
    import keras

    kind = task["type"]
    if kind == "binary":
        return "binary_crossentropy", [keras.metrics.BinaryAccuracy(name="accuracy"),
                                       keras.metrics.AUC(name="auc", num_thresholds=1000)]
    if kind == "multiclass":
        return "sparse_categorical_crossentropy", [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    return "mse", [keras.metrics.RootMeanSquaredError(name="rmse")]


def objective(task: dict, metric: str = "val_loss") -> tuple[str, str]:
    """(metric name, direction) for tune's objective and train's early stopping.

    Raises:
        ValueError: a metric the task's model does not report (e.g. val_auc for regression).
    """
    available = {"binary": ("val_loss", "val_auc", "val_accuracy"), "multiclass": ("val_loss", "val_accuracy"),
                 "regression": ("val_loss", "val_rmse")}[task["type"]]
    if metric not in available:
        raise ValueError(f"metric {metric!r} is not reported for a {task['type']} task; choose one of {list(available)}")
    return metric, ("min" if metric in ("val_loss", "val_rmse") else "max")
