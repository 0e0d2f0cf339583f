"""The model server: wires the manager, gRPC services, health, REST and metrics together.

`ModelServer(options).start()` behaves like `tensorflow_model_server` started with the same
flags: it loads the configured models (waiting until they are AVAILABLE), then listens for
gRPC (and REST when rest_api_port > 0).

gRPC (grpc.aio) and REST share one asyncio event loop on its own thread, which only moves
messages; the calls' work runs on a pool of inference threads (TensorFlow releases the GIL
while a model runs). A worker process of a multi-process server runs one ModelServer with
`reuse_port=True`, so that several processes listen on the same ports.
"""

import asyncio
import concurrent.futures
import dataclasses
import logging
import threading
import time

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2

from kfx.serving import batching, grpc_service, manager, metrics as metrics_lib, profiler, protos, rest, workers
from kfx.serving.core import ServingCore

LOG = logging.getLogger(__name__)

DEFAULT_PROMETHEUS_PATH = "/monitoring/prometheus/metrics"
MAX_MESSAGE_SIZE = 2**31 - 1  # TF Serving: builder.SetMaxMessageSize(kint32max)
SERVICE_NAMES = ("tensorflow.serving.PredictionService", "tensorflow.serving.ModelService")


@dataclasses.dataclass(frozen=True)
class ServerOptions:
    """Server settings; field names and defaults are tensorflow_model_server's flags."""

    port: int = 8500
    host: str = "127.0.0.1"
    rest_api_port: int = 0
    rest_api_num_threads: int = 0
    rest_api_timeout_in_ms: int = 30000
    model_name: str = "default"
    model_base_path: str = ""
    model_config_file: str = ""
    model_config_file_poll_wait_seconds: int = 0
    file_system_poll_wait_seconds: int = 1
    enable_batching: bool = False
    batching_parameters_file: str = ""
    monitoring_config_file: str = ""
    enable_model_warmup: bool = True
    num_request_iterations_for_warmup: int = 1
    grpc_channel_arguments: str = ""
    grpc_max_threads: int = 0
    ssl_config_file: str = ""
    max_num_load_retries: int = 5
    load_retry_interval_micros: int = 60_000_000
    allow_version_labels_for_unavailable_models: bool = False
    saved_model_tags: str = "serve"
    enable_signature_method_name_check: bool = False
    num_load_threads: int = 0
    shutdown_grace_seconds: float = 10.0
    grpc_socket_path: str = ""
    prefer_tflite_model: bool = False
    enable_profiler: bool = True


def model_server_config(options: ServerOptions) -> model_server_config_pb2.ModelServerConfig:
    """The ModelServerConfig: the --model_config_file, or one model from --model_name/--model_base_path.

    Raises:
        ValueError: when neither is given or the file does not parse.
    """
    config = model_server_config_pb2.ModelServerConfig()
    if options.model_config_file:
        return protos.read_text_proto(options.model_config_file, config)
    if not options.model_base_path:
        raise ValueError("Both server_model_config_file and model_base_path are empty!")
    model = config.model_config_list.config.add()
    model.name, model.base_path, model.model_platform = options.model_name, options.model_base_path, "tensorflow"
    return config


def parse_channel_arguments(text: str) -> list:
    """--grpc_channel_arguments "k=v,k2=v2" -> [(k, v)] with integer values as ints."""
    arguments = []
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        arguments.append((key.strip(), int(value) if value.strip().lstrip("-").isdigit() else value.strip()))
    return arguments


