"""kfx serve against the differences from TF Serving that TF Serving's own server test suite found.

One real server (`python -m kfx.serving`) serves models made here:
- hpt: a TF1 half_plus_two (y = 0.5 x + 2, x float [-1,1]) in a zero-padded version folder `00000123`;
- lite: the same SavedModel plus a model.tflite computing 0.5 x + 3 (so the answer shows which
  one served) whose SignatureDefs are generated from its tensor names;
- lite_sig: a model.tflite alone, with a stored `signature_defs_metadata` SignatureDef (x -> y).
It also listens on a Unix domain socket and serves tensorflow.ProfilerService. A bad
--model_config_file must fail the start with TF Serving's messages.
"""

import concurrent.futures
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf
from flatbuffers import flexbuffers
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.config import model_server_config_pb2
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc,
                                     predict_pb2, prediction_service_pb2_grpc)

from kfx.serving import errors, profiler, protos
from kfx.serving.tflite import TfLiteServable
from tests.serving.conftest import REPO, ServerProcess, write_config

VERSION_DIR = "00000123"


def build_half_plus_two(path: str) -> None:
    """TF Serving's half_plus_two: a TF1 predict signature x [-1,1] -> y = 0.5 x + 2."""
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default(), v1.Session(graph=graph) as session:
        x = v1.placeholder(tf.float32, [None, 1], name="x")
        builder = v1.saved_model.Builder(path)
        builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map={
            "serving_default": v1.saved_model.signature_def_utils.predict_signature_def({"x": x}, {"y": 0.5 * x + 2.0})})
        builder.save()


def tflite_content(batch=1) -> bytes:
    """A TF Lite model of y = 0.5 x + 3 on a [batch,1] input (None: dynamic batch)."""
    fn = tf.function(lambda x: {"y": 0.5 * x + 3.0}, input_signature=[tf.TensorSpec([batch, 1], tf.float32, name="x")])
    return tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()]).convert()


def with_signature_def(content: bytes, input_name="x:0", output_suffix=":0") -> bytes:
    """`content` with a stored `signature_defs_metadata` SignatureDef x -> y (signature_def_util.cc).

    The tensor names carry the legacy ":0" suffix by default; other names test unknown tensors.
    """
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(content))
    output_name = model.subgraphs[0].tensors[model.subgraphs[0].outputs[0]].name.decode()
    sig = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
    sig.inputs["x"].name, sig.inputs["x"].dtype = input_name, types_pb2.DT_FLOAT
    sig.outputs["y"].name, sig.outputs["y"].dtype = output_name + output_suffix, types_pb2.DT_FLOAT
    builder = flexbuffers.Builder()
    with builder.Map():
        builder.Key("serving_default")
        builder.String(sig.SerializeToString().decode("ascii"))  # small protos are plain ASCII
    buffer = schema.BufferT()
    buffer.data = list(builder.Finish())
    model.buffers.append(buffer)
    metadata = schema.MetadataT()
    metadata.name, metadata.buffer = b"signature_defs_metadata", len(model.buffers) - 1
    model.metadata = (model.metadata or []) + [metadata]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def build_tflite(path: str, signature: bool, content: bytes | None = None) -> None:
    """Writes <path>/model.tflite (default: tflite_content()); with `signature`, a stored SignatureDef x -> y."""
    content = content or tflite_content()
    if signature:
        content = with_signature_def(content)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "model.tflite"), "wb") as handle:
        handle.write(content)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfs_compat")
    build_half_plus_two(str(root / "hpt" / VERSION_DIR))
    build_half_plus_two(str(root / "lite" / VERSION_DIR))
    build_tflite(str(root / "lite" / VERSION_DIR), signature=False)
    build_tflite(str(root / "lite_sig" / "7"), signature=True)
    config = write_config(str(root / "models.config"), [(name, str(root / name), "")
                                                         for name in ("hpt", "lite", "lite_sig")])
    process = ServerProcess(root, f"--model_config_file={config}", f"--grpc_socket_path={root / 'grpc.sock'}",
                            "--prefer_tflite_model=true", rest=True)
    process.socket = f"unix:{root / 'grpc.sock'}"
    try:
        yield process.wait_serving()
    finally:
        process.stop()


def rest(server, path, body):
    request = urllib.request.Request(f"http://127.0.0.1:{server.rest_port}{path}", data=json.dumps(body).encode())
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def predict(target, model, values, version=None, output_filter=("y",)):
    request = predict_pb2.PredictRequest(output_filter=list(output_filter))
    request.model_spec.name = model
    if version is not None:
        request.model_spec.version.value = version
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(values))
    with grpc.insecure_channel(target) as channel:
        return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)


