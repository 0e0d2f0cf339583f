"""gRPC servicers: tensorflow.serving.PredictionService and ModelService over a ServingCore."""

import time

import grpc
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from kfx.serving import errors


def _deadline(context):
    """The request deadline as a time.monotonic() value (None when the client set none)."""
    remaining = context.time_remaining()
    return None if remaining is None or remaining > 1e9 else time.monotonic() + remaining


def _answer(context, call):
    try:
        return call()
    except errors.ServingError as error:
        context.abort(error.code, error.message)


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict, Classify, Regress, MultiInference, GetModelMetadata."""

    def __init__(self, core):
        self._core = core

    def Predict(self, request, context):  # noqa: N802 - gRPC method names
        return _answer(context, lambda: self._core.predict(request, _deadline(context)))

    def Classify(self, request, context):  # noqa: N802
        return _answer(context, lambda: self._core.classify(request, _deadline(context)))

    def Regress(self, request, context):  # noqa: N802
        return _answer(context, lambda: self._core.regress(request, _deadline(context)))

    def MultiInference(self, request, context):  # noqa: N802
        return _answer(context, lambda: self._core.multi_inference(request, _deadline(context)))

    def GetModelMetadata(self, request, context):  # noqa: N802
        return _answer(context, lambda: self._core.metadata(request))


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus and HandleReloadConfigRequest."""

    def __init__(self, core):
        self._core = core

    def GetModelStatus(self, request, context):  # noqa: N802
        return _answer(context, lambda: self._core.status(request))

    def HandleReloadConfigRequest(self, request, context):  # noqa: N802
        return _answer(context, lambda: self._core.reload_config(request))


def add_services(server: grpc.Server, core) -> None:
    """Registers both TF Serving services on a grpc.Server."""
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(core), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(core), server)
