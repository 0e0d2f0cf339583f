"""Benchmark: Predict against a real `python -m kfx.serving` vs the same signature in-process.

Prints one table: latency p50/p99, throughput and p50 overhead over the floor at batch 1 with
1, 8 and 32 concurrent gRPC clients, without and with server-side batching, plus REST at 32
clients, next to two in-process batch-1 loops: kfx's own Servable (the C++ callable the server
runs, loaded as the server loads it) and the `tf.saved_model.load` signature. The faster of the
two is the floor that ratios and overheads are computed against (its row says "(floor)"). The server is a subprocess; the clients run in another subprocess (asyncio, one
connection each), and every row states the CPU seconds the clients and the server used, so
the comparison is honest when they share the machine's cores.

Model: --model-dir (a SavedModel version directory); by default the latest version under
runs/serving/adult/ when it exists, else a stand-in Keras model with Adult's raw-feature
signature built here.

    python bench/serving.py [--model-dir PATH] [--seconds 5] [--server-arg=--num_workers=2 ...]
"""

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

NUMERIC = ["age", "fnlwgt", "education-num", "capital-gain", "capital-loss", "hours-per-week"]
CATEGORICAL = {"workclass": "Private", "education": "Bachelors", "marital-status": "Never-married",
               "occupation": "Tech-support", "relationship": "Not-in-family", "race": "White",
               "sex": "Female", "native-country": "United-States"}
ROW = {"age": 39, "fnlwgt": 77516, "education-num": 13, "capital-gain": 2174, "capital-loss": 0,
       "hours-per-week": 40, **CATEGORICAL}
BATCHING = ("max_batch_size { value: 32 }\nbatch_timeout_micros { value: 500 }\n"
            "max_enqueued_batches { value: 1000 }\nnum_batch_threads { value: 2 }\n"
            "allowed_batch_sizes: 4\nallowed_batch_sizes: 8\nallowed_batch_sizes: 16\nallowed_batch_sizes: 32\n")
CLIENTS = (1, 8, 32)
REST_CLIENTS = 32


def build_stand_in(path: str) -> str:
    """A small Keras model on Adult's raw features, exported with named outputs."""
    import keras
    import tensorflow as tf

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
    versions = [v for v in os.listdir(base) if v.isdigit()] if os.path.isdir(base) else []
    return os.path.join(base, max(versions, key=int)) if versions else None


def signature_def(version_dir: str):
    from tensorflow.core.protobuf import saved_model_pb2

    with open(os.path.join(version_dir, "saved_model.pb"), "rb") as handle:
        saved_model = saved_model_pb2.SavedModel.FromString(handle.read())
    return saved_model.meta_graphs[0].signature_def["serving_default"]


def feeds_for(signature) -> dict:
    """Batch-1 numpy inputs matching the signature's declared dtypes and ranks."""
    import numpy as np

    from kfx.serving import tensors

    feeds = {}
    for alias, info in signature.inputs.items():
        rank = len(info.tensor_shape.dim) if not info.tensor_shape.unknown_rank else 2
        value = ROW.get(alias, "x" if info.dtype == 7 else 0)  # 7: DT_STRING
        array = np.array([value.encode() if isinstance(value, str) else value], dtype=tensors.numpy_dtype(info.dtype))
        feeds[alias] = array.reshape((1,) * max(rank, 1))
    return feeds


def _loop(call, seconds: float) -> dict:
    """Calls `call()` for `seconds` after a warm-up: latencies, CPU seconds."""
    for _ in range(20):
        call()
    latencies, cpu, end = [], time.process_time(), time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - start)
    return {"latencies": latencies, "seconds": seconds, "errors": [], "cpu": time.process_time() - cpu}


def in_process(version_dir: str, feeds: dict, seconds: float) -> dict:
    """The in-process batch-1 loops: {name: result}; the faster of them is the floor.

    - kfx's Servable, loaded as the server loads a version, called as the server calls it
      (dtype check, then the C++ callable prepared at load): no transport, no protobuf;
    - the TF2 concrete function of `tf.saved_model.load(...).signatures["serving_default"]`.
    """
    import tensorflow as tf

    from kfx.serving.inference import check_inputs
    from kfx.serving.servable import DEFAULT_SIGNATURE, Servable

    servable = Servable("adult", 1, version_dir)
    signature = servable.signature(DEFAULT_SIGNATURE)
    outputs = tuple(sorted(signature.outputs))

    def servable_call():
        check_inputs(signature, feeds)
        servable.run_unbatched(DEFAULT_SIGNATURE, feeds, outputs)

    concrete = tf.saved_model.load(version_dir).signatures[DEFAULT_SIGNATURE]
    constants = {alias: tf.constant(value) for alias, value in feeds.items()}
    kwargs = {arg: constants[spec.name] for arg, spec in concrete.structured_input_signature[1].items()}
    results = {"in-process kfx Servable loop": _loop(servable_call, seconds),
               "in-process tf.saved_model.load loop": _loop(lambda: concrete(**kwargs), seconds)}
    servable.close()
    return results


