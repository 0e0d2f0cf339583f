"""Robustness in evaluate: accuracy of a classifier under small input perturbations.

The model is differentiated through its Keras side (components/training/export.py
`load_trainer`): the raw features of a sample of the evaluated rows go through the
preprocessing layer once, and the perturbations are made on the transformed features.
  * Image models (features of kind `image`): FGSM (x + eps * sign(grad)) and PGD at each
    configured epsilon, on the cross-entropy of the true class. Epsilon is a fraction of the
    pixel range ([0, 1] pixels): the range is [0, 255] for encoded images and the sample's
    min..max for raw pixel arrays; it is converted to the transformed scale with the image
    state's std, and every perturbed image is clipped to the valid pixel range. PGD takes
    `pgd_steps` signed-gradient steps of `pgd_step_size` * eps (default 2.5 / steps), projected
    on the eps-ball; it starts from the FGSM image and an example counts as fooled when any of
    its iterates is, so PGD is never weaker than FGSM at the same epsilon.
  * Text models (token sequences of kind `sequence`): on the token ids the transform produces,
    each non-padding token is dropped (the rest shift left, padding fills the end) or replaced by
    a uniformly drawn vocabulary token, at each configured rate.
  * Other models (tabular): skipped with a note.
Run summary metrics (`summary`): `fgsm_accuracy@<eps>`, `pgd_accuracy@<eps>`,
`token_drop_accuracy@<rate>`, `token_replace_accuracy@<rate>`, and `robust_clean_accuracy` (the
sample unperturbed, which the others are compared with).
"""
from __future__ import annotations

import base64

import numpy as np

from kfx.models.kinds.base import IMAGE, SEQUENCE
from kfx.models.kinds.image import EncodedImage
from kfx.models.kinds.text import RESERVED_IDS

FGSM, PGD, TOKEN_DROP, TOKEN_REPLACE = "fgsm", "pgd", "token_drop", "token_replace"
IMAGE_ATTACKS, TEXT_ATTACKS = (FGSM, PGD), (TOKEN_DROP, TOKEN_REPLACE)
ENCODED_RANGE = (0.0, 255.0)  # decoded image pixels


def metric_name(attack: str, size: float) -> str:
    """The run summary's name of the accuracy under `attack` at epsilon or rate `size`."""
    return f"{attack}_accuracy@{size:g}"


# ------------------------------------------------------------------ inputs
def raw_inputs(spec: dict, frame: dict, rows: np.ndarray) -> dict:
    """The preprocessing layer's raw feature tensors for `rows` of a split's `frame`; a missing
    number gets the transform's default, as a parsed tf.Example would."""
    import tensorflow as tf

    out = {}
    for name, raw in spec["raw_features"].items():
        values = frame[name][rows]
        if raw["dtype"] == "string":
            out[name] = tf.constant(np.array([v if isinstance(v, bytes) else str(v) for v in values], object))
            continue
        values = np.where(np.isnan(values.astype(np.float64)), raw["default"], values)
        out[name] = tf.constant(values.reshape(len(rows), *raw["shape"]).astype(raw["dtype"]))
    return out


def _states(spec: dict) -> dict:
    return {t["output"]: (t["kind"], t["state"]) for t in spec["transforms"]}


def _probabilities(y):
    """The model output as class probabilities [N, C] (a binary model's P(positive) -> [N, 2])."""
    import tensorflow as tf

    y = tf.cast(y, tf.float32)
    return tf.concat([1.0 - y, y], axis=1) if y.shape[-1] == 1 else y


def _predict(model, x: dict, batch_size: int) -> np.ndarray:
    n = len(next(iter(x.values())))
    return np.concatenate([np.argmax(_probabilities(model({k: v[i:i + batch_size] for k, v in x.items()},
                                                          training=False)).numpy(), axis=1)
                           for i in range(0, n, batch_size)])


# ------------------------------------------------------------------ images
def _pixel_bounds(kind: str, state: dict, x) -> tuple[float, float]:
    """Valid raw pixel range of an image feature: [0, 255] decoded, else the sample's min..max."""
    if kind == EncodedImage.NAME:
        return ENCODED_RANGE
    pixels = x.numpy() * state["std"] + state["mean"]
    return float(pixels.min()), float(pixels.max())