def test_zero_padded_version_folder_is_loaded_from_its_own_name(server):
    with grpc.insecure_channel(server.target) as channel:
        status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
            get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "hpt"}), timeout=30)
    assert [(s.version, s.state, s.status.error_message) for s in status.model_version_status] == [(123, 30, "")]
    response = predict(server.target, "hpt", np.array([[2.0]], np.float32), version=123)
    assert response.model_spec.version.value == 123 and list(response.outputs["y"].float_val) == [3.0]


@pytest.mark.parametrize("values, expected", [([2.0], [3.0]), ([1.0, 2.0, 3.0], [2.5, 3.0, 3.5]),
                                              ([[1.0], [2.0]], [2.5, 3.0])])
def test_shapes_are_left_to_the_graph(server, values, expected):
    """A [1] or [3] tensor fed to the [-1,1] input: the graph broadcasts it, as in TF Serving."""
    y = predict(server.target, "hpt", np.array(values, np.float32)).outputs["y"]
    assert y.dtype == types_pb2.DT_FLOAT and list(y.float_val) == expected
    assert [d.size for d in y.tensor_shape.dim] == list(np.shape(values))


def test_rest_row_and_columnar_shapes(server):
    assert rest(server, "/v1/models/hpt:predict", {"instances": [1.0, 2.0, 5.0]}) == (
        200, {"predictions": [2.5, 3.0, 4.5]})
    assert rest(server, "/v1/models/hpt:predict", {"inputs": [1.0, 2.0, 5.0]}) == (
        200, {"outputs": [2.5, 3.0, 4.5]})


@pytest.mark.parametrize("values, message", [
    (np.array([2], np.int64), "Expects arg[0] to be float but int64 is provided"),
    (None, "input size does not match signature: 0!=1 len({}) != len({x}). Sent extra: {}. "
           "Missing but required: {x}.")])
def test_dtype_and_missing_input_keep_tf_serving_messages(server, values, message):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "hpt"
    if values is not None:
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(values))
    with grpc.insecure_channel(server.target) as channel, pytest.raises(grpc.RpcError) as info:
        prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    assert (info.value.code(), info.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT, message)


def test_unix_domain_socket(server):
    response = predict(server.socket, "hpt", np.array([[4.0]], np.float32))
    assert list(response.outputs["y"].float_val) == [4.0] and response.model_spec.version.value == 123


def test_tflite_preferred_with_generated_signature(server):
    """lite holds a SavedModel (0.5x+2) and a model.tflite (0.5x+3): the TF Lite one answers."""
    with grpc.insecure_channel(server.target) as channel:
        metadata = prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(
            get_model_metadata_pb2.GetModelMetadataRequest(model_spec={"name": "lite"},
                                                           metadata_field=["signature_def"]), timeout=30)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    metadata.metadata["signature_def"].Unpack(signatures)
    generated = signatures.signature_def["serving_default"]
    assert list(generated.inputs) == ["x"] and list(generated.outputs) == ["Identity"]
    assert generated.method_name == "tensorflow/serving/predict"
    response = predict(server.target, "lite", np.array([[2.0]], np.float32), output_filter=())
    assert list(response.outputs["Identity"].float_val) == [4.0]
    resized = predict(server.target, "lite", np.array([2.0, 4.0], np.float32), output_filter=())  # [1,1] -> [2]
    assert list(resized.outputs["Identity"].float_val) == [4.0, 5.0]


def test_tflite_stored_signature(server):
    response = predict(server.target, "lite_sig", np.array([2.0], np.float32))
    assert list(response.outputs["y"].float_val) == [4.0] and response.model_spec.version.value == 7


def test_profiler_service_traces_the_server(server, tmp_path):
    from tensorflow.python.profiler import profiler_client

    profiler_client.trace(server.target, str(tmp_path), 300, "", 3)
    traces = [name for _, _, names in os.walk(tmp_path / "plugins" / "profile") for name in names]
    assert any(name.endswith(".xplane.pb") for name in traces), traces


