"""Image augmentation for training only: Keras random preprocessing layers on image features.

`train.augmentation` (pipeline/config_modeling.py `Augmentation`) lists the transformations;
`augmenter` turns it into one function over a batch of transformed features that applies them,
in training mode, to every image feature ({"kind": "image"}: float32 [N, h, w, c]) and passes the
others through. Train and tune map it over the training tf.data pipeline only (after the cache,
so every epoch sees new draws); the model itself never contains these layers, so evaluation,
the eval split and the exported SavedModel see the images unchanged.

Pixels are already scaled by the transform (e.g. to [0, 1] or to zero mean), so the geometric
layers fill the pixels they uncover with the nearest edge pixel (the background for centred
objects such as digits) and contrast is not clipped to a pixel range.
"""
from __future__ import annotations

from typing import Callable

from kfx.models.kinds.base import IMAGE

FILL_MODE = "nearest"
# The layers run in the tf.data pipeline on the transform's float32 features: they must not take
# the global mixed_float16 policy that train may have set by the time they are built.
DTYPE = "float32"


def layers(cfg, seed: int = 42) -> list:
    """The Keras layers of an augmentation config, in a fixed order (none for an empty config).

    Args:
        cfg: an `Augmentation` section (translation, rotation, zoom, flip, contrast).
        seed: base seed; each layer gets its own.
    """
    import keras

    out = []
    if cfg.translation:
        out.append(keras.layers.RandomTranslation(cfg.translation, cfg.translation, fill_mode=FILL_MODE,
                                                  seed=seed, name="augment_translation", dtype=DTYPE))
    if cfg.rotation:
        out.append(keras.layers.RandomRotation(cfg.rotation, fill_mode=FILL_MODE, seed=seed + 1,
                                               name="augment_rotation", dtype=DTYPE))
    if cfg.zoom:
        out.append(keras.layers.RandomZoom(cfg.zoom, fill_mode=FILL_MODE, seed=seed + 2, name="augment_zoom",
                                    dtype=DTYPE))
    if cfg.flip != "none":
        out.append(keras.layers.RandomFlip(cfg.flip, seed=seed + 3, name="augment_flip", dtype=DTYPE))
    if cfg.contrast:
        out.append(keras.layers.RandomContrast(cfg.contrast, value_range=(float("-inf"), float("inf")),
                                               seed=seed + 4, name="augment_contrast", dtype=DTYPE))
    return out


def augmenter(cfg, features: dict[str, dict], seed: int = 42) -> Callable | None:
    """features dict -> features dict with every image feature augmented (training mode).

    Args:
        cfg: an `Augmentation` section, or None.
        features: the transform's output descriptions (transform.json "outputs").
        seed: base seed of the random layers.

    Returns:
        The function, or None when there is nothing to do (no config, no transformation or no
        image feature).
    """
    images = sorted(k for k, v in features.items() if v["kind"] == IMAGE)
    steps = layers(cfg, seed) if cfg is not None and images else []
    if not steps:
        return None

    def augment(batch: dict) -> dict:
        out = dict(batch)
        for name in images:
            x = out[name]
            for layer in steps:
                x = layer(x, training=True)
            out[name] = x
        return out

    return augment
