"""The model's own transformed inputs of evaluated rows, and a linear regression reference on them.

An exported model's `transform_features` signature (components/training/export.py) turns
serialized tf.Examples into the features the trained model reads, with the preprocessing state
fixed at transform time. `design_matrix` lays them out as one float row per example: dense
features (standardized numbers, scaled pixels) flattened as they are, category ids one-hot over
the categories seen in the fitting rows (an id never seen there is all zeros). Clustering scores
its silhouette on these rows; regression fits `linear_predictions` (least squares with an
intercept, numpy lstsq) on the train split's rows to report the linear model's RMSE beside the
model's (`linear_rmse`).
"""
from __future__ import annotations

import numpy as np

TRANSFORM_FEATURES = "transform_features"


def model_inputs(model_uri: str, serialized: list[bytes], batch_size: int = 4096) -> dict[str, np.ndarray]:
    """Transformed feature name -> values [N, ...] of the serialized rows, through the model's signature.

    Raises:
        ValueError: the model has no transform_features signature (not exported by kfx's train).
    """
    import tensorflow as tf

    from kfx.pipeline.artifacts.scoring import load

    fn = load(model_uri).signatures.get(TRANSFORM_FEATURES)
    if fn is None:
        raise ValueError(f"model {model_uri} has no {TRANSFORM_FEATURES!r} signature")
    parts: dict[str, list] = {}
    for start in range(0, len(serialized), batch_size):
        out = fn(examples=tf.constant(serialized[start:start + batch_size], tf.string))
        for name, value in out.items():
            parts.setdefault(name, []).append(value.numpy())
    return {name: np.concatenate(v) for name, v in sorted(parts.items())}


def design_matrix(inputs: dict[str, np.ndarray], categories: dict[str, np.ndarray] | None = None
                  ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(X [N, D] float64, categories): dense features flattened, integer ids [N] one-hot.

    Args:
        inputs: from `model_inputs`.
        categories: feature -> the ids that get a column (from the fitting rows); None: the ids
            found in `inputs`, sorted.
    """
    columns, seen = [], {}
    for name, value in sorted(inputs.items()):
        if np.issubdtype(value.dtype, np.integer) and value.ndim == 1:
            ids = np.unique(value) if categories is None else categories[name]
            seen[name] = ids
            columns.append((value[:, None] == ids[None, :]).astype(np.float64))
        else:
            columns.append(value.reshape(len(value), -1).astype(np.float64))
    n = len(next(iter(inputs.values()))) if inputs else 0
    return (np.concatenate(columns, axis=1) if columns else np.zeros((n, 0))), seen


def linear_predictions(x_fit: np.ndarray, y_fit: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Least-squares linear regression with an intercept fitted on (x_fit, y_fit), predicting `x`
    (the minimum-norm solution when columns are collinear, as one-hot groups with the intercept are)."""
    def ones(a):
        return np.concatenate([np.ones((len(a), 1)), a], axis=1)

    coef, *_ = np.linalg.lstsq(ones(x_fit), np.asarray(y_fit, np.float64), rcond=None)
    return ones(x) @ coef
