"""som: a self-organising map (Kohonen) as a Keras layer, for the clustering task.

The map is a `rows` x `cols` grid of units, each holding a prototype vector in the space of the
transformed features (flattened and concatenated, category ids one-hot). A row belongs to its
best matching unit (BMU), the unit whose prototype is nearest (Euclidean); the model answers per
row the unit id `cluster` (= row * cols + col), its map coordinates `row` and `col`, and the
`distance` to its prototype (models/tasks/clustering.py serves them).

Training is the SOM rule, not gradient descent (the `compile` and `fit` hooks of
models/__init__.py and the model's own train_step, models/prototype_layers.py): per batch each
unit moves toward the rows whose BMU is near it on the grid, weighted by a Gaussian neighbourhood
of radius sigma. Over the epochs sigma shrinks from `sigma` to `sigma_end` and the learning rate
decays from `learning_rate` to `learning_rate_end`, both geometrically: the map orders itself
first, then fine-tunes. The prototypes start at train rows picked at random (seeded). The loss
reported per epoch is the mean quantization error (distance of the rows to their BMU).
"""
from __future__ import annotations

from kfx.models.space import Float, Int

SPACE = (
    Int("rows", 1, 20, default=8),
    Int("cols", 1, 20, default=8),
    Float("sigma", 0.3, 10.0, default=3.0),
    Float("sigma_end", 0.1, 3.0, default=0.5),
    Float("learning_rate", 0.01, 1.0, default=0.5, sampling="log"),
    Float("learning_rate_end", 0.001, 0.5, default=0.02, sampling="log"),
    Int("epochs", 1, 500, default=30),
)
SOM, ENCODER = "som", "encoder"  # the layers models/prototype_layers.SomModel trains
CLUSTER, ROW, COL, DISTANCE = "cluster", "row", "col", "distance"
INIT_SEED = 0


def build(features: dict[str, dict], task: dict, hp: dict):
    """The map on the transformed `features`, sized by `hp` (SPACE's names).

    Returns:
        An uncompiled SomModel taking a dict of transformed features and returning
        {cluster, row, col, distance}.
    """
    import keras
    from keras import ops

    from kfx.models import tabular
    from kfx.models.prototype_layers import SelfOrganizingMap, SomModel

    inp = tabular.inputs(features)
    # Dense features as they are, ids one-hot (the wide encoding), images and sequences flat.
    _, flat = tabular.encode({n: x for n, x in inp.items() if features[n]["kind"] in ("dense", "ids")},
                             {n: s for n, s in features.items() if s["kind"] in ("dense", "ids")}, 1)
    flat += [keras.layers.Flatten(name=f"{n}_flat")(inp[n]) for n in sorted(inp)
             if features[n]["kind"] in ("image", "sequence")]
    encoder = keras.Model(inp, tabular.concat([ops.cast(f, "float32") for f in flat], "features"), name=ENCODER)
    cols = hp["cols"]
    d2 = SelfOrganizingMap(hp["rows"], cols, name=SOM)(encoder(inp))
    cluster = keras.layers.Lambda(lambda d: ops.cast(ops.argmin(d, axis=1), "int64"), name=CLUSTER)(d2)
    outputs = {CLUSTER: cluster, ROW: keras.layers.Lambda(lambda c: c // cols, name=ROW)(cluster),
               COL: keras.layers.Lambda(lambda c: c % cols, name=COL)(cluster),
               DISTANCE: keras.layers.Lambda(lambda d: ops.sqrt(ops.min(d, axis=1)), name=DISTANCE)(d2)}
    return SomModel(inp, outputs, name="som")


def compile(model, task, hp):
    """No loss and no optimizer: the model's train_step applies the SOM rule."""
    model.compile(jit_compile=False)


def schedule(hp: dict, epoch: int) -> tuple[float, float]:
    """(sigma, learning rate) of `epoch` (0-based): geometric from the start to the end values."""
    t = epoch / max(1, hp["epochs"] - 1)
    return (hp["sigma"] * (hp["sigma_end"] / hp["sigma"]) ** t,
            hp["learning_rate"] * (hp["learning_rate_end"] / hp["learning_rate"]) ** t)


def fit(model, train_ds, eval_ds, hp, callbacks):
    """Prototypes from random train rows, then `hp["epochs"]` epochs of the SOM rule on its schedule."""
    import keras
    import numpy as np

    som, encoder = model.get_layer(SOM), model.get_layer(ENCODER)
    rows, n = [], 0
    for features, _ in train_ds:
        rows.append(np.asarray(encoder(features, training=False)))
        n += len(rows[-1])
        if n >= 4 * som.units:
            break
    rows = np.concatenate(rows)
    pick = np.random.default_rng(INIT_SEED).choice(len(rows), som.units, replace=len(rows) < som.units)
    som.prototypes.assign(rows[pick].reshape(som.prototypes.shape))

    def set_schedule(epoch, logs=None):
        sigma, rate = schedule(hp, epoch)
        som.sigma.assign(sigma)
        som.rate.assign(rate)

    model.fit(train_ds, validation_data=eval_ds, epochs=hp["epochs"], verbose=0,
              callbacks=[keras.callbacks.LambdaCallback(on_epoch_begin=set_schedule), *callbacks])
