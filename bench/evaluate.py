"""Benchmark: evaluate's numpy core on Adult-sized data (16,281 rows, 200 bootstrap resamples).

Prints a table: what is computed, seconds. The model is not involved (scores are synthetic), so
the numbers isolate what replaces TFMA: metrics, slices and the fairness bootstrap.
`python bench/evaluate.py [rows] [resamples]`.
"""
from __future__ import annotations

import sys
import time

import numpy as np


def main(rows: int = 16281, resamples: int = 200) -> None:
    sys.path.insert(0, __file__.rsplit("/bench/", 1)[0])
    from kfx.components.evaluation import metrics as em
    from kfx.components.evaluation.fairness import bootstrap_indices, group_fairness

    rng = np.random.default_rng(0)
    sex = rng.choice(["Male", "Female"], rows, p=[0.67, 0.33]).astype(object)
    race = rng.choice(["White", "Black", "Asian-Pac-Islander", "Amer-Indian-Eskimo", "Other"], rows,
                      p=[0.86, 0.096, 0.03, 0.01, 0.004]).astype(object)
    age = rng.integers(17, 90, rows).astype(np.float64)
    y = (rng.random(rows) < 0.24).astype(np.int8)
    score = np.clip(0.5 * y + rng.normal(0.25, 0.2, rows), 0, 1)
    pred = (score >= 0.5).astype(np.int8)
    frame = {"sex": sex, "race": race, "age": age}
    rows_out = []

    t = time.perf_counter()
    em.binary_metrics(y, score, pred, 10, (0.3, 0.5, 0.7))
    rows_out.append(("overall metrics", time.perf_counter() - t))

    t = time.perf_counter()
    for features in (("sex",), ("race",), ("sex", "race"), ("age",)):
        keys = em.slice_values(frame, features, {"age"}, 4)
        for value in np.unique(keys.astype(str)):
            mask = keys.astype(str) == value
            em.binary_metrics(y[mask], score[mask], pred[mask])
    rows_out.append(("4 slicings, 21 slices", time.perf_counter() - t))

    t = time.perf_counter()
    boot = bootstrap_indices(rows, resamples, 0)
    for feature in ("sex", "race"):
        names, codes = np.unique(frame[feature].astype(str), return_inverse=True)
        group_fairness(codes, list(names), y, pred, boot, 0.95)
    rows_out.append((f"fairness x2 features, {resamples} resamples", time.perf_counter() - t))

    print(f"evaluate core on {rows:,} rows")
    print(f"{'step':<40} {'seconds':>8}")
    for name, sec in rows_out:
        print(f"{name:<40} {sec:>8.3f}")
    print(f"{'total':<40} {sum(s for _, s in rows_out):>8.3f}")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
