"""models/ image and sequence families (cnn, resnet, rnn, lstm, gru, bilstm, cnn1d, transformer):
registry and spaces, the layers each is made of, training from the space's defaults on tiny
synthetic features with each task that fits the modality, and export -> reload giving the same
outputs; plus the errors for features a family cannot read."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from kfx import models
from kfx.models import space, tasks

IMAGE_FAMILIES = ["cnn", "resnet"]
SEQUENCE_FAMILIES = ["rnn", "lstm", "gru", "bilstm", "cnn1d", "transformer"]
FAMILIES = IMAGE_FAMILIES + SEQUENCE_FAMILIES
ROWS, LENGTH, VOCAB = 64, 10, 30

# Feature sets by modality; each has a side feature, encoded as the tabular families do.
IMAGES = {"pixels": {"kind": "image", "shape": [8, 8, 1]},
          "source": {"kind": "ids", "cardinality": 3, "encoding": "embed"}}
TEXT = {"review": {"kind": "sequence", "cardinality": VOCAB, "length": LENGTH}}
WINDOWS = {"co2": {"kind": "window", "length": 12, "channels": 1},
           "week": {"kind": "dense", "width": 2}}


def task_info(kind: str, labels: np.ndarray) -> dict:
    """The task description the transform would write for `labels` (plan, then label analysis)."""
    if kind == tasks.REGRESSION:
        v = labels.astype(np.float64)
        statistic = [len(v), v.mean(), ((v - v.mean()) ** 2).sum(), v.min(), v.max()]
        return tasks.of(tasks.get(kind).plan("target", "float32", None)).analyze_label(statistic)[0]
    values, counts = np.unique(labels, return_counts=True)
    return tasks.of(tasks.get(kind).plan("target", "string", None)).analyze_label(
        {v.encode(): int(c) for v, c in zip(values, counts)})[0]


def synthetic(features: dict[str, dict], rows: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random transformed features; token sequences are padded with 0 and the first row is all padding."""
    out = {}
    for name, spec in features.items():
        kind = spec["kind"]
        if kind == "image":
            out[name] = rng.random((rows, *spec["shape"]), dtype=np.float32)
        elif kind == "sequence":
            ids = rng.integers(1, spec["cardinality"], (rows, spec["length"]))
            lengths = rng.integers(1, spec["length"] + 1, rows)
            ids[np.arange(spec["length"]) >= lengths[:, None]] = 0
            ids[0] = 0  # an empty text: masked pooling must not divide by zero
            out[name] = ids.astype(np.int64)
        elif kind == "window":
            t = np.arange(spec["length"])[None, :, None]
            out[name] = (np.sin(t / 3.0 + rng.random((rows, 1, spec["channels"])) * 6)).astype(np.float32)
        elif kind == "dense":
            out[name] = rng.normal(size=(rows, spec["width"])).astype(np.float32)
        else:
            out[name] = rng.integers(0, spec["cardinality"], rows).astype(np.int64)
    return out


# family, features, task: images -> multiclass, text -> binary, windows -> regression.
CASES = ([(f, "images", tasks.MULTICLASS) for f in IMAGE_FAMILIES]
         + [(f, "text", tasks.BINARY) for f in SEQUENCE_FAMILIES]
         + [(f, "windows", tasks.REGRESSION) for f in SEQUENCE_FAMILIES])
FEATURE_SETS = {"images": IMAGES, "text": TEXT, "windows": WINDOWS}


def labels_for(task: str, x: dict, rng: np.random.Generator) -> np.ndarray:
    if task == tasks.REGRESSION:
        return 400.0 + 10.0 * x["co2"][:, -1, 0] + rng.normal(scale=0.1, size=len(x["co2"]))
    classes = ["fresh", "rotten"] if task == tasks.BINARY else ["0", "1", "2"]
    return np.array([classes[i % len(classes)] for i in range(ROWS)], dtype=object)


