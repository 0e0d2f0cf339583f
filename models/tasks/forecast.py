"""forecast: the next `horizon` values of a series from a window of its past (multi-step regression).

The label is the next values of the window's first channel (what ingest's `timeseries` writes);
the model reads the window kind's output (models/kinds/window.py). The task trains in the
window's units and answers in the label's own: with a differenced window the training target
is the change from the window's last raw value, divided by the train std of one-step changes,
and the exported model adds the last value back; otherwise the target is scaled like the
window. Both directions run on the raw window (`encode_target`, `decode_output`), inside the
training input pipeline and inside the exported model, so clients send raw values and get values
in raw units.

Evaluation reports RMSE and MAE over every forecast step, RMSE per step, and on the same
windows two baselines: `naive_rmse` (the last value repeated) and `seasonal_naive_rmse` (the
value one season earlier, `season` of the window feature), with `rmse_vs_naive` and
`rmse_vs_seasonal_naive` (model RMSE / baseline RMSE: below 1 beats it), which a gate can bound.
Fairness: per group, the MAE; gap `mae_difference`.
"""
from __future__ import annotations

import numpy as np

from kfx.models.tasks.base import OUTPUT, Outcomes, Task
from kfx.models.tasks.regression import NumericLabel

PREDICTIONS = "predictions"
MAE = "mae"
MAE_DIFFERENCE = "mae_difference"
NAIVE, SEASONAL_NAIVE = "naive", "seasonal_naive"


