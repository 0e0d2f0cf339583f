"""Each RPC, every error case, malformed requests, REST parity and metrics, on a real server."""

import json
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2,
                                     inference_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from kfx.serving.client import ServingClient, to_example

X = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], np.float32)


@pytest.fixture(scope="module")
def stub(main_server):
    return prediction_service_pb2_grpc.PredictionServiceStub(main_server.channel)


@pytest.fixture(scope="module")
def model_stub(main_server):
    return model_service_pb2_grpc.ModelServiceStub(main_server.channel)


@pytest.fixture(scope="module")
def client(main_server):
    with ServingClient(main_server.target, retries=0) as c:
        yield c


def predict_request(model="keras", inputs=None, version=None, label=None, signature="", output_filter=()):
    request = predict_pb2.PredictRequest(output_filter=list(output_filter))
    request.model_spec.name = model
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    request.model_spec.signature_name = signature
    for alias, value in (inputs if inputs is not None else {"x": X}).items():
        request.inputs[alias].CopyFrom(value if isinstance(value, tensor_pb2.TensorProto)
                                       else tf.make_tensor_proto(value))
    return request


def rpc_error(call, request):
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=30)
    return info.value.code(), info.value.details()


def rest(server, method, path, body=None):
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{server.rest_port}{path}", data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        payload = error.read()
        return error.code, json.loads(payload) if payload else None


# ---- PredictionService -------------------------------------------------------------------

def test_predict_typed_fields_in_and_out(stub):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "keras"
    request.inputs["x"].dtype = types_pb2.DT_FLOAT
    request.inputs["x"].tensor_shape.dim.add(size=2)
    request.inputs["x"].tensor_shape.dim.add(size=3)
    request.inputs["x"].float_val.extend(X.ravel().tolist())
    response = stub.Predict(request, timeout=30)
    out = response.outputs["y"]
    assert out.dtype == types_pb2.DT_FLOAT and not out.tensor_content
    assert [d.size for d in out.tensor_shape.dim] == [2, 1]
    assert list(out.float_val) == [16.0, 25.0]  # latest version (2) adds 10
    assert (response.model_spec.name, response.model_spec.version.value,
            response.model_spec.signature_name) == ("keras", 2, "serving_default")


def test_predict_tensor_content_versions_and_labels(stub):
    expected = {1: [6.0, 15.0], 2: [16.0, 25.0]}
    for version, values in expected.items():
        response = stub.Predict(predict_request(version=version), timeout=30)
        assert list(response.outputs["y"].float_val) == values
    assert list(stub.Predict(predict_request(label="stable"), timeout=30).outputs["y"].float_val) == expected[1]
    response = stub.Predict(predict_request(label="canary"), timeout=30)
    assert list(response.outputs["y"].float_val) == expected[2] and response.model_spec.version.value == 2


def test_predict_strings_and_output_filter(stub):
    request = predict_request("tf2", {"age": np.array([30, 40], np.int64), "name": np.array([b"ann", b"bo"])},
                              output_filter=["greeting_bytes"])
    response = stub.Predict(request, timeout=30)
    assert list(response.outputs) == ["greeting_bytes"]
    assert list(response.outputs["greeting_bytes"].string_val) == [b"hi ann", b"hi bo"]


def test_classify_regress_tf2_signatures(client):
    assert client.classify("tf2", [{"age": 40}], signature="classify") == [[("<=50K", pytest.approx(0.5)),
                                                                          (">50K", pytest.approx(0.5))]]
    assert client.regress("tf2", [{"age": 30}, {"age": 1}], signature="regress").tolist() == [60.0, 2.0]


def test_classify_regress_tf1_with_context(stub):
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name, request.model_spec.signature_name = "tf1", "classify_x"
    request.input.example_list_with_context.context.CopyFrom(to_example({"x": 0.0}))
    request.input.example_list_with_context.examples.add()
    response = stub.Classify(request, timeout=30)
    classes = response.result.classifications[0].classes
    assert [(c.label, round(c.score, 6)) for c in classes] == [("a", 0.5), ("b", 0.5)]
    assert response.model_spec.signature_name == "classify_x" and response.model_spec.version.value == 1


