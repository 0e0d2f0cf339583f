"""Serving errors: one exception type carrying a gRPC status code and TF Serving's message.

Every layer (model manager, inference, batching) raises `ServingError`; the gRPC servicers turn
it into a status and the REST handler into `{"error": ...}` with TF Serving's HTTP mapping
(tensorflow_serving/model_servers/http_server.cc, ToHTTPStatusCode).
"""

import grpc

_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}

# TF Serving's ToHTTPStatusCode.
HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}


class ServingError(Exception):
    """An error answered to the client with a gRPC status code and a message.

    Args:
        code: the `grpc.StatusCode` to answer with.
        message: the message, worded as TF Serving words it where it has one.
    """

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        """The HTTP status TF Serving's REST API answers for this code."""
        return HTTP_STATUS.get(self.code, 500)

    @property
    def code_value(self) -> int:
        """The numeric code (equal to tensorflow.error.Code) for StatusProto."""
        return self.code.value[0]


def code_from_value(value: int) -> grpc.StatusCode:
    """Returns the `grpc.StatusCode` whose number is `value` (UNKNOWN if none)."""
    return _BY_VALUE.get(value, grpc.StatusCode.UNKNOWN)


def invalid_argument(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.NOT_FOUND, message)


def failed_precondition(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.FAILED_PRECONDITION, message)


def unavailable(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.UNAVAILABLE, message)


def unimplemented(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.UNIMPLEMENTED, message)


def deadline_exceeded(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.DEADLINE_EXCEEDED, message)


def unknown(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.UNKNOWN, message)


def internal(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INTERNAL, message)


def from_exception(exc: BaseException) -> ServingError:
    """Converts any exception raised while serving into a `ServingError`.

    TensorFlow's OpError codes are gRPC codes, so they pass through unchanged (this is what
    TF Serving returns when Session::Run fails).
    """
    if isinstance(exc, ServingError):
        return exc
    code = getattr(exc, "error_code", None)
    if isinstance(code, int):
        return ServingError(code_from_value(code), getattr(exc, "message", str(exc)))
    return ServingError(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")
