"""gRPC servicers (grpc.aio): tensorflow.serving.PredictionService and ModelService over a ServingCore.

Predict is decoded and encoded on the event loop; its model run goes to the server's inference
threads (where TensorFlow releases the GIL), or, with batching, the call awaits its batch on the
loop without holding a thread. The other calls' work runs on the inference threads.
"""

import asyncio
import threading
import time

import grpc
from google.protobuf import message, message_factory
from tensorflow_serving.apis import (model_service_pb2, model_service_pb2_grpc, prediction_service_pb2,
                                     prediction_service_pb2_grpc)

from kfx.serving import errors

SHUTTING_DOWN = "Server is shutting down"
UNPARSABLE = "Failed to parse request"


class Gate:
    """Counts calls in flight; once draining, new calls are answered UNAVAILABLE.

    gRPC's own server.stop(grace) answers calls that arrive during the grace period CANCELLED;
    clients retry UNAVAILABLE (the code of a server going away), so kfx refuses them itself
    first. Health checks do not pass through the gate and report NOT_SERVING.
    """

    def __init__(self):
        self.draining, self.in_flight, self.idle = False, 0, threading.Condition()

    def enter(self) -> bool:
        """Counts a new call; False (not counted) once draining."""
        with self.idle:
            if self.draining:
                return False
            self.in_flight += 1
            return True

    def leave(self) -> None:
        with self.idle:
            self.in_flight -= 1
            self.idle.notify_all()

    def drain(self, deadline: float) -> bool:
        """Refuses new calls; waits until the running ones are done or `deadline` (monotonic).

        Returns:
            False when calls were still running at the deadline.
        """
        with self.idle:
            self.draining = True
            return self.idle.wait_for(lambda: self.in_flight == 0, max(deadline - time.monotonic(), 0))


class _Servicer:
    def __init__(self, core, executor, gate: Gate):
        self._core, self._executor, self._gate = core, executor, gate

    async def _answer(self, context, function, request, *args):
        """Runs `function(request, *args)` on the inference threads; ServingErrors become the call's status."""
        return await self._await(context, request, lambda: asyncio.get_running_loop().run_in_executor(
            self._executor, function, request, *args))

    async def _await(self, context, request, start):
        """Awaits `start()` inside the gate; ServingErrors become the call's status."""
        if request is None:  # see _parser
            await context.abort(grpc.StatusCode.INTERNAL, UNPARSABLE)
        if not self._gate.enter():
            await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
        try:
            return await start()
        except errors.ServingError as error:
            await context.abort(error.code, error.message)
        finally:
            self._gate.leave()


def _deadline(context):
    """The request deadline as a time.monotonic() value (None when the client set none)."""
    remaining = context.time_remaining()
    return None if remaining is None or remaining > 1e9 else time.monotonic() + remaining


class PredictionService(_Servicer, prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict, Classify, Regress, MultiInference, GetModelMetadata."""

    async def Predict(self, request, context):  # noqa: N802 - gRPC method names
        # Decoded and encoded on the loop; only the model run (or the wait for its batch) leaves it.
        # A lone call may run a fast model on the loop (see ServingCore.predict_async).
        return await self._await(context, request, lambda: self._core.predict_async(
            request, _deadline(context), self._executor, alone=self._gate.in_flight <= 1))

    async def Classify(self, request, context):  # noqa: N802
        return await self._answer(context, self._core.classify, request, _deadline(context))

    async def Regress(self, request, context):  # noqa: N802
        return await self._answer(context, self._core.regress, request, _deadline(context))

    async def MultiInference(self, request, context):  # noqa: N802
        return await self._answer(context, self._core.multi_inference, request, _deadline(context))

    async def GetModelMetadata(self, request, context):  # noqa: N802
        return await self._answer(context, self._core.metadata, request)


class ModelService(_Servicer, model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus and HandleReloadConfigRequest."""

    async def GetModelStatus(self, request, context):  # noqa: N802
        return await self._answer(context, self._core.status, request)

    async def HandleReloadConfigRequest(self, request, context):  # noqa: N802
        return await self._answer(context, self._core.reload_config, request)


def _parser(message_class):
    """A request deserializer that returns None for bytes that do not parse.

    grpc.aio answers a deserializer's exception UNKNOWN; a request that is not a valid message
    is answered INTERNAL, as by gRPC C++ (TF Serving) and gRPC Python's threaded server.
    """
    def parse(data: bytes):
        try:
            return message_class.FromString(data)
        except message.DecodeError:
            return None
    return parse


def _register(server, servicer, service) -> None:
    handlers = {}
    for method in service.methods:
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method.name),
            request_deserializer=_parser(message_factory.GetMessageClass(method.input_type)),
            response_serializer=message_factory.GetMessageClass(method.output_type).SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)


def add_services(server: grpc.aio.Server, core, executor, gate: Gate) -> None:
    """Registers both TF Serving services on a grpc.aio server.

    Args:
        server: the grpc.aio.Server.
        core: the kfx.serving.core.ServingCore.
        executor: the concurrent.futures.Executor the calls run on.
        gate: the Gate that counts and refuses calls while draining.
    """
    _register(server, PredictionService(core, executor, gate),
              prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"])
    _register(server, ModelService(core, executor, gate), model_service_pb2.DESCRIPTOR.services_by_name["ModelService"])