def test_profile_ends_when_its_client_goes_away(server, tmp_path):
    """A 10-minute Profile whose client gives up after 1 s must not keep the profiler busy for 10 minutes."""
    classes = profiler._classes()  # noqa: SLF001 - the service's own message classes
    with grpc.insecure_channel(server.target) as channel:
        profile = channel.unary_unary(f"/{profiler.SERVICE}/Profile",
                                      request_serializer=classes["ProfileRequest"].SerializeToString,
                                      response_deserializer=classes["ProfileResponse"].FromString)
        with pytest.raises(grpc.RpcError) as info:
            profile(classes["ProfileRequest"](duration_ms=600_000, repository_root=str(tmp_path / "a")), timeout=1)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        deadline = time.monotonic() + 60  # the trace of the gone client is exported first
        while True:
            try:
                profile(classes["ProfileRequest"](duration_ms=50, repository_root=str(tmp_path / "b")), timeout=30)
                break
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.ALREADY_EXISTS and time.monotonic() < deadline
                time.sleep(0.2)


def test_bad_model_config_fails_with_tf_serving_messages(tmp_path):
    config = tmp_path / "bad.config"
    config.write_text("improperly formatted file")
    proc = subprocess.run([sys.executable, "-m", "kfx.serving", f"--model_config_file={config}", "--port=0"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 255
    assert "Error parsing text-format tensorflow.serving.ModelServerConfig: 1:" in proc.stderr
    assert proc.stdout.strip() == f"Failed to start server. Error: INVALID_ARGUMENT: Invalid protobuf file: '{config}'"


def test_tflite_generated_signature_reports_the_tensor_dims(tmp_path):
    """A dynamic-batch input ([-1,1] signature, [1,1] dims): TF Serving's TensorInfo has the dims."""
    build_tflite(str(tmp_path), signature=False, content=tflite_content(batch=None))
    generated = TfLiteServable("lite", 1, str(tmp_path)).signatures["serving_default"]
    assert [d.size for d in generated.inputs["x"].tensor_shape.dim] == [1, 1]
    assert generated.inputs["x"].name == "x" and generated.inputs["x"].dtype == types_pb2.DT_FLOAT


@pytest.mark.parametrize("input_name, output_suffix, message", [
    ("z:0", ":0", "Unknown tensor 'z:0'.\n\tSignature input x references an unknown tensor"),
    ("x:0", "_gone", "Unknown tensor '{output}_gone'.\n\tSignature output y references an unknown tensor")])
def test_tflite_signature_with_an_unknown_tensor_fails_the_load(tmp_path, input_name, output_suffix, message):
    content = tflite_content()
    build_tflite(str(tmp_path), signature=False, content=with_signature_def(content, input_name, output_suffix))
    output = tf.lite.Interpreter(model_content=content).get_output_details()[0]["name"]
    with pytest.raises(errors.ServingError) as info:
        TfLiteServable("lite", 1, str(tmp_path))
    assert (info.value.code, info.value.message) == (grpc.StatusCode.INTERNAL, message.format(output=output))


def test_tflite_file_that_is_not_a_model_fails_the_load(tmp_path):
    (tmp_path / "model.tflite").write_bytes(b"not a flatbuffer")
    with pytest.raises(errors.ServingError) as info:
        TfLiteServable("lite", 1, str(tmp_path))
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and "model.tflite" in info.value.message


def test_missing_config_file_is_not_found_as_in_tf_serving(tmp_path):
    """tensorflow_model_server prints "Failed to start server. Error: NOT_FOUND: <path>; No such file or directory"."""
    missing = str(tmp_path / "missing.config")
    with pytest.raises(errors.ServingError) as info:
        protos.read_text_proto(missing, model_server_config_pb2.ModelServerConfig())
    assert (info.value.code, info.value.message) == (grpc.StatusCode.NOT_FOUND, f"{missing}; No such file or directory")


def test_tflite_concurrent_requests_of_several_shapes_and_a_failed_one(tmp_path):
    """Requests of batch 1-4 at once over the interpreter pool each get their own answer; a failed
    request (a double fed to the float input) leaves its interpreter usable."""
    build_tflite(str(tmp_path), signature=False, content=tflite_content(batch=None))
    servable = TfLiteServable("lite", 1, str(tmp_path))

    def ask(n):
        return servable.run("serving_default", {"x": np.arange(n, dtype=np.float32).reshape(n, 1)}, ("Identity",))

    with pytest.raises(errors.ServingError) as info:
        servable.run("serving_default", {"x": np.ones((3, 1))}, ("Identity",))
    assert info.value.code == grpc.StatusCode.INTERNAL
    sizes = [1, 2, 3, 4] * 25
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, sizes))
    assert all(a["Identity"].ravel().tolist() == [0.5 * i + 3 for i in range(n)] for n, a in zip(sizes, answers))
    assert servable.close()