def attack_images(model, x: dict, y: np.ndarray, images: dict[str, tuple[float, float, float]], epsilon: float,
                  steps: int = 0, step_size: float | None = None, batch_size: int = 256) -> dict[str, tuple]:
    """FGSM at `epsilon`, and PGD (`steps` >= 1) continued from the FGSM images.

    Args:
        model: Keras model on the transformed features `x` (name -> tensor).
        y: true class index per row.
        images: image feature -> (low, high, scale): the valid range in the transformed scale and
            the transformed size of the whole pixel range (epsilon 1).
        epsilon: perturbation size as a fraction of the pixel range.
        steps, step_size: PGD's iterations and step (a fraction of epsilon; 2.5 / steps by default).

    Returns:
        {"fgsm": (predicted class per row, perturbed image features), "pgd": (the same) when
        `steps` >= 1}. Under PGD an example is fooled when any iterate (the FGSM image included)
        is; its images are the first fooling iterate, else the last.
    """
    import tensorflow as tf

    alpha = (step_size if step_size is not None else 2.5 / max(steps, 1)) * epsilon

    @tf.function(reduce_retracing=True)
    def gradient(cur, rest, target):
        # One pass gives the current predictions and the loss gradient for the next step.
        with tf.GradientTape() as tape:
            tape.watch(cur)
            probs = _probabilities(model({**rest, **cur}, training=False))
            loss = tf.reduce_sum(tf.keras.losses.sparse_categorical_crossentropy(target, probs))
        return tf.argmax(probs, axis=1), tape.gradient(loss, cur)

    def move(cur, x0, grads, size):
        return {k: tf.clip_by_value(tf.clip_by_value(cur[k] + size * scale * tf.sign(grads[k]),
                                                     x0[k] - epsilon * scale, x0[k] + epsilon * scale), low, high)
                for k, (low, high, scale) in images.items()}

    parts: dict[str, list] = {FGSM: [], PGD: []}
    for i in range(0, len(y), batch_size):
        rest = {k: v[i:i + batch_size] for k, v in x.items() if k not in images}
        x0 = {k: x[k][i:i + batch_size] for k in images}
        truth = y[i:i + batch_size]
        target = tf.constant(truth, tf.int64)
        cur = move(x0, x0, gradient(x0, rest, target)[1], epsilon)
        for s in range(steps + 1):  # s = 0: the FGSM images; then each PGD iterate
            if s < steps:
                now, grads = gradient(cur, rest, target)
                now = now.numpy()
            else:
                now = _predict(model, {**rest, **cur}, batch_size)
            if s == 0:
                parts[FGSM].append((now, cur))
                pred, best = now, cur
            else:
                fooled = pred != truth
                keep = tf.constant(fooled)
                best = {k: tf.where(tf.reshape(keep, [-1, *[1] * (len(v.shape) - 1)]), best[k], v)
                        for k, v in cur.items()}
                pred = np.where(fooled, pred, now)
            if s < steps:
                cur = move(cur, x0, grads, alpha)
        parts[PGD].append((pred, best))
    out = {a: (np.concatenate([p for p, _ in ps]), {k: np.concatenate([b[k].numpy() for _, b in ps]) for k in images})
           for a, ps in parts.items()}
    return out if steps else {FGSM: out[FGSM]}


def _png(x: np.ndarray, kind_state: tuple, bounds: tuple[float, float]) -> str:
    """A transformed image [h, w, c] as a base64 PNG of its pixels (scaled to 0-255 when the range differs)."""
    import tensorflow as tf

    _, state = kind_state
    pixels = x * state["std"] + state["mean"]
    low, high = bounds
    if (low, high) != ENCODED_RANGE:
        pixels = (pixels - low) / ((high - low) or 1.0) * 255.0
    data = tf.io.encode_png(tf.cast(tf.round(tf.clip_by_value(pixels, 0.0, 255.0)), tf.uint8)).numpy()
    return base64.b64encode(data).decode("ascii")


def image_robustness(model, x: dict, y: np.ndarray, spec: dict, names: list[str], cfg, gated: float | None,
                     task) -> dict:
    """Accuracy of `model` on the transformed images `x` (true classes `y`) under FGSM and PGD at each
    of cfg.epsilons and `gated`, plus up to cfg.examples images the strongest attack flipped."""
    states = _states(spec)
    bounds = {k: _pixel_bounds(states[k][0], states[k][1], x[k]) for k in names}
    images = {k: ((bounds[k][0] - states[k][1]["mean"]) / states[k][1]["std"],
                  (bounds[k][1] - states[k][1]["mean"]) / states[k][1]["std"],
                  (bounds[k][1] - bounds[k][0]) / states[k][1]["std"]) for k in names}
    clean = _predict(model, x, cfg.batch_size)
    epsilons = sorted(set(cfg.epsilons) | ({gated} if gated else set()))
    out = {"kind": IMAGE, "features": names, "pixel_range": {k: list(b) for k, b in bounds.items()},
           "epsilons": epsilons, "pgd_steps": cfg.pgd_steps,
           "pgd_step_size": cfg.pgd_step_size if cfg.pgd_step_size is not None else 2.5 / cfg.pgd_steps,
           "clean_accuracy": float(np.mean(clean == y)), "accuracy": {FGSM: {}, PGD: {}}, "examples": []}
    worst = None
    for eps in epsilons:
        for attack, (pred, adv) in attack_images(model, x, y, images, eps, cfg.pgd_steps, cfg.pgd_step_size,
                                                 cfg.batch_size).items():
            out["accuracy"][attack][f"{eps:g}"] = float(np.mean(pred == y))
            worst = (eps, attack, pred, adv)
    if worst and cfg.examples:
        eps, attack, pred, adv = worst
        feature = names[0]
        flipped = np.flatnonzero((clean == y) & (pred != y))[:cfg.examples]
        labels = task.classes or [str(c) for c in range(int(max(y.max(), clean.max(), pred.max())) + 1)]
        for r in flipped:
            out["examples"].append({
                "attack": attack, "epsilon": eps, "feature": feature, "label": labels[y[r]],
                "clean_prediction": labels[clean[r]], "adversarial_prediction": labels[pred[r]],
                "original": _png(x[feature][r].numpy(), states[feature], bounds[feature]),
                "perturbed": _png(adv[feature][r], states[feature], bounds[feature])})
    return out


