"""regression: one number per row (linear head, mean squared error), e.g. penguin body mass.

The head rescales its unit by the train label's standard deviation and mean (from the
transform's analysis), so the model starts at the mean predictor and learns in standardized
units while it outputs (and is scored in) the label's own units.

Evaluation reports MAE, RMSE, R2 and the mean predictor's RMSE (the train label mean as a
constant) with `rmse_reduction` = 1 - rmse / mean_predictor_rmse, and a linear regression's RMSE
on the same rows, `linear_rmse` (least squares fitted on the train split's rows, on the model's
own transformed inputs: components/evaluation/references.py) with `rmse_vs_linear` = rmse /
linear_rmse (below 1: the model beats it), which a gate can bound. Fairness: per group, MAE and
mean residual (prediction - label); gaps `mae_difference` and `mean_residual_difference` are
max - min over groups, with bootstrap intervals.
"""
from __future__ import annotations

import math

import numpy as np

from kfx.models.tasks.base import MOMENTS, OUTPUT, REGRESS, REGRESS_METHOD, Outcomes, Task

PREDICTIONS, OUTPUTS = "predictions", "outputs"
MAE, MEAN_RESIDUAL = "mae", "mean_residual"
MAE_DIFFERENCE, MEAN_RESIDUAL_DIFFERENCE = "mae_difference", "mean_residual_difference"
LINEAR, FIT_SPLIT = "linear", "train"  # the linear reference, fitted on the train split


class NumericLabel:
    """What the tasks on a numeric label share (regression, forecast): the plan's check, the
    label's moments, mean squared error with RMSE, and the monitors. Mixed in before Task."""

    LABEL_STATISTIC = MOMENTS
    MONITORS = {"val_loss": "min", "val_rmse": "min"}

    @classmethod
    def plan(cls, label: str, label_dtype: str, vocabulary: list[str] | None) -> dict:
        if label_dtype == "string":
            raise ValueError(f"task {cls.NAME} needs a numeric label; {label!r} is a string")
        return super().plan(label, label_dtype, vocabulary)

    def label_moments(self, statistic: list) -> tuple[int, float, float, dict]:
        """Moments (count, mean, M2, min, max) -> (count, mean, std, analyzers.json's label report).

        Raises:
            ValueError: no label value in the train split.
        """
        n, mean, m2, lo, hi = statistic
        if n == 0:
            raise ValueError(f"label {self.label!r} has no value in the train split")
        return n, mean, math.sqrt(m2 / n), {"count": n, "mean": mean, "variance": m2 / n, "min": lo, "max": hi}

    def compile_args(self):
        import keras

        return "mse", [keras.metrics.RootMeanSquaredError(name="rmse")]


class Regression(NumericLabel, Task):
    NAME = "regression"
    METRICS = ("mae", "rmse", "r2", "mean_predictor_rmse", "rmse_reduction", "linear_rmse", "rmse_vs_linear")
    LOWER_IS_BETTER = frozenset({"mae", "rmse", "mean_predictor_rmse", "linear_rmse", "rmse_vs_linear"})
    FAIRNESS_METRICS = (MAE_DIFFERENCE, MEAN_RESIDUAL_DIFFERENCE)
    HEADLINE = ("rmse",)
    SLICE_PLOT = ("mae", "rmse")
    SCORE_OUTPUT = PREDICTIONS

    def analyze_label(self, statistic: list) -> tuple[dict, dict]:
        """The label's mean and standard deviation (the head's offset and scale)."""
        _, mean, std, report = self.label_moments(statistic)
        return {**self.info, "mean": mean, "std": std}, report

    # ------------------------------------------------------------ training
    def output(self, x):
        import keras

        unit = keras.layers.Dense(1, dtype="float32", name=f"{OUTPUT}_standardized")(x)
        scale = self.info.get("std") or 1.0
        return keras.layers.Rescaling(scale=scale, offset=self.info.get("mean", 0.0), dtype="float32",
                                      name=OUTPUT)(unit)

    # ------------------------------------------------------------ export
    def serving_outputs(self, y) -> dict:
        import tensorflow as tf

        return {PREDICTIONS: tf.reshape(tf.cast(y, tf.float32), [-1])}

    def example_signatures(self) -> dict:
        import tensorflow as tf

        return {REGRESS: (REGRESS_METHOD, lambda y: {OUTPUTS: tf.reshape(tf.cast(y, tf.float32), [-1])})}

    # ------------------------------------------------------------ evaluation
    def outcomes(self, labels, scores, threshold: float = 0.5) -> Outcomes:
        y = np.asarray(labels, dtype=np.float64).reshape(-1)
        pred = np.asarray(scores, dtype=np.float64).reshape(-1)
        if len(pred) != len(y):
            raise ValueError(f"the model returns {len(pred)} predictions for {len(y)} rows")
        return Outcomes(y=y, score=pred, pred=pred)

    def add_model_inputs(self, o, model_uri, serialized, read_split=None) -> Outcomes:
        """The linear reference's predictions of the rows (`o.baselines["linear"]`), fitted on the
        train split's labelled rows; none without `read_split`."""
        from kfx.components.evaluation.references import design_matrix, linear_predictions, model_inputs

        if read_split is None:
            return o
        fit = read_split(FIT_SPLIT)
        y = np.asarray(fit.frame[self.label], dtype=np.float64).reshape(-1)
        known = np.isfinite(y)
        x_fit, categories = design_matrix(model_inputs(model_uri, fit.serialized))
        x, _ = design_matrix(model_inputs(model_uri, serialized), categories)
        o.baselines = {**(o.baselines or {}), LINEAR: linear_predictions(x_fit[known], y[known], x)}
        return o

    def metrics(self, o, mask=None, pred=None, bins=10, confusion_thresholds=()) -> dict:
        from kfx.components.evaluation.metrics import regression_metrics

        m = slice(None) if mask is None else mask
        out = regression_metrics(o.y[m], o.pred[m], self.info.get("mean"))
        linear = (o.baselines or {}).get(LINEAR)
        if linear is not None and out["count"]:
            out["linear_rmse"] = float(np.sqrt(np.mean((linear[m] - o.y[m]) ** 2)))
            out["rmse_vs_linear"] = out["rmse"] / out["linear_rmse"] if out["linear_rmse"] else None
        return out

    def fairness(self, o, pred, groups, names, boot, confidence) -> dict:
        from kfx.components.evaluation.fairness import ratio_fairness

        err = pred - o.y
        ones = np.ones_like(err)
        return ratio_fairness(groups, names, {MAE: (np.abs(err), ones), MEAN_RESIDUAL: (err, ones)},
                              {MAE_DIFFERENCE: (MAE,), MEAN_RESIDUAL_DIFFERENCE: (MEAN_RESIDUAL,)}, boot, confidence)

    # ------------------------------------------------------------ report
    def report_sections(self, ev: dict) -> tuple[list[str], list[str]]:
        from kfx.components.evaluation.report import bar_chart

        o = ev["overall"]
        shown = [m for m in ("mae", "rmse", "linear_rmse", "mean_predictor_rmse") if o.get(m) is not None]
        return [], [bar_chart("errors", "Errors: model vs linear regression and the mean predictor", shown,
                              {"error": [o[m] for m in shown]})]
