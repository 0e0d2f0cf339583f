"""What the reconstruction families share (models/autoencoder.py, denoising_autoencoder.py, vae.py).

The model reconstructs its transformed input `x` and outputs one anomaly score per row, which is
also its training loss (models/tasks/anomaly.py): the trainer model is inputs -> score.
  * `x`: with the conv architecture, the one image feature [N, h, w, c]; with the dense
    architecture, every feature flattened and concatenated [N, D] (numbers as transformed,
    category ids one-hot, images flattened). Token sequences cannot be reconstructed.
  * `architecture` auto: conv for a single image feature, dense otherwise.
  * dense: `layers` Dense layers of `units`, `units/2`, ... down to the `latent_dim` code and
    back up (mirrored); conv: `layers` stride-2 3x3 Conv2D blocks of `filters`, `2 * filters`,
    ... then a Dense code, mirrored by Conv2DTranspose blocks (cropped back to h x w).
The encoder and decoder are keras sub-models named "encoder" and "decoder", so a family can
export the decoder alone (the VAE's noise -> images signature).
"""
from __future__ import annotations

import math

from kfx.models.kinds.base import DENSE, IDS, IMAGE
from kfx.models.space import COMMON, Choice, Int

AUTO, DENSE_ARCH, CONV = "auto", "dense", "conv"
ENCODER, DECODER = "encoder", "decoder"
SPACE = COMMON + (
    Choice("architecture", (AUTO, DENSE_ARCH, CONV), default=AUTO),
    Choice("latent_dim", (2, 4, 8, 16, 32, 64), default=16),
    Int("layers", 1, 3, default=2),
    Choice("units", (64, 128, 256, 512), default=256),
    Choice("filters", (8, 16, 32, 64), default=32),
)


def check_task(task: dict, family: str) -> None:
    """Raises ValueError unless the task scores anomalies (what these families' output is)."""
    from kfx.models import tasks

    if task["type"] != tasks.ANOMALY:
        raise ValueError(f"model {family!r} learns to reconstruct normal rows and outputs an anomaly score: it "
                         f"needs transform.task: {tasks.ANOMALY}, got task {task['type']!r}")


def architecture(features: dict[str, dict], hp: dict, family: str) -> str:
    """conv or dense, from `hp["architecture"]` (auto: conv for one image feature).

    Raises:
        ValueError: conv asked for other features than one image; a feature that cannot be reconstructed.
    """
    bad = {k: v["kind"] for k, v in sorted(features.items()) if v["kind"] not in (DENSE, IDS, IMAGE)}
    if bad:
        raise ValueError(f"model {family!r} reconstructs numbers, categories and images; features {bad} cannot be")
    one_image = len(features) == 1 and next(iter(features.values()))["kind"] == IMAGE
    if hp["architecture"] == CONV and not one_image:
        raise ValueError(f"model {family!r}: architecture conv needs exactly one image feature; got "
                         f"{ {k: v['kind'] for k, v in sorted(features.items())} }")
    return CONV if hp["architecture"] == CONV or (hp["architecture"] == AUTO and one_image) else DENSE_ARCH


def reconstructed(inputs_: dict, features: dict[str, dict], arch: str):
    """The tensor the model reconstructs (`x`, see the module doc)."""
    import keras

    from kfx.models import tabular

    if arch == CONV:
        return inputs_[next(iter(features))]
    parts = []
    for name, spec in sorted(features.items()):
        x = inputs_[name]
        if spec["kind"] == IDS:
            x = keras.layers.CategoryEncoding(spec["cardinality"], output_mode="one_hot", name=f"{name}_onehot")(x)
        elif spec["kind"] == IMAGE:
            x = keras.layers.Flatten(name=f"{name}_flat")(x)
        parts.append(x)
    return tabular.concat(parts, "reconstructed")


def layout(features: dict[str, dict]) -> list[tuple[str, int, list[int] | None]]:
    """(feature, width in the dense `x`, image shape or None) in `x`'s order."""
    out = []
    for name, spec in sorted(features.items()):
        if spec["kind"] == IMAGE:
            out.append((name, math.prod(spec["shape"]), list(spec["shape"])))
        else:
            out.append((name, spec["cardinality"] if spec["kind"] == IDS else spec["width"], None))
    return out