# ------------------------------------------------------------------ text
def perturb_tokens(ids: np.ndarray, rate: float, mode: str, cardinality: int, rng: np.random.Generator) -> np.ndarray:
    """Token ids [N, L] (0 = padding) with each non-padding token dropped (`mode` token_drop: the
    rest shift left, padding fills the end) or replaced by a random vocabulary id (token_replace)
    with probability `rate`.

    Raises:
        ValueError: an unknown mode.
    """
    hit = (rng.random(ids.shape) < rate) & (ids != 0)
    if mode == TOKEN_REPLACE:
        return np.where(hit, rng.integers(RESERVED_IDS, max(cardinality, RESERVED_IDS + 1), ids.shape), ids)
    if mode != TOKEN_DROP:
        raise ValueError(f"unknown token perturbation {mode!r}; known: {TOKEN_DROP}, {TOKEN_REPLACE}")
    out = np.zeros_like(ids)
    for i, (row, drop) in enumerate(zip(ids, hit)):
        kept = row[(row != 0) & ~drop]
        out[i, :len(kept)] = kept
    return out


def text_robustness(model, x: dict, y: np.ndarray, spec: dict, names: list[str], cfg, gated: float | None) -> dict:
    """Accuracy of `model` on the transformed features `x` (true classes `y`) with the token ids of
    the sequence features `names` dropped or replaced at each of cfg.token_rates and `gated`."""
    import tensorflow as tf

    clean = _predict(model, x, cfg.batch_size)
    rates = sorted(set(cfg.token_rates) | ({gated} if gated else set()))
    out = {"kind": SEQUENCE, "features": names, "on": "token ids (after the transform)", "rates": rates,
           "clean_accuracy": float(np.mean(clean == y)), "accuracy": {TOKEN_DROP: {}, TOKEN_REPLACE: {}}}
    for mode in TEXT_ATTACKS:
        for rate in rates:
            rng = np.random.default_rng(cfg.seed)
            changed = {k: tf.constant(perturb_tokens(x[k].numpy(), rate, mode, spec["outputs"][k]["cardinality"], rng),
                                      x[k].dtype) for k in names}
            out["accuracy"][mode][f"{rate:g}"] = float(np.mean(_predict(model, {**x, **changed}, cfg.batch_size) == y))
    return out


# ------------------------------------------------------------------ stage entry points
def evaluate(model_uri: str, frame: dict, y: np.ndarray, task, cfg, gate=None, config_dir: str = "") -> dict:
    """The robustness section of evaluation.json for the rows of `frame` with true classes `y`.

    Args:
        model_uri: the exported model (with its Keras side).
        frame: the evaluated split's columns.
        y: the task's class index per row (Outcomes.y).
        task: the model's task; robustness applies to classifiers (tasks with classes).
        cfg: evaluate.robustness (pipeline/config_evaluation.py RobustnessConfig).
        gate: evaluate.gate.robustness (or None): its epsilon (or rate) is measured too.
        config_dir: where a user's family is found.

    Returns:
        {"kind": "image"|"sequence", "rows", "clean_accuracy", "accuracy": {attack: {size: value}}, ...},
        or {"skipped": why} for models it does not apply to.
    """
    from kfx.components.training.export import load_trainer

    if task.classes is None:
        return {"skipped": f"robustness measures classifiers; the model's task is {task.NAME}"}
    try:
        preprocessor, model, spec = load_trainer(model_uri, config_dir)
    except FileNotFoundError as err:
        return {"skipped": str(err)}
    kinds = {k: v["kind"] for k, v in spec["outputs"].items()}
    images = sorted(k for k, v in kinds.items() if v == IMAGE)
    texts = sorted(k for k, v in kinds.items() if v == SEQUENCE)
    if not images and not texts:
        return {"skipped": "robustness applies to image and text models; this model reads "
                           f"{sorted(set(kinds.values()))} features"}
    n = len(y)
    rows = np.sort(np.random.default_rng(cfg.seed).permutation(n)[:cfg.rows]) if cfg.rows < n else np.arange(n)
    x = preprocessor(raw_inputs(spec, frame, rows))
    y = np.asarray(y)[rows].astype(np.int64)
    attacks = IMAGE_ATTACKS if images else TEXT_ATTACKS
    gated = gate.epsilon if gate is not None and gate.attack in attacks else None
    out = (image_robustness(model, x, y, spec, images, cfg, gated, task) if images
           else text_robustness(model, x, y, spec, texts, cfg, gated))
    return {"rows": int(len(rows)), "of": int(n), "seed": cfg.seed, **out}


