"""models/tasks/: the registry, auto-detection, label analysis, heads, signatures' outputs and
the evaluation numbers of every task, checked against numpy / scikit-learn on tiny arrays."""
from __future__ import annotations

import numpy as np
import pytest

from kfx.models import tasks

CLASSES = ["Adelie", "Chinstrap", "Gentoo"]
MULTI = {"type": tasks.MULTICLASS, "label": "species", "label_dtype": "string", "vocabulary": CLASSES,
         "positive": None, "class_counts": {"Adelie": 6, "Chinstrap": 2, "Gentoo": 4}}
REG = {"type": tasks.REGRESSION, "label": "mass", "label_dtype": "float32", "vocabulary": None, "positive": None,
       "mean": 4000.0, "std": 800.0}


def test_registry_names_and_errors():
    assert tasks.names() == ["binary", "clustering", "forecast", "generation", "multiclass", "node_classification", "regression"]
    assert tasks.of(MULTI).NAME == tasks.MULTICLASS and tasks.of(tasks.of(MULTI)).classes == CLASSES
    with pytest.raises(KeyError, match="unknown task 'ranking'; known tasks: binary, clustering, forecast, generation, multiclass, "
                                        "node_classification, regression"):
        tasks.get("ranking")
    with pytest.raises(ValueError, match="type 'binary' given to task 'regression'"):
        tasks.get(tasks.REGRESSION)({**REG, "type": tasks.BINARY})


@pytest.mark.parametrize("dtype, domain, classes, expected", [
    ("float32", False, None, "regression"), ("int64", False, None, "regression"),
    ("int64", True, None, "multiclass"), ("string", False, None, "multiclass"),
    ("string", True, 2, "binary"), ("string", True, 3, "multiclass")])
def test_auto_picks_a_task_from_the_label(dtype, domain, classes, expected):
    assert tasks.auto(dtype, domain, classes) == expected


def test_label_analysis_per_task():
    info, report = tasks.of(tasks.get(tasks.MULTICLASS).plan("species", "string", None)).analyze_label(
        {b"Gentoo": 4, b"Adelie": 6, b"Chinstrap": 2})
    assert info["vocabulary"] == CLASSES and info["class_counts"] == MULTI["class_counts"] == report["class_counts"]
    binary = tasks.of({**tasks.get(tasks.BINARY).plan("y", "string", ["no", "yes"])})
    assert binary.analyze_label({b"no": 3, b"yes": 1})[0]["positive"] == "yes"
    with pytest.raises(ValueError, match=r"task binary needs 2 classes, label vocabulary is \['a', 'b', 'c'\]"):
        tasks.of(tasks.get(tasks.BINARY).plan("y", "string", None)).analyze_label({b"a": 1, b"b": 1, b"c": 1})
    with pytest.raises(ValueError, match=r"values \['d'\] outside the label vocabulary"):
        tasks.of(tasks.get(tasks.MULTICLASS).plan("y", "string", ["a", "b"])).analyze_label({b"a": 1, b"d": 1})
    values = np.array([3000.0, 4000.0, 5000.0, 4400.0])
    n, mean, m2 = len(values), values.mean(), ((values - values.mean()) ** 2).sum()
    info, report = tasks.of(tasks.get(tasks.REGRESSION).plan("mass", "float32", None)).analyze_label(
        [n, mean, m2, values.min(), values.max()])
    assert info["mean"] == pytest.approx(4100.0) and info["std"] == pytest.approx(values.std())
    assert report["min"] == 3000.0
    with pytest.raises(ValueError, match="task regression needs a numeric label; 'species' is a string"):
        tasks.get(tasks.REGRESSION).plan("species", "string", None)
    # forecast shares the numeric label's plan and moments: the count is what it keeps
    forecast = tasks.get("forecast")
    info, got = tasks.of(forecast.plan("co2", "float32", None)).analyze_label([n, mean, m2, 3000.0, 5000.0])
    assert (info["type"], info["label_values"], "std" in info, got) == ("forecast", 4, False, report)
    with pytest.raises(ValueError, match="task forecast needs a numeric label; 'species' is a string"):
        forecast.plan("species", "string", None)


def test_objectives_and_class_weights():
    assert tasks.of(REG).objective("val_rmse") == ("val_rmse", "min")
    assert tasks.of(MULTI).objective("val_accuracy") == ("val_accuracy", "max")
    with pytest.raises(ValueError, match="metric 'val_auc' is not reported for a multiclass task"):
        tasks.of(MULTI).objective("val_auc")
    assert tasks.of(REG).class_weight("balanced") is None
    weights = tasks.of(MULTI).class_weight("balanced")
    assert weights == pytest.approx({0: 12 / 18, 1: 12 / 6, 2: 12 / 12})
    with pytest.raises(ValueError, match=r"names \['Emperor'\], not classes of the label"):
        tasks.of(MULTI).class_weight({"Emperor": 2.0})


