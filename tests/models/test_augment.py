"""models/augment.py: the training-only image augmentation changes image features (new draws
every epoch, other features untouched, scaled pixels not clipped), does nothing without a
transformation or an image feature, and a bad `train.augmentation` fails at config load naming
the key and the value."""
from __future__ import annotations

import numpy as np
import pytest

from kfx.pipeline.config_modeling import Augmentation

FEATURES = {"pixels": {"kind": "image", "shape": [8, 8, 1]}, "size": {"kind": "dense", "width": 1}}
ALL = {"translation": 0.2, "rotation": 0.1, "zoom": 0.2, "flip": "horizontal", "contrast": 0.3}


def _batches(augment, x: np.ndarray, side: np.ndarray, epochs: int = 2) -> list[dict]:
    """The first batch of each epoch of a tf.data pipeline mapped as train maps it."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices(({"pixels": x, "size": side}, np.zeros(len(x)))).batch(len(x))
    ds = ds.map(lambda f, y: (augment(f), y))
    return [{k: v.numpy() for k, v in next(iter(ds))[0].items()} for _ in range(epochs)]


def _images(rows: int = 8) -> np.ndarray:
    # Zero-mean scaled pixels (as the transform's mean/std scaling gives): negative values included.
    return np.random.default_rng(0).normal(size=(rows, 8, 8, 1)).astype(np.float32)


def test_augmentation_changes_images_every_epoch_and_nothing_else():
    from kfx.models.augment import augmenter

    x, side = _images(), np.arange(8, dtype=np.float32)[:, None]
    first, second = _batches(augmenter(Augmentation(**ALL), FEATURES, seed=1), x, side)
    for got in (first, second):
        assert got["pixels"].shape == x.shape and np.isfinite(got["pixels"]).all()
        assert np.abs(got["pixels"] - x).mean() > 0.1
        np.testing.assert_array_equal(got["size"], side)
    assert not np.allclose(first["pixels"], second["pixels"]), "the same draw in two epochs"
    # Contrast is not clipped to a 0..255 pixel range: scaled pixels keep their sign.
    assert first["pixels"].min() < -0.5


@pytest.mark.parametrize("key", sorted(ALL))
def test_each_transformation_alone_changes_images(key):
    from kfx.models.augment import augmenter, layers

    aug = Augmentation(**{key: ALL[key]})
    assert len(layers(aug)) == 1
    # A vertical stripe pattern that is not symmetric: every transformation moves some pixel.
    x = np.zeros((8, 8, 8, 1), np.float32)
    x[:, :, :3] = 1.0
    x += np.linspace(0, 0.5, 8, dtype=np.float32)[None, :, None, None]
    (got,) = _batches(augmenter(aug, FEATURES, seed=3), x, np.zeros((8, 1), np.float32), epochs=1)
    assert np.abs(got["pixels"] - x).max() > 0.05, f"{key} left every image as it was"


def test_nothing_to_augment_gives_no_function():
    from kfx.models.augment import augmenter

    assert augmenter(None, FEATURES) is None
    assert augmenter(Augmentation(), FEATURES) is None  # every transformation off
    assert augmenter(Augmentation(**ALL), {"size": FEATURES["size"]}) is None  # no image feature


def test_augmentation_stays_float32_under_the_mixed_float16_policy():
    # train sets the global policy before it builds the augmenter; the features stay float32.
    import keras

    from kfx.models.augment import augmenter, layers

    previous = keras.mixed_precision.dtype_policy().name
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        steps = layers(Augmentation(**ALL))
        augment = augmenter(Augmentation(**ALL), FEATURES, seed=1)
    finally:
        keras.mixed_precision.set_dtype_policy(previous)
    assert {layer.compute_dtype for layer in steps} == {"float32"}
    got = _batches(augment, _images(), np.arange(8, dtype=np.float32)[:, None], epochs=1)[0]
    assert got["pixels"].dtype == np.float32


@pytest.mark.parametrize("setting, needle", [
    ("train.augmentation.rotation=2", "key 'train.augmentation.rotation'"),
    ("train.augmentation.zoom=-0.1", "key 'train.augmentation.zoom'"),
    ("train.augmentation.flip=diagonal", "key 'train.augmentation.flip'"),
    ("train.augmentation.shear=0.1", "unknown key 'train.augmentation.shear'"),
])
def test_bad_augmentation_fails_at_load_naming_the_key_and_value(setting, needle):
    from kfx.pipeline.config import ConfigError, load_config

    with pytest.raises(ConfigError) as err:
        load_config(None, [setting])
    assert needle in str(err.value) and setting.split("=", 1)[1] in str(err.value)


def test_augmentation_config_loads():
    from kfx.pipeline.config import load_config

    cfg = load_config(None, ["train.augmentation={translation: 0.1, rotation: 0.05, flip: horizontal}"])
    assert cfg.stage("train").augmentation == Augmentation(translation=0.1, rotation=0.05, flip="horizontal")
    assert load_config(None).stage("train").augmentation is None