def encoder(x_shape: tuple, arch: str, hp: dict, heads: int = 1):
    """keras.Model "encoder": x -> code [N, latent_dim] (`heads` of them: the VAE's mean and log-variance)."""
    import keras

    x_in = keras.Input(shape=x_shape, name="x")
    h = x_in
    if arch == CONV:
        for b in range(hp["layers"]):
            h = keras.layers.Conv2D(hp["filters"] * 2 ** b, 3, strides=2, padding="same", activation="relu",
                                    name=f"enc_conv{b}")(h)
        h = keras.layers.Flatten(name="enc_flat")(h)
    else:
        for i in range(hp["layers"]):
            h = keras.layers.Dense(max(hp["units"] // 2 ** i, hp["latent_dim"]), activation="relu",
                                   name=f"enc_dense{i}")(h)
    codes = [keras.layers.Dense(hp["latent_dim"], name=f"code{k}")(h) for k in range(heads)]
    return keras.Model(x_in, codes if heads > 1 else codes[0], name=ENCODER)


def decoder(x_shape: tuple, arch: str, hp: dict):
    """keras.Model "decoder": code [N, latent_dim] -> reconstruction shaped as x (linear output)."""
    import keras

    z = keras.Input(shape=(hp["latent_dim"],), name="code")
    if arch == CONV:
        h_out, w_out, c = x_shape
        n = hp["layers"]
        h0, w0 = _shrunk(h_out, n), _shrunk(w_out, n)
        top = hp["filters"] * 2 ** (n - 1)
        h = keras.layers.Dense(h0 * w0 * top, activation="relu", name="dec_dense")(z)
        h = keras.layers.Reshape((h0, w0, top), name="dec_reshape")(h)
        for b in reversed(range(n)):
            h = keras.layers.Conv2DTranspose(hp["filters"] * 2 ** b, 3, strides=2, padding="same",
                                             activation="relu", name=f"dec_deconv{b}")(h)
        h = keras.layers.Conv2D(c, 3, padding="same", name="dec_out")(h)
        extra_h, extra_w = h0 * 2 ** n - h_out, w0 * 2 ** n - w_out
        if extra_h or extra_w:  # odd sizes were rounded up on the way down
            h = keras.layers.Cropping2D(((0, extra_h), (0, extra_w)), name="dec_crop")(h)
        return keras.Model(z, h, name=DECODER)
    h = z
    for i in reversed(range(hp["layers"])):
        h = keras.layers.Dense(max(hp["units"] // 2 ** i, hp["latent_dim"]), activation="relu",
                               name=f"dec_dense{i}")(h)
    return keras.Model(z, keras.layers.Dense(x_shape[0], name="dec_out")(h), name=DECODER)


def _shrunk(size: int, blocks: int) -> int:
    for _ in range(blocks):
        size = math.ceil(size / 2)
    return size


def squared_error(x, x_hat, reduce: str = "mean"):
    """Per row: the mean (or sum) over all but the batch axis of (x - x_hat)^2."""
    import keras

    axes = tuple(range(1, len(x.shape)))
    err = keras.ops.square(x - x_hat)
    return keras.ops.mean(err, axis=axes) if reduce == "mean" else keras.ops.sum(err, axis=axes)


def prepare(features: dict[str, dict], task: dict, hp: dict, family: str) -> tuple:
    """(keras inputs, x, x's shape per row, architecture) of a reconstruction model.

    Raises:
        ValueError: the task is not anomaly, or a feature cannot be reconstructed.
    """
    from kfx.models import modality

    check_task(task, family)
    arch = architecture(features, hp, family)
    inp = modality.inputs(features)
    x = reconstructed(inp, features, arch)
    return inp, x, tuple(x.shape[1:]), arch


def model(features: dict[str, dict], task: dict, hp: dict, family: str, noise=None):
    """The autoencoder: inputs -> [noise, training only] -> encoder -> decoder -> mean squared error
    against the clean input, the task's output (score per row).

    Args:
        noise: a layer corrupting x during training only (the denoising autoencoder), or None.
    """
    import keras

    from kfx.models import tasks

    inp, x, shape, arch = prepare(features, task, hp, family)
    seen = noise(x) if noise is not None else x
    x_hat = decoder(shape, arch, hp)(encoder(shape, arch, hp)(seen))
    return keras.Model(inp, tasks.of(task).output(squared_error(x, x_hat)), name=family)
