"""rbf: a radial basis function network (Gaussian RBF layer, then the task's linear head).

The transformed features are laid out as one vector per row x (dense features as they are, so
standardized numbers; category ids one-hot; images flattened), and `units` Gaussian functions
exp(-||x - c_k||^2 / (2 s_k^2)) with learnable centres c_k and widths s_k
(models/prototype_layers.RadialBasis) feed the task's head: a linear output (regression; a
softmax for classification). With `linear_term` (the default) x itself joins the basis
functions before the head: an RBF network with a linear tail, which models what is linear in x
(most of penguin body mass) with the linear part and leaves the basis functions the rest.

Training is the classic two stages, then a fine-tune, in the `fit` hook (models/__init__.py):
  1. centres by k-means (`init: kmeans`, scikit-learn, seeded) on up to INIT_ROWS train rows, or
     a random sample of them (`init: sample`); each width is the root mean square distance of
     its k-means members to the centre (with a sample: the distance to the nearest other centre);
  2. a regression head by ridge least squares (penalty `ridge` on the weights, in the label's
     standardized units), on the same rows; a classification head keeps its initialisation;
  3. `epochs` epochs of gradient descent on the task's loss over all weights (the
     hyperparameter: the hook does not see train.epochs; 0 skips it), with train's callbacks
     (early stopping restores the best epoch).
"""
from __future__ import annotations

from kfx.models.space import COMMON, Boolean, Choice, Float, Int

SPACE = COMMON + (
    Int("units", 2, 256, default=16),
    Choice("init", ("kmeans", "sample"), default="kmeans"),
    Boolean("linear_term", default=True),
    Float("ridge", 0.0, 100.0, default=1.0),
    Int("epochs", 0, 2000, default=100),
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


def fit_regression_head(model, batches: list, ridge: float) -> bool:
    """Set a regression head (Dense `output_standardized` -> Rescaling `output`, models/tasks/
    regression.py) to the ridge least squares solution on `batches` of (features, label); False
    (nothing done) for another head."""
    import keras
    import numpy as np

    from kfx.models.tasks.base import OUTPUT

    out = model.get_layer(OUTPUT)
    if not isinstance(out, keras.layers.Rescaling):
        return False
    dense = model.get_layer(f"{OUTPUT}_standardized")
    head_in = keras.Model(model.input, dense.input)
    a = np.concatenate([np.asarray(head_in(f, training=False), np.float64) for f, _ in batches])
    a = np.concatenate([a, np.ones((len(a), 1))], axis=1)
    t = (np.concatenate([np.asarray(y, np.float64).reshape(-1) for _, y in batches]) - out.offset) / out.scale
    # Ridge as least squares on rows sqrt(ridge) * I appended (the bias not penalised): with
    # ridge 0 the minimum-norm solution, also when columns are collinear (one-hot groups).
    penalty = np.sqrt(ridge) * np.eye(a.shape[1])[:-1]
    beta = np.linalg.lstsq(np.concatenate([a, penalty]), np.concatenate([t, np.zeros(len(penalty))]), rcond=None)[0]
    dense.kernel.assign(beta[:-1, None].astype("float32"))
    dense.bias.assign(beta[-1:].astype("float32"))
    return True


def fit(model, train_ds, eval_ds, hp, callbacks):
    """Centres and widths by k-means, a regression head by least squares, then `hp["epochs"]`
    epochs of gradient descent on the task's loss (see the module doc)."""
    import numpy as np

    encoder, rbf = model.get_layer(ENCODER), model.get_layer(RBF)
    batches, rows, n = [], [], 0
    for features, y in train_ds:
        batches.append((features, y))
        rows.append(np.asarray(encoder(features, training=False), dtype=np.float64))
        n += len(rows[-1])
        if n >= INIT_ROWS:
            break
    centres, widths = initial_centres(np.concatenate(rows), hp["units"], hp["init"])
    rbf.centres.assign(centres)
    rbf.log_width.assign(np.log(widths))
    fit_regression_head(model, batches, hp["ridge"])
    if hp["epochs"]:
        model.fit(train_ds, validation_data=eval_ds, epochs=hp["epochs"], callbacks=callbacks, verbose=0)
