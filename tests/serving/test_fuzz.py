"""Property-based fuzzing of the server against bad clients (issue 12), on one real server process.

Hypothesis draws malformed PredictRequests, ClassificationRequests and REST bodies; every one must
get INVALID_ARGUMENT (gRPC) or 400 (REST), never a crash, a hang (every call has a timeout) or a
500. A valid request is sent every VALID_EVERY cases, the server's resident memory is measured
after warm-up and at the end, and the number of cases tried per type is asserted at the end.
Invalid UTF-8 inside a DT_STRING tensor is valid bytes for TensorFlow (TF Serving accepts it), so
over gRPC it must succeed; only REST JSON has UTF-8 rules.
"""

import json
import os
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tensorflow.core.example import example_pb2
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import classification_pb2, predict_pb2, prediction_service_pb2_grpc

from tests.serving.conftest import ServerProcess, build_tf2, write_config

TIMEOUT = 30  # seconds per call: a hang fails the case instead of stalling the suite
VALID_EVERY = 10
EXAMPLES = 150  # per request type
RSS_BOUND = 300 * 2**20  # resident memory growth allowed from warm-up to the end
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
CASES = {"predict": 0, "classify": 0, "rest": 0, "valid": 0}
_STATE = {}
SAMPLES = {}  # one error message per kind of bad request, printed at the end

# DataType enum values TensorFlow does not define (and DT_INVALID).
KNOWN_DTYPES = set(types_pb2.DataType.values())
UNKNOWN_DTYPES = st.one_of(st.just(0), st.integers(min_value=31, max_value=99).filter(lambda v: v not in KNOWN_DTYPES),
                           st.integers(min_value=1000, max_value=2**31 - 1).filter(lambda v: v not in KNOWN_DTYPES))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    build_tf2(str(root / "tf2" / "1"))
    config = write_config(str(root / "models.config"), [("tf2", str(root / "tf2"), "")])
    process = ServerProcess(root, f"--model_config_file={config}", rest=True)
    try:
        process.wait_serving()
        stub = prediction_service_pb2_grpc.PredictionServiceStub(process.channel)
        for _ in range(20):  # warm-up before the memory baseline
            _valid(process, stub)
        _STATE["rss_start"] = process.rss()
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def stub(server):
    return prediction_service_pb2_grpc.PredictionServiceStub(server.channel)


def _tensor(value) -> tensor_pb2.TensorProto:
    return tf.make_tensor_proto(value)


def _request(inputs: dict) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "tf2"
    for alias, tensor in inputs.items():
        request.inputs[alias].CopyFrom(tensor)
    return request


def _valid_inputs() -> dict:
    return {"age": _tensor(np.array([30, 40], np.int64)), "name": _tensor(np.array([b"ann", b"bo"], object))}


def _valid(server, stub) -> None:
    response = stub.Predict(_request(_valid_inputs()), timeout=TIMEOUT)
    assert list(response.outputs["score"].float_val) == [15.0, 20.0]
    status, body = _rest(server, json.dumps({"instances": [{"age": 2, "name": "x"}]}).encode())
    assert (status, body) == (200, {"predictions": [{"score": 1.0, "greeting_bytes": {"b64": "aGkgeA=="}}]}), body
    CASES["valid"] += 1


def _tick(kind: str, server, stub) -> None:
    CASES[kind] += 1
    assert server.process.poll() is None, f"server exited:\n{server.log()[-3000:]}"
    if CASES[kind] % VALID_EVERY == 0:
        _valid(server, stub)


def _code(call, request):
    try:
        call(request, timeout=TIMEOUT)
    except grpc.RpcError as error:
        return error.code(), error.details()
    return grpc.StatusCode.OK, ""


def _rest(server, body: bytes, path="/v1/models/tf2:predict"):
    request = urllib.request.Request(f"http://127.0.0.1:{server.rest_port}{path}", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        payload = error.read()
        try:
            return error.code, json.loads(payload)
        except ValueError:
            return error.code, payload[:200]


# ---- PredictRequest ----------------------------------------------------------------------------

def _content_mismatch(draw):
    dims = draw(st.lists(st.integers(0, 6), min_size=1, max_size=3))
    expected = int(np.prod(dims)) * 8
    # Empty tensor_content with no *_val means zeros for TF (Tensor::FromProto), so it is not drawn.
    length = draw(st.integers(1, expected + 64).filter(lambda n: n != expected))
    tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_INT64, tensor_content=os.urandom(length))
    for size in dims:
        tensor.tensor_shape.dim.add(size=size)
    return {"age": tensor, "name": _valid_inputs()["name"]}


