"""TensorProto <-> numpy conversion with TensorFlow's semantics, without TensorFlow's overhead.

`tf.make_tensor_proto` / `tf.make_ndarray` cost tens of microseconds per call; serving converts
every input and output, so this module does it directly on the proto fields. Outputs go in the
typed fields (float_val, ...) as TF Serving writes them (Tensor::AsProtoField), inputs may use
typed fields or tensor_content.
"""

import numpy as np
from tensorflow.core.framework import tensor_pb2, types_pb2

from kfx.serving import errors

# DataType -> (numpy dtype, typed field, TF's DataTypeString).
_TYPES = {
    types_pb2.DT_FLOAT: (np.dtype(np.float32), "float_val", "float"),
    types_pb2.DT_DOUBLE: (np.dtype(np.float64), "double_val", "double"),
    types_pb2.DT_INT32: (np.dtype(np.int32), "int_val", "int32"),
    types_pb2.DT_UINT8: (np.dtype(np.uint8), "int_val", "uint8"),
    types_pb2.DT_INT16: (np.dtype(np.int16), "int_val", "int16"),
    types_pb2.DT_INT8: (np.dtype(np.int8), "int_val", "int8"),
    types_pb2.DT_UINT16: (np.dtype(np.uint16), "int_val", "uint16"),
    types_pb2.DT_STRING: (np.dtype(object), "string_val", "string"),
    types_pb2.DT_INT64: (np.dtype(np.int64), "int64_val", "int64"),
    types_pb2.DT_BOOL: (np.dtype(np.bool_), "bool_val", "bool"),
    types_pb2.DT_HALF: (np.dtype(np.float16), "half_val", "half"),
    types_pb2.DT_UINT32: (np.dtype(np.uint32), "uint32_val", "uint32"),
    types_pb2.DT_UINT64: (np.dtype(np.uint64), "uint64_val", "uint64"),
}
_BY_NUMPY = {np_dtype: dtype for dtype, (np_dtype, _, _) in _TYPES.items() if dtype != types_pb2.DT_STRING}

# A request cannot make the server allocate more than this for one tensor (a 2 GB gRPC
# message is the largest anyone can send, so a bigger tensor can only come from a forged shape).
MAX_TENSOR_BYTES = 1 << 31


def type_name(dtype: int) -> str:
    """TensorFlow's DataTypeString for a DataType enum value (e.g. 1 -> "float")."""
    if dtype in _TYPES:
        return _TYPES[dtype][2]
    return types_pb2.DataType.Name(dtype)[3:].lower() if dtype in types_pb2.DataType.values() else str(dtype)


def numpy_dtype(dtype: int) -> np.dtype:
    """The numpy dtype used for a DataType (object for DT_STRING)."""
    return _TYPES[dtype][0]


def dtype_of(array: np.ndarray) -> int:
    """The DataType of a numpy array (object, bytes and str arrays are DT_STRING)."""
    dtype = dtype_or_none(array)
    if dtype is None:
        raise errors.invalid_argument(f"Unsupported numpy dtype: {array.dtype}")
    return dtype


def dtype_or_none(array: np.ndarray) -> int | None:
    """Like `dtype_of`, but None for a dtype TensorFlow has no DataType for."""
    if array.dtype.kind in "OSU":
        return types_pb2.DT_STRING
    return _BY_NUMPY.get(array.dtype)


def to_numpy(proto: tensor_pb2.TensorProto, alias: str) -> np.ndarray:
    """Decodes a TensorProto as TensorFlow's Tensor::FromProto does.

    tensor_content is used in place (a read-only view of the request's bytes, no copy).

    Args:
        proto: the tensor.
        alias: its name in the request, for the error message.

    Returns:
        The array (DT_STRING as an object array of bytes).

    Raises:
        ServingError: INVALID_ARGUMENT "tensor parsing error: <alias>" when the proto is not a
            valid tensor: unknown dtype, bad shape, tensor_content of the wrong length, more
            values than the shape holds, or a shape too large to allocate.
    """
    dtype = proto.dtype
    spec = _TYPES.get(dtype)
    shape = tuple([dim.size for dim in proto.tensor_shape.dim])
    count = 1
    for size in shape:
        count *= size
    if spec is None or proto.tensor_shape.unknown_rank or min(shape, default=0) < 0 or (
            count * max(spec[0].itemsize, 8) > MAX_TENSOR_BYTES):
        raise errors.invalid_argument(f"tensor parsing error: {alias}")
    np_dtype, field, _ = spec
    if dtype != types_pb2.DT_STRING:
        content = proto.tensor_content
        if content:
            if len(content) != count * np_dtype.itemsize:
                raise errors.invalid_argument(f"tensor parsing error: {alias}")
            return np.frombuffer(content, dtype=np_dtype).reshape(shape)
    values = getattr(proto, field)
    given = len(values)
    if given == count == 1 and dtype != types_pb2.DT_HALF:  # the common batch-1 scalar feature
        flat = np.empty(1, dtype=np_dtype)
        flat[0] = values[0]
        return flat.reshape(shape)
    if given > count:
        raise errors.invalid_argument(f"tensor parsing error: {alias}")
    if dtype == types_pb2.DT_HALF:
        flat = np.array(values, dtype=np.uint16).view(np.float16)
    elif dtype == types_pb2.DT_STRING:
        flat = np.empty(given, dtype=object)
        flat[:] = list(values)
    else:
        flat = np.array(values, dtype=np_dtype)
    if given < count:
        # TensorFlow fills missing values with the last one given (zeros when none is).
        fill = flat[-1] if given else (b"" if dtype == types_pb2.DT_STRING else 0)
        flat = np.concatenate([flat, np.full(count - given, fill, dtype=np_dtype)])
    return flat.reshape(shape)


def to_proto(array, dtype: int | None = None) -> tensor_pb2.TensorProto:
    """Encodes an array in TensorProto typed fields, as Tensor::AsProtoField does.

    Args:
        array: a numpy array (or anything np.asarray accepts); str values become UTF-8 bytes.
        dtype: the DataType to encode as; inferred from the array when None.
    """
    array = np.asarray(array)
    dtype = dtype_of(array) if dtype is None else dtype
    np_dtype, field, _ = _TYPES[dtype]
    proto = tensor_pb2.TensorProto(dtype=dtype)
    dims = proto.tensor_shape.dim
    for size in array.shape:
        dims.add(size=size)
    flat = array.ravel()
    if dtype == types_pb2.DT_STRING:
        getattr(proto, field).extend([v.encode() if isinstance(v, str) else bytes(v) for v in flat])
    elif dtype == types_pb2.DT_HALF:
        proto.half_val.extend(flat.astype(np.float16).view(np.uint16).tolist())
    else:
        getattr(proto, field).extend(flat.astype(np_dtype, copy=False).tolist())
    return proto


def shape_string(shape) -> str:
    """Formats a shape like TensorShape::DebugString: [1,3] ([?] for unknown rank)."""
    if shape is None:
        return "[?]"
    return "[" + ",".join(str(-1 if d is None else d) for d in shape) + "]"
