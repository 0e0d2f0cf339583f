"""Command line: `kfx serve` (tensorflow_model_server's flags) and `kfx predict`.

TensorFlow is imported inside the handlers only, so `kfx --help` stays fast.
"""

import argparse
import dataclasses
import json
import sys


def _bool(text: str) -> bool:
    value = str(text).strip().lower()
    if value in ("1", "true", "t", "yes", "y"):
        return True
    if value in ("0", "false", "f", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


# (flag, type, default, help) -- names and defaults are tensorflow_model_server's.
_SERVE_FLAGS = [
    ("port", int, 8500, "TCP port for the gRPC API."),
    ("grpc_socket_path", str, "", "If non-empty, also serve the gRPC API on this Unix domain socket."),
    ("host", str, "127.0.0.1", "Address to bind (kfx addition; TF Serving binds all interfaces)."),
    ("rest_api_port", int, 0, "Port for the HTTP/REST API; 0 disables it."),
    ("rest_api_num_threads", int, 0, "Accepted for compatibility; REST requests run on the inference threads."),
    ("rest_api_timeout_in_ms", int, 30000, "Timeout for HTTP/REST API calls."),
    ("model_name", str, "default", "Name of the model (ignored with --model_config_file)."),
    ("model_base_path", str, "", "Path to the model's versions (ignored with --model_config_file)."),
    ("model_config_file", str, "", "ModelServerConfig text proto listing the models to serve."),
    ("model_config_file_poll_wait_seconds", int, 0, "Re-read --model_config_file every N seconds; 0: never."),
    ("file_system_poll_wait_seconds", int, 1, "Poll the base paths for new versions every N seconds."),
    ("enable_batching", bool, False, "Enable server-side batching."),
    ("batching_parameters_file", str, "", "BatchingParameters text proto."),
    ("monitoring_config_file", str, "", "MonitoringConfig text proto (Prometheus endpoint on the REST port)."),
    ("enable_model_warmup", bool, True, "Replay assets.extra/tf_serving_warmup_requests before serving."),
    ("num_request_iterations_for_warmup", int, 1, "Times each warmup request is replayed."),
    ("grpc_channel_arguments", str, "", "Comma separated gRPC server arguments, e.g. grpc.max_connection_age_ms=2000."),
    ("grpc_max_threads", int, 0, "Max gRPC server threads (0: 128)."),
    ("ssl_config_file", str, "", "SSLConfig text proto; enables TLS on the gRPC port."),
    ("max_num_load_retries", int, 5, "Retries of a failed model load."),
    ("load_retry_interval_micros", int, 60_000_000, "Interval between load retries."),
    ("allow_version_labels_for_unavailable_models", bool, False, "Allow labels on versions not yet loaded."),
    ("saved_model_tags", str, "serve", "Comma separated MetaGraph tags to load."),
    ("enable_signature_method_name_check", bool, False, "Check SignatureDef method names as TF1 did."),
    ("num_load_threads", int, 0, "Threads loading models (0: 2)."),
    ("prefer_tflite_model", bool, False, "Serve <version>/model.tflite with TF Lite when it exists."),
    ("enable_profiler", bool, True, "Serve tensorflow.ProfilerService on the gRPC port."),
    ("num_workers", int, 1, "Server processes sharing the ports (SO_REUSEPORT), each loading the models "
     "(kfx addition; 1 is one process, as TF Serving)."),
    ("shutdown_grace_seconds", float, 10.0, "On SIGTERM/SIGINT, seconds in-flight requests get to finish "
     "(kfx addition; TF Serving ignores SIGTERM)."),
]


def add_serve_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Adds tensorflow_model_server's flags (--flag=value or --flag value; bools bare too)."""
    for name, kind, default, help_text in _SERVE_FLAGS:
        if kind is bool:
            parser.add_argument(f"--{name}", type=_bool, nargs="?", const=True, default=default, help=help_text)
        else:
            parser.add_argument(f"--{name}", type=kind, default=default, help=help_text)
    return parser


def serve(args: argparse.Namespace) -> int:
    """Runs the model server until SIGINT/SIGTERM, then drains it (see ModelServer.stop). Returns the exit code."""
    import logging
    import os
    import signal

    from kfx.pipeline import logs

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.num_workers != 1:  # a supervisor: the workers are `python -m kfx.serving` processes
        from kfx.serving import workers

        return workers.supervise(args)
    logs.setup()  # before TensorFlow is imported
    from kfx.serving import errors
    from kfx.serving.server import ModelServer, ServerOptions

    fields = {f.name for f in dataclasses.fields(ServerOptions)}
    options = ServerOptions(**{k: v for k, v in vars(args).items() if k in fields})
    server = ModelServer(options)
    try:
        server.start()
    except (ValueError, errors.ServingError) as exc:
        # tensorflow_model_server's words, on stdout, and its exit status (main returns -1).
        code = exc.code.name if isinstance(exc, errors.ServingError) else "INVALID_ARGUMENT"
        print(f"Failed to start server. Error: {code}: {exc}", flush=True)
        return 255
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: server._stop.set())
    server.wait()
    if not server.stop():
        # A model run outlived the grace period: its request is already cancelled, and waiting for
        # the thread would hold the exit past the grace period that the operator gave.
        logging.getLogger(__name__).warning("Model runs still going after --shutdown_grace_seconds; exiting")
        logging.shutdown()
        os._exit(0)
    return 0