class ModelServer:
    """A running kfx serve instance.

    Args:
        options: ServerOptions.
        reuse_port: listen with SO_REUSEPORT (gRPC and REST), so that several server processes
            can share the ports; the kernel spreads new connections over them.
    """

    def __init__(self, options: ServerOptions, reuse_port: bool = False):
        self.options = options
        self._group = workers.Member.from_env()  # None unless a --num_workers supervisor started it
        self.reuse_port = reuse_port or self._group is not None
        self.metrics = metrics_lib.Metrics()
        self._batching = None
        self._grpc = None
        self._gate = grpc_service.Gate()
        self._http = None
        self._health = None
        self._loop = None
        self._executor = None
        self._stop = threading.Event()
        self._config_text = None

    def start(self) -> None:
        """Loads the models and starts listening. Returns once the server is serving.

        Raises:
            ValueError: for unreadable flag files or configs, or a port that cannot be bound.
            errors.ServingError: when the models cannot be loaded (TF Serving fails to start too).
        """
        opts = self.options
        if opts.enable_batching:
            params = protos.BatchingParameters()
            if opts.batching_parameters_file:
                protos.read_text_proto(opts.batching_parameters_file, params)
            self._batching = batching.BatchingQueues(params, on_batch=self.metrics.record_batch)
        self.manager = manager.ModelManager(
            manager.ManagerOptions(
                file_system_poll_wait_seconds=opts.file_system_poll_wait_seconds,
                enable_model_warmup=opts.enable_model_warmup,
                num_request_iterations_for_warmup=opts.num_request_iterations_for_warmup,
                max_num_load_retries=opts.max_num_load_retries,
                load_retry_interval_micros=opts.load_retry_interval_micros,
                allow_version_labels_for_unavailable_models=opts.allow_version_labels_for_unavailable_models,
                saved_model_tags=tuple(t for t in opts.saved_model_tags.split(",") if t),
                enable_signature_method_name_check=opts.enable_signature_method_name_check,
                num_load_threads=opts.num_load_threads or 2, prefer_tflite_model=opts.prefer_tflite_model),
            batching=self._batching, on_state=self.metrics.record_state)
        self.core = ServingCore(self.manager, self.metrics)
        config = model_server_config(opts)
        self.manager.reload_config(config, wait=False)
        self.manager.start_polling()  # before waiting: a base path with no version yet gets one later
        self.manager.wait_until_available([m.name for m in config.model_config_list.config])
        if opts.model_config_file and opts.model_config_file_poll_wait_seconds > 0:
            with open(opts.model_config_file, encoding="utf-8") as handle:
                self._config_text = handle.read()
            threading.Thread(target=self._poll_config_file, name="config-poll", daemon=True).start()
        # Calls run here; a gRPC Predict waiting for its batch awaits on the loop and holds none.
        # Every call in flight (including one waiting for its batch) holds an inference thread.
        self._executor = concurrent.futures.ThreadPoolExecutor(opts.grpc_max_threads or 128, "inference")
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="serving-loop", daemon=True).start()
        self._on_loop(self._start_grpc())
        if opts.rest_api_port > 0:
            self._on_loop(self._start_rest())
        if self._group is not None:
            self._group.join(self)

    def _on_loop(self, coroutine):
        """Runs a coroutine on the server's event loop and returns its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    async def _start_grpc(self) -> None:
        opts = self.options
        channel_options = [("grpc.max_send_message_length", MAX_MESSAGE_SIZE),
                           ("grpc.max_receive_message_length", MAX_MESSAGE_SIZE),
                           ("grpc.so_reuseport", int(self.reuse_port))]
        channel_options += parse_channel_arguments(opts.grpc_channel_arguments)
        self._grpc = grpc.aio.server(options=channel_options)
        grpc_service.add_services(self._grpc, self.core, self._executor, self._gate)
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._grpc)
        for name in ("",) + SERVICE_NAMES:
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if opts.enable_profiler:
            profiler.add_service(self._grpc, self._executor)
        # TF Serving also listens on a Unix domain socket (--grpc_socket_path), with the same credentials.
        addresses = [f"{opts.host}:{opts.port}"] + [f"unix:{opts.grpc_socket_path}"] * bool(opts.grpc_socket_path)
        credentials = None
        if opts.ssl_config_file:
            ssl = protos.read_text_proto(opts.ssl_config_file, protos.SSLConfig())
            credentials = grpc.ssl_server_credentials(
                [(ssl.server_key.encode(), ssl.server_cert.encode())],
                root_certificates=ssl.custom_ca.encode() or None, require_client_auth=ssl.client_verify)
        for address in addresses:
            try:
                bound = (self._grpc.add_secure_port(address, credentials) if credentials
                         else self._grpc.add_insecure_port(address))
            except RuntimeError:
                bound = 0
            if not bound:
                raise ValueError(f"Failed to bind gRPC server to {address}")
        await self._grpc.start()
        LOG.info("Running gRPC ModelServer at %s ...", " and ".join(addresses))

    async def _start_rest(self) -> None:
        opts = self.options
        metrics_path = None
        if opts.monitoring_config_file:
            monitoring = protos.read_text_proto(opts.monitoring_config_file, protos.MonitoringConfig())
            if monitoring.prometheus_config.enable:
                metrics_path = monitoring.prometheus_config.path or DEFAULT_PROMETHEUS_PATH
        api = rest.RestApi(self.core, opts.rest_api_timeout_in_ms)
        self._http = rest.HttpServer(api, self._executor, self.metrics, metrics_path)
        try:
            await self._http.start(opts.host, opts.rest_api_port, self.reuse_port)
        except OSError as exc:  # a port in use: "Failed to start server" and exit 255, as for gRPC's port
            raise ValueError(f"Failed to start HTTP Server at {opts.host}:{opts.rest_api_port}: {exc}") from None
        LOG.info("Exporting HTTP/REST API at:%s:%s ...", opts.host, opts.rest_api_port)

    def _poll_config_file(self) -> None:
        while not self._stop.wait(self.options.model_config_file_poll_wait_seconds):
            try:
                with open(self.options.model_config_file, encoding="utf-8") as handle:
                    text = handle.read()
                if text != self._config_text:
                    self._config_text = text
                    self.manager.reload_config(model_server_config(self.options), wait=False)
            except Exception:  # a bad edit must not stop the server; the log says why
                LOG.exception("Failed to reload --model_config_file")

    def wait(self) -> None:
        """Blocks until `stop` is called (or a SIGTERM/SIGINT handler asks for it).

        Wakes twice a second: Python runs signal handlers only in the main thread, and a signal
        the kernel hands to another thread (gRPC's, TensorFlow's) does not interrupt a main thread
        asleep in a lock, so an untimed wait could leave a SIGTERM unhandled.
        """
        while not self._stop.wait(0.5):
            pass

    def stop(self, grace: float | None = None) -> bool:
        """Stops accepting requests, lets in-flight ones finish, unloads the models.

        New gRPC calls get UNAVAILABLE, new REST connections are refused (a request on an open
        keep-alive connection gets 503); requests already running get up to `grace` seconds
        (default --shutdown_grace_seconds), after which gRPC cancels them.

        Returns:
            False when model runs were still going at the end of the grace period (their
            threads are left running; the caller may exit without waiting for them).
        """
        grace = self.options.shutdown_grace_seconds if grace is None else grace
        deadline = time.monotonic() + grace
        self._stop.set()
        if self._group is not None:
            self._group.leave()
        with self._gate.idle:
            self._gate.draining = True
        if self._health is not None:
            self._on_loop(self._health.enter_graceful_shutdown())
        if self._http is not None:
            self._on_loop(self._http.close())
            if not self._http.wait_idle(deadline):
                LOG.warning("%d REST requests still running at the end of the shutdown grace period",
                            self._http.in_flight)
        if self._grpc is not None:
            if not self._gate.drain(deadline):
                LOG.warning("%d gRPC calls still running at the end of the shutdown grace period",
                            self._gate.in_flight)
            self._on_loop(self._grpc.stop(max(deadline - time.monotonic(), 0)))
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._executor.shutdown(wait=False)
        if self._batching is not None:
            self._batching.stop()
        return self.manager.stop(deadline)