def test_multi_inference(stub):
    request = inference_pb2.MultiInferenceRequest()
    for signature, method in (("classify_x", "tensorflow/serving/classify"),
                              ("regress_x", "tensorflow/serving/regress")):
        task = request.tasks.add(method_name=method)
        task.model_spec.name, task.model_spec.signature_name = "tf1", signature
    request.input.example_list.examples.add().CopyFrom(to_example({"x": 2.0}))
    results = stub.MultiInference(request, timeout=30).results
    assert results[0].classification_result.classifications[0].classes[1].label == "b"
    assert results[1].regression_result.regressions[0].value == 7.0
    request.tasks[1].model_spec.name = "keras"
    assert rpc_error(stub.MultiInference, request) == (
        grpc.StatusCode.INVALID_ARGUMENT, "All ModelSpecs in a MultiInferenceRequest must access the same model name.")


def test_classify_regress_signature_checks(stub):
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "keras"
    request.input.example_list.examples.add()
    code, message = rpc_error(stub.Classify, request)
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert message.startswith("No classification inputs found in SignatureDef:")
    request.model_spec.signature_name = "nope"
    assert rpc_error(stub.Classify, request) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                 "No signature was found with the name: nope")
    from tensorflow_serving.apis import regression_pb2

    regress = regression_pb2.RegressionRequest()
    regress.model_spec.name, regress.model_spec.signature_name = "tf2", "classify"
    regress.input.example_list.examples.add()
    assert rpc_error(stub.Regress, regress) == (grpc.StatusCode.INVALID_ARGUMENT, "Expected one output Tensor.")
    regress.model_spec.signature_name = "regress"
    regress.input.example_list.ClearField("examples")
    assert rpc_error(stub.Regress, regress) == (grpc.StatusCode.INVALID_ARGUMENT, "Input is empty.")


def test_get_model_metadata(stub):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "tf1"
    response = stub.GetModelMetadata(request, timeout=30)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_map)
    signatures = signature_map.signature_def
    assert set(signatures) == {"classify_x", "regress_x", "serving_default"}
    assert signatures["classify_x"].method_name == "tensorflow/serving/classify"
    assert signatures["serving_default"].inputs["x"].dtype == types_pb2.DT_FLOAT
    assert (response.model_spec.name, response.model_spec.version.value) == ("tf1", 1)
    request.metadata_field[:] = ["nope"]
    assert rpc_error(stub.GetModelMetadata, request) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                         "Metadata field nope is not supported")
    request.ClearField("metadata_field")
    assert rpc_error(stub.GetModelMetadata, request)[0] == grpc.StatusCode.INVALID_ARGUMENT


def test_get_model_status(model_stub):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "keras"
    statuses = model_stub.GetModelStatus(request, timeout=30).model_version_status
    assert [(s.version, s.state, s.status.error_code) for s in statuses] == [(1, 30, 0), (2, 30, 0)]
    request.model_spec.version.value = 2
    assert [s.version for s in model_stub.GetModelStatus(request, timeout=30).model_version_status] == [2]
    request.model_spec.version.value = 9
    assert rpc_error(model_stub.GetModelStatus, request) == (grpc.StatusCode.NOT_FOUND,
                                                             "Could not find version 9 of model keras")
    request.model_spec.Clear()
    request.model_spec.name = "nope"
    assert rpc_error(model_stub.GetModelStatus, request) == (grpc.StatusCode.NOT_FOUND,
                                                             "Could not find any versions of model nope")


def test_health_service(main_server):
    health = health_pb2_grpc.HealthStub(main_server.channel)
    for service in ("", "tensorflow.serving.PredictionService", "tensorflow.serving.ModelService"):
        response = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_large_message_over_default_4mb(client):
    x = np.ones((400_000, 3), np.float32)  # 4.8 MB in, more than gRPC's default limit
    y = client.predict("keras", {"x": x}, version=1, timeout=120)["y"]
    assert y.shape == (400_000, 1) and float(y.sum()) == 1_200_000.0


# ---- errors ------------------------------------------------------------------------------