def _huge_dims(draw):
    tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_INT64)
    dims = draw(st.sampled_from([[2**40], [2**20, 2**20], [2**62, 4], [2**63 - 1], [2**31, 2**31]]))
    for size in dims:
        tensor.tensor_shape.dim.add(size=size)
    if draw(st.booleans()):
        tensor.int64_val.extend(draw(st.lists(st.integers(-5, 5), max_size=4)))
    return {"age": tensor, "name": _valid_inputs()["name"]}


def _negative_dims(draw):
    tensor = tensor_pb2.TensorProto(dtype=draw(st.sampled_from([types_pb2.DT_INT64, types_pb2.DT_STRING])))
    dims = draw(st.lists(st.integers(-2**63, 3), min_size=1, max_size=3).filter(lambda d: min(d) < 0))
    for size in dims:
        tensor.tensor_shape.dim.add(size=size)
    alias = "age" if tensor.dtype == types_pb2.DT_INT64 else "name"
    inputs = _valid_inputs()
    inputs[alias] = tensor
    return inputs


def _unknown_dtype(draw):
    inputs = _valid_inputs()
    alias = draw(st.sampled_from(["age", "name"]))
    inputs[alias].dtype = draw(UNKNOWN_DTYPES)
    return inputs


def _missing_or_extra(draw):
    inputs = _valid_inputs()
    drop = draw(st.sets(st.sampled_from(["age", "name"])))
    extra = draw(st.lists(st.text(min_size=1, max_size=8).filter(lambda s: s not in ("age", "name")), max_size=2))
    if not drop and not extra:
        drop = {"name"}
    for alias in drop:
        del inputs[alias]
    for alias in extra:
        inputs[alias] = _tensor(np.array([1.0], np.float32))
    return inputs


BAD_PREDICT = {"content_mismatch": _content_mismatch, "huge_dims": _huge_dims, "negative_dims": _negative_dims,
               "unknown_dtype": _unknown_dtype, "missing_or_extra": _missing_or_extra}


@st.composite
def bad_predict(draw):
    kind = draw(st.sampled_from(sorted(BAD_PREDICT)))
    return kind, BAD_PREDICT[kind](draw)


@FUZZ
@given(case=bad_predict())
def test_bad_predict_requests(server, stub, case):
    kind, inputs = case
    code, details = _code(stub.Predict, _request(inputs))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (kind, code, details)
    assert details, kind
    SAMPLES.setdefault(kind, details)
    _tick("predict", server, stub)


@FUZZ
@given(names=st.lists(st.binary(max_size=12), min_size=1, max_size=4))
def test_string_tensors_are_bytes(server, stub, names):
    # Invalid UTF-8 in DT_STRING is valid bytes for TF (and TF Serving): it must succeed.
    inputs = {"age": _tensor(np.zeros(len(names), np.int64)), "name": _tensor(np.array(names, object))}
    response = stub.Predict(_request(inputs), timeout=TIMEOUT)
    assert list(response.outputs["greeting_bytes"].string_val) == [b"hi " + n for n in names]
    _tick("predict", server, stub)


# ---- ClassificationRequest ---------------------------------------------------------------------

@st.composite
def bad_example(draw):
    example = example_pb2.Example()
    kind = draw(st.sampled_from(["wrong_type", "missing", "huge_count", "empty_count"]))
    if kind == "wrong_type":
        feature = example.features.feature["age"]
        if draw(st.booleans()):
            feature.float_list.value.extend(draw(st.lists(st.floats(allow_nan=True), min_size=1, max_size=3)))
        else:
            feature.bytes_list.value.extend(draw(st.lists(st.binary(max_size=8), min_size=1, max_size=3)))
    elif kind == "missing":
        if draw(st.booleans()):
            example.features.feature["other"].int64_list.value.append(draw(st.integers(-2**63, 2**63 - 1)))
    elif kind == "huge_count":
        example.features.feature["age"].int64_list.value.extend([1] * draw(st.integers(2, 200_000)))
    else:
        example.features.feature["age"].int64_list.SetInParent()
    return kind, example


@FUZZ
@given(case=bad_example(), good=st.integers(0, 3), signature=st.sampled_from(["classify", "regress"]))
def test_bad_classify_requests(server, stub, case, good, signature):
    kind, example = case
    request_type = classification_pb2.ClassificationRequest
    if signature == "regress":
        from tensorflow_serving.apis import regression_pb2
        request_type = regression_pb2.RegressionRequest
    request = request_type()
    request.model_spec.name, request.model_spec.signature_name = "tf2", signature
    for _ in range(good):
        request.input.example_list.examples.add().features.feature["age"].int64_list.value.append(3)
    request.input.example_list.examples.add().CopyFrom(example)
    call = stub.Classify if signature == "classify" else stub.Regress
    code, details = _code(call, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (kind, code, details)
    SAMPLES.setdefault(f"{signature}_{kind}", details)
    _tick("classify", server, stub)


# ---- REST bodies -------------------------------------------------------------------------------

JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=5))


