"""components/evaluation/references.py and regression's `linear_rmse`: the design matrix of
transformed inputs and the least squares reference, against numpy lstsq on tiny arrays."""
from __future__ import annotations

import numpy as np
import pytest

from kfx.components.evaluation.references import design_matrix, linear_predictions
from kfx.models import tasks
from kfx.models.tasks.base import Outcomes

REG = {"type": "regression", "label": "mass", "label_dtype": "float32", "vocabulary": None, "positive": None,
       "mean": 4000.0, "std": 800.0}


def test_design_matrix_flattens_dense_and_one_hots_ids_seen_when_fitting():
    fit = {"num": np.array([[0.5], [-1.0], [2.0]], np.float32), "cat": np.array([2, 0, 2], np.int64),
           "img": np.arange(12, dtype=np.float32).reshape(3, 2, 2, 1)}
    x, cats = design_matrix(fit)
    assert cats["cat"].tolist() == [0, 2]
    assert x.shape == (3, 2 + 4 + 1)  # cat one-hot (sorted names: cat, img, num)
    assert x[:, :2].tolist() == [[0, 1], [1, 0], [0, 1]] and x[:, -1].tolist() == [0.5, -1.0, 2.0]
    new, _ = design_matrix({"num": np.array([[1.0]]), "cat": np.array([7]), "img": np.zeros((1, 2, 2, 1))}, cats)
    assert new[0, :2].tolist() == [0, 0]  # an id never seen when fitting: no column


def test_linear_rmse_matches_numpy_lstsq_fitted_on_the_train_rows():
    rng = np.random.default_rng(0)
    x_fit, x = rng.normal(size=(20, 3)), rng.normal(size=(6, 3))
    y_fit = 3.0 + x_fit @ [1.0, -2.0, 0.5] + rng.normal(0, 0.1, 20)
    y = 3.0 + x @ [1.0, -2.0, 0.5]
    coef = np.linalg.lstsq(np.c_[np.ones(20), x_fit], y_fit, rcond=None)[0]
    want = np.c_[np.ones(6), x] @ coef
    linear = linear_predictions(x_fit, y_fit, x)
    np.testing.assert_allclose(linear, want, rtol=1e-10)

    task = tasks.of(REG)
    pred = y + np.array([1.0, -1.0, 0.0, 0.0, 2.0, 0.0])
    o = Outcomes(y=y, score=pred, pred=pred, baselines={"linear": linear})
    m = task.metrics(o)
    assert m["linear_rmse"] == pytest.approx(np.sqrt(np.mean((want - y) ** 2)))
    assert m["rmse"] == pytest.approx(np.sqrt(6 / 6)) and m["rmse_vs_linear"] == pytest.approx(m["rmse"] / m["linear_rmse"])
    mask = np.array([True, True, False, False, False, False])
    assert task.metrics(o, mask)["linear_rmse"] == pytest.approx(np.sqrt(np.mean((want[:2] - y[:2]) ** 2)))
    assert "linear_rmse" not in task.metrics(Outcomes(y=y, score=pred, pred=pred))  # no reference read
