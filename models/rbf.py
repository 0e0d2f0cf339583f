"""rbf: a radial basis function network (Gaussian RBF layer, then the task's linear head).

The transformed features are laid out as one vector per row (dense features as they are, so
standardized numbers; category ids one-hot; images flattened), and `units` Gaussian functions
exp(-||x - c_k||^2 / (2 s_k^2)) with learnable centres c_k and widths s_k
(models/prototype_layers.RadialBasis) feed the task's head: a linear output (regression; a
softmax for classification). With `linear_term` the vector itself joins the basis functions
before the head (an RBF network with a linear tail).

The `fit` hook (models/__init__.py) first places the centres: k-means (`init: kmeans`,
scikit-learn, seeded) on up to INIT_ROWS train rows, or a random sample of them (`init:
sample`); each width starts at the root mean square distance of its k-means members to the
centre (with a sample: to the nearest other centre). Then all weights train by gradient descent
on the task's loss for `epochs` epochs (the hyperparameter, as the hook does not see train.epochs;
early stopping and the other callbacks of train apply).
"""
from __future__ import annotations

from kfx.models.space import COMMON, Boolean, Choice, Int

SPACE = COMMON + (
    Int("units", 2, 256, default=32),
    Choice("init", ("kmeans", "sample"), default="kmeans"),
    Boolean("linear_term", default=False),
    Int("epochs", 1, 2000, default=200),
)
RBF, ENCODER = "rbf", "encoder"
INIT_ROWS, INIT_SEED = 5000, 0


def build(features: dict[str, dict], task: dict, hp: dict):
    """The RBF network on the transformed `features` for `task`, sized by `hp` (SPACE's names).

    Returns:
        An uncompiled keras.Model taking a dict of transformed features.
    """
    import keras

    from kfx.models import tabular, tasks
    from kfx.models.prototype_layers import RadialBasis

    inp = tabular.inputs(features)
    _, wide = tabular.encode({n: x for n, x in inp.items() if features[n]["kind"] in ("dense", "ids")},
                             {n: s for n, s in features.items() if s["kind"] in ("dense", "ids")}, 1)
    wide += [keras.layers.Flatten(name=f"{n}_flat")(inp[n]) for n in sorted(inp) if features[n]["kind"] == "image"]
    if len(wide) != len(inp):
        raise ValueError(f"model rbf reads dense, category and image features; got kinds "
                         f"{sorted({s['kind'] for s in features.values()})}")
    encoder = keras.Model(inp, tabular.concat(wide, "features"), name=ENCODER)
    x = encoder(inp)
    phi = RadialBasis(hp["units"], name=RBF)(x)
    if hp["linear_term"]:
        phi = keras.layers.Concatenate(name="rbf_and_linear")([phi, x])
    return keras.Model(inp, tasks.of(task).output(phi), name="rbf")


def initial_centres(x, units: int, init: str, seed: int = INIT_SEED):
    """(centres [units, D], widths [units]) from rows `x` [N, D] (see the module doc)."""
    import numpy as np

    if init == "kmeans":
        from sklearn.cluster import KMeans

        km = KMeans(n_clusters=min(units, len(x)), n_init=4, random_state=seed).fit(x)
        centres = km.cluster_centers_
        d2 = ((x - centres[km.labels_]) ** 2).sum(axis=1)
        widths = np.array([np.sqrt(d2[km.labels_ == k].mean()) for k in range(len(centres))])
    else:
        centres = x[np.random.default_rng(seed).choice(len(x), min(units, len(x)), replace=False)]
        gaps = np.sqrt(((centres[:, None] - centres[None]) ** 2).sum(-1)) + np.diag(np.full(len(centres), np.inf))
        widths = gaps.min(axis=1) if len(centres) > 1 else np.ones(1)
    # Fewer distinct rows than units: repeat centres; a zero width (a centre on one row) gets the median.
    centres, widths = np.resize(centres, (units, x.shape[1])), np.resize(widths, units)
    ok = np.isfinite(widths) & (widths > 0)
    widths = np.where(ok, widths, np.median(widths[ok]) if ok.any() else 1.0)
    return centres.astype("float32"), widths.astype("float32")


def fit(model, train_ds, eval_ds, hp, callbacks):
    """Centres and widths from the train rows, then `hp["epochs"]` epochs of the task's loss."""
    import numpy as np

    encoder, rbf = model.get_layer(ENCODER), model.get_layer(RBF)
    rows, n = [], 0
    for features, _ in train_ds:
        rows.append(np.asarray(encoder(features, training=False), dtype=np.float64))
        n += len(rows[-1])
        if n >= INIT_ROWS:
            break
    centres, widths = initial_centres(np.concatenate(rows)[:INIT_ROWS], hp["units"], hp["init"])
    rbf.centres.assign(centres)
    rbf.log_width.assign(np.log(widths))
    model.fit(train_ds, validation_data=eval_ds, epochs=hp["epochs"], callbacks=callbacks, verbose=0)