@pytest.mark.parametrize("name", FAMILIES)
def test_registry_finds_the_family_and_its_space_defaults_are_valid(name):
    fam = models.get(name)
    assert fam.__name__ == f"kfx.models.{name}"
    values = space.defaults(fam.SPACE)
    assert space.check(fam.SPACE, values) == []
    assert 0 < values["learning_rate"] < 1
    assert len({p.name for p in fam.SPACE}) == len(fam.SPACE), "duplicate hyperparameter names"


def test_all_families_are_registered_under_their_names():
    assert set(FAMILIES) <= set(models.names())


def test_family_modules_import_without_tensorflow():
    # The config loader reads SPACE from these modules: importing them must stay cheap.
    code = ("import sys, importlib; [importlib.import_module('kfx.models.' + n) for n in %r];"
            "print('tensorflow' in sys.modules, 'keras' in sys.modules)" % FAMILIES)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.parametrize("name, features, task", CASES)
def test_family_trains_exports_and_reloads_with_the_same_outputs(name, features, task, tmp_path):
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    feats = FEATURE_SETS[features]
    x = synthetic(feats, ROWS, rng)
    y = labels_for(task, x, rng)
    info = task_info(task, y)
    fam = models.get(name)
    hp = space.defaults(fam.SPACE)
    model = fam.build(feats, info, hp)
    loss, metrics = tasks.of(info).compile_args()
    # Eager steps: tracing (or XLA-compiling) the train step of each tiny model takes longer than
    # its two batches; the forward graph is still traced, by the export below.
    model.compile(optimizer=keras.optimizers.Adam(hp["learning_rate"]), loss=loss, metrics=metrics,
                  run_eagerly=True)
    target = np.asarray(tasks.of(info).target()(tf.constant(list(y) if task != tasks.REGRESSION else y)))
    before = [w.copy() for w in model.get_weights()]

    history = model.fit(x, target, batch_size=32, epochs=1, verbose=0)

    assert np.isfinite(history.history["loss"][-1])
    out = np.asarray(model(x, training=False))
    assert np.all(np.isfinite(out)), "the all-padding row (or any row) gave a non-finite output"
    assert any(not np.allclose(a, b) for a, b in zip(before, model.get_weights())), "training changed nothing"
    if task == tasks.MULTICLASS:
        assert out.shape == (ROWS, 3) and np.allclose(out.sum(axis=1), 1.0, atol=1e-5)
    elif task == tasks.BINARY:
        assert out.shape == (ROWS, 1) and np.all((out > 0) & (out < 1))
    else:
        assert out.shape == (ROWS, 1)

    model.export(str(tmp_path / "model"), verbose=False)
    reloaded = tf.saved_model.load(str(tmp_path / "model"))
    served = reloaded.serve({k: tf.constant(v) for k, v in x.items()})
    assert np.allclose(np.asarray(served), out, atol=1e-5)


@pytest.mark.parametrize("name, layer", [
    ("cnn", "Conv2D"), ("resnet", "BatchNormalization"), ("rnn", "SimpleRNN"), ("lstm", "LSTM"),
    ("gru", "GRU"), ("bilstm", "Bidirectional"), ("cnn1d", "Conv1D"), ("transformer", "MultiHeadAttention")])
def test_family_is_made_of_its_layers_and_side_features_join_before_the_head(name, layer):
    import keras

    fam = models.get(name)
    feats = IMAGES if name in IMAGE_FAMILIES else {**TEXT, **WINDOWS}
    model = fam.build(feats, {"type": "binary", "vocabulary": ["no", "yes"]}, space.defaults(fam.SPACE))
    kinds = {type(lyr).__name__ for lyr in model.layers}
    assert layer in kinds
    assert isinstance(model.input, dict) and sorted(model.input) == sorted(feats)
    concat = model.get_layer(f"{name}_features")
    assert isinstance(concat, keras.layers.Concatenate)
    if name == "bilstm":
        assert all(type(lyr.forward_layer).__name__ == "LSTM" for lyr in model.layers
                   if isinstance(lyr, keras.layers.Bidirectional))
    if name == "resnet":
        assert any(isinstance(lyr, keras.layers.Add) for lyr in model.layers)


