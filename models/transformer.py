"""transformer: a Transformer encoder (Vaswani et al. 2017) over sequence features.

The same block serves text and series (models/modality.py): token sequences get a token
embedding (padding id 0 masked out of attention and pooling), numeric windows [N, L, c] a
Dense projection to `model_dim`; both then add a learned position embedding. `num_blocks`
post-norm encoder blocks follow: multi-head self-attention (`num_heads`, key width
`model_dim / num_heads`) -> dropout -> residual -> layer norm -> feed-forward (`ff_dim`, ReLU,
back to `model_dim`) -> dropout -> residual -> layer norm. A masked mean over the steps,
dropout, then the task's head. Other features join before the head. The defaults (1 block,
width 32, 2 heads) train an epoch of 12,808 short reviews well within a minute on 2 cores.
"""
from __future__ import annotations

from kfx.models.space import COMMON, Choice, Float, Int

SPACE = COMMON + (
    Int("num_blocks", 1, 4, default=1),
    Choice("model_dim", (16, 32, 64, 128), default=32),
    Choice("num_heads", (1, 2, 4), default=2),
    Choice("ff_dim", (32, 64, 128, 256), default=64),
    Float("dropout", 0.0, 0.5, default=0.1),
)


def encoder_block(x, hp: dict, name: str):
    """One post-norm encoder block on steps [N, L, model_dim]; a padding mask on `x` is honoured."""
    import keras

    dim = hp["model_dim"]
    attn = keras.layers.MultiHeadAttention(hp["num_heads"], max(1, dim // hp["num_heads"]), dropout=hp["dropout"],
                                           name=f"{name}_attention")(x, x)
    attn = keras.layers.Dropout(hp["dropout"], name=f"{name}_attention_dropout")(attn)
    x = keras.layers.LayerNormalization(epsilon=1e-6, name=f"{name}_norm1")(keras.layers.Add(name=f"{name}_add1")([x, attn]))
    ff = keras.layers.Dense(hp["ff_dim"], activation="relu", name=f"{name}_ff1")(x)
    ff = keras.layers.Dense(dim, name=f"{name}_ff2")(ff)
    ff = keras.layers.Dropout(hp["dropout"], name=f"{name}_ff_dropout")(ff)
    return keras.layers.LayerNormalization(epsilon=1e-6, name=f"{name}_norm2")(keras.layers.Add(name=f"{name}_add2")([x, ff]))


def build(features: dict[str, dict], task: dict, hp: dict):
    """The Transformer encoder for the sequence `features` (and any others) and `task`, sized by `hp`.

    Returns:
        An uncompiled keras.Model taking a dict of transformed features.

    Raises:
        ValueError: no sequence or window feature.
    """
    import keras

    from kfx.models import layers, modality, tasks

    main = modality.main_features(features, modality.SEQUENCE_KINDS, "transformer")
    inp = modality.inputs(features)
    towers = []
    for name in main:
        spec = features[name]
        x = modality.embed_steps(inp[name], spec, name, hp["model_dim"], mask=True)
        if spec["kind"] == modality.WINDOW:
            x = keras.layers.Dense(hp["model_dim"], name=f"{name}_projection")(x)
        x = layers.PositionEmbedding(spec["length"], name=f"{name}_positions")(x)
        for b in range(hp["num_blocks"]):
            x = encoder_block(x, hp, f"{name}_block{b}")
        towers.append(layers.MaskedMean(name=f"{name}_pool")(x))
    x = modality.head_input(towers, inp, features, main, "transformer")
    if hp["dropout"] > 0:
        x = keras.layers.Dropout(hp["dropout"], name="transformer_dropout")(x)
    return keras.Model(inp, tasks.of(task).output(x), name="transformer")
