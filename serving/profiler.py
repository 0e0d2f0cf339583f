"""tensorflow.ProfilerService on the gRPC port, as tensorflow_model_server registers it (--enable_profiler).

TensorBoard's "capture profile" and `tf.profiler.experimental.client.trace(...)` call its
Profile method: profile this process for `duration_ms`, write the trace under the request's
`repository_root` (`<logdir>/plugins/profile`, where TensorBoard reads it) and answer whether the
trace is empty. The TensorFlow wheel ships the profiler but not this service's Python protos, so
the few fields used are declared here (tsl/profiler/protos/profiler_service.proto); the others
are kept as unknown fields.
"""

import asyncio
import functools
import logging
import threading

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

LOG = logging.getLogger(__name__)

SERVICE = "tensorflow.ProfilerService"
PLUGIN_DIR = "/plugins/profile"  # GetTensorBoardProfilePluginDir: <logdir>/plugins/profile
_F = descriptor_pb2.FieldDescriptorProto
_MESSAGES = {
    "ProfileRequest": [("duration_ms", 1, _F.TYPE_UINT64), ("repository_root", 5, _F.TYPE_STRING),
                       ("session_id", 6, _F.TYPE_STRING), ("host_name", 7, _F.TYPE_STRING)],
    "ProfileResponse": [("empty_trace", 7, _F.TYPE_BOOL)],
}


@functools.cache
def _classes() -> dict:
    pool = descriptor_pool.DescriptorPool()
    file_proto = descriptor_pb2.FileDescriptorProto(
        name="kfx/serving/profiler_service.proto", package="tensorflow", syntax="proto3")
    for name, fields in _MESSAGES.items():
        message = file_proto.message_type.add(name=name)
        for field_name, number, ftype in fields:
            message.field.add(name=field_name, number=number, type=ftype, label=_F.LABEL_OPTIONAL)
    pool.Add(file_proto)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.{name}"))
            for name in _MESSAGES}


class ProfilerService:
    """Profile: one profiler session at a time over this process (TF's ProfilerServiceImpl).

    The profiling itself blocks for duration_ms, so it runs on the server's executor, off the
    event loop that serves every other call.
    """

    def __init__(self, executor):
        self._busy = threading.Lock()
        self._executor = executor

    async def profile(self, request, context):
        """Profiles for request.duration_ms (less if the client goes away), exports under request.repository_root."""
        if not self._busy.acquire(blocking=False):
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, "Another profiling session is active.")
        stop = threading.Event()
        work = asyncio.get_running_loop().run_in_executor(self._executor, _profile, request, stop)
        try:
            return await asyncio.shield(work)
        except RuntimeError as exc:  # the profiler could not start: TensorFlow's status, passed on
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        finally:
            # Over, or the client went away (the call is cancelled): end the trace now rather than hold
            # the profiler and an executor thread for the rest of duration_ms; free it once exported.
            stop.set()
            work.add_done_callback(lambda _: self._busy.release())


def _profile(request, stop: threading.Event):
    from tensorflow.python.profiler.internal import _pywrap_profiler

    root = request.repository_root
    logdir = root[:-len(PLUGIN_DIR)] if root.endswith(PLUGIN_DIR) else root
    session = _pywrap_profiler.ProfilerSession()
    try:
        session.start(logdir, {})
    except Exception as exc:  # noqa: BLE001 - TensorFlow raises its own status types
        raise RuntimeError(str(exc)) from exc
    stop.wait(request.duration_ms / 1000)
    session.export_to_tb()
    LOG.info("Profile of %d ms written under %s", request.duration_ms, root)
    return _classes()["ProfileResponse"](empty_trace=False)


def add_service(server: grpc.aio.Server, executor) -> None:
    """Registers tensorflow.ProfilerService (Profile) on the grpc.aio server; profiles run on executor."""
    classes = _classes()
    handler = grpc.unary_unary_rpc_method_handler(
        ProfilerService(executor).profile, request_deserializer=classes["ProfileRequest"].FromString,
        response_serializer=classes["ProfileResponse"].SerializeToString)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, {"Profile": handler})])
