"""models/autoencoder.py, denoising_autoencoder.py, vae.py (models/reconstruction.py): the
architecture picked by feature kind, the score as output, noise and sampling in training only,
and the errors for features or tasks they cannot serve."""
from __future__ import annotations

import numpy as np
import pytest

from kfx import models
from kfx.models import space, tasks

TASK = {"type": tasks.ANOMALY, "label": "y", "label_dtype": "int64", "vocabulary": None, "positive": None,
        "normal_values": ["0"], "false_positive_rate": 0.05}
IMAGE = {"image": {"kind": "image", "shape": [7, 7, 1]}}  # odd size: the decoder crops back to 7x7
TABULAR = {"x": {"kind": "dense", "width": 3}, "cat": {"kind": "ids", "cardinality": 4}}
FAMILIES = ["autoencoder", "denoising_autoencoder", "vae"]


def _batch(features: dict, n: int = 6) -> dict:
    rng = np.random.default_rng(0)
    return {k: rng.random((n, *v["shape"])).astype("float32") if v["kind"] == "image" else
            rng.random((n, v["width"])).astype("float32") if v["kind"] == "dense" else rng.integers(0, 4, n)
            for k, v in features.items()}


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("features, conv", [(IMAGE, True), (TABULAR, False)])
def test_score_per_row_deterministic_at_inference_by_architecture(name, features, conv):
    fam = models.get(name)
    model = fam.build(features, TASK, space.defaults(fam.SPACE))
    assert any(layer.name.startswith("enc_conv") for layer in model.get_layer("encoder").layers) == conv
    x = _batch(features)
    score = np.asarray(model(x, training=False))
    assert score.shape == (6,) and np.all(score >= 0)
    np.testing.assert_allclose(np.asarray(model(x, training=False)), score)
    if name != "autoencoder":  # noise (denoising) or sampling (vae) while training only
        assert not np.allclose(np.asarray(model(x, training=True)), score)


def test_autoencoder_score_is_the_mean_squared_reconstruction_error():
    fam = models.get("autoencoder")
    model = fam.build(TABULAR, TASK, {**space.defaults(fam.SPACE), "architecture": "dense"})
    x = _batch(TABULAR)
    inner = np.concatenate([x["cat"][:, None] == np.arange(4), x["x"]], axis=1).astype("float32")  # sorted: cat, x
    x_hat = np.asarray(model.get_layer("decoder")(model.get_layer("encoder")(inner)))
    np.testing.assert_allclose(np.asarray(model(x)), np.mean((inner - x_hat) ** 2, axis=1), rtol=1e-5)


def test_errors_name_the_family_and_the_cause():
    fam = models.get("autoencoder")
    hp = space.defaults(fam.SPACE)
    with pytest.raises(ValueError, match="model 'autoencoder' .* needs transform.task: anomaly, got task 'binary'"):
        fam.build(TABULAR, {**TASK, "type": "binary"}, hp)
    with pytest.raises(ValueError, match=r"features \{'words': 'sequence'\} cannot be"):
        fam.build({"words": {"kind": "sequence", "cardinality": 9, "length": 3}}, TASK, hp)
    with pytest.raises(ValueError, match="architecture conv needs exactly one image feature"):
        fam.build(TABULAR, TASK, {**hp, "architecture": "conv"})


def test_input_noise_rejects_bad_settings():
    from kfx.models.reconstruction_layers import InputNoise

    with pytest.raises(ValueError, match="kind must be gaussian or masking, got 'salt'"):
        InputNoise("salt", 0.1)
    with pytest.raises(ValueError, match=r"level must be in \[0, 1\), got 1.5"):
        InputNoise("masking", 1.5)