def rate_of(result: dict) -> float:
    return len(result["latencies"]) / result["seconds"]


# ---- the client process ------------------------------------------------------------------

async def _grpc_clients(target: str, request_bytes: bytes, clients: int, seconds: float) -> tuple:
    import grpc

    options = [("grpc.use_local_subchannel_pool", 1)]  # one TCP connection per client
    channels = [grpc.aio.insecure_channel(target, options=options) for _ in range(clients)]
    calls = [c.unary_unary("/tensorflow.serving.PredictionService/Predict",
                           request_serializer=None, response_deserializer=None) for c in channels]
    latencies, errors = [], []

    async def client(call, until):
        while time.perf_counter() < until:
            start = time.perf_counter()
            try:
                await call(request_bytes, timeout=30)
            except grpc.RpcError as exc:
                errors.append(exc.code().name)
                continue
            latencies.append(time.perf_counter() - start)

    warm = time.perf_counter() + 1.0
    await asyncio.gather(*(client(call, warm) for call in calls))
    latencies.clear()
    begin = time.perf_counter()
    await asyncio.gather(*(client(call, begin + seconds) for call in calls))
    elapsed = time.perf_counter() - begin
    for channel in channels:
        await channel.close()
    return latencies, errors, elapsed


async def _rest_clients(host: str, port: int, body: bytes, path: str, clients: int, seconds: float) -> tuple:
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    latencies, errors = [], []

    async def client(until):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.perf_counter() < until:
                start = time.perf_counter()
                writer.write(head)
                status = (await reader.readline()).split(b" ", 2)[1]
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                if status != b"200":
                    errors.append(f"HTTP {status.decode()}")
                    continue
                latencies.append(time.perf_counter() - start)
        finally:
            writer.close()

    await asyncio.gather(*(client(time.perf_counter() + 1.0) for _ in range(clients)))
    latencies.clear()
    begin = time.perf_counter()
    await asyncio.gather(*(client(begin + seconds) for _ in range(clients)))
    return latencies, errors, time.perf_counter() - begin


def client_main(spec: dict) -> None:
    """Runs one load (spec from the parent on stdin) and prints its results as JSON."""
    cpu = time.process_time()
    if spec["kind"] == "grpc":
        result = asyncio.run(_grpc_clients(spec["target"], bytes.fromhex(spec["request"]),
                                           spec["clients"], spec["seconds"]))
    else:
        result = asyncio.run(_rest_clients("127.0.0.1", spec["port"], spec["body"].encode(), spec["path"],
                                           spec["clients"], spec["seconds"]))
    latencies, errors, elapsed = result
    print(json.dumps({"latencies": latencies, "errors": errors, "seconds": elapsed,
                      "cpu": time.process_time() - cpu}))


# ---- the parent --------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`python -m kfx.serving` on free ports; `cpu()` is the CPU seconds it (and any child) used."""

    def __init__(self, base: str, workdir: str, batching: bool, extra: list):
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        self.port, self.rest_port = free_port(), free_port()
        args = [sys.executable, "-m", "kfx.serving", f"--port={self.port}", f"--rest_api_port={self.rest_port}",
                f"--model_base_path={base}", "--model_name=adult", *extra]
        if batching:
            path = os.path.join(workdir, "batching.config")
            with open(path, "w") as handle:
                handle.write(BATCHING)
            args += ["--enable_batching", f"--batching_parameters_file={path}"]
        self.log = open(os.path.join(workdir, f"server-{self.port}.log"), "w")
        self.process = subprocess.Popen(args, cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT)
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            stub, deadline = health_pb2_grpc.HealthStub(channel), time.monotonic() + 300
            while True:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"server did not start; see {self.log.name}")
                try:
                    if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                        break
                except grpc.RpcError:
                    time.sleep(0.5)

    def cpu(self) -> float:
        import psutil

        process = psutil.Process(self.process.pid)
        total = 0.0
        for p in [process, *process.children(recursive=True)]:
            try:
                times = p.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                pass
        return total

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(60)
        self.log.close()


def run_clients(spec: dict, server: Server) -> dict:
    """Runs a client process against `server`; adds the server's CPU seconds for the same span."""
    before = server.cpu()
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--client"], input=json.dumps(spec),
                         capture_output=True, text=True, check=True, cwd=REPO).stdout
    result = json.loads(out)
    result["server_cpu"] = server.cpu() - before  # includes the client's 1 s warm-up
    return result