def test_depth_follows_the_hyperparameters():
    import keras

    fam = models.get("resnet")
    hp = {**space.defaults(fam.SPACE), "stages": 3, "blocks_per_stage": 2, "width": 8}
    model = fam.build(IMAGES, {"type": "binary", "vocabulary": ["no", "yes"]}, hp)
    convs = [lyr for lyr in model.layers if isinstance(lyr, keras.layers.Conv2D)]
    # stem + 3 stages x 2 blocks x 2 convs + a 1x1 shortcut into each of stages 2 and 3
    assert len(convs) == 1 + 3 * 2 * 2 + 2
    assert max(c.filters for c in convs) == 8 * 4

    fam = models.get("lstm")
    hp = {**space.defaults(fam.SPACE), "num_layers": 2, "units": 16}
    model = fam.build(TEXT, {"type": "binary", "vocabulary": ["no", "yes"]}, hp)
    lstms = [lyr for lyr in model.layers if isinstance(lyr, keras.layers.LSTM)]
    assert [(lyr.units, lyr.return_sequences) for lyr in lstms] == [(16, True), (16, False)]


@pytest.mark.parametrize("name, features, fragment", [
    ("cnn", TEXT, "model 'cnn' needs at least one feature of kind 'image'; got {'review': 'sequence'}"),
    ("resnet", WINDOWS, "model 'resnet' needs at least one feature of kind 'image'"),
    ("lstm", IMAGES, "model 'lstm' needs at least one feature of kind 'sequence' or 'window'"),
    ("transformer", {"x": {"kind": "dense", "width": 3}}, "model 'transformer' needs at least one feature"),
    ("cnn", {**IMAGES, **WINDOWS}, "model 'cnn': features ['co2'] of kind ['window'] cannot be used"),
])
def test_features_a_family_cannot_read_are_rejected_naming_them(name, features, fragment):
    with pytest.raises(ValueError) as err:
        models.get(name).build(features, {"type": "binary", "vocabulary": ["no", "yes"]},
                               space.defaults(models.get(name).SPACE))
    assert fragment in str(err.value)


def test_layer_and_cell_settings_are_validated_repeating_the_value():
    from kfx.models import layers, recurrent

    with pytest.raises(ValueError, match="cell must be one of .*got 'LSTMCell'"):
        recurrent.build_family("x", "LSTMCell", False, TEXT, {"type": "binary", "vocabulary": ["a", "b"]},
                               space.defaults(recurrent.SPACE))
    with pytest.raises(ValueError, match="max_length must be a positive integer, got 0"):
        layers.PositionEmbedding(0)
    with pytest.raises(ValueError, match="sequences of length 12 exceed max_length 10"):
        layers.PositionEmbedding(10)(np.zeros((2, 12, 4), "float32"))


def test_masked_mean_ignores_padding_and_gives_zeros_for_empty_rows():
    from kfx.models import layers

    steps = np.array([[[1.0], [3.0], [100.0]], [[5.0], [7.0], [9.0]]], "float32")
    mask = np.array([[True, True, False], [False, False, False]])
    assert np.allclose(np.asarray(layers.MaskedMean()(steps, mask=mask)), [[2.0], [0.0]])
    assert np.allclose(np.asarray(layers.MaskedMean()(steps)), [[104 / 3], [7.0]])


def test_config_load_checks_a_family_s_hyperparameters_against_its_space():
    from kfx.pipeline.config import ConfigError, load_config

    cfg = load_config(None, ["train.model=transformer", "train.hyperparameters={num_heads: 4, model_dim: 64}"])
    assert cfg.stage("train").hyperparameters == {"num_heads": 4, "model_dim": 64}
    with pytest.raises(ConfigError) as err:
        load_config(None, ["train.model=lstm", "train.hyperparameters={units: 48}"])
    assert "'units' must be one of [16, 32, 64, 128], got 48" in str(err.value)
