"""A small Python client for TF Serving's gRPC API (kfx serve or tensorflow_model_server).

    with ServingClient("localhost:8500") as client:
        outputs = client.predict("adult", {"age": [39], "sex": ["Male"]})
        classes = client.classify("adult", [{"age": 39, "sex": "Male"}], signature="classify")

Inputs are dicts of numpy arrays or plain values; plain values are cast to the dtypes the
signature declares (read once with GetModelMetadata), since JSON-like values cannot say whether
1 is an int64 or a float. Calls that fail with UNAVAILABLE (server starting, restarting or
shedding load) are retried with exponential backoff.
"""

import time

import grpc
import numpy as np
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2,
                                     model_service_pb2_grpc, predict_pb2, prediction_service_pb2_grpc,
                                     regression_pb2)

from kfx.serving import tensors

MAX_MESSAGE_SIZE = 2**31 - 1
STATE_NAMES = {0: "UNKNOWN", 10: "START", 20: "LOADING", 30: "AVAILABLE", 40: "UNLOADING", 50: "END"}


def _to_feature(value) -> feature_pb2.Feature:
    values = list(np.ravel(value)) if isinstance(value, (list, tuple, np.ndarray)) else [value]
    feature = feature_pb2.Feature()
    if all(isinstance(v, (bytes, str, np.bytes_, np.str_)) for v in values):
        feature.bytes_list.value.extend(v.encode() if isinstance(v, str) else bytes(v) for v in values)
    elif all(isinstance(v, (bool, int, np.integer, np.bool_)) for v in values):
        feature.int64_list.value.extend(int(v) for v in values)
    else:
        feature.float_list.value.extend(float(v) for v in values)
    return feature


def to_example(features) -> example_pb2.Example:
    """A tf.train.Example from {name: value or list}; ints -> int64, floats -> float, str/bytes -> bytes."""
    if isinstance(features, example_pb2.Example):
        return features
    example = example_pb2.Example()
    for name, value in features.items():
        example.features.feature[name].CopyFrom(_to_feature(value))
    return example


