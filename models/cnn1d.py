"""cnn1d: temporal convolution over sequence features (Kim 2014 for text; also numeric windows).

On sequence features (models/modality.py): token sequences are embedded (`embedding_dim`) and
numeric windows [N, L, c] are read as they are. `blocks` x (Conv1D of `filters` with
`kernel_size`, "same" padding -> ReLU), with 2-step max pooling between blocks, then global max
pooling over time, dropout and the task's head. Padding tokens are not masked (convolutions do
not take masks): id 0 has its own learned embedding, which global max pooling learns to
ignore. Other features join before the head. The defaults (2 blocks of 64 filters of width 5)
train an epoch of 12,808 short reviews in seconds on 2 cores.
"""
from __future__ import annotations

from kfx.models.space import COMMON, Choice, Float, Int

SPACE = COMMON + (
    Int("blocks", 1, 3, default=2),
    Choice("filters", (16, 32, 64, 128), default=64),
    Choice("kernel_size", (3, 5, 7), default=5),
    Choice("embedding_dim", (16, 32, 64, 128), default=32),
    Float("dropout", 0.0, 0.5, default=0.2),
)


def build(features: dict[str, dict], task: dict, hp: dict):
    """The temporal CNN for the sequence `features` (and any others) and `task`, sized by `hp`.

    Returns:
        An uncompiled keras.Model taking a dict of transformed features.

    Raises:
        ValueError: no sequence or window feature.
    """
    import keras

    from kfx.models import modality, tasks

    main = modality.main_features(features, modality.SEQUENCE_KINDS, "cnn1d")
    inp = modality.inputs(features)
    towers = []
    for name in main:
        x = modality.embed_steps(inp[name], features[name], name, hp["embedding_dim"], mask=False)
        for b in range(hp["blocks"]):
            if b > 0:
                x = keras.layers.MaxPooling1D(2, padding="same", name=f"{name}_pool{b}")(x)
            x = keras.layers.Conv1D(hp["filters"], hp["kernel_size"], padding="same", activation="relu",
                                    name=f"{name}_conv{b}")(x)
        towers.append(keras.layers.GlobalMaxPooling1D(name=f"{name}_max")(x))
    x = modality.head_input(towers, inp, features, main, "cnn1d")
    if hp["dropout"] > 0:
        x = keras.layers.Dropout(hp["dropout"], name="cnn1d_dropout")(x)
    return keras.Model(inp, tasks.of(task).output(x), name="cnn1d")
