"""autoencoder: reconstructs normal rows through a narrow code; the reconstruction error scores anomalies.

Dense (any numbers, categories, images flattened) or convolutional (one image feature), chosen
by the `architecture` hyperparameter (auto: by the feature kinds); see models/reconstruction.py.
The model outputs the mean squared error between the transformed input and its reconstruction,
per row: the training loss on normal rows and the anomaly task's score (models/tasks/anomaly.py).
"""
from __future__ import annotations

from kfx.models import reconstruction

SPACE = reconstruction.SPACE


def build(features: dict[str, dict], task: dict, hp: dict):
    """The autoencoder for `features` sized by `hp` (SPACE's names).

    Raises:
        ValueError: the task is not anomaly, or a feature cannot be reconstructed.
    """
    return reconstruction.model(features, task, hp, "autoencoder")