def row(name: str, result: dict, floor: dict) -> str:
    """One table row; ratio and p50 overhead are against `floor` (the fastest in-process loop)."""
    import numpy as np

    lat = np.array(result["latencies"] or [float("nan")]) * 1e3
    p50, p99, rate = np.percentile(lat, 50), np.percentile(lat, 99), rate_of(result)
    overhead = f"{p50 - np.percentile(np.array(floor['latencies']) * 1e3, 50):+.2f}"
    ratio = f"{rate / rate_of(floor):.2f}x"
    if "server_cpu" not in result:  # an in-process loop
        cpu, per_request = f"{result['cpu']:.1f} (in-process)", f"{result['cpu'] * 1e3 / max(rate * result['seconds'], 1):.2f}"
    else:
        cpu = f"{result['cpu']:.1f} / {result['server_cpu']:.1f}"
        # The server's CPU seconds include the client's 1 s warm-up at about the same rate.
        per_request = f"{result['server_cpu'] * 1e3 / max(rate * (result['seconds'] + 1), 1):.2f}"
    return (f"| {name:<44} | {p50:7.2f} | {p99:7.2f} | {rate:7.0f} | {ratio:>8} | {overhead:>9} | {cpu:>19} "
            f"| {per_request:>17} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", help="SavedModel version directory (default: see module doc)")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each measurement")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra flag for every server, repeatable (e.g. --server-arg=--num_workers=2)")
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)  # the client process
    args = parser.parse_args()
    if args.client:
        client_main(json.loads(sys.stdin.read()))
        return 0
    import numpy as np
    from tensorflow_serving.apis import predict_pb2

    from kfx.serving import tensors

    workdir = tempfile.mkdtemp(prefix="kfx-bench-serving-")
    version_dir = args.model_dir or default_model_dir()
    if version_dir is None:
        version_dir = build_stand_in(os.path.join(workdir, "model", "1"))
        print("No model under runs/serving/adult/: using a stand-in Keras model with Adult's raw-feature signature.")
    version_dir = os.path.abspath(version_dir)
    base = os.path.join(workdir, "base")
    os.makedirs(base, exist_ok=True)
    os.symlink(version_dir, os.path.join(base, "1"))  # serve exactly this version
    feeds = feeds_for(signature_def(version_dir))
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "adult"
    for alias, array in feeds.items():
        request.inputs[alias].CopyFrom(tensors.to_proto(array))
    instance = {alias: np.asarray(a[0]).astype(str if a.dtype == object else a.dtype).tolist()
                for alias, a in feeds.items()}
    rest_body = json.dumps({"instances": [instance]})  # the same row as the gRPC request

    print(f"model: {version_dir}\nbatch 1, {args.seconds:.0f} s per row, {os.cpu_count()} CPUs shared by the "
          f"floor, the clients and the server; server args: {' '.join(args.server_arg) or '-'}\n")
    loops = in_process(version_dir, feeds, args.seconds)
    floor_name = max(loops, key=lambda name: rate_of(loops[name]))
    floor = loops[floor_name]
    rows = [row(f"{name}{' (floor)' if name == floor_name else ''}", result, floor)
            for name, result in loops.items()]
    errors = []
    for batching in (False, True):
        server = Server(base, workdir, batching, args.server_arg)
        suffix = ", batching" if batching else ""
        try:
            for clients in CLIENTS:
                result = run_clients({"kind": "grpc", "target": f"127.0.0.1:{server.port}", "clients": clients,
                                      "request": request.SerializeToString().hex(), "seconds": args.seconds}, server)
                errors += result["errors"]
                rows.append(row(f"gRPC Predict, {clients:>2} client{'s' if clients > 1 else ' '}{suffix}",
                                result, floor))
            result = run_clients({"kind": "rest", "port": server.rest_port, "clients": REST_CLIENTS,
                                  "path": "/v1/models/adult:predict", "body": rest_body,
                                  "seconds": args.seconds}, server)
            errors += result["errors"]
            rows.append(row(f"REST predict, {REST_CLIENTS} clients{suffix}", result, floor))
        finally:
            server.close()
    print(f"floor = {floor_name} (the fastest in-process batch-1 loop); 'vs floor' and 'p50-floor' "
          "are against it.\n")
    print(f"| {'setup':<44} |  p50 ms |  p99 ms |   req/s | vs floor | p50-floor | "
          "CPU s client/server | server CPU ms/req |")
    print(f"|{'-' * 46}|---------|---------|---------|----------|-----------|"
          "---------------------|-------------------|")
    print("\n".join(rows))
    print(f"\nerrors: {len(errors)} {sorted(set(errors)) if errors else ''}".rstrip())
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