def test_heads_and_serving_outputs():
    import keras
    import tensorflow as tf

    x = keras.Input((4,))
    reg = tasks.of(REG)
    model = keras.Model(x, reg.output(x))
    dense = model.get_layer("output_standardized")
    dense.set_weights([np.zeros((4, 1), "float32"), np.zeros(1, "float32")])
    # The regression head starts at the train mean: a zero unit is the mean predictor.
    assert np.allclose(model(np.ones((2, 4), "float32")), 4000.0)
    y = tf.constant([[4100.0], [3900.0]])
    assert reg.serving_outputs(y)["predictions"].shape == (2,)
    assert set(reg.example_signatures()) == {"regress"}

    multi = tasks.of(MULTI)
    p = tf.constant([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    out = multi.serving_outputs(p)
    assert [c.decode() for c in out["classes"].numpy()] == ["Adelie", "Gentoo"]
    method, classify = multi.example_signatures()["classify"]
    assert method == "tensorflow/serving/classify" and set(multi.example_signatures()) == {"classify"}
    got = classify(p)
    assert got["classes"].shape == (2, 3) and np.allclose(got["scores"], p)
    binary = tasks.of({"type": "binary", "label": "y", "label_dtype": "string", "vocabulary": ["no", "yes"]})
    assert set(binary.example_signatures()) == {"classify", "regress"}
    assert np.allclose(binary.example_signatures()["regress"][1](tf.constant([[0.9]]))["outputs"], [0.9])


def test_multiclass_metrics_and_fairness_equal_numpy_and_sklearn():
    from sklearn import metrics as skm

    from kfx.components.evaluation.fairness import bootstrap_indices

    rng = np.random.default_rng(0)
    n = 400
    y = rng.integers(0, 3, n)
    probs = rng.dirichlet([1, 1, 1], n)
    probs[np.arange(n), y] += 0.6  # mostly right
    probs /= probs.sum(axis=1, keepdims=True)
    task = tasks.of(MULTI)
    o = task.outcomes(np.array(CLASSES, dtype=object)[y], probs)
    m = task.metrics(o)
    pred = probs.argmax(axis=1)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["recall"] == pytest.approx(skm.recall_score(y, pred, average="macro"))
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, probs), abs=1e-9)
    assert m["confusion"]["Gentoo"]["Adelie"] == int(np.sum((y == 2) & (pred == 0)))
    groups = rng.integers(0, 2, n)
    fr = task.fairness(o, o.pred, groups, ["f", "m"], bootstrap_indices(n, 200, 0), 0.95)
    acc = [np.mean(pred[groups == g] == y[groups == g]) for g in (0, 1)]
    assert fr["gaps"]["accuracy_difference"]["value"] == pytest.approx(abs(acc[0] - acc[1]))
    recall_gaps = []
    for k, cls in enumerate(CLASSES):
        r = [np.mean(pred[(groups == g) & (y == k)] == k) for g in (0, 1)]
        assert fr["groups"]["m"][f"recall[{cls}]"] == pytest.approx(r[1])
        assert fr["gaps"][f"recall_difference[{cls}]"]["value"] == pytest.approx(abs(r[0] - r[1]))
        recall_gaps.append(abs(r[0] - r[1]))
    assert fr["gaps"]["recall_difference"]["value"] == pytest.approx(max(recall_gaps))
    for gap in fr["gaps"].values():
        assert gap["lower"] <= gap["value"] <= gap["upper"]
    with pytest.raises(ValueError, match=r"labels \['Emperor'\] are not among the model's classes"):
        task.outcomes(np.array(["Emperor"], dtype=object), probs[:1])


def test_regression_metrics_and_fairness_equal_numpy():
    from kfx.components.evaluation.fairness import bootstrap_indices

    rng = np.random.default_rng(1)
    n = 300
    y = rng.normal(4200, 800, n)
    groups = rng.integers(0, 2, n)
    pred = y + rng.normal(0, 300, n) + 100 * groups  # group 1 over-predicted by 100 g
    task = tasks.of(REG)
    o = task.outcomes(y, pred)
    m = task.metrics(o)
    rmse = np.sqrt(np.mean((pred - y) ** 2))
    base = np.sqrt(np.mean((y - REG["mean"]) ** 2))  # the train mean as a constant prediction
    assert m["rmse"] == pytest.approx(rmse) and m["mean_predictor_rmse"] == pytest.approx(base)
    assert m["rmse_reduction"] == pytest.approx(1 - rmse / base)
    fr = task.fairness(o, o.pred, groups, ["f", "m"], bootstrap_indices(n, 300, 0), 0.95)
    err = pred - y
    mae = [np.mean(np.abs(err[groups == g])) for g in (0, 1)]
    res = [np.mean(err[groups == g]) for g in (0, 1)]
    assert fr["groups"]["f"]["mae"] == pytest.approx(mae[0]) and fr["groups"]["m"]["count"] == int(groups.sum())
    assert fr["gaps"]["mae_difference"]["value"] == pytest.approx(abs(mae[0] - mae[1]))
    gap = fr["gaps"]["mean_residual_difference"]
    assert gap["value"] == pytest.approx(abs(res[0] - res[1]))
    assert gap["lower"] <= gap["value"] <= gap["upper"] and gap["lower"] > 30  # the 100 g bias is seen


