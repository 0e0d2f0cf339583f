"""The serving core: routes each API call to the right servable and records metrics.

Shared by the gRPC servicers and the REST handler, so both answer identically.
"""

import asyncio
import contextlib
import time

from tensorflow_serving.apis import get_model_status_pb2, model_management_pb2

from kfx.serving import errors, inference
from kfx.serving.manager import ModelManager

# A lone request's model run stays on the event loop when the last run was shorter than this.
INLINE_RUN_SECONDS = 0.002


class ServingCore:
    """API entry points over a ModelManager.

    Args:
        manager: the ModelManager.
        metrics: a kfx.serving.metrics.Metrics, or None.
    """

    def __init__(self, manager: ModelManager, metrics=None):
        self.manager = manager
        self.metrics = metrics
        self.on_reload = None  # called with each config a ReloadConfig applied (--num_workers)
        self._method_check = manager.options.enable_signature_method_name_check

    @contextlib.contextmanager
    def _recorded(self, api: str, entrypoint: str, spec):
        """Around one call: errors become ServingErrors; the request's status and latency are recorded."""
        start, status = time.perf_counter(), "OK"
        try:
            if spec is None:
                raise errors.invalid_argument("Missing ModelSpec")
            yield
        except Exception as exc:
            error = errors.from_exception(exc)
            status = error.code.name
            raise error from None
        finally:
            if self.metrics is not None:
                self.metrics.record_request(spec.name if spec is not None else "", api, entrypoint, status,
                                            (time.perf_counter() - start) * 1e6)

    def _call(self, api: str, entrypoint: str, request, run, deadline, spec=None):
        if spec is None and request.HasField("model_spec"):
            spec = request.model_spec
        with self._recorded(api, entrypoint, spec), self.manager.servable(spec) as servable:
            return run(servable)

    def predict(self, request, deadline=None, entrypoint="GRPC"):
        """PredictRequest -> PredictResponse."""
        return self._call("predict", entrypoint, request,
                          lambda s: inference.predict(s, request, deadline, self._method_check), deadline)

    async def predict_async(self, request, deadline, executor, entrypoint="GRPC", alone=False):
        """PredictRequest -> PredictResponse for a caller on the event loop.

        Decoding and encoding run on the loop (they hold the GIL wherever they run); only the
        model run leaves it: a batched request awaits its batch without holding a thread, an
        unbatched one runs on `executor`, where TensorFlow releases the GIL. When the call is
        `alone` (no other call in flight) and the last run took under INLINE_RUN_SECONDS,
        it runs here instead: no other call could use the loop meanwhile, and the hand-off to a
        thread and back costs more than such a run (1-client requests/s +10-15%).
        """
        spec = request.model_spec if request.HasField("model_spec") else None
        with self._recorded("predict", entrypoint, spec), self.manager.servable(spec) as servable:
            name, signature, feeds, outputs = inference.prepare_predict(servable, request, self._method_check)
            if servable.batching is not None:
                results = await servable.batching.run_async(servable, name, feeds, outputs, deadline)
            elif alone and servable.last_run_seconds < INLINE_RUN_SECONDS:
                results = servable.run_unbatched(name, feeds, outputs)
            else:
                results = await asyncio.get_running_loop().run_in_executor(
                    executor, servable.run_unbatched, name, feeds, outputs)
            return inference.predict_response(servable, name, signature, results)

    def classify(self, request, deadline=None, entrypoint="GRPC"):
        """ClassificationRequest -> ClassificationResponse."""
        return self._call("classify", entrypoint, request,
                          lambda s: inference.classify(s, request, deadline, self._method_check), deadline)

    def regress(self, request, deadline=None, entrypoint="GRPC"):
        """RegressionRequest -> RegressionResponse."""
        return self._call("regress", entrypoint, request,
                          lambda s: inference.regress(s, request, deadline, self._method_check), deadline)

    def multi_inference(self, request, deadline=None, entrypoint="GRPC"):
        """MultiInferenceRequest -> MultiInferenceResponse (servable of the first task)."""
        inference.check_multi_inference(request)
        spec = request.tasks[0].model_spec
        return self._call("multi_inference", entrypoint, request,
                          lambda s: inference.multi_inference(s, request, deadline, self._method_check),
                          deadline, spec=spec)

    def metadata(self, request, entrypoint="GRPC"):
        """GetModelMetadataRequest -> GetModelMetadataResponse."""
        if request.HasField("model_spec"):
            inference.check_metadata_request(request)
        return self._call("metadata", entrypoint, request, lambda s: inference.metadata(s, request), None)

    def status(self, request) -> get_model_status_pb2.GetModelStatusResponse:
        """GetModelStatusRequest -> GetModelStatusResponse (ModelService.GetModelStatus)."""
        if not request.HasField("model_spec"):
            raise errors.invalid_argument("Missing ModelSpec")
        response = get_model_status_pb2.GetModelStatusResponse()
        for version, state, error in self.manager.status(request.model_spec):
            entry = response.model_version_status.add(version=version, state=state)
            entry.status.error_code = error.code_value if error else 0
            entry.status.error_message = error.message if error else ""
        return response

    def reload_config(self, request) -> model_management_pb2.ReloadConfigResponse:
        """ReloadConfigRequest -> ReloadConfigResponse; raises the error it also reports."""
        response = model_management_pb2.ReloadConfigResponse()
        try:
            if request.config.WhichOneof("config") != "model_config_list":
                raise errors.invalid_argument(
                    "ServerModelConfig type not supported by HandleReloadConfigRequest. Only "
                    "ModelConfigList is currently supported")
            self.manager.reload_config(request.config)
            if self.on_reload is not None:
                self.on_reload(request.config)
        except errors.ServingError as error:
            response.status.error_code = error.code_value
            response.status.error_message = error.message
            error.response = response
            raise
        return response