def summary(rob: dict | None) -> dict[str, float]:
    """The run summary's metrics (see the module docstring); none when skipped or off."""
    if not rob or "accuracy" not in rob:
        return {}
    out = {"robust_clean_accuracy": round(rob["clean_accuracy"], 4)}
    for attack, values in rob["accuracy"].items():
        for size, acc in values.items():
            out[metric_name(attack, float(size))] = round(acc, 4)
    return out


def gate_check(rob: dict | None, gate) -> dict:
    """The gate's check of evaluate.gate.robustness ({attack, epsilon, min_accuracy}); it fails,
    saying why, when the model was not measured under that attack."""
    from kfx.components.evaluation.gate import _check

    name = f"{metric_name(gate.attack, gate.epsilon)} >= {gate.min_accuracy}"
    value = ((rob or {}).get("accuracy", {}).get(gate.attack) or {}).get(f"{gate.epsilon:g}")
    note = ""
    if value is None:
        note = (f"not measured: {(rob or {}).get('skipped', 'robustness is off')}" if "accuracy" not in (rob or {})
                else f"{gate.attack} does not apply to this model (measured: {', '.join(rob['accuracy'])})")
    return _check("robustness", name, value, {"attack": gate.attack, "epsilon": gate.epsilon,
                                              "min": gate.min_accuracy},
                  value is not None and value >= gate.min_accuracy, f">= {gate.min_accuracy}", note=note,
                  metric=metric_name(gate.attack, gate.epsilon))


# ------------------------------------------------------------------ report
def render(rob: dict) -> str:
    """The report section: accuracy against epsilon (or rate) per attack, and adversarial examples."""
    from kfx.components.evaluation.report import _e, _fmt, line_chart, table
    from kfx.components.evaluation.samples import figure

    if "accuracy" not in rob:
        return f"<h2>Robustness</h2><p>Skipped: {_e(rob['skipped'])}.</p>"
    sizes = rob["epsilons"] if rob["kind"] == IMAGE else rob["rates"]
    top = max(sizes) or 1.0
    what = ("epsilon (fraction of the pixel range)" if rob["kind"] == IMAGE else "token rate")
    series = {a: ([0.0] + [s / top for s in sizes], [rob["clean_accuracy"]] + [v[f"{s:g}"] for s in sizes])
              for a, v in rob["accuracy"].items()}
    parts = [f"<h2>Robustness</h2><p>Accuracy of {rob['rows']:,} of {rob['of']:,} rows (seed {rob['seed']}) "
             f"under perturbation of {_e(', '.join(rob['features']))}"
             + (f" ({_e(rob['on'])})" if rob.get("on") else
                f"; PGD: {rob['pgd_steps']} steps of {_fmt(rob['pgd_step_size'], 3)} x epsilon from the FGSM image")
             + f". Unperturbed: {_fmt(rob['clean_accuracy'])}.</p>",
             table([what, *rob["accuracy"]], [[s, *[v[f"{s:g}"] for v in rob["accuracy"].values()]] for s in sizes]),
             "<div class='plots'>" + line_chart("robustness", f"Accuracy against {what} (x axis: / {top:g})",
                                                series, f"{what} / {top:g}", "accuracy", diagonal=False) + "</div>"]
    if rob.get("examples"):
        cells = []
        for ex in rob["examples"]:
            shared = {"mime": "image/png", "label": ex["label"]}
            cells.append(figure({**shared, "data": ex["original"], "prediction": ex["clean_prediction"],
                                 "name": "original", "note": "original", "correct": True}))
            cells.append(figure({**shared, "data": ex["perturbed"], "prediction": ex["adversarial_prediction"],
                                 "name": "perturbed", "note": f"{ex['attack']}, epsilon {ex['epsilon']:g}",
                                 "correct": False}))
        parts.append(f"<h3>Adversarial examples</h3><p>Correctly classified images and their perturbed copies "
                     f"that the model gets wrong (true &rarr; predicted).</p><div class='samples'>{''.join(cells)}</div>")
    return "".join(parts)