class ServingClient:
    """Client of one model server.

    Args:
        target: "host:port".
        timeout: default deadline in seconds of each attempt.
        retries: attempts after the first one for UNAVAILABLE.
        backoff: first retry delay in seconds; doubles each retry.
        credentials: grpc.ChannelCredentials for TLS; None for plaintext.
        options: extra gRPC channel options.
    """

    def __init__(self, target: str, timeout: float = 10.0, retries: int = 3, backoff: float = 0.1,
                 credentials=None, options=()):
        channel_options = [("grpc.max_send_message_length", MAX_MESSAGE_SIZE),
                           ("grpc.max_receive_message_length", MAX_MESSAGE_SIZE), *options]
        self._channel = (grpc.secure_channel(target, credentials, channel_options) if credentials
                         else grpc.insecure_channel(target, channel_options))
        self.prediction = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self.model_service = model_service_pb2_grpc.ModelServiceStub(self._channel)
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self._input_types = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        """Closes the channel."""
        self._channel.close()

    def call(self, method, request, timeout: float | None = None):
        """Calls a stub method, retrying UNAVAILABLE with exponential backoff.

        Raises:
            grpc.RpcError: the last error (any code other than UNAVAILABLE at once).
        """
        delay = self.backoff
        for attempt in range(self.retries + 1):
            try:
                return method(request, timeout=timeout or self.timeout)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == self.retries:
                    raise
            time.sleep(delay)
            delay *= 2

    @staticmethod
    def _spec(spec, model: str, version=None, label=None, signature: str = "") -> None:
        spec.name = model
        if version is not None:
            spec.version.value = int(version)
        if label is not None:
            spec.version_label = label
        if signature:
            spec.signature_name = signature

    def _declared_types(self, model, version, label, signature) -> dict:
        key = (model, version, label, signature or "serving_default")
        if key not in self._input_types:
            signatures = self.metadata(model, version=version, label=label)
            inputs = signatures[key[3]].inputs if key[3] in signatures else {}
            self._input_types[key] = {alias: info.dtype for alias, info in inputs.items()}
        return self._input_types[key]

    def predict(self, model: str, inputs: dict, *, version=None, label=None, signature: str = "",
                output_filter=(), timeout=None) -> dict:
        """Predict; returns {output alias: numpy array}.

        Args:
            model: model name.
            inputs: {input alias: numpy array or plain (nested) values}; numpy arrays are sent with
                their own dtype, plain values cast to the signature's dtype.
            version: model version, or label: version label (default: latest).
            signature: signature name (default serving_default).
            output_filter: output aliases to return (default all).
            timeout: seconds for each attempt.
        """
        request = predict_pb2.PredictRequest(output_filter=list(output_filter))
        self._spec(request.model_spec, model, version, label, signature)
        declared = None
        for alias, value in inputs.items():
            if isinstance(value, np.ndarray) and value.dtype.kind not in "U":
                request.inputs[alias].CopyFrom(tensors.to_proto(value))
                continue
            if declared is None:
                declared = self._declared_types(model, version, label, signature)
            dtype = declared.get(alias)
            array = np.asarray(value, dtype=object if dtype in (None, 7) else tensors.numpy_dtype(dtype))
            request.inputs[alias].CopyFrom(tensors.to_proto(array, dtype))
        response = self.call(self.prediction.Predict, request, timeout)
        return {alias: tensors.to_numpy(proto, alias) for alias, proto in response.outputs.items()}

    def _examples_request(self, request, model, examples, context, version, label, signature):
        self._spec(request.model_spec, model, version, label, signature)
        if context is not None:
            request.input.example_list_with_context.context.CopyFrom(to_example(context))
            target = request.input.example_list_with_context.examples
        else:
            target = request.input.example_list.examples
        for example in examples:
            target.add().CopyFrom(to_example(example))
        return request

    def classify(self, model: str, examples, *, context=None, version=None, label=None,
                 signature: str = "", timeout=None) -> list:
        """Classify tf.Examples (or feature dicts); returns [[(label, score), ...] per example]."""
        request = self._examples_request(classification_pb2.ClassificationRequest(), model, examples,
                                         context, version, label, signature)
        response = self.call(self.prediction.Classify, request, timeout)
        return [[(c.label, c.score) for c in entry.classes] for entry in response.result.classifications]

    def regress(self, model: str, examples, *, context=None, version=None, label=None,
                signature: str = "", timeout=None) -> np.ndarray:
        """Regress tf.Examples (or feature dicts); returns one float per example."""
        request = self._examples_request(regression_pb2.RegressionRequest(), model, examples,
                                         context, version, label, signature)
        response = self.call(self.prediction.Regress, request, timeout)
        return np.array([r.value for r in response.result.regressions], dtype=np.float32)

    def metadata(self, model: str, *, version=None, label=None, timeout=None) -> dict:
        """{signature name: SignatureDef} of the model version."""
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._spec(request.model_spec, model, version, label)
        response = self.call(self.prediction.GetModelMetadata, request, timeout)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        return dict(signature_map.signature_def)

    def status(self, model: str, *, version=None, label=None, timeout=None) -> list:
        """[(version, state name, error code, error message)] from GetModelStatus."""
        request = get_model_status_pb2.GetModelStatusRequest()
        self._spec(request.model_spec, model, version, label)
        response = self.call(self.model_service.GetModelStatus, request, timeout)
        return [(s.version, STATE_NAMES.get(s.state, str(s.state)), s.status.error_code, s.status.error_message)
                for s in response.model_version_status]

    def wait_until_available(self, model: str, timeout: float = 60.0, version=None) -> None:
        """Polls GetModelStatus until the model (version) is AVAILABLE.

        Raises:
            TimeoutError: naming the last states seen.
        """
        deadline, last = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            try:
                last = self.status(model, version=version)
                if any(state == "AVAILABLE" and version in (None, v) for v, state, _, _ in last):
                    return
            except grpc.RpcError as exc:
                last = f"{exc.code().name}: {exc.details()}"
            time.sleep(0.2)
        raise TimeoutError(f"model {model} not AVAILABLE after {timeout}s; last status: {last}")