def test_config_metric_names_are_the_union_of_the_tasks():
    from kfx.pipeline.config_evaluation import FAIRNESS_METRICS, LOWER_IS_BETTER, METRICS

    assert {"auc", "rmse_reduction", "log_loss"} <= set(METRICS)
    assert {"mae_difference", "accuracy_difference", "equalized_odds_difference"} <= set(FAIRNESS_METRICS)
    assert {"rmse", "mae", "log_loss"} <= LOWER_IS_BETTER and "accuracy" not in LOWER_IS_BETTER


def test_forecast_baselines_and_metrics_on_the_same_windows():
    window = {"feature": "w", "length": 6, "channels": 1, "difference": True, "season": 4, "mean": [0.0],
              "std": [2.0]}
    task = tasks.of({"type": "forecast", "label": "y", "label_dtype": "float32", "vocabulary": None,
                     "positive": None, "label_shape": [2], "window": window})
    x = np.arange(12, dtype=float).reshape(2, 6)  # windows [0..5], [6..11]
    y = np.array([[6.0, 7.0], [12.0, 13.0]])
    o = task.add_inputs(task.outcomes(y, y + 0.5), {"w": x})
    np.testing.assert_array_equal(o.baselines["naive"], [[5, 5], [11, 11]])
    np.testing.assert_array_equal(o.baselines["seasonal_naive"], [[2, 3], [8, 9]])  # one season (4) earlier
    m = task.metrics(o)
    assert m["rmse"] == pytest.approx(0.5) and m["mae"] == pytest.approx(0.5)
    assert m["naive_rmse"] == pytest.approx(np.sqrt(2.5)) and m["seasonal_naive_rmse"] == pytest.approx(4.0)
    assert m["rmse_vs_naive"] == pytest.approx(0.5 / np.sqrt(2.5)) and set(m["rmse_by_step"]) == {"1", "2"}
    with pytest.raises(ValueError, match=r"forecasts of shape \(2, 1\) for labels of shape \(2, 2\)"):
        task.outcomes(y, y[:, :1])


def test_forecast_target_is_relative_to_the_last_raw_value_and_decodes_back():
    import tensorflow as tf

    window = {"feature": "w", "length": 3, "channels": 1, "difference": True, "season": None, "mean": [0.1],
              "std": [2.0]}
    task = tasks.of({"type": "forecast", "label": "y", "label_dtype": "float32", "vocabulary": None,
                     "positive": None, "label_shape": [2], "window": window})
    features = {"w": tf.constant([[1.0, 2.0, 3.0], [5.0, 4.0, 10.0]])}
    y = tf.constant([[4.0, 7.0], [10.0, 6.0]])
    encoded = task.encode_target(y, features)
    np.testing.assert_allclose(encoded.numpy(), [[0.5, 2.0], [0.0, -2.0]])
    np.testing.assert_allclose(task.decode_output(encoded, features).numpy(), y.numpy())


@pytest.mark.parametrize("info, labels, expected", [
    ({**MULTI, "label_dtype": "int64", "vocabulary": ["3", "5", "7"], "class_counts": {"3": 1, "5": 1, "7": 1}},
     [7, 3, 5, 7], [2, 0, 1, 2]),  # integer labels (MNIST, digits): an IntegerLookup with a tensor vocabulary
    (MULTI, [b"Gentoo", b"Adelie"], [2, 0]),
    (REG, [4000.0, 4800.0], None),
])
def test_target_encoder_runs_inside_a_tf_data_map(info, labels, expected):
    """The training input pipeline encodes labels in tf.data's traced map: the encoder's layers
    must already exist (made eagerly by `target_encoder`), or Keras refuses to build them there."""
    import tensorflow as tf

    encode = tasks.of(info).target_encoder()
    ds = tf.data.Dataset.from_tensor_slices(labels).batch(4).map(lambda y: encode(y, {}))
    out = np.concatenate([b.numpy() for b in ds])
    if expected is not None:
        assert out.tolist() == expected
    else:
        np.testing.assert_allclose(out, np.asarray(labels, dtype=np.float32))
