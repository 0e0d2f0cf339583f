"""TF Serving config protos that the tensorflow-serving-api wheel does not ship.

MonitoringConfig (config/monitoring_config.proto), SSLConfig (config/ssl_config.proto) and
BatchingParameters (servables/tensorflow/session_bundle_config.proto) are rebuilt here from
their field lists in a private descriptor pool, so the same text-proto files that real
tensorflow_model_server reads parse here too. ModelServerConfig comes from the wheel.
"""

import errno
import functools
import logging

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from google.protobuf import wrappers_pb2

from kfx.serving import errors

_F = descriptor_pb2.FieldDescriptorProto
# TensorFlow's ErrnoToCode for what opening a config file fails with.
_ERRNO_CODES = {errno.ENOENT: grpc.StatusCode.NOT_FOUND, errno.EACCES: grpc.StatusCode.PERMISSION_DENIED}

# message name -> [(field name, number, type, label, type_name)]
_MESSAGES = {
    "BatchingParameters": [
        ("max_batch_size", 1, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".google.protobuf.Int64Value"),
        ("batch_timeout_micros", 2, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".google.protobuf.Int64Value"),
        ("max_enqueued_batches", 3, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".google.protobuf.Int64Value"),
        ("num_batch_threads", 4, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".google.protobuf.Int64Value"),
        ("thread_pool_name", 5, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".google.protobuf.StringValue"),
        ("allowed_batch_sizes", 6, _F.TYPE_INT64, _F.LABEL_REPEATED, None),
        ("pad_variable_length_inputs", 7, _F.TYPE_BOOL, _F.LABEL_OPTIONAL, None),
    ],
    "SSLConfig": [
        ("server_key", 1, _F.TYPE_STRING, _F.LABEL_OPTIONAL, None),
        ("server_cert", 2, _F.TYPE_STRING, _F.LABEL_OPTIONAL, None),
        ("custom_ca", 3, _F.TYPE_STRING, _F.LABEL_OPTIONAL, None),
        ("client_verify", 4, _F.TYPE_BOOL, _F.LABEL_OPTIONAL, None),
    ],
    "PrometheusConfig": [
        ("enable", 1, _F.TYPE_BOOL, _F.LABEL_OPTIONAL, None),
        ("path", 2, _F.TYPE_STRING, _F.LABEL_OPTIONAL, None),
    ],
    "MonitoringConfig": [
        ("prometheus_config", 1, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".tensorflow.serving.PrometheusConfig"),
    ],
}


@functools.cache
def _classes() -> dict:
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    file_proto = descriptor_pb2.FileDescriptorProto(
        name="kfx/serving/tf_serving_configs.proto", package="tensorflow.serving",
        syntax="proto3", dependency=["google/protobuf/wrappers.proto"])
    for name, fields in _MESSAGES.items():
        message = file_proto.message_type.add(name=name)
        for field_name, number, ftype, label, type_name in fields:
            field = message.field.add(name=field_name, number=number, type=ftype, label=label)
            if type_name:
                field.type_name = type_name
    pool.Add(file_proto)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.serving.{name}"))
            for name in _MESSAGES}


def BatchingParameters(**kwargs):  # noqa: N802 - named like the proto message it builds
    """A new tensorflow.serving.BatchingParameters message."""
    return _classes()["BatchingParameters"](**kwargs)


def SSLConfig(**kwargs):  # noqa: N802
    """A new tensorflow.serving.SSLConfig message."""
    return _classes()["SSLConfig"](**kwargs)


def MonitoringConfig(**kwargs):  # noqa: N802
    """A new tensorflow.serving.MonitoringConfig message."""
    return _classes()["MonitoringConfig"](**kwargs)


def read_text_proto(path: str, message):
    """Parses the text proto file at `path` into `message` and returns it (TF Serving's ParseProtoTextFile).

    A parse error is logged first as libprotobuf logs it for TF Serving ("Error parsing
    text-format tensorflow.serving.ModelServerConfig: 1:10: ...").

    Raises:
        ValueError: "Invalid protobuf file: '<path>'" (TF Serving's wording), when it does not parse.
        ServingError: NOT_FOUND "<path>; No such file or directory" (TensorFlow's IOError), when
            it cannot be read.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            text_format.Parse(handle.read(), message)
    except text_format.ParseError as exc:
        logging.getLogger(__name__).error("Error parsing text-format %s: %s", message.DESCRIPTOR.full_name, exc)
        raise ValueError(f"Invalid protobuf file: '{path}'") from exc
    except OSError as exc:  # Env::NewReadOnlyMemoryRegionFromFile's IOError(path, errno)
        code = _ERRNO_CODES.get(exc.errno, grpc.StatusCode.UNKNOWN)
        raise errors.ServingError(code, f"{path}; {exc.strerror}") from exc
    return message
