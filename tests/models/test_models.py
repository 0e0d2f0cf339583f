"""models/: registry, search spaces (defaults, checks, KerasTuner declaration), builders, and
the config-load checks of model names and hyperparameters."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from kfx import models
from kfx.models import space
from kfx.pipeline.config import ConfigError, load_config

FEATURES = {
    "x": {"kind": "dense", "width": 1},
    "cat": {"kind": "ids", "cardinality": 5, "encoding": "one_hot"},
    "big": {"kind": "ids", "cardinality": 50, "encoding": "embed"},
    "words": {"kind": "sequence", "cardinality": 20, "length": 4},
}
BINARY = {"type": "binary", "vocabulary": ["no", "yes"]}
TABULAR = ["mlp", "wide_deep"]  # the families FEATURES suits (image and sequence ones: test_families.py)
KNOWN = ("autoencoder, bilstm, capsule, cnn, cnn1d, denoising_autoencoder, gan, gnn, gru, lstm, mlp, rbf, resnet, rnn, "
         "som, transformer, vae, wide_deep")


def test_registry_lists_families_and_rejects_unknown_names():
    assert models.names() == KNOWN.split(", ")
    assert models.get("mlp").SPACE
    with pytest.raises(KeyError, match=f"unknown model 'cnn3d'; known models: {KNOWN}"):
        models.get("cnn3d")


@pytest.mark.parametrize("name", models.names())
def test_every_space_has_valid_defaults_and_a_learning_rate(name):
    sp = models.get(name).SPACE
    values = space.defaults(sp)
    assert space.check(sp, values) == []
    assert 0 < values["learning_rate"] < 1
    assert len({p.name for p in sp}) == len(sp), "duplicate hyperparameter names"


def test_check_names_each_bad_key_and_value():
    sp = models.get("mlp").SPACE
    problems = space.check(sp, {"units": 7, "dropout": 0.9, "num_layers": 2, "colour": 1, "batch_norm": "yes"})
    text = " | ".join(problems)
    assert len(problems) == 4
    assert "'units' must be one of [32, 64, 128, 256], got 7" in text
    assert "'dropout' must be in [0.0, 0.5], got 0.9" in text
    assert "'colour' is not a hyperparameter" in text
    assert "'batch_norm' must be true or false" in text


def test_declare_registers_the_space_on_keras_tuner_with_the_same_defaults():
    import keras_tuner as kt

    sp = models.get("wide_deep").SPACE
    hp = kt.HyperParameters()
    values = space.declare(sp, hp)
    assert values == space.defaults(sp)
    assert {p.name for p in hp.space} == {p.name for p in sp}
    lr = next(p for p in hp.space if p.name == "learning_rate")
    assert lr.sampling == "log" and lr.min_value == 1e-4


def test_resolve_order_is_defaults_then_tuned_then_overrides():
    sp = models.get("mlp").SPACE
    got = space.resolve(sp, {"units": 64, "num_layers": 3, "tuner/epochs": 2}, {"num_layers": 1})
    assert got["units"] == 64 and got["num_layers"] == 1 and "tuner/epochs" not in got
    assert got["dropout"] == space.defaults(sp)["dropout"]


@pytest.mark.parametrize("name", TABULAR)
def test_builders_make_models_of_the_right_output_and_layers(name):
    import keras

    fam = models.get(name)
    hp = {**space.defaults(fam.SPACE), "batch_norm": True, "dropout": 0.2}
    model = fam.build(FEATURES, BINARY, hp)
    batch = {"x": np.zeros((3, 1), "float32"), "cat": np.array([0, 1, 4]), "big": np.array([3, 49, 0]),
             "words": np.array([[1, 2, 0, 0]] * 3)}
    out = model(batch)
    assert tuple(out.shape) == (3, 1)
    assert np.all((np.asarray(out) > 0) & (np.asarray(out) < 1))
    kinds = {type(layer) for layer in model.layers}
    assert keras.layers.BatchNormalization in kinds and keras.layers.Dropout in kinds
    assert any(isinstance(layer, keras.layers.Embedding) for layer in model.layers)

    multi = fam.build(FEATURES, {"type": "multiclass", "vocabulary": ["a", "b", "c"]}, hp)
    assert tuple(multi(batch).shape) == (3, 3)
    assert np.allclose(np.asarray(multi(batch)).sum(axis=1), 1.0, atol=1e-5)


def test_mlp_depth_and_width_follow_the_hyperparameters():
    import keras

    fam = models.get("mlp")
    hp = {**space.defaults(fam.SPACE), "num_layers": 3, "units": 32, "batch_norm": False, "dropout": 0.0}
    model = fam.build(FEATURES, BINARY, hp)
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert [d.units for d in dense] == [32, 32, 32, 1]
    assert not any(isinstance(layer, (keras.layers.Dropout, keras.layers.BatchNormalization)) for layer in model.layers)


# ------------------------------------------------------------------ config load
@pytest.mark.parametrize("override, key, fragment", [
    ("train.model=transformerx", "train.model", f"unknown model 'transformerx'; known models: {KNOWN}"),
    ("train.hyperparameters={units: 7}", "train.hyperparameters", "'units' must be one of"),
    ("train.hyperparameters={learning_rate: -0.1}", "train.hyperparameters", "'learning_rate' must be in"),
    ("train.hyperparameters={deep_units: 64}", "train.hyperparameters", "'deep_units' is not a hyperparameter"),
    ("train.optimizer=adagrad", "train.optimizer", "'adam', 'adamw', 'sgd' or 'rmsprop'"),
    ("train.lr_schedule=linear", "train.lr_schedule", "cosine"),
    ("train.epochs=0", "train.epochs", "greater than or equal to 1"),
    ("train.clipnorm=-1", "train.clipnorm", "greater than 0"),
    ("train.class_weights={'>50K': 0}", "train.class_weights", "must be > 0"),
    ("tune.tuner=grid", "tune.tuner", "'random', 'bayesian' or 'hyperband'"),
    ("tune.max_seconds=0", "tune.max_seconds", "greater than 0"),
    ("transform.features={age: {kinds: [scale]}}", "transform.features.age.kinds.0", "normalize"),
    ("transform.label_vocabulary=[a]", "transform.label_vocabulary", "at least two distinct"),
])
def test_bad_modeling_config_is_rejected_at_load_naming_the_key(override, key, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert f"key {key!r}" in str(err.value)
    assert fragment in str(err.value)


def test_valid_overrides_load_and_hyperparameters_follow_the_model():
    cfg = load_config(None, ["train.model=wide_deep", "train.hyperparameters={deep_units: 64, dropout: 0.2}"])
    assert cfg.stage("train").model == "wide_deep" and cfg.stage("train").hyperparameters == {"deep_units": 64, "dropout": 0.2}


def test_loading_the_config_does_not_import_tensorflow():
    code = ("import sys; from kfx.pipeline.config import load_config; c = load_config(None, ['train.model=wide_deep']);"
            "print('tensorflow' in sys.modules, 'keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(__import__("pathlib").Path(__file__).resolve().parents[2]))
    assert out.stdout.split() == ["False", "False"]
