"""Keras inputs and encodings for the transform's output features (shared by tabular families).

The transform artifact describes each output feature (transform.json `outputs`):
  * {"kind": "dense", "width": w}: float32 [N, w] (normalized numbers, one-hot buckets, ...)
  * {"kind": "ids", "cardinality": n, "encoding": "one_hot" | "embed"}: int64 [N] category ids
  * {"kind": "sequence", "cardinality": n, "length": L}: int64 [N, L] token ids, 0 = padding
  * {"kind": "image", "shape": [h, w, c]}: float32 [N, h, w, c] scaled pixels
"""
from __future__ import annotations


def inputs(features: dict[str, dict]) -> dict:
    """One keras.Input per transformed feature, named after it."""
    import keras

    out = {}
    for name, spec in sorted(features.items()):
        kind = spec["kind"]
        if kind == "dense":
            out[name] = keras.Input(shape=(spec["width"],), dtype="float32", name=name)
        elif kind == "ids":
            out[name] = keras.Input(shape=(), dtype="int64", name=name)
        elif kind == "sequence":
            out[name] = keras.Input(shape=(spec["length"],), dtype="int64", name=name)
        elif kind == "image":
            out[name] = keras.Input(shape=tuple(spec["shape"]), dtype="float32", name=name)
        else:
            raise ValueError(f"feature {name!r}: unknown transformed kind {kind!r}")
    return out


def embedding_size(cardinality: int, dim: int) -> int:
    """Embedding width: the tuned `dim`, but never wider than the category count needs."""
    return max(2, min(dim, cardinality))


def encode(inputs_: dict, features: dict[str, dict], embedding_dim: int) -> tuple[list, list]:
    """Encode every input for the deep part and for a linear (wide) part.

    Args:
        inputs_: from `inputs(features)`.
        features: the transform's output descriptions.
        embedding_dim: width of learned embeddings for "embed" ids and token sequences.

    Returns:
        (deep, wide): lists of float tensors [N, k]. Dense features go to both; ids go one-hot
        to wide and, by their encoding, one-hot or embedded to deep.
    """
    import keras

    deep, wide = [], []
    for name, spec in sorted(features.items()):
        x = inputs_[name]
        kind = spec["kind"]
        if kind == "dense":
            deep.append(x)
            wide.append(x)
        elif kind == "ids":
            n = spec["cardinality"]
            one_hot = keras.layers.CategoryEncoding(n, output_mode="one_hot", name=f"{name}_onehot")(x)
            wide.append(one_hot)
            if spec.get("encoding") == "embed":
                emb = keras.layers.Embedding(n, embedding_size(n, embedding_dim), name=f"{name}_embedding")(x)
                deep.append(emb)
            else:
                deep.append(one_hot)
        elif kind == "sequence":
            emb = keras.layers.Embedding(spec["cardinality"], embedding_dim, mask_zero=True,
                                         name=f"{name}_embedding")(x)
            deep.append(keras.layers.GlobalAveragePooling1D(name=f"{name}_pool")(emb))
        elif kind == "image":
            deep.append(keras.layers.Flatten(name=f"{name}_flat")(x))
    return deep, wide


def concat(tensors: list, name: str):
    import keras

    return tensors[0] if len(tensors) == 1 else keras.layers.Concatenate(name=name)(tensors)


def dense_block(x, units: int, num_layers: int, dropout: float, batch_norm: bool, prefix: str):
    """`num_layers` x (Dense -> [BatchNorm] -> ReLU -> [Dropout])."""
    import keras

    for i in range(num_layers):
        x = keras.layers.Dense(units, use_bias=not batch_norm, name=f"{prefix}_dense{i}")(x)
        if batch_norm:
            # synchronized: under a multi-worker / mirrored strategy the batch statistics (and so
            # the moving averages) are computed over the global batch, identical on every worker.
            x = keras.layers.BatchNormalization(synchronized=True, name=f"{prefix}_bn{i}")(x)
        x = keras.layers.Activation("relu", name=f"{prefix}_relu{i}")(x)
        if dropout > 0:
            x = keras.layers.Dropout(dropout, name=f"{prefix}_dropout{i}")(x)
    return x
