"""mlp: a multilayer perceptron on the transformed features (tabular data)."""
from __future__ import annotations

from kfx.models.space import COMMON, Boolean, Choice, Float, Int

SPACE = COMMON + (
    Int("num_layers", 1, 4, default=2),
    Choice("units", (32, 64, 128, 256), default=128),
    Float("dropout", 0.0, 0.5, default=0.3),
    Boolean("batch_norm", default=False),
    Choice("embedding_dim", (4, 8, 16), default=8),
)


def build(features: dict[str, dict], task: dict, hp: dict):
    """The MLP for `features` (transform outputs) and `task`, sized by `hp` (SPACE's names).

    `task` is the transform's task description (or a models.tasks Task); its head is the output.

    Returns:
        An uncompiled keras.Model taking a dict of transformed features.
    """
    import keras

    from kfx.models import tabular, tasks

    inp = tabular.inputs(features)
    deep, _ = tabular.encode(inp, features, hp["embedding_dim"])
    x = tabular.concat(deep, "features")
    x = tabular.dense_block(x, hp["units"], hp["num_layers"], hp["dropout"], hp["batch_norm"], "mlp")
    return keras.Model(inp, tasks.of(task).output(x), name="mlp")