ERRORS = [
    (dict(model="nope"), grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(nope)"),
    (dict(version=7), grpc.StatusCode.NOT_FOUND, "Servable not found for request: Specific(keras, 7)"),
    (dict(label="nope"), grpc.StatusCode.INVALID_ARGUMENT, "Unrecognized servable version label: nope"),
    (dict(model=""), grpc.StatusCode.INVALID_ARGUMENT, "ModelSpec has no name specified."),
    (dict(signature="nope"), grpc.StatusCode.FAILED_PRECONDITION, 'Serving signature key "nope" not found.'),
    (dict(inputs={"z": X}), grpc.StatusCode.INVALID_ARGUMENT,
     "Signature input alias: x(feed name: serving_default_x:0) not found in request and no default value "
     "provided. Inputs expected to be in the request {z}, or default input alias set: "),
    (dict(inputs={"x": X, "z": X}), grpc.StatusCode.INVALID_ARGUMENT,
     "input size does not match signature: 2!=1 len({x,z}) != len({x}). Sent extra: {z}. Missing but required: {}."),
    (dict(inputs={}), grpc.StatusCode.INVALID_ARGUMENT,
     "input size does not match signature: 0!=1 len({}) != len({x}). Sent extra: {}. Missing but required: {x}."),
    (dict(output_filter=["nope"]), grpc.StatusCode.INVALID_ARGUMENT,
     "output tensor alias not found in signature: nope Outputs expected to be in the set {y}."),
    (dict(output_filter=["y", "y"]), grpc.StatusCode.INVALID_ARGUMENT, "duplicate output tensor alias: y"),
    (dict(inputs={"x": X.astype(np.int64)}), grpc.StatusCode.INVALID_ARGUMENT,
     "Expects arg[0] to be float but int64 is provided"),
    (dict(inputs={"x": X.astype(np.float64)}), grpc.StatusCode.INVALID_ARGUMENT,
     "Expects arg[0] to be float but double is provided"),
]


@pytest.mark.parametrize("fields, code, message", ERRORS, ids=[e[2][:40] for e in ERRORS])
def test_predict_errors(stub, fields, code, message):
    assert rpc_error(stub.Predict, predict_request(**fields)) == (code, message)


@pytest.mark.parametrize("shape, message", [((2, 4), "Matrix size-incompatible: In[0]: [2,4], In[1]: [3,1]\n"),
                                            ((3,), "In[0] is not a matrix\n")])
def test_predict_shape_is_left_to_the_graph(stub, shape, message):
    """No shape pre-check, as in TF Serving: the graph's own op fails, with its message and node."""
    code, details = rpc_error(stub.Predict, predict_request(inputs={"x": np.ones(shape, np.float32)}))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith(message) and "{{node " in details


def test_missing_model_spec(stub, model_stub):
    assert rpc_error(stub.Predict, predict_pb2.PredictRequest()) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                                    "Missing ModelSpec")
    assert rpc_error(model_stub.GetModelStatus, get_model_status_pb2.GetModelStatusRequest()) == (
        grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")


def _tensor(dtype, dims, **fields):
    shape = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims])
    return tensor_pb2.TensorProto(dtype=dtype, tensor_shape=shape, **fields)


MALFORMED = {
    "garbage tensor_content": _tensor(types_pb2.DT_FLOAT, [2, 3], tensor_content=b"\x00garbage\xff"),
    "huge shape": _tensor(types_pb2.DT_FLOAT, [1 << 40, 3]),
    "negative dim": _tensor(types_pb2.DT_FLOAT, [-5, 3]),
    "unsupported dtype": _tensor(types_pb2.DT_RESOURCE, [1, 3]),
    "more values than shape": _tensor(types_pb2.DT_FLOAT, [1, 3], float_val=[1.0] * 7),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_tensor_is_invalid_argument_and_server_keeps_serving(stub, name):
    assert rpc_error(stub.Predict, predict_request(inputs={"x": MALFORMED[name]})) == (
        grpc.StatusCode.INVALID_ARGUMENT, "tensor parsing error: x")
    assert list(stub.Predict(predict_request(version=1), timeout=30).outputs["y"].float_val) == [6.0, 15.0]


def test_garbage_request_bytes_are_rejected_and_server_keeps_serving(main_server, stub):
    raw = main_server.channel.unary_unary("/tensorflow.serving.PredictionService/Predict")
    with pytest.raises(grpc.RpcError) as info:
        raw(b"\xff\xff\xff\xff garbage that is not a protobuf", timeout=30)
    assert info.value.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT)
    assert list(stub.Predict(predict_request(version=1), timeout=30).outputs["y"].float_val) == [6.0, 15.0]


