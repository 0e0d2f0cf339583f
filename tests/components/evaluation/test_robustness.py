"""Robustness (components/evaluation/robustness.py) on tiny models trained here.

Images: 6x6 grey images, bright top half (class 0) or bottom half (class 1) plus noise, scaled
as an `encoded_image` feature with image_scale [0, 255] (transformed = pixels / 255), and a
softmax regression trained on them. Text: token ids [N, 6] of two "sentiment" tokens among
filler, and an embedding-average classifier. The pipeline path (evaluate's call, the gate in the
blessing, the report) is tested with the capsule family in tests/models/test_capsule.py.
"""
from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest

from kfx.components.evaluation import robustness
from kfx.pipeline.config_evaluation import EvaluateConfig, RobustnessConfig

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SIDE, ROWS, SCALE = 6, 120, 255.0
SPEC = {"transforms": [{"feature": "image", "kind": "encoded_image", "output": "image",
                        "state": {"shape": [SIDE, SIDE, 1], "mean": 0.0, "std": SCALE}}],
        "outputs": {"image": {"kind": "image", "shape": [SIDE, SIDE, 1]}}}
IMAGES = {"image": (0.0, 1.0, 1.0)}  # transformed low, high, and the size of the pixel range


def _images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.uniform(0, 60, (n, SIDE, SIDE, 1))
    x[y == 0, :SIDE // 2] += 120
    x[y == 1, SIDE // 2:] += 120
    return (np.clip(x, 0, 255) / SCALE).astype(np.float32), y


@pytest.fixture(scope="module")
def image_model():
    """(model, x, y): a softmax regression fitted to the tiny images, and fresh images it gets right."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    inp = keras.Input((SIDE, SIDE, 1), name="image")
    model = keras.Model({"image": inp}, keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(inp)))
    model.compile(keras.optimizers.Adam(0.05), "sparse_categorical_crossentropy")
    x, y = _images(ROWS, 0)
    model.fit({"image": x}, y, epochs=10, batch_size=ROWS, verbose=0)
    x, y = _images(ROWS, 1)
    return model, {"image": tf.constant(x)}, y


def _accuracy(model, x, y, eps: float) -> float:
    pred, _ = robustness.attack_images(model, x, y, IMAGES, eps)["fgsm"]
    return float(np.mean(pred == y))


def test_fgsm_at_epsilon_zero_leaves_accuracy_unchanged(image_model):
    model, x, y = image_model
    clean = np.argmax(model(x).numpy(), axis=1)
    assert np.mean(clean == y) > 0.95
    pred, adv = robustness.attack_images(model, x, y, IMAGES, 0.0)["fgsm"]
    np.testing.assert_array_equal(pred, clean)
    np.testing.assert_array_equal(adv["image"], x["image"].numpy())


def test_accuracy_falls_as_epsilon_grows(image_model):
    model, x, y = image_model
    accuracies = [_accuracy(model, x, y, eps) for eps in (0.0, 0.05, 0.1, 0.2, 0.4)]
    assert accuracies == sorted(accuracies, reverse=True)
    assert accuracies[0] > 0.95 and accuracies[-1] < 0.2


def test_pgd_is_at_least_as_strong_as_fgsm_and_stays_in_the_ball_and_the_pixel_range(image_model):
    model, x, y = image_model
    for eps in (0.05, 0.1, 0.2):
        attacks = robustness.attack_images(model, x, y, IMAGES, eps, steps=5)
        (fgsm, _), (pgd, adv) = attacks["fgsm"], attacks["pgd"]
        assert np.all((pgd != y) | (fgsm == y)), f"an example FGSM fools and PGD does not at epsilon {eps}"
        assert np.mean(pgd == y) <= np.mean(fgsm == y)
        moved = adv["image"] - x["image"].numpy()
        assert np.abs(moved).max() <= eps + 1e-6 and adv["image"].min() >= 0.0 and adv["image"].max() <= 1.0


def _measured(image_model, **cfg) -> dict:
    model, x, y = image_model
    task = SimpleNamespace(classes=["top", "bottom"])
    return robustness.image_robustness(model, x, y, SPEC, ["image"], RobustnessConfig(enabled=True, **cfg), 0.3, task)


def test_image_robustness_measures_each_epsilon_and_shows_flipped_examples(image_model):
    rob = _measured(image_model, epsilons=[0.05], pgd_steps=3, examples=2)
    assert rob["epsilons"] == [0.05, 0.3] and rob["pixel_range"] == {"image": [0.0, 255.0]}
    assert rob["accuracy"]["pgd"]["0.3"] <= rob["accuracy"]["fgsm"]["0.3"] < rob["clean_accuracy"]
    assert len(rob["examples"]) == 2
    ex = rob["examples"][0]
    assert ex["label"] == ex["clean_prediction"] != ex["adversarial_prediction"] and ex["epsilon"] == 0.3
    summary = robustness.summary({**rob, "rows": ROWS, "of": ROWS, "seed": 0})
    assert summary["pgd_accuracy@0.3"] == round(rob["accuracy"]["pgd"]["0.3"], 4)
    assert set(summary) == {"robust_clean_accuracy", "fgsm_accuracy@0.05", "fgsm_accuracy@0.3",
                            "pgd_accuracy@0.05", "pgd_accuracy@0.3"}
    html = robustness.render({**rob, "rows": ROWS, "of": ROWS, "seed": 0})
    assert html.count("<figure") == 4 and 'data-plot="robustness"' in html


def test_the_gate_refuses_a_model_below_min_accuracy(image_model):
    from kfx.components.evaluation.gate import reason
    from kfx.pipeline.config_evaluation import RobustnessThreshold

    rob = _measured(image_model, epsilons=[0.05], pgd_steps=2, examples=0)
    measured = rob["accuracy"]["pgd"]["0.3"]
    refused = robustness.gate_check(rob, RobustnessThreshold(epsilon=0.3, min_accuracy=measured + 0.01))
    assert refused["passed"] is False and refused["value"] == measured
    assert reason(refused) == f"check failed: pgd_accuracy@0.3 >= {measured + 0.01}: got {measured:.4f}"
    assert robustness.gate_check(rob, RobustnessThreshold(epsilon=0.3, min_accuracy=measured))["passed"] is True
    off = robustness.gate_check({"skipped": "robustness measures classifiers"},
                                RobustnessThreshold(epsilon=0.1, min_accuracy=0.5))
    assert off["passed"] is False and "not measured: robustness measures classifiers" in reason(off)


def test_token_perturbations_on_token_ids():
    ids = np.array([[5, 6, 7, 0], [8, 0, 0, 0]])
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(robustness.perturb_tokens(ids, 0.0, "token_drop", 10, rng), ids)
    np.testing.assert_array_equal(robustness.perturb_tokens(ids, 1.0, "token_drop", 10, rng), np.zeros_like(ids))
    replaced = robustness.perturb_tokens(ids, 1.0, "token_replace", 10, rng)
    assert np.all((replaced == 0) == (ids == 0)) and replaced[ids != 0].min() >= 2 and replaced.max() < 10
    dropped = robustness.perturb_tokens(np.tile(np.arange(1, 9), (50, 1)), 0.5, "token_drop", 10, rng)
    for row in dropped:  # kept tokens in order, padding only at the end
        kept = row[row != 0]
        assert list(kept) == sorted(kept) and np.all(row[len(kept):] == 0)
    with pytest.raises(ValueError, match="unknown token perturbation 'shuffle'"):
        robustness.perturb_tokens(ids, 0.1, "shuffle", 10, rng)


def test_text_token_drop_at_rate_zero_leaves_accuracy_unchanged_and_falls_with_rate():
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    y = np.arange(200) % 2
    ids = rng.integers(4, 20, (200, 6))
    ids[np.arange(200), rng.integers(0, 6, 200)] = 2 + y  # token 2: class 0, token 3: class 1
    inp = keras.Input((6,), dtype="int64", name="text")
    emb = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(20, 4)(inp))
    model = keras.Model({"text": inp}, keras.layers.Dense(2, activation="softmax")(emb))
    model.compile(keras.optimizers.Adam(0.05), "sparse_categorical_crossentropy")
    model.fit({"text": ids}, y, epochs=25, batch_size=200, verbose=0)
    spec = {"outputs": {"text": {"kind": "sequence", "cardinality": 20, "length": 6}}}
    cfg = RobustnessConfig(enabled=True, token_rates=[0.0, 0.9])
    rob = robustness.text_robustness(model, {"text": tf.constant(ids)}, y, spec, ["text"], cfg, None)
    assert rob["clean_accuracy"] > 0.95
    assert rob["accuracy"]["token_drop"]["0"] == rob["accuracy"]["token_replace"]["0"] == rob["clean_accuracy"]
    assert rob["accuracy"]["token_drop"]["0.9"] < rob["clean_accuracy"] - 0.2
    assert rob["accuracy"]["token_replace"]["0.9"] < rob["clean_accuracy"] - 0.2


@pytest.mark.parametrize("section, message", [
    ({"gate": {"robustness": {"epsilon": 0.1, "min_accuracy": 0.5}}}, "gate.robustness .* needs robustness.enabled"),
    ({"robustness": {"enabled": True, "epsilons": [1.5]}}, "epsilon 1.5 must be in \\[0, 1\\]"),
    ({"robustness": {"enabled": True},
      "gate": {"robustness": {"epsilon": 0.1, "min_accuracy": 0.5, "attack": "noise"}}}, "noise"),
])
def test_robustness_settings_are_checked_at_config_load(section, message):
    import pydantic

    with pytest.raises(pydantic.ValidationError, match=message):
        EvaluateConfig(**section)


def test_a_model_without_its_keras_side_is_skipped_with_the_reason(tmp_path):
    from tests.components.evaluation.evaluation_fixtures import CLASSES, export_model

    task = SimpleNamespace(classes=CLASSES, NAME="binary")
    model = export_model(str(tmp_path / "model"), {"bias": 0.0, "age": 0.1, "hours": 0.0, "male": 0.0, "white": 0.0})
    rob = robustness.evaluate(model, {}, np.zeros(3), task, RobustnessConfig(enabled=True))
    assert set(rob) == {"skipped"} and "has no Keras weights" in rob["skipped"]
    assert robustness.summary(rob) == {} and "Skipped: model" in robustness.render(rob)
