"""wide_deep: a linear model on one-hot features plus an MLP on embeddings (Cheng et al. 2016)."""
from __future__ import annotations

from kfx.models.space import COMMON, Boolean, Choice, Float, Int

SPACE = COMMON + (
    Int("deep_layers", 1, 4, default=2),
    Choice("deep_units", (32, 64, 128, 256), default=128),
    Float("dropout", 0.0, 0.5, default=0.3),
    Boolean("batch_norm", default=False),
    Choice("embedding_dim", (4, 8, 16), default=8),
)


def build(features: dict[str, dict], task: dict, hp: dict):
    """Wide (linear on dense + one-hot ids) and deep (MLP on dense + embeddings) logits, summed.

    Categorical ids are always embedded in the deep part here (their one-hot goes to the
    wide part), whatever their transform encoding hint.
    """
    import keras

    from kfx.models import tabular, tasks

    feats = {k: ({**v, "encoding": "embed"} if v["kind"] == "ids" else v) for k, v in features.items()}
    inp = tabular.inputs(feats)
    deep, wide = tabular.encode(inp, feats, hp["embedding_dim"])
    d = tabular.dense_block(tabular.concat(deep, "deep_features"), hp["deep_units"], hp["deep_layers"],
                            hp["dropout"], hp["batch_norm"], "deep")
    x = keras.layers.Concatenate(name="wide_and_deep")([tabular.concat(wide, "wide_features"), d])
    # The head's single Dense over [wide, deep] is the sum of a linear wide model and the deep
    # tower's last layer, as in the paper's joint training.
    return keras.Model(inp, tasks.of(task).output(x), name="wide_deep")