def test_value_fill_semantics_match_tensorflow(stub):
    # TensorFlow fills a short value list with its last value (one value fills the tensor).
    response = stub.Predict(predict_request(version=1, inputs={"x": _tensor(types_pb2.DT_FLOAT, [2, 3],
                                                                            float_val=[2.0])}), timeout=30)
    assert list(response.outputs["y"].float_val) == [6.0, 6.0]


# ---- REST --------------------------------------------------------------------------------

def test_rest_predict_parity_row_and_columnar(main_server, client):
    grpc_out = client.predict("keras", {"x": X}, version=1)["y"].tolist()
    assert rest(main_server, "POST", "/v1/models/keras/versions/1:predict",
                {"instances": X.tolist()}) == (200, {"predictions": grpc_out})
    assert rest(main_server, "POST", "/v1/models/keras/labels/stable:predict",
                {"inputs": {"x": X.tolist()}}) == (200, {"outputs": grpc_out})
    status, body = rest(main_server, "POST", "/v1/models/tf2:predict",
                        {"instances": [{"age": 30, "name": {"b64": "Ym9i"}}, {"age": 2, "name": "al"}]})
    assert status == 200
    assert body == {"predictions": [{"greeting_bytes": {"b64": "aGkgYm9i"}, "score": 15.0},
                                    {"greeting_bytes": {"b64": "aGkgYWw="}, "score": 1.0}]}


def test_rest_classify_regress_parity(main_server, client):
    examples = [{"age": 30}, {"age": 60}]
    grpc_classes = client.classify("tf2", examples, signature="classify")
    status, body = rest(main_server, "POST", "/v1/models/tf2:classify",
                        {"signature_name": "classify", "examples": examples})
    assert status == 200
    assert [[(label, pytest.approx(score, rel=1e-6)) for label, score in row] for row in body["results"]] == \
        grpc_classes
    assert rest(main_server, "POST", "/v1/models/tf1:regress",
                {"signature_name": "regress_x", "context": {"x": 1.5}, "examples": [{}]}) == (200, {"results": [5.5]})


def test_rest_status_and_metadata_parity(main_server, client):
    status, body = rest(main_server, "GET", "/v1/models/keras/versions/1")
    assert status == 200
    assert body == {"model_version_status": [{"version": "1", "state": "AVAILABLE",
                                              "status": {"error_code": "OK", "error_message": ""}}]}
    status, body = rest(main_server, "GET", "/v1/models/tf1/metadata")
    assert status == 200 and body["model_spec"]["version"] == "1"
    assert set(body["metadata"]["signature_def"]["signature_def"]) == set(client.metadata("tf1"))


REST_ERRORS = [
    ("POST", "/v1/models/nope:predict", {"instances": [[1, 2, 3]]}, 404,
     "Servable not found for request: Latest(nope)"),
    ("POST", "/v1/models/keras/versions/9:predict", {"instances": [[1, 2, 3]]}, 404,
     "Servable not found for request: Specific(keras, 9)"),
    ("POST", "/v1/models/keras/labels/nope:predict", {"instances": [[1, 2, 3]]}, 400,
     "Unrecognized servable version label: nope"),
    ("POST", "/v1/models/keras:predict", {"signature_name": "nope", "instances": [[1, 2, 3]]}, 400,
     'Serving signature name: "nope" not found in signature def'),
    ("POST", "/v1/models/keras:predict", {"instances": [["a", 2, 3]]}, 400,
     "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: "
     'JSON Value: "a" Type: String is not of expected type: float'),
    ("POST", "/v1/models/keras:predict", {}, 400, "Missing 'inputs' or 'instances' key"),
    ("POST", "/v1/models/keras:predict", b"{not json", 400, None),
    ("POST", "/v1/models/keras:explain", {"instances": []}, 400, "Malformed request: POST /v1/models/keras:explain"),
    ("GET", "/v1/models/nope", None, 404, "Could not find any versions of model nope"),
]


