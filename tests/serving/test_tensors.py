"""TensorProto <-> numpy: both TF Serving encodings decode as TensorFlow decodes them, outputs are
encoded in typed fields as TF Serving writes them, malformed tensors are INVALID_ARGUMENT."""

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2

from kfx.serving import errors, tensors

ARRAYS = {
    "float": np.array([[1.5, -2.25, 3.0]], np.float32),
    "double": np.array([0.1, 1e300], np.float64),
    "int32": np.array([[-(2**31), 7], [2**31 - 1, 0]], np.int32),
    "int64": np.array([[39], [2**62]], np.int64),
    "int16": np.array([-3, 300], np.int16),
    "int8": np.array([-128, 127], np.int8),
    "uint8": np.array([0, 255], np.uint8),
    "uint16": np.array([65535], np.uint16),
    "uint32": np.array([2**32 - 1], np.uint32),
    "uint64": np.array([2**64 - 1], np.uint64),
    "half": np.array([[0.5, -65504.0, 1e-3]], np.float16),
    "bool": np.array([[True, False, True]]),
    "string": np.array([[b"Private", b""], ["caf\u00e9".encode(), b"\x00\xff"]], object),
    "scalar": np.array(4.0, np.float32),
    "empty": np.zeros((0, 3), np.float32),
}


def _same(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape and a.tolist() == b.tolist()


def _typed(array: np.ndarray) -> tensor_pb2.TensorProto:
    """TensorFlow's TensorProto for `array`, values moved from tensor_content to the typed field."""
    proto = tf.make_tensor_proto(array)
    proto.ClearField("tensor_content")
    field = {types_pb2.DT_HALF: "half_val", types_pb2.DT_STRING: "string_val", types_pb2.DT_BOOL: "bool_val",
             types_pb2.DT_INT64: "int64_val", types_pb2.DT_UINT32: "uint32_val", types_pb2.DT_UINT64: "uint64_val",
             types_pb2.DT_FLOAT: "float_val", types_pb2.DT_DOUBLE: "double_val"}.get(proto.dtype, "int_val")
    proto.ClearField(field)
    values = array.ravel().view(np.uint16) if proto.dtype == types_pb2.DT_HALF else array.ravel()
    getattr(proto, field).extend(values.tolist())
    return proto


@pytest.mark.parametrize("name", sorted(ARRAYS))
def test_typed_fields_decode_as_tensorflow_does(name):
    proto = _typed(ARRAYS[name])
    _same(tensors.to_numpy(proto, "x"), tf.make_ndarray(proto))
    _same(tensors.to_numpy(proto, "x"), ARRAYS[name])


@pytest.mark.parametrize("name", sorted(set(ARRAYS) - {"string"}))
def test_tensor_content_decodes_as_tensorflow_does_without_a_copy(name):
    array = ARRAYS[name]
    proto = tf.make_tensor_proto(array)
    for field in ("bool_val", "half_val", "float_val", "int_val", "int64_val", "uint32_val", "uint64_val"):
        proto.ClearField(field)
    proto.tensor_content = array.tobytes()  # what tf.make_tensor_proto writes for most dtypes
    decoded = tensors.to_numpy(proto, "x")
    _same(decoded, tf.make_ndarray(proto))
    _same(decoded, array)
    if array.size:
        assert not decoded.flags.owndata and not decoded.flags.writeable  # a view of the request's bytes


@pytest.mark.parametrize("name", sorted(ARRAYS))
def test_outputs_are_encoded_in_typed_fields(name):
    proto = tensors.to_proto(ARRAYS[name])
    assert not proto.tensor_content
    assert list(proto.tensor_shape.dim) == list(tf.make_tensor_proto(ARRAYS[name]).tensor_shape.dim)
    _same(tf.make_ndarray(proto), ARRAYS[name])
    _same(tensors.to_numpy(proto, "x"), ARRAYS[name])


def test_str_values_are_encoded_as_utf8():
    proto = tensors.to_proto(np.array(["caf\u00e9", "x"], object))
    assert proto.dtype == types_pb2.DT_STRING and list(proto.string_val) == ["caf\u00e9".encode(), b"x"]


def test_short_value_lists_are_filled_with_the_last_value():
    proto = _typed(np.array([[5, 6]], np.int64))
    proto.tensor_shape.dim[0].size = 2
    _same(tensors.to_numpy(proto, "x"), tf.make_ndarray(proto))
    _same(tensors.to_numpy(proto, "x"), np.array([[5, 6], [6, 6]], np.int64))
    proto.ClearField("int64_val")
    _same(tensors.to_numpy(proto, "x"), np.zeros((2, 2), np.int64))


MALFORMED = {
    "unknown dtype": tensor_pb2.TensorProto(dtype=types_pb2.DT_RESOURCE),
    "unknown rank": tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape={"unknown_rank": True}),
    "negative dim": tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape={"dim": [{"size": -1}]}),
    "content too short": tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape={"dim": [{"size": 2}]},
                                                tensor_content=b"\x00" * 7),
    "too many values": tensor_pb2.TensorProto(dtype=types_pb2.DT_INT64, tensor_shape={"dim": [{"size": 1}]},
                                              int64_val=[1, 2]),
    "huge shape": tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape={"dim": [{"size": 2**40}]}),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_tensors_are_invalid_argument(name):
    with pytest.raises(errors.ServingError) as info:
        tensors.to_numpy(MALFORMED[name], "age")
    assert (info.value.code, info.value.message) == (grpc.StatusCode.INVALID_ARGUMENT, "tensor parsing error: age")
