"""Benchmark: Predict over loopback gRPC (kfx serve) vs the same SavedModel signature in-process.

Prints one table: latency p50/p99 and throughput at batch 1 with 1, 8 and 32 concurrent
clients, without and with server-side batching, next to an in-process loop calling the
signature directly (the floor no server can beat).

Model: --model-dir (a SavedModel version directory); by default the latest version under
runs/serving/adult/ when it exists, else a stand-in Keras model with Adult's raw-feature
signature built here.

    python bench/serving.py [--model-dir PATH] [--seconds 5]
"""

import argparse
import concurrent.futures
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # noqa: E402

from kfx.serving import tensors# noqa: E402

NUMERIC = ["age", "fnlwgt", "education-num", "capital-gain", "capital-loss", "hours-per-week"]
CATEGORICAL = {"workclass": "Private", "education": "Bachelors", "marital-status": "Never-married",
               "occupation": "Tech-support", "relationship": "Not-in-family", "race": "White",
               "sex": "Female", "native-country": "United-States"}
ROW = {"age": 39, "fnlwgt": 77516, "education-num": 13, "capital-gain": 2174, "capital-loss": 0,
       "hours-per-week": 40, **CATEGORICAL}
BATCHING = ("max_batch_size { value: 32 }\nbatch_timeout_micros { value: 500 }\n"
            "max_enqueued_batches { value: 1000 }\nnum_batch_threads { value: 2 }\n")


def build_stand_in(path: str) -> str:
    """A small Keras model on Adult's raw features, exported with named outputs."""
    import keras

    inputs = {name: keras.Input((1,), name=name, dtype="int64") for name in NUMERIC}
    inputs.update({name: keras.Input((1,), name=name, dtype="string") for name in CATEGORICAL})
    numeric = keras.layers.Concatenate()([keras.ops.cast(inputs[n], "float32") for n in NUMERIC])
    numeric = keras.layers.Normalization(mean=[38.0, 190000.0, 10.0, 1000.0, 90.0, 40.0],
                                         variance=[180.0, 1e10, 6.0, 5e7, 1.6e5, 150.0])(numeric)
    encoded = [keras.layers.StringLookup(vocabulary=[value, "other"], output_mode="one_hot")(inputs[name])
               for name, value in CATEGORICAL.items()]
    hidden = keras.layers.Dense(32, activation="relu")(keras.layers.Concatenate()([numeric, *encoded]))
    probability = keras.layers.Dense(1, activation="sigmoid")(hidden)
    model = keras.Model(inputs, probability)

    def serve(features):
        p = model(features)
        return {"probabilities": tf.concat([1.0 - p, p], axis=1),
                "classes": tf.where(p[:, 0] > 0.5, ">50K", "<=50K")}

    # ExportArchive tracks the model's variables so every loader (TF Serving's too) restores them.
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serve, input_signature=[
        {n: tf.TensorSpec([None, 1], tf.int64, name=n) for n in NUMERIC}
        | {n: tf.TensorSpec([None, 1], tf.string, name=n) for n in CATEGORICAL}])
    archive.write_out(path, verbose=False)
    return path


def default_model_dir() -> str | None:
    base = os.path.join(REPO, "runs", "serving", "adult")
    versions = [int(v) for v in os.listdir(base) if v.isdigit()] if os.path.isdir(base) else []
    return os.path.join(base, str(max(versions))) if versions else None


def feeds_for(signature) -> dict:
    """Batch-1 inputs matching the signature's declared dtypes and ranks."""
    feeds = {}
    for alias, info in signature.inputs.items():
        rank = len(info.tensor_shape.dim) if not info.tensor_shape.unknown_rank else 2
        value = ROW.get(alias, "x" if info.dtype == tf.string.as_datatype_enum else 0)
        dtype = tensors.numpy_dtype(info.dtype)
        array = np.array([value.encode() if isinstance(value, str) else value], dtype=dtype)
        feeds[alias] = array.reshape((1,) * max(rank, 1))
    return feeds


def percentile_row(name: str, latencies: list, seconds: float, floor_p50: float | None) -> str:
    lat = np.array(latencies) * 1e3
    p50, p99 = np.percentile(lat, 50), np.percentile(lat, 99)
    overhead = f"{p50 - floor_p50:+.2f}" if floor_p50 is not None else "-"
    return f"| {name:<38} | {p50:7.2f} | {p99:7.2f} | {len(lat) / seconds:9.0f} | {overhead:>9} |"