@st.composite
def bad_rest_body(draw):
    kind = draw(st.sampled_from(["nested", "wrong_types", "invalid_utf8", "no_instances", "not_json"]))
    if kind == "nested":
        depth = draw(st.sampled_from([60, 500, 990, 1000, 10_000, 100_000]))
        key = draw(st.sampled_from(["instances", "inputs"]))
        return kind, ('{"%s": ' % key + "[" * depth + "1" + "]" * depth + "}").encode()
    if kind == "wrong_types":
        value = draw(st.one_of(JSON_LEAF, st.lists(JSON_LEAF, max_size=3),
                               st.lists(st.fixed_dictionaries({"age": st.one_of(st.text(max_size=3), st.floats(),
                                                                                st.lists(JSON_LEAF, max_size=2)),
                                                               "name": st.one_of(st.integers(), st.booleans())}),
                                        min_size=1, max_size=3)))
        key = draw(st.sampled_from(["instances", "inputs"]))
        return kind, json.dumps({key: value}).encode()
    if kind == "invalid_utf8":
        junk = draw(st.binary(min_size=1, max_size=8).filter(lambda b: not _is_utf8(b)))
        return kind, b'{"instances": [{"age": 1, "name": "' + junk + b'"}]}'
    if kind == "no_instances":
        body = draw(st.dictionaries(st.text(max_size=8).filter(lambda k: k not in ("instances", "inputs")),
                                    JSON_LEAF, max_size=3))
        return kind, json.dumps(body).encode()
    return kind, draw(st.binary(max_size=64).filter(lambda b: not _is_json(b)))


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _is_json(data: bytes) -> bool:
    try:
        json.loads(data)
        return True
    except ValueError:
        return False


@FUZZ
@given(case=bad_rest_body())
def test_bad_rest_bodies(server, stub, case):
    kind, body = case
    status, payload = _rest(server, body)
    assert status == 400, (kind, status, payload)
    assert isinstance(payload, dict) and payload.get("error"), (kind, payload)
    SAMPLES.setdefault("rest_" + kind, payload["error"])
    _tick("rest", server, stub)


REST_EXAMPLES = 60


@settings(FUZZ, max_examples=REST_EXAMPLES)
@given(age=st.one_of(st.none(), st.text(max_size=4), st.floats(allow_nan=False), st.lists(st.text(max_size=2), max_size=2),
                     st.dictionaries(st.text(max_size=3), JSON_LEAF, max_size=2)),
       signature=st.sampled_from(["classify", "regress"]))
def test_bad_rest_examples(server, stub, age, signature):
    # REST :classify / :regress with a malformed example: wrong feature type, null, nested list or object.
    status, payload = _rest(server, json.dumps({"signature_name": signature, "examples": [{"age": age}]}).encode(),
                            path=f"/v1/models/tf2:{signature}")
    assert status == 400, (age, status, payload)
    SAMPLES.setdefault(f"rest_{signature}", payload["error"])
    _tick("rest", server, stub)


def test_rest_100mb_body(server, stub):
    # One ~100 MB body: a single string of 100 MB in a wrongly typed field (age must be an int).
    body = b'{"instances": [{"age": "' + b"a" * (100 * 2**20) + b'", "name": "x"}]}'
    status, payload = _rest(server, body)
    assert status == 400, (status, payload)
    _tick("rest", server, stub)
    _valid(server, stub)


def test_counts_and_memory(server, stub):
    _valid(server, stub)
    growth = server.rss() - _STATE["rss_start"]
    print(f"\nfuzz cases tried: {CASES}; RSS growth {growth / 2**20:.1f} MB")
    for kind, message in sorted(SAMPLES.items()):
        print(f"  {kind}: {message[:160]}")
    assert CASES["predict"] == 2 * EXAMPLES and CASES["classify"] == EXAMPLES, CASES
    assert CASES["rest"] == EXAMPLES + REST_EXAMPLES + 1 and CASES["valid"] >= (4 * EXAMPLES) // VALID_EVERY, CASES
    assert growth < RSS_BOUND, f"RSS grew {growth / 2**20:.1f} MB (bound {RSS_BOUND / 2**20:.0f} MB)"
