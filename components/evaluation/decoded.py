"""Images a model decodes from noise, for the evaluation report: the VAE's `decode` signature
(models/vae.py) on a fixed draw of N(0, I) noise, drawn as a grid. Stored in evaluation.json as
base64 PNGs (as components/evaluation/samples.py stores sample images) so the report renders
from that file alone. Models without the signature have none.
"""
from __future__ import annotations

import base64

import numpy as np

SAMPLES, SEED = 64, 0


def decoded_samples(model_uri: str, n: int = SAMPLES, seed: int = SEED) -> dict | None:
    """`n` images the model's `decode` signature makes of seeded N(0, I) noise, or None without one.

    Returns:
        {"signature", "seed", "latent_dim", "rows": [{"mime", "data" (base64 PNG)}]}.
    """
    import tensorflow as tf

    from kfx.models.vae import DECODE, IMAGES, NOISE
    from kfx.pipeline.artifacts.scoring import input_specs, load

    if DECODE not in _signature_names(model_uri):  # read from saved_model.pb: no model load for the others
        return None
    fn = load(model_uri).signatures[DECODE]
    if IMAGES not in fn.structured_outputs:
        return None
    latent = int(input_specs(fn)[NOISE].shape[-1])
    noise = np.random.default_rng(seed).standard_normal((n, latent)).astype(np.float32)
    pixels = np.clip(np.round(fn(**{NOISE: tf.constant(noise)})[IMAGES].numpy()), 0, 255).astype(np.uint8)
    rows = [{"mime": "image/png", "data": base64.b64encode(tf.io.encode_png(p).numpy()).decode("ascii")}
            for p in pixels]
    return {"signature": DECODE, "seed": seed, "latent_dim": latent, "rows": rows}


def _signature_names(model_uri: str) -> set[str]:
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(f"{model_uri}/saved_model.pb", "rb") as f:
        sm.ParseFromString(f.read())
    return {name for graph in sm.meta_graphs for name in graph.signature_def}


def render(decoded: dict) -> str:
    """The report section: the decoded images as a grid."""
    from kfx.components.evaluation.samples import image_figure

    cells = [image_figure(r, f"decoded sample {i}") for i, r in enumerate(decoded["rows"])]
    return (f"<h2>Decoded samples</h2><p>{len(cells)} images the <b>{decoded['signature']}</b> signature makes "
            f"of random codes (N(0, I) in {decoded['latent_dim']} dimensions, seed {decoded['seed']}).</p>"
            f"<div class='samples decoded'>{''.join(cells)}</div>")
