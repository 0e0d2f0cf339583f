"""Training throughput: kfx's tf.data pipeline from TFRecord artifacts vs in-memory tensors.

The same model (the mlp family's defaults) and batch size are trained twice: fed by
components/modeling_data.dataset (TFRecord -> parse -> preprocessing layer -> cache -> shuffle
-> batch -> prefetch), and fed by `model.fit` on in-memory NumPy arrays of the already
preprocessed features (Keras's own array adapter, shuffled). The first epoch of each (tracing,
cache fill) is excluded. Prints examples/s side by side and the ratio (aim >= 0.9).

Usage:
    python bench/training_input.py                       # ingest..transform Adult in a temp root
    python bench/training_input.py --examples URI --transform-graph URI [--epochs 4 --batch-size 256]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _artifacts(args) -> tuple[str, str]:
    if args.examples and args.transform_graph:
        return args.examples, args.transform_graph
    from kfx.pipeline.config import load_config
    from kfx.pipeline.runner import run_pipeline

    root = args.root or tempfile.mkdtemp(prefix="kfx-bench-")
    summary = run_pipeline(load_config(None), root=root, to_stage="transform")
    if summary["status"] != "succeeded":
        raise SystemExit(f"bench: pipeline failed: {summary['error']}")
    outs = {k: v["outputs"] for k, v in summary["components"].items()}
    return outs["ingest"]["examples"], outs["transform"]["transform_graph"]


def _epoch_timer(times: list[float]):
    import keras

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.t)

    return Timer()


def _model(spec):
    import keras

    from kfx import models
    from kfx.components.training.fit import compile_model
    from kfx.models.space import defaults
    from kfx.pipeline.config import load_config

    keras.utils.set_random_seed(0)
    fam = models.get("mlp")
    hp = defaults(fam.SPACE)
    model = fam.build(spec["outputs"], spec["task"], hp)
    compile_model(model, spec["task"], load_config(None).stage("train"), hp["learning_rate"], 100)
    return model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples")
    p.add_argument("--transform-graph")
    p.add_argument("--root", help="artifact root for the Adult run (default: a temp dir)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=256)
    args = p.parse_args(argv)

    import numpy as np

    from kfx.components.training.data import dataset
    from kfx.models.preprocess import load_transform, make_preprocessor

    examples, graph = _artifacts(args)
    spec = load_transform(graph)
    rows = spec["train_rows"]
    pre = make_preprocessor(spec)

    results = {}
    # 1) the kfx tf.data pipeline from the TFRecord artifacts.
    ds = dataset(examples, "train", spec, pre, args.batch_size, shuffle=True, cache=True)
    times: list[float] = []
    _model(spec).fit(ds, epochs=args.epochs, verbose=0, callbacks=[_epoch_timer(times)])
    results["tf.data from TFRecord (kfx)"] = rows * (len(times) - 1) / sum(times[1:])

    # 2) the same preprocessed rows as in-memory arrays.
    full = next(iter(dataset(examples, "train", spec, pre, rows, cache=False)))
    x = {k: np.asarray(v) for k, v in full[0].items()}
    y = np.asarray(full[1])
    times = []
    _model(spec).fit(x, y, batch_size=args.batch_size, epochs=args.epochs, shuffle=True, verbose=0,
                     callbacks=[_epoch_timer(times)])
    results["in-memory tensors"] = rows * (len(times) - 1) / sum(times[1:])

    base = results["in-memory tensors"]
    print(f"\ntraining throughput, model mlp (defaults), batch {args.batch_size}, {rows:,} train rows, "
          f"epochs 2..{args.epochs}")
    print(f"{'input':<30} {'examples/s':>12} {'ratio':>7}")
    for name, eps in results.items():
        print(f"{name:<30} {eps:>12,.0f} {eps / base:>7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