class Forecast(NumericLabel, Task):
    NAME = "forecast"
    METRICS = ("rmse", "mae", "naive_rmse", "seasonal_naive_rmse", "rmse_vs_naive", "rmse_vs_seasonal_naive")
    LOWER_IS_BETTER = frozenset(METRICS)
    FAIRNESS_METRICS = (MAE_DIFFERENCE,)
    HEADLINE = ("rmse",)
    SLICE_PLOT = ("mae", "rmse")
    SCORE_OUTPUT = PREDICTIONS

    def analyze_label(self, statistic: list) -> tuple[dict, dict]:
        """The count of label values (`complete` divides it by the rows: the horizon)."""
        n, _, _, report = self.label_moments(statistic)
        return {**self.info, "label_values": n}, report

    def complete(self, spec: dict) -> dict:
        """The window feature's state and the horizon (label values per train row)."""
        found = [t for t in spec["transforms"] if t["kind"] == "window"]
        if len(found) != 1:
            raise ValueError(f"task forecast needs exactly one feature of kind 'window'; got "
                             f"{[t['feature'] for t in found] or 'none'} (kinds: "
                             f"{sorted({t['kind'] for t in spec['transforms']})})")
        rows, values = spec["train_rows"], self.info["label_values"]
        if values % rows:
            raise ValueError(f"label {self.label!r}: {values} values in {rows} train rows; every row needs "
                             f"the same number (the horizon)")
        return {**self.info, "label_shape": [values // rows], "window": {"feature": found[0]["feature"],
                                                                         **found[0]["state"]}}

    @property
    def horizon(self) -> int:
        return self.info["label_shape"][0]

    # ------------------------------------------------------------ training
    def _reference(self, features):
        """(offset [N, 1], scale) of the training target: the last raw value (differenced) or the
        train mean, and the std of the window's first channel."""
        import tensorflow as tf

        w = self.info["window"]
        if not w["difference"]:
            return tf.constant(w["mean"][0], tf.float32), w["std"][0]
        x = tf.reshape(tf.cast(features[w["feature"]], tf.float32), [-1, w["length"], w["channels"]])
        return x[:, -1:, 0], w["std"][0]

    def target_encoder(self):
        return self.encode_target

    def encode_target(self, y, features):
        """Training target: the next values as scaled changes from the window's last raw value."""
        import tensorflow as tf

        offset, scale = self._reference(features)
        return (tf.reshape(tf.cast(y, tf.float32), [-1, self.horizon]) - offset) / scale

    def decode_output(self, y, features):
        import tensorflow as tf

        offset, scale = self._reference(features)
        return tf.cast(y, tf.float32) * scale + offset

    def output(self, x):
        import keras

        return keras.layers.Dense(self.horizon, dtype="float32", name=OUTPUT)(x)

    # ------------------------------------------------------------ export
    def serving_outputs(self, y) -> dict:
        import tensorflow as tf

        return {PREDICTIONS: tf.cast(y, tf.float32)}

    # ------------------------------------------------------------ evaluation
    def outcomes(self, labels, scores, threshold: float = 0.5) -> Outcomes:
        y = np.asarray(labels, dtype=np.float64).reshape(len(labels), -1)
        pred = np.asarray(scores, dtype=np.float64).reshape(len(scores), -1)
        if pred.shape != y.shape:
            raise ValueError(f"the model returns forecasts of shape {pred.shape} for labels of shape {y.shape}")
        return Outcomes(y=y, score=pred, pred=pred)

    def add_inputs(self, o: Outcomes, frame: dict) -> Outcomes:
        """The baselines' forecasts of the same windows (last value; value one season earlier)."""
        w = self.info["window"]
        x = np.asarray(frame[w["feature"]], dtype=np.float64).reshape(len(o.y), w["length"], w["channels"])[:, :, 0]
        o.baselines = {NAIVE: np.repeat(x[:, -1:], self.horizon, axis=1)}
        season = w.get("season")
        if season:
            k = np.arange(1, self.horizon + 1)
            pos = w["length"] - 1 + k - season * np.ceil(k / season).astype(int)  # same phase, already seen
            if pos.min() >= 0:
                o.baselines[SEASONAL_NAIVE] = x[:, pos]
        return o

    def metrics(self, o, mask=None, pred=None, bins=10, confusion_thresholds=()) -> dict:
        m = slice(None) if mask is None else mask
        y = o.y[m]
        n = len(y)

        def rmse(p):
            return float(np.sqrt(np.mean((p - y) ** 2))) if n else None

        out = {"count": int(n), "rmse": rmse(o.pred[m]), "mae": float(np.mean(np.abs(o.pred[m] - y))) if n else None,
               "rmse_by_step": {str(k + 1): float(np.sqrt(np.mean((o.pred[m][:, k] - y[:, k]) ** 2)))
                                for k in range(y.shape[1])} if n else {}}
        for name in (NAIVE, SEASONAL_NAIVE):
            base = (o.baselines or {}).get(name)
            out[f"{name}_rmse"] = rmse(base[m]) if base is not None else None
            ratio = out["rmse"] / out[f"{name}_rmse"] if out[f"{name}_rmse"] else None
            out[f"rmse_vs_{name}"] = ratio
        return out

    def fairness(self, o, pred, groups, names, boot, confidence) -> dict:
        from kfx.components.evaluation.fairness import ratio_fairness

        err = np.abs(pred - o.y).mean(axis=1)
        return ratio_fairness(groups, names, {MAE: (err, np.ones_like(err))}, {MAE_DIFFERENCE: (MAE,)}, boot,
                              confidence)

    # ------------------------------------------------------------ report
    def report_summary(self, ev: dict) -> str:
        o = ev["overall"]
        return f", {len(o.get('rmse_by_step') or {})} steps ahead" if o else ""

    def report_sections(self, ev: dict) -> tuple[list[str], list[str]]:
        from kfx.components.evaluation.report import bar_chart, table

        o = ev["overall"]
        shown = [m for m in ("rmse", "naive_rmse", "seasonal_naive_rmse", "mae") if o.get(m) is not None]
        steps = o.get("rmse_by_step") or {}
        return ([table(["step ahead", "rmse"], [[k, v] for k, v in steps.items()])],
                [bar_chart("errors", "Errors: model vs the naive and seasonal-naive forecasts", shown,
                           {"error": [o[m] for m in shown]})])

