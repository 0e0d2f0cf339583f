"""The recurrent families' shared builder: rnn (SimpleRNN), lstm, gru and bilstm are thin
modules (models/rnn.py, ...) that call `build_family` with their cell.

On sequence features (models/modality.py): token sequences are embedded (`embedding_dim`, the
padding id 0 masked, so the cells skip it) and numeric windows [N, L, c] are read as they are.
`num_layers` recurrent layers of `units` each (all but the last return their sequences); the
last state, dropout, then the task's head. Other features join before the head. The defaults
(one layer of 32 units over 32-wide embeddings) train an epoch of 12,808 short reviews or of a
few thousand 104-step windows within a minute on 2 cores.
"""
from __future__ import annotations

from kfx.models.space import COMMON, Choice, Float, Int

SIMPLE, LSTM, GRU = "SimpleRNN", "LSTM", "GRU"  # keras.layers class names
CELLS = (SIMPLE, LSTM, GRU)

SPACE = COMMON + (
    Int("num_layers", 1, 2, default=1),
    Choice("units", (16, 32, 64, 128), default=32),
    Choice("embedding_dim", (16, 32, 64, 128), default=32),
    Float("dropout", 0.0, 0.5, default=0.2),
)


def build_family(family: str, cell: str, bidirectional: bool, features: dict[str, dict], task: dict, hp: dict):
    """A recurrent model named `family` with `cell` layers (both directions when `bidirectional`).

    Args:
        family: the model's name ("lstm", ...), also in error messages.
        cell: one of `CELLS`.
        bidirectional: wrap each layer in keras.layers.Bidirectional (outputs concatenated).
        features, task, hp: as a family's `build`.

    Returns:
        An uncompiled keras.Model taking a dict of transformed features.

    Raises:
        ValueError: an unknown cell, or no sequence / window feature.
    """
    import keras

    from kfx.models import modality, tasks

    if cell not in CELLS:
        raise ValueError(f"cell must be one of {list(CELLS)}, got {cell!r}")
    main = modality.main_features(features, modality.SEQUENCE_KINDS, family)
    inp = modality.inputs(features)
    towers = []
    for name in main:
        x = modality.embed_steps(inp[name], features[name], name, hp["embedding_dim"], mask=True)
        for i in range(hp["num_layers"]):
            layer = getattr(keras.layers, cell)(hp["units"], return_sequences=i < hp["num_layers"] - 1,
                                                name=f"{name}_{family}{i}")
            if bidirectional:
                layer = keras.layers.Bidirectional(layer, name=f"{name}_bi{family}{i}")
            x = layer(x)
        towers.append(x)
    x = modality.head_input(towers, inp, features, main, family)
    if hp["dropout"] > 0:
        x = keras.layers.Dropout(hp["dropout"], name=f"{family}_dropout")(x)
    return keras.Model(inp, tasks.of(task).output(x), name=family)
