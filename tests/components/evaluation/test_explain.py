"""explain: integrated gradients' completeness, permutation importance's ranking, proxies, the
attributions file of a real pipeline's evaluate.

Completeness is checked on Keras models built here (ids one-hot encoded and embedded, a masked
token sequence, an image CNN); the ranking on the evaluate fixtures' logistic model through its
serving_default. The attributions of a trained export (its Keras side, through the real
preprocessing) are tested in tests/components/training/test_train.py, on the tiny pipeline that
module builds anyway.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from tests.components.evaluation import evaluation_fixtures as fx
from tests.components.evaluation.test_evaluate import evaluate

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _tabular_model():
    import keras

    keras.utils.set_random_seed(3)
    num = keras.Input(shape=(2,), dtype="float32", name="num")
    cat = keras.Input(shape=(), dtype="int64", name="cat")
    seq = keras.Input(shape=(5,), dtype="int64", name="seq")
    one_hot = keras.layers.CategoryEncoding(4, output_mode="one_hot", name="cat_onehot")(cat)
    emb = keras.layers.Embedding(4, 3, name="cat_embedding")(cat)
    tokens = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(9, 3, mask_zero=True)(seq))
    x = keras.layers.Concatenate()([num, one_hot, emb, tokens])
    x = keras.layers.Dense(8, activation="tanh", kernel_initializer=keras.initializers.RandomNormal(0, 1.0))(x)
    return keras.Model({"num": num, "cat": cat, "seq": seq}, keras.layers.Dense(1, activation="sigmoid")(x))


def _tabular_inputs(n: int = 24) -> dict:
    rng = np.random.default_rng(0)
    seq = rng.integers(1, 9, (n, 5))
    seq[:, 3:] *= rng.random((n, 2)) < 0.5  # some padding
    return {"num": rng.normal(0, 1.5, (n, 2)).astype(np.float32), "cat": rng.integers(0, 4, n), "seq": seq}


@pytest.mark.parametrize("baseline", ["zero", "mean"])
def test_integrated_gradients_complete_for_categorical_and_token_inputs(baseline):
    from kfx.components.evaluation.explain import integrated_gradients

    model, inputs = _tabular_model(), _tabular_inputs()
    res = integrated_gradients(model, inputs, steps=64, baseline=baseline)
    a = res["attributions"]
    assert a["num"].shape == (24, 2) and a["cat"].shape == (24,) and a["seq"].shape == (24, 5)
    # The path ends at the model's own output (the ids' masks still apply) ...
    np.testing.assert_allclose(res["output"], model(inputs).numpy()[:, 0], rtol=1e-5)
    # ... and the attributions add up to output minus baseline output, within 1%.
    total = a["num"].sum(1) + a["cat"] + a["seq"].sum(1)
    diff = res["output"] - res["baseline_output"]
    assert np.abs(diff).min() > 1e-3
    np.testing.assert_array_less(np.abs(total - diff), 0.01 * np.abs(diff))
    assert np.all(a["seq"][inputs["seq"] == 0] == 0)  # padding gets nothing
    with pytest.raises(ValueError, match="'blur'"):
        integrated_gradients(model, inputs, baseline="blur")


def test_integrated_gradients_complete_through_a_nested_encoder_reading_ids():
    import keras

    from kfx.components.evaluation.explain import integrated_gradients
    from kfx.models import rbf

    keras.utils.set_random_seed(3)  # rbf wraps its inputs' encoding in a nested keras.Model
    features = {"num": {"kind": "dense", "width": 2}, "cat": {"kind": "ids", "cardinality": 4, "encoding": "one_hot"}}
    model = rbf.build(features, {"type": "regression", "label": "y"}, {"units": 4, "linear_term": True})
    inputs = {k: v for k, v in _tabular_inputs(12).items() if k in features}
    res = integrated_gradients(model, inputs, steps=64)
    a = res["attributions"]
    assert a["num"].shape == (12, 2) and a["cat"].shape == (12,) and np.abs(a["cat"]).max() > 0
    np.testing.assert_allclose(res["output"], model(inputs).numpy().reshape(-1), rtol=1e-5)
    diff = res["output"] - res["baseline_output"]
    np.testing.assert_array_less(np.abs(a["num"].sum(1) + a["cat"] - diff), 0.01 * np.abs(diff) + 1e-5)


def test_integrated_gradients_complete_for_an_image_model():
    import keras

    from kfx.components.evaluation.explain import integrated_gradients

    keras.utils.set_random_seed(4)
    img = keras.Input(shape=(8, 8, 1), name="image")
    x = keras.layers.Conv2D(4, 3, activation="relu")(img)
    x = keras.layers.Flatten()(keras.layers.MaxPooling2D()(x))
    model = keras.Model({"image": img}, keras.layers.Dense(3, activation="softmax")(x))
    images = np.random.default_rng(1).random((10, 8, 8, 1)).astype(np.float32)
    res = integrated_gradients(model, {"image": images}, steps=64)
    pixels = res["attributions"]["image"]
    assert pixels.shape == (10, 8, 8, 1)
    probs = model({"image": images}).numpy()
    assert np.array_equal(res["target"], probs.argmax(1))  # the predicted class is explained
    diff = res["output"] - res["baseline_output"]
    np.testing.assert_array_less(np.abs(pixels.reshape(10, -1).sum(1) - diff), 0.01 * np.abs(diff) + 1e-6)


def test_proxy_flag_fires_for_a_copy_of_the_sensitive_feature():
    from kfx.components.evaluation.explain import associations, proxies

    rng = np.random.default_rng(0)
    sex = rng.choice(["Male", "Female"], 500)
    frame = {"sex": sex, "gender_copy": np.where(sex == "Male", "m", "f"), "noise": rng.choice(["a", "b", "c"], 500),
             "hours": rng.normal(40, 5, 500) + 6 * (sex == "Male"), "age": rng.normal(40, 5, 500)}
    assoc = associations(frame, ["gender_copy", "noise", "hours", "age", "sex"], ["sex"], {"hours", "age"})
    row = assoc["sex"]
    assert row["gender_copy"] == pytest.approx(1.0) and row["sex"] is None
    assert row["noise"] < 0.15 and row["age"] < 0.15 and row["hours"] > 0.4
    shares = {"gender_copy": 0.4, "noise": 0.3, "hours": 0.01, "age": 0.29}
    flagged = proxies(assoc, shares, 0.3, 0.05)
    assert [p["feature"] for p in flagged] == ["gender_copy"]  # hours: associated but unimportant
    assert [p["feature"] for p in proxies(assoc, {**shares, "hours": 0.2}, 0.3, 0.05)] == ["gender_copy", "hours"]


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    d = tmp_path_factory.mktemp("explain")
    rows = fx.write_examples(str(d / "examples"), {"train": 2000, "test": 1500}, seed=1)
    return {"dir": d, "examples": str(d / "examples"), "schema": fx.write_schema(str(d / "schema")),
            "fair": fx.export_model(str(d / "fair"), fx.fit_weights(rows["train"]))}


def test_permutation_importance_ranks_label_features_above_noise(art):
    _, ev, _, out = evaluate(art, "perm", "fair", explain={"rows": 1500, "permutation_repeats": 3})
    ex = ev["explanations"]
    perm = ex["permutation"]
    assert perm["metric"] == "auc" and perm["base"] == pytest.approx(ev["overall"]["auc"], abs=1e-6)
    drop = {f: v["mean"] for f, v in perm["features"].items()}
    # The label depends on age and hours; race is noise (the fixture's data).
    assert min(drop["age"], drop["hours"]) > 0.02 > abs(drop["race"])
    assert drop["age"] > drop["race"] and drop["hours"] > drop["sex"]
    assert set(perm["groups"]) == {"sex=Female", "sex=Male", "race=Asian", "race=Black", "race=Other",
                                   "race=White"}
    # No Keras side in this export: integrated gradients are skipped, saying why.
    assert ex["integrated_gradients"] is None and "no Keras weights" in ex["notes"][0]
    with np.load(out / "evaluation" / "attributions.npz") as z:
        assert list(z["permutation_features"]) == ex["features"]
        assert z["permutation_drops"].shape == (4, 3)
    report = (out / "evaluation" / "report.html").read_text()
    assert 'data-plot="explain-permutation"' in report and "Proxies for sensitive attributes" in report


def test_explain_config_rejects_bad_values(art):
    from pydantic import ValidationError

    from kfx.pipeline.config_evaluation import EvaluateConfig

    with pytest.raises(ValidationError, match="baseline"):
        EvaluateConfig.model_validate({"explain": {"baseline": "blurred"}})
    with pytest.raises(ValidationError, match="steps"):
        EvaluateConfig.model_validate({"explain": {"steps": 1}})
