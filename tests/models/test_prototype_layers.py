"""models/prototype_layers.py, models/som.py and models/rbf.py: the SOM rule, the Gaussian basis,
the schedules and the centres' initialisation, with numbers checked by hand."""
from __future__ import annotations

import numpy as np
import pytest

from kfx.models import rbf, som


def _map(prototypes, sigma: float, rate: float):
    from kfx.models.prototype_layers import SelfOrganizingMap

    layer = SelfOrganizingMap(1, len(prototypes))
    layer.build((None, len(prototypes[0])))
    layer.prototypes.assign(np.array([prototypes], np.float32))
    layer.sigma.assign(sigma)
    layer.rate.assign(rate)
    return layer


def test_som_rule_moves_the_best_matching_unit_toward_the_input():
    layer = _map([[0.0, 0.0], [10.0, 10.0]], sigma=0.1, rate=0.5)
    x = np.array([[1.0, 1.0]], np.float32)
    np.testing.assert_allclose(layer(x), [[2.0, 162.0]])  # squared distances
    error = float(layer.update(x))
    assert error == pytest.approx(np.sqrt(2.0))  # before the step
    # The BMU moves half way (rate 0.5); the neighbour at grid distance 1 barely (h = e^-50).
    np.testing.assert_allclose(layer.prototypes.numpy()[0], [[0.5, 0.5], [10.0, 10.0]], atol=1e-5)
    assert float(layer(x)[0, 0]) == pytest.approx(0.5)  # distance to the BMU halved: sqrt(2)/2, squared


def test_som_rule_pulls_neighbours_by_the_gaussian_of_their_grid_distance():
    layer = _map([[0.0, 0.0], [10.0, 10.0]], sigma=1.0, rate=0.5)
    layer.update(np.array([[1.0, 1.0]], np.float32))
    h = np.exp(-0.5)  # grid distance 1, sigma 1
    np.testing.assert_allclose(layer.prototypes.numpy()[0, 1], 10.0 + 0.5 * h * (1.0 - 10.0), rtol=1e-5)


def test_layers_reject_bad_settings_and_give_their_config():
    from kfx.models.prototype_layers import RadialBasis, SelfOrganizingMap

    with pytest.raises(ValueError, match="SelfOrganizingMap: rows must be an integer >= 1, got 0"):
        SelfOrganizingMap(0, 3)
    with pytest.raises(ValueError, match="RadialBasis: units must be an integer >= 1, got 2.5"):
        RadialBasis(2.5)
    with pytest.raises(ValueError, match="RadialBasis: width must be > 0, got -1"):
        RadialBasis(3, width=-1)
    assert SelfOrganizingMap(2, 3).get_config()["cols"] == 3 and RadialBasis(4, 2.0).get_config()["width"] == 2.0


def test_radial_basis_is_the_gaussian_of_the_distance_to_each_centre():
    from kfx.models.prototype_layers import RadialBasis

    layer = RadialBasis(2, width=2.0)
    layer.build((None, 2))
    layer.centres.assign(np.array([[0.0, 0.0], [3.0, 4.0]], np.float32))
    np.testing.assert_allclose(layer(np.array([[0.0, 0.0]], np.float32)), [[1.0, np.exp(-25 / 8)]], rtol=1e-5)


def test_schedules_and_initial_centres():
    hp = {"sigma": 3.0, "sigma_end": 0.5, "learning_rate": 0.5, "learning_rate_end": 0.02, "epochs": 11}
    assert som.schedule(hp, 0) == pytest.approx((3.0, 0.5)) and som.schedule(hp, 10) == pytest.approx((0.5, 0.02))
    assert som.schedule(hp, 5) == pytest.approx((np.sqrt(1.5), 0.1))  # geometric midpoint
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 0.1, (50, 2)), rng.normal(5, 0.1, (50, 2))])
    centres, widths = rbf.initial_centres(x, 2, "kmeans")
    np.testing.assert_allclose(sorted(centres[:, 0]), [0.0, 5.0], atol=0.1)
    assert np.all((widths > 0.05) & (widths < 0.3))  # rms distance of a blob's rows to its centre
    centres, widths = rbf.initial_centres(x[:3], 5, "sample")  # fewer rows than units: repeated
    assert centres.shape == (5, 2) and np.all(widths > 0)


def test_rbf_regression_head_by_least_squares_fits_a_linear_target_exactly():
    features = {"x": {"kind": "dense", "width": 2}, "c": {"kind": "ids", "cardinality": 3, "encoding": "one_hot"}}
    task = {"type": "regression", "label": "y", "label_dtype": "float32", "vocabulary": None, "positive": None,
            "mean": 10.0, "std": 4.0}
    hp = {"units": 3, "init": "kmeans", "linear_term": True, "ridge": 0.0, "epochs": 0, "learning_rate": 1e-3}
    model = rbf.build(features, task, hp)
    rng = np.random.default_rng(0)
    batch = {"x": rng.normal(size=(40, 2)).astype("float32"), "c": rng.integers(0, 3, 40)}
    y = 10.0 + 3.0 * batch["x"][:, 0] - batch["x"][:, 1] + 2.0 * (batch["c"] == 1)
    assert rbf.fit_regression_head(model, [(batch, y)], ridge=0.0)
    np.testing.assert_allclose(model(batch)[:, 0], y, atol=1e-3)
    classify = rbf.build(features, {"type": "binary", "vocabulary": ["no", "yes"]}, hp)
    assert not rbf.fit_regression_head(classify, [(batch, y)], ridge=0.0)  # not a regression head: untouched
