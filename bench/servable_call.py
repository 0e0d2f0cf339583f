"""Benchmark: one in-process signature call at batch 1, the three ways of running a SavedModel.

- kfx Servable.run_unbatched: the C++ callable prepared at load (Session::MakeCallable), fed by
  tensor name like TF Serving's Session::Run, plus kfx's dtype check;
- Session.make_callable(feed_list=...): what kfx used before; it goes through Python's
  Session.run, which also checks fed shapes against the placeholders' static shapes;
- tf.saved_model.load(...).signatures["serving_default"]: the TF2 concrete function (bench/serving.py's floor).

The three run in rounds side by side in one process (the machine is shared and noisy) and the
table gives calls/s and the ratio to the Servable path.

    python bench/servable_call.py [--model-dir PATH] [--seconds 3] [--rounds 3]
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tensorflow as tf  # noqa: E402
from serving import build_stand_in, default_model_dir, feeds_for  # noqa: E402  (bench/serving.py)

from kfx.serving.inference import check_inputs  # noqa: E402
from kfx.serving.servable import DEFAULT_SIGNATURE, Servable  # noqa: E402


def rate(call, seconds: float) -> float:
    """Calls per second of `call()` over `seconds`, after a warm-up."""
    for _ in range(20):
        call()
    count, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        call()
        count += 1
    return count / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", help="SavedModel version directory (default: as bench/serving.py)")
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each measurement")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the three measurements")
    args = parser.parse_args()
    model_dir = args.model_dir or default_model_dir()
    if model_dir is None:
        import tempfile

        model_dir = build_stand_in(os.path.join(tempfile.mkdtemp(), "1"))
    servable = Servable("adult", 1, model_dir)
    signature = servable.signatures[DEFAULT_SIGNATURE]
    feeds = feeds_for(signature)
    outputs = tuple(sorted(signature.outputs))
    graph = servable._graph  # noqa: SLF001 - the same session, fed the Session.run way
    session_run = servable._session.make_callable(  # noqa: SLF001
        [graph.get_tensor_by_name(signature.outputs[a].name) for a in outputs],
        feed_list=[graph.get_tensor_by_name(signature.inputs[a].name) for a in sorted(signature.inputs)])
    ordered = [feeds[a] for a in sorted(signature.inputs)]
    concrete = tf.saved_model.load(model_dir).signatures[DEFAULT_SIGNATURE]
    constants = {alias: tf.constant(value) for alias, value in feeds.items()}
    kwargs = {arg: constants[spec.name] for arg, spec in concrete.structured_input_signature[1].items()}
    ways = {
        "kfx Servable (C++ callable)": lambda: (check_inputs(signature, feeds),
                                                servable.run_unbatched(DEFAULT_SIGNATURE, feeds, outputs)),
        "Session.make_callable(feed_list)": lambda: session_run(*ordered),
        "tf.saved_model.load signature": lambda: concrete(**kwargs),
    }
    results = {name: [] for name in ways}
    for _ in range(args.rounds):
        for name, call in ways.items():
            results[name].append(rate(call, args.seconds))
    base = max(results["kfx Servable (C++ callable)"])
    print(f"model: {model_dir}  ({len(feeds)} inputs, batch 1; best of {args.rounds} rounds of {args.seconds}s)")
    print("| way                               | calls/s | vs kfx Servable |")
    print("|-----------------------------------|--------:|----------------:|")
    for name, rates in results.items():
        print(f"| {name:<33} | {max(rates):7.0f} | {max(rates) / base:14.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