def in_process(version_dir: str, feeds: dict, seconds: float) -> list:
    signature = tf.saved_model.load(version_dir).signatures["serving_default"]
    args = {alias: tf.constant(value) for alias, value in feeds.items()}
    for _ in range(20):
        signature(**args)
    latencies, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        signature(**args)
        latencies.append(time.perf_counter() - start)
    return latencies


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(base: str, workdir: str, batching: bool) -> tuple:
    port = free_port()
    args = [sys.executable, "-m", "serving", f"--port={port}", f"--model_base_path={base}", "--model_name=adult"]
    if batching:
        path = os.path.join(workdir, "batching.config")
        with open(path, "w") as handle:
            handle.write(BATCHING)
        args += ["--enable_batching", f"--batching_parameters_file={path}"]
    log = open(os.path.join(workdir, f"server-{port}.log"), "w")
    process = subprocess.Popen(args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    grpc.channel_ready_future(channel).result(timeout=180)
    return process, channel


def grpc_load(channel, request, clients: int, seconds: float) -> tuple:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    for _ in range(20):
        stub.Predict(request, timeout=30)
    latencies, errors, stop = [], [], threading.Event()

    def worker():
        mine = []
        while not stop.is_set():
            start = time.perf_counter()
            try:
                stub.Predict(request, timeout=30)
            except grpc.RpcError as exc:
                errors.append(exc.code())
                continue
            mine.append(time.perf_counter() - start)
        latencies.extend(mine)

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(worker) for _ in range(clients)]
        time.sleep(seconds)
        stop.set()
        for future in futures:
            future.result()
    return latencies, errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", help="SavedModel version directory (default: see module doc)")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each measurement")
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="kfx-bench-serving-")
    version_dir = args.model_dir or default_model_dir()
    if version_dir is None:
        version_dir = build_stand_in(os.path.join(workdir, "model", "1"))
        print("No model under runs/serving/adult/: using a stand-in Keras model with Adult's raw-feature signature.")
    version_dir = os.path.abspath(version_dir)
    base = os.path.join(workdir, "base")
    os.makedirs(base, exist_ok=True)
    os.symlink(version_dir, os.path.join(base, "1"))  # serve exactly this version
    feeds = feeds_for(_signature_def(version_dir))
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "adult"
    for alias, array in feeds.items():
        request.inputs[alias].CopyFrom(tensors.to_proto(array))

    print(f"model: {version_dir}\nbatch 1, {args.seconds:.0f} s per row, {os.cpu_count()} CPUs "
          "(clients, server and floor share them)\n")
    floor = in_process(version_dir, feeds, args.seconds)
    floor_p50 = float(np.percentile(np.array(floor) * 1e3, 50))
    rows = [percentile_row("in-process signature loop (floor)", floor, args.seconds, None)]
    all_errors = []
    for batching in (False, True):
        process, channel = start_server(base, workdir, batching)
        try:
            for clients in (1, 8, 32):
                latencies, errors = grpc_load(channel, request, clients, args.seconds)
                all_errors += errors
                label = f"gRPC Predict, {clients:>2} client{'s' if clients > 1 else ' '}" + (
                    ", batching" if batching else "")
                rows.append(percentile_row(label, latencies, args.seconds, floor_p50))
        finally:
            channel.close()
            process.terminate()
            process.wait(30)
    print("| setup                                  |  p50 ms |  p99 ms |     req/s | p50-floor |")
    print("|----------------------------------------|---------|---------|-----------|-----------|")
    print("\n".join(rows))
    print(f"\nerrors: {len(all_errors)}")
    return 1 if all_errors else 0


def _signature_def(version_dir: str):
    from tensorflow.core.protobuf import saved_model_pb2

    with tf.io.gfile.GFile(os.path.join(version_dir, "saved_model.pb"), "rb") as handle:
        saved_model = saved_model_pb2.SavedModel.FromString(handle.read())
    return saved_model.meta_graphs[0].signature_def["serving_default"]


if __name__ == "__main__":
    sys.exit(main())
