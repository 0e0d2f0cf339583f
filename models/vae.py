"""vae: a variational autoencoder; the negative ELBO of a row scores how anomalous it is.

The encoder (models/reconstruction.py, dense or convolutional) gives the mean and log-variance
of q(z|x); a code is drawn by reparameterisation while training (the mean at inference, so the
served score is deterministic) and decoded; the model outputs, per row, the negative ELBO
sum((x - x_hat)^2) / (2 * observation_std^2) + KL(q(z|x) || N(0, I)): the training loss on
normal rows and the anomaly task's score (models/tasks/anomaly.py).

Besides the task's signatures, the export has `decode`: `noise` [N, latent_dim] (draws of
N(0, I)) -> `decoded` (in transformed units, shaped as the reconstructed input) and, when an
image feature is reconstructed, `images` [N, h, w, c] of the first one in its pixel units.
Evaluate draws 64 of them in the report (components/evaluation/decoded.py).
"""
from __future__ import annotations

from kfx.models import reconstruction
from kfx.models.space import Float

DECODE, NOISE, DECODED, IMAGES = "decode", "noise", "decoded", "images"
SPACE = reconstruction.SPACE + (
    Float("observation_std", 0.02, 1.0, default=0.1, sampling="log"),
)


def build(features: dict[str, dict], task: dict, hp: dict):
    """The VAE for `features` sized by `hp` (SPACE's names).

    Raises:
        ValueError: the task is not anomaly, or a feature cannot be reconstructed.
    """
    import keras

    from kfx.models import tasks
    from kfx.models.reconstruction_layers import Sampling, negative_elbo

    inp, x, shape, arch = reconstruction.prepare(features, task, hp, "vae")
    mean, log_var = reconstruction.encoder(shape, arch, hp, heads=2)(x)
    x_hat = reconstruction.decoder(shape, arch, hp)(Sampling(name="sampling")([mean, log_var]))
    score = negative_elbo(x, x_hat, mean, log_var, hp["observation_std"])
    return keras.Model(inp, tasks.of(task).output(score), name="vae")


def signatures(model, spec: dict) -> dict:
    """The `decode` endpoint: noise -> decoded rows (and images in pixel units)."""
    import tensorflow as tf

    from kfx.models.kinds.base import IMAGE

    dec = model.get_layer(reconstruction.DECODER)
    latent = int(dec.inputs[0].shape[-1])
    features = spec["outputs"]
    states = {t["output"]: t["state"] for t in spec["transforms"]}
    offset, image = 0, None
    for name, width, shape in reconstruction.layout(features):
        if shape is not None and features[name]["kind"] == IMAGE:
            image = (name, offset, width, shape)
            break
        offset += width

    def decode(noise):
        x_hat = tf.cast(dec(noise, training=False), tf.float32)
        out = {DECODED: x_hat}
        if image is not None:
            name, start, width, shape = image
            rows = x_hat if len(x_hat.shape) == 4 else tf.reshape(x_hat[:, start:start + width], [-1, *shape])
            state = states.get(name, {})
            out[IMAGES] = rows * state.get("std", 1.0) + state.get("mean", 0.0)
        return out

    return {DECODE: (decode, [tf.TensorSpec([None, latent], tf.float32, name=NOISE)])}
