"""Inputs and shared layers of the image and sequence families (models/cnn.py, resnet.py,
recurrent.py, cnn1d.py, transformer.py).

A family of this kind learns from its *main* features and encodes any other feature as the
tabular families do (models/tabular.py `encode`), concatenated before the head:
  * image families: main features are {"kind": "image", "shape": [h, w, c]}, float32 [N, h, w, c];
  * sequence families: main features are token sequences {"kind": "sequence", "cardinality": n,
    "length": L}, int64 [N, L] with 0 = padding, which the family embeds, and numeric windows
    {"kind": "window", "length": L, "channels": c}, float32 [N, L, c] (a time series' last L
    steps, c values per step), which the family reads as they are. Axis 1 is the time axis of
    both. A window of one value per step has channels 1: [N, L, 1], not a dense [N, L].
Each main feature gets its own tower (same architecture, own weights); the towers' vectors are
concatenated.
"""
from __future__ import annotations

from kfx.models.kinds.base import DENSE, IDS, IMAGE, SEQUENCE

WINDOW = "window"  # numeric window feature: float32 [N, length, channels]
IMAGE_KINDS = (IMAGE,)
SEQUENCE_KINDS = (SEQUENCE, WINDOW)
# Width of learned embeddings for side features (ids, token sequences beside an image): they
# are auxiliary here, so their width is fixed (the mlp's default) rather than tuned.
SIDE_EMBEDDING_DIM = 8


def inputs(features: dict[str, dict]) -> dict:
    """One keras.Input per feature, named after it: windows here, the others by tabular.inputs."""
    import keras

    from kfx.models import tabular

    out = tabular.inputs({k: v for k, v in features.items() if v["kind"] != WINDOW})
    for name, spec in sorted(features.items()):
        if spec["kind"] == WINDOW:
            out[name] = keras.Input(shape=(spec["length"], spec.get("channels", 1)), dtype="float32", name=name)
    return dict(sorted(out.items()))


def main_features(features: dict[str, dict], kinds: tuple[str, ...], family: str) -> list[str]:
    """Names of the features of `kinds` (sorted), the ones the family's towers read.

    Raises:
        ValueError: no feature of those kinds; the message names the family and the kinds received.
    """
    names = sorted(k for k, v in features.items() if v["kind"] in kinds)
    if not names:
        got = {k: v["kind"] for k, v in sorted(features.items())}
        raise ValueError(f"model {family!r} needs at least one feature of kind {' or '.join(map(repr, kinds))}; "
                         f"got {got}")
    return names


def head_input(towers: list, inputs_: dict, features: dict[str, dict], main: list[str], name: str):
    """The towers' vectors and every other feature encoded as tabular.encode does, concatenated."""
    from kfx.models import tabular

    others = {k: v for k, v in features.items() if k not in main}
    side = {k: v for k, v in others.items() if v["kind"] in (DENSE, IDS, SEQUENCE, IMAGE)}
    unknown = sorted(set(others) - set(side))
    if unknown:
        raise ValueError(f"model {name!r}: features {unknown} of kind "
                         f"{sorted({others[k]['kind'] for k in unknown})} cannot be used beside its main features")
    deep, _ = tabular.encode(inputs_, side, SIDE_EMBEDDING_DIM)
    return tabular.concat(towers + deep, f"{name}_features")


def embed_steps(x, spec: dict, name: str, dim: int, mask: bool):
    """A main sequence feature as float steps [N, L, d]: token ids embedded (`dim` wide, padding
    masked when `mask`), a numeric window as it is [N, L, c]."""
    import keras

    if spec["kind"] == SEQUENCE:
        return keras.layers.Embedding(spec["cardinality"], dim, mask_zero=mask, name=f"{name}_embedding")(x)
    return x