def predict(args: argparse.Namespace) -> int:
    """Sends one Predict request and prints the outputs as JSON. Returns the exit code."""
    import grpc

    from kfx.serving.client import ServingClient

    try:
        inputs = json.loads(args.json)
    except ValueError as exc:
        print(f"--json is not valid JSON: {exc}", file=sys.stderr)
        return 2
    if not isinstance(inputs, dict):
        print("--json must be an object mapping input names to values", file=sys.stderr)
        return 2
    with ServingClient(args.server, timeout=args.timeout) as client:
        try:
            outputs = client.predict(args.model, inputs, version=args.version, label=args.label,
                                     signature=args.signature)
        except grpc.RpcError as exc:
            print(f"{exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    print(json.dumps({name: _jsonable(value) for name, value in outputs.items()}))
    return 0


def _jsonable(array):
    """An output array as JSON-able lists, bytes decoded as UTF-8."""
    import numpy as np

    if array.dtype == object:
        array = np.vectorize(lambda b: b.decode("utf-8", "replace"), otypes=[object])(array)
    return array.tolist()


def add_parsers(subparsers) -> None:
    """Registers the `serve` and `predict` subcommands on an argparse subparsers object."""
    serve_parser = subparsers.add_parser(
        "serve", help="Serve SavedModels over TensorFlow Serving's gRPC/REST APIs.",
        description="A TensorFlow-Serving-compatible model server; takes tensorflow_model_server's flags.")
    add_serve_arguments(serve_parser).set_defaults(func=serve)
    predict_parser = subparsers.add_parser("predict", help="Send one Predict request to a model server.")
    predict_parser.add_argument("--server", default="localhost:8500", help="HOST:PORT of the gRPC API.")
    predict_parser.add_argument("--model", required=True, help="Model name.")
    version = predict_parser.add_mutually_exclusive_group()
    version.add_argument("--version", type=int, help="Model version (default: latest).")
    version.add_argument("--label", help="Model version label.")
    predict_parser.add_argument("--signature", default="", help="Signature name (default: serving_default).")
    predict_parser.add_argument("--json", required=True, help='Inputs, e.g. \'{"x": [[1.0, 2.0]]}\'.')
    predict_parser.add_argument("--timeout", type=float, default=10.0, help="Seconds per attempt.")
    predict_parser.set_defaults(func=predict)


def main(argv=None) -> int:
    """`python -m serving`: the serve command alone."""
    parser = add_serve_arguments(argparse.ArgumentParser(prog="python -m serving", description=serve.__doc__))
    return serve(parser.parse_args(argv))