@pytest.mark.parametrize("method, path, body, http_status, message", REST_ERRORS,
                         ids=[f"{e[0]} {e[1]} {e[3]}" for e in REST_ERRORS])
def test_rest_errors(main_server, method, path, body, http_status, message):
    status, payload = rest(main_server, method, path, body)
    assert status == http_status
    if message is None:
        assert payload["error"].startswith("JSON Parse error")
    else:
        assert payload == {"error": message}


def test_rest_shape_is_left_to_the_graph(main_server):
    status, payload = rest(main_server, "POST", "/v1/models/keras:predict", {"instances": [[1, 2, 3, 4]]})
    assert status == 400 and payload["error"].startswith("Matrix size-incompatible: In[0]: [1,4], In[1]: [3,1]")


def test_prometheus_metrics(main_server, client):
    """Names, types and format of TF Serving's exporter: no HELP, no _total / _created, integers."""
    client.predict("keras", {"x": X}, version=1)
    request = urllib.request.urlopen(f"http://127.0.0.1:{main_server.rest_port}/monitoring/prometheus/metrics")
    page = request.read().decode()
    lines = {line.rsplit(" ", 1)[0]: line.rsplit(" ", 1)[1] for line in page.splitlines()
             if line and not line.startswith("#")}
    assert int(lines[':tensorflow:serving:request_count{model_name="keras",status="OK"}']) >= 1
    assert int(lines[':tensorflow:serving:request_count{model_name="nope",status="NOT_FOUND"}']) >= 1
    latency = ':tensorflow:serving:request_latency_{}{{model_name="keras",API="Predict",entrypoint="GRPC"{}}}'
    assert lines[latency.format("bucket", ',le="10"')] == "0"
    assert lines[latency.format("bucket", ',le="18"')] == "0"
    assert int(lines[latency.format("bucket", ',le="+Inf"')]) == int(lines[latency.format("count", "")]) >= 1
    assert float(lines[latency.format("sum", "")]) > 0
    assert lines[':tensorflow:serving:model_version_state{model_name="keras",version="1",state="AVAILABLE"}'] == "1"
    types = [line for line in page.splitlines() if line.startswith("#")]
    assert "# TYPE :tensorflow:serving:request_count counter" in types
    assert "# TYPE :tensorflow:serving:request_latency histogram" in types
    assert "# TYPE :tensorflow:serving:model_version_state gauge" in types
    assert types == sorted(types) and not any(line.startswith("# HELP") for line in types)
    assert not [k for k in lines if k.split("{")[0].endswith(("_total", "_created"))]


# ---- client and CLI ----------------------------------------------------------------------

def test_client_retries_then_reports_unavailable():
    from tests.serving.conftest import free_port

    with ServingClient(f"127.0.0.1:{free_port()}", timeout=2, retries=2, backoff=0.01) as dead:
        with pytest.raises(grpc.RpcError) as info:
            dead.status("keras")
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_client_casts_plain_values_to_signature_dtypes(client):
    assert client.predict("keras", {"x": [[1, 2, 3]]}, label="stable")["y"].tolist() == [[6.0]]
    assert client.status("keras", version=1) == [(1, "AVAILABLE", 0, "")]


def test_cli_predict_prints_outputs_as_json(main_server, capsys):
    import argparse

    from kfx.serving import cli

    parser = argparse.ArgumentParser()
    cli.add_parsers(parser.add_subparsers())
    args = parser.parse_args(["predict", "--server", main_server.target, "--model", "tf2",
                              "--json", '{"age": [4], "name": ["x"]}'])
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out) == {"score": [2.0], "greeting_bytes": ["hi x"]}
    args = parser.parse_args(["predict", "--server", main_server.target, "--model", "nope", "--json", "{}"])
    assert args.func(args) == 1
    assert "NOT_FOUND: Servable not found for request: Latest(nope)" in capsys.readouterr().err
