"""components/evaluation/decoded.py: models without a `decode` signature have no decoded samples;
the report section draws every stored image with the shared figure markup of samples.py."""
from __future__ import annotations

import base64

from tests.serving.conftest import build_keras


def test_model_without_decode_signature_has_no_samples(tmp_path):
    from kfx.components.evaluation.decoded import decoded_samples

    assert decoded_samples(build_keras(str(tmp_path / "keras"))) is None


def test_render_draws_each_decoded_image_in_a_grid():
    from kfx.components.evaluation.decoded import render

    png = base64.b64encode(b"\x89PNG\r\n\x1a\nxx").decode()
    html = render({"signature": "decode", "seed": 0, "latent_dim": 16,
                   "rows": [{"mime": "image/png", "data": png}] * 3})
    assert html.count("<figure class='sample ") == 3 and html.count(f"data:image/png;base64,{png}") == 3
    assert "<h2>Decoded samples</h2>" in html and "16 dimensions, seed 0" in html
