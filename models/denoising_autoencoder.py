"""denoising_autoencoder: an autoencoder that reconstructs the clean input from a corrupted one.

During training only, the encoder sees the transformed input with Gaussian noise (`noise`
gaussian, standard deviation `noise_level` in transformed units) or with a random share
`noise_level` of its values set to 0 (`noise` masking); the error is measured against the clean
input. At inference nothing is corrupted, so the score is the plain reconstruction error
(models/reconstruction.py, models/autoencoder.py).
"""
from __future__ import annotations

from kfx.models import reconstruction
from kfx.models.space import Choice, Float

GAUSSIAN, MASKING = "gaussian", "masking"  # models/reconstruction_layers.py InputNoise
SPACE = reconstruction.SPACE + (
    Choice("noise", (GAUSSIAN, MASKING), default=GAUSSIAN),
    Float("noise_level", 0.0, 0.8, default=0.3),
)


def build(features: dict[str, dict], task: dict, hp: dict):
    """The denoising autoencoder for `features` sized by `hp` (SPACE's names).

    Raises:
        ValueError: the task is not anomaly, or a feature cannot be reconstructed.
    """
    from kfx.models.reconstruction_layers import InputNoise

    return reconstruction.model(features, task, hp, "denoising_autoencoder",
                                noise=InputNoise(hp["noise"], hp["noise_level"], name="input_noise"))
