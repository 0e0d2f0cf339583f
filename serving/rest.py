"""TF Serving's HTTP/REST API (http_rest_api_handler.cc, json_tensor.cc) and the Prometheus page.

GET  /v1/models/M[/versions/V|/labels/L][/metadata]
POST /v1/models/M[/versions/V|/labels/L]:(predict|classify|regress)

Predict takes the row format ("instances") or the columnar one ("inputs") and answers in the
same format; string inputs accept {"b64": ...} and outputs whose alias ends in "_bytes" are
written that way. Errors are {"error": message} with TF Serving's HTTP status for the code.
"""

import asyncio
import base64
import binascii
import json
import logging
import re
import threading
import time
import urllib.parse

import numpy as np
from google.protobuf import json_format
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2,
                                     predict_pb2, regression_pb2)

from kfx.serving import errors, tensors
from kfx.serving.grpc_service import SHUTTING_DOWN

LOG = logging.getLogger(__name__)

_PREDICTION_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)", re.I)
_STATUS_PATH = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?", re.I)
_INT_RANGES = {types_pb2.DT_INT32: 31, types_pb2.DT_INT16: 31, types_pb2.DT_INT8: 31,
               types_pb2.DT_UINT8: 31, types_pb2.DT_INT64: 63}
_FLOAT_DIGITS = {types_pb2.DT_FLOAT: (24, 3.4028234663852886e38), types_pb2.DT_DOUBLE: (53, 1.7976931348623157e308)}


# ---- JSON -> tensors ---------------------------------------------------------------------

def _text(value) -> str:
    return json.dumps(value, indent=4)


def _json_type(value) -> str:
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    return {dict: "Object", list: "Array", str: "String"}.get(type(value), "Number")


def _is_b64(value) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _b64(value) -> bytes:
    if not _is_b64(value):
        raise errors.invalid_argument(f"JSON Value: {_text(value)} not formatted correctly for base64 data")
    try:
        return base64.b64decode(value["b64"], validate=True)
    except (binascii.Error, ValueError):
        raise errors.invalid_argument("Unable to base64 decode") from None


def _type_error(value, dtype):
    return errors.invalid_argument(
        f"JSON Value: {_text(value)} Type: {_json_type(value)} is not of expected type: {tensors.type_name(dtype)}")


def _scalar(value, dtype):
    """One JSON leaf converted to `dtype` with json_tensor.cc's checks."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if dtype in _FLOAT_DIGITS:
        if not number:
            raise _type_error(value, dtype)
        digits, biggest = _FLOAT_DIGITS[dtype]
        lossy = (abs(value) > (1 << digits) - 1 if isinstance(value, int)
                 else np.isfinite(value) and abs(value) > biggest)
        if lossy:
            raise errors.invalid_argument(f"Cannot convert JSON value: {_text(value)} to "
                                          f"{tensors.type_name(dtype)} without loss of precision.")
        return value
    if dtype in _INT_RANGES or dtype in (types_pb2.DT_UINT32, types_pb2.DT_UINT64):
        bits = _INT_RANGES.get(dtype)
        ok = isinstance(value, int) and not isinstance(value, bool) and (
            -(1 << bits) <= value < (1 << bits) if bits else 0 <= value < (1 << (32 if dtype == types_pb2.DT_UINT32 else 64)))
        if not ok:
            raise _type_error(value, dtype)
        return value
    if dtype == types_pb2.DT_STRING:
        if isinstance(value, dict):
            return _b64(value)
        if not isinstance(value, str):
            raise _type_error(value, dtype)
        return value.encode()
    if dtype == types_pb2.DT_BOOL:
        if not isinstance(value, bool):
            raise _type_error(value, dtype)
        return value
    raise errors.unimplemented(f"Conversion of JSON Value: {_text(value)} to type: {tensors.type_name(dtype)}")


def _dense(value, dtype) -> np.ndarray:
    """A JSON value (scalar or nested lists) -> array, as FillTensorProto reads it."""
    shape, probe = [], value
    while isinstance(probe, list):
        shape.append(len(probe))
        if not probe:
            break
        probe = probe[0]
    flat = []

    def fill(node, level):
        if not isinstance(node, list):
            if level != len(shape):
                raise errors.invalid_argument(f"JSON Value: {_text(node)} found at incorrect level: {level + 1} "
                                              f"in the JSON DOM. Expected at level: {len(shape)}")
            if isinstance(node, dict) and dtype != types_pb2.DT_STRING:
                raise _type_error(node, dtype)
            flat.append(_scalar(node, dtype))
            return
        if level >= len(shape):
            raise errors.invalid_argument(f"Encountered list at unexpected level: {level} expected < {len(shape)}")
        if len(node) != shape[level]:
            raise errors.invalid_argument(f"Encountered list at unexpected size: {len(node)} at level: {level} "
                                          f"expected size: {shape[level]}")
        for item in node:
            fill(item, level + 1)

    fill(value, 0)
    array = np.empty(len(flat), dtype=object) if dtype == types_pb2.DT_STRING else None
    if array is not None:
        array[:] = flat
    else:
        array = np.array(flat, dtype=tensors.numpy_dtype(dtype))
    return array.reshape(shape)


def _from_instances(instances: list, infos) -> dict:
    named = isinstance(instances[0], dict) and not _is_b64(instances[0])
    if not isinstance(instances[0], dict) and len(infos) > 1:
        raise errors.invalid_argument("instances is a plain list, but expecting list of objects as multiple "
                                      "input tensors required as per tensorinfo_map")
    columns = {name: [] for name in infos}
    only = sorted(infos)[0]
    for index, item in enumerate(instances):
        is_object = isinstance(item, dict) and not _is_b64(item)
        if named and not is_object:
            raise errors.invalid_argument(f"Expecting object but got list at item {index} of input list")
        if not named and is_object:
            raise errors.invalid_argument(f"Expecting value/list but got object at item {index} of input list")
        for name, value in (item.items() if named else [(only, item)]):
            prefix = f"Failed to process element: {index} key: {name}" if named else f"Failed to process element: {index}"
            try:
                if name not in infos:
                    raise errors.invalid_argument(f"JSON object: does not have named input: {name}")
                array = _dense(value, infos[name].dtype)
                if columns[name] and columns[name][0].shape != array.shape:
                    first = columns[name][0]
                    raise errors.invalid_argument(
                        f"Expecting tensor size: {first.size} but got: {array.size}" if first.size != array.size
                        else f"Expecting shape {tensors.shape_string(first.shape)} but got: "
                             f"{tensors.shape_string(array.shape)}")
            except errors.ServingError as error:
                raise errors.invalid_argument(f"{prefix} of 'instances' list. Error: "
                                              f"{error.code.name}: {error.message}") from None
            columns[name].append(array)
        if named and set(item) != set(infos):
            raise errors.invalid_argument(f"Failed to process element: {index} of 'instances' list. JSON object: "
                                          f"{_text(item)} keys must be equal to: {','.join(sorted(infos))}")
    return {name: np.stack(arrays) for name, arrays in columns.items() if arrays}


def _from_inputs(inputs, infos) -> dict:
    if not isinstance(inputs, dict) or _is_b64(inputs):
        if len(infos) > 1:
            raise errors.invalid_argument("inputs is a plain value/list, but expecting an object as multiple "
                                          "input tensors required as per tensorinfo_map")
        name = next(iter(infos))
        return {name: _dense(inputs, infos[name].dtype)}
    arrays = {}
    for name in sorted(infos):
        if name not in inputs:
            raise errors.invalid_argument(f"Missing named input: {name} in 'inputs' object.")
        arrays[name] = _dense(inputs[name], infos[name].dtype)
    return arrays


def _parse(body: bytes):
    if not body:
        raise errors.invalid_argument("JSON Parse error: The document is empty")
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise errors.invalid_argument(f"JSON Parse error: {exc}") from None
    except RecursionError:  # deeply nested arrays/objects: a client error, not a 500
        raise errors.invalid_argument("JSON Parse error: The document is nested too deeply") from None
    if not isinstance(doc, dict):
        raise errors.invalid_argument(f"JSON Value: {_text(doc)} Is not object")
    if "signature_name" in doc and not isinstance(doc["signature_name"], str):
        raise errors.invalid_argument(f"JSON Value: {_text(doc)} not formatted correctly. "
                                      "'signature_name' key must be a string value.")
    return doc


def _feature(name: str, values) -> feature_pb2.Feature:
    feature, kind = feature_pb2.Feature(), None
    for value in values if isinstance(values, list) else [values]:
        if value is None or isinstance(value, list) or (isinstance(value, dict) and not _is_b64(value)):
            raise errors.invalid_argument(
                f"Feature: {name} has element with unexpected JSON type: {_json_type(value)}")
        if isinstance(value, (bool, int)) and not isinstance(value, float):
            wanted = "int64_list"
            if not isinstance(value, bool) and value >= 1 << 63:
                raise errors.invalid_argument(f"Feature: {name} has uint64 element. Only int64 is supported.")
        elif isinstance(value, float):
            wanted = "float_list"
            _scalar(value, types_pb2.DT_FLOAT)
        else:
            wanted = "bytes_list"
        if kind not in (None, wanted):
            raise errors.invalid_argument(f"Unexpected element type in feature: {name} expecting type: "
                                          f"{ {'int64_list': 'int64', 'float_list': 'float', 'bytes_list': 'bytes'}[kind]}")
        kind = wanted
        converted = (_b64(value) if isinstance(value, dict) else value.encode() if isinstance(value, str)
                     else int(value) if wanted == "int64_list" else value)
        getattr(feature, wanted).value.append(converted)
    return feature


def _example(value) -> example_pb2.Example:
    if not isinstance(value, dict):
        raise errors.invalid_argument(f"Example must be JSON object but got JSON {_json_type(value)}")
    example = example_pb2.Example()
    for name, values in value.items():
        example.features.feature[name].CopyFrom(_feature(name, values))
    return example


def _fill_examples(doc: dict, request) -> None:
    if "context" in doc:
        request.input.example_list_with_context.context.CopyFrom(_example(doc["context"]))
    examples = doc.get("examples")
    if examples is None:
        raise errors.invalid_argument(
            f"JSON Value: {_text(doc)} When method is classify, key 'examples' is expected and was not found")
    if not isinstance(examples, list):
        raise errors.invalid_argument(f"JSON Value: {_text(doc)} Expecting 'examples' value to be an list/array")
    if not examples:
        raise errors.invalid_argument(f"JSON Value: {_text(doc)} 'examples' value is an empty array")
    target = (request.input.example_list_with_context.examples if "context" in doc
              else request.input.example_list.examples)
    for value in examples:
        target.add().CopyFrom(_example(value))


# ---- tensors -> JSON ---------------------------------------------------------------------

def _to_json(array: np.ndarray, as_bytes: bool):
    if array.dtype == object:
        flat = [{"b64": base64.b64encode(v).decode()} if as_bytes else v.decode("utf-8", "replace")
                for v in array.ravel()]
    elif array.dtype in (np.float32, np.float16):
        # Shortest repr that round-trips in the tensor's own precision, like TF Serving's writer.
        flat = [float(text) for text in array.ravel().astype(str)]
    else:
        flat = array.ravel().tolist()
    return np.array(flat, dtype=object).reshape(array.shape).tolist() if array.ndim else flat[0]


def _outputs_json(outputs, row_format: bool) -> dict:
    arrays = {name: tensors.to_numpy(proto, name) for name, proto in outputs.items()}
    if not arrays:
        raise errors.invalid_argument("Cannot convert empty tensor map to JSON")
    if not row_format:
        values = {name: _to_json(a, name.endswith("_bytes")) for name, a in sorted(arrays.items())}
        return {"outputs": values if len(values) > 1 else next(iter(values.values()))}
    batch = None
    for name, array in sorted(arrays.items()):
        if array.ndim == 0:
            raise errors.invalid_argument(f"Tensor name: {name} has no shape information ")
        if batch is not None and array.shape[0] != batch:
            raise errors.invalid_argument(f"Tensor name: {name} has inconsistent batch size: {array.shape[0]} "
                                          f"expecting: {batch}")
        batch = array.shape[0]
    columns = {name: _to_json(a, name.endswith("_bytes")) for name, a in sorted(arrays.items())}
    if len(columns) == 1:
        return {"predictions": next(iter(columns.values()))}
    return {"predictions": [{name: column[i] for name, column in columns.items()} for i in range(batch)]}


def _status_json(message) -> dict:
    return json.loads(json_format.MessageToJson(message, always_print_fields_with_no_presence=True))


# ---- the handler -------------------------------------------------------------------------

class RestApi:
    """Answers REST requests with a ServingCore.

    Args:
        core: the kfx.serving.core.ServingCore.
        timeout_ms: --rest_api_timeout_in_ms (a deadline for each request; <= 0: none).
    """

    def __init__(self, core, timeout_ms: int = 30000):
        # TF Serving's http_server.cc counts every REST request once, here, including those that fail
        # before reaching a model (bad JSON, bad path) and status requests: the calls go to a core
        # that records nothing, so that none is counted twice.
        self.metrics = core.metrics
        self.core = type(core)(core.manager, None) if core.metrics is not None else core
        self.timeout_ms = timeout_ms

    def handle(self, method: str, path: str, body: bytes) -> tuple:
        """Returns (HTTP status, JSON-able body) for one request under /v1/."""
        start, status = time.perf_counter(), "OK"
        try:
            return 200, self._dispatch(method, path, body)
        except Exception as exc:  # a handler bug too: answered, never a connection dropped silently
            if not isinstance(exc, errors.ServingError):
                LOG.exception("REST request failed")
            error = errors.from_exception(exc)
            status = error.code.name
            return error.http_status, {"error": error.message}
        finally:
            if self.metrics is not None:
                match = (_PREDICTION_PATH if method == "POST" else _STATUS_PATH).fullmatch(path)
                name = urllib.parse.unquote(match.group(1) or "") if match else ""
                api = (match.group(4) or "").lower() if match and method == "POST" else ""
                self.metrics.record_request(name, api, "REST", status, (time.perf_counter() - start) * 1e6)

    def _dispatch(self, method: str, path: str, body: bytes):
        pattern = _PREDICTION_PATH if method == "POST" else _STATUS_PATH if method == "GET" else None
        match = pattern.fullmatch(path) if pattern else None
        if match is None:
            raise errors.invalid_argument(f"Malformed request: {method} {path}")
        name, version, label, verb = match.groups()
        name = urllib.parse.unquote(name or "")
        if version is not None and label is not None:
            raise errors.invalid_argument(f"Both model version ({version}) and model version label ({label}) "
                                          "cannot be supplied.")
        spec_fields = {"name": name}
        if version is not None:
            spec_fields["version"] = version
        if label is not None:
            spec_fields["version_label"] = urllib.parse.unquote(label)
        deadline = time.monotonic() + self.timeout_ms / 1000 if self.timeout_ms > 0 else None
        if method == "GET":
            if not name:
                raise errors.invalid_argument("Missing model name in request.")
            if verb is not None and verb.lower() == "metadata":
                request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
                json_format.ParseDict({"model_spec": spec_fields}, request)
                response = self.core.metadata(request, entrypoint="REST")
                signature_map = get_model_metadata_pb2.SignatureDefMap()
                response.metadata["signature_def"].Unpack(signature_map)
                options = dict(always_print_fields_with_no_presence=True, preserving_proto_field_name=True)
                return {"model_spec": json_format.MessageToDict(response.model_spec, **options),
                        "metadata": {"signature_def": json_format.MessageToDict(signature_map, **options)}}
            request = get_model_status_pb2.GetModelStatusRequest()
            json_format.ParseDict({"model_spec": spec_fields}, request)
            return _status_json(self.core.status(request))
        if verb == "predict":
            return self._predict(spec_fields, body, deadline)
        if verb in ("classify", "regress"):
            doc = _parse(body)
            request = (classification_pb2.ClassificationRequest() if verb == "classify"
                       else regression_pb2.RegressionRequest())
            json_format.ParseDict({"model_spec": spec_fields}, request)
            request.model_spec.signature_name = doc.get("signature_name", "")
            _fill_examples(doc, request)
            if verb == "classify":
                result = self.core.classify(request, deadline, entrypoint="REST").result
                if not result.classifications:
                    raise errors.invalid_argument("Cannot convert empty ClassificationResults to JSON")
                return {"results": [[[c.label, float(np.float32(c.score).astype(str))] for c in entry.classes]
                                    for entry in result.classifications]}
            result = self.core.regress(request, deadline, entrypoint="REST").result
            return {"results": [float(np.float32(r.value).astype(str)) for r in result.regressions]}
        raise errors.invalid_argument(f"Malformed request: {method} {path}")

    def _predict(self, spec_fields: dict, body: bytes, deadline):
        doc = _parse(body)
        request = predict_pb2.PredictRequest()
        json_format.ParseDict({"model_spec": spec_fields}, request)
        request.model_spec.signature_name = doc.get("signature_name", "")
        signature_name = request.model_spec.signature_name or "serving_default"
        with self.core.manager.servable(request.model_spec) as servable:
            signature = servable.signature(signature_name)
            if signature is None:
                raise errors.invalid_argument(f'Serving signature name: "{signature_name}" not found in signature def')
            infos = dict(signature.inputs)
        if not infos:
            raise errors.invalid_argument(f"Failed to get input map for signature: {signature_name}")
        if "instances" in doc and "inputs" in doc:
            raise errors.invalid_argument(f"JSON Value: {_text(doc)} Not formatted correctly expecting only one of "
                                          "'inputs' or 'instances' keys to exist ")
        if "instances" in doc:
            if not isinstance(doc["instances"], list):
                raise errors.invalid_argument(f"JSON Value: {_text(doc)} Excepting 'instances' to be an list/array")
            if not doc["instances"]:
                raise errors.invalid_argument(f"JSON Value: {_text(doc)} No values in 'instances' array")
            arrays, row_format = _from_instances(doc["instances"], infos), True
        elif "inputs" in doc:
            arrays, row_format = _from_inputs(doc["inputs"], infos), False
        else:
            raise errors.invalid_argument("Missing 'inputs' or 'instances' key")
        for name, array in arrays.items():
            request.inputs[name].CopyFrom(tensors.to_proto(array, infos[name].dtype))
        response = self.core.predict(request, deadline, entrypoint="REST")
        return _outputs_json(response.outputs, row_format)


_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            408: "Request Timeout", 409: "Conflict", 413: "Payload Too Large", 429: "Too Many Requests",
            500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable",
            504: "Gateway Timeout"}
MAX_HEADER_LINE = 65536  # bytes in the request line or one header line
MAX_HEADERS = 100
MAX_BODY = 2**31 - 1  # bytes; as the gRPC port's message size limit (server.MAX_MESSAGE_SIZE)


class HttpServer:
    """HTTP/1.1 with keep-alive on asyncio, serving the REST API (and the Prometheus page when
    configured). The event loop parses and writes; each request's work runs on `executor`.

    Args:
        api: the RestApi.
        executor: the concurrent.futures.Executor requests run on.
        metrics: a kfx.serving.metrics.Metrics (for the Prometheus page), or None.
        metrics_path: the Prometheus page's path, or None for none.
    """

    def __init__(self, api: RestApi, executor, metrics=None, metrics_path: str | None = None):
        self.api, self.executor, self.metrics, self.metrics_path = api, executor, metrics, metrics_path
        self.draining, self.in_flight, self.idle = False, 0, threading.Condition()
        self._server = None

    async def start(self, host: str, port: int, reuse_port: bool = False) -> None:
        """Listens on host:port."""
        self._server = await asyncio.start_server(self._connection, host, port, reuse_port=reuse_port or None,
                                                  limit=MAX_HEADER_LINE)

    async def close(self) -> None:
        """Stops listening (new connections are refused); open connections get 503 from now on."""
        with self.idle:
            self.draining = True
        self._server.close()

    def wait_idle(self, deadline: float) -> bool:
        """Waits (from any thread but the loop's) until no request runs or `deadline` (monotonic)."""
        with self.idle:
            return self.idle.wait_for(lambda: self.in_flight == 0, max(deadline - time.monotonic(), 0))

    def _answer(self, method: str, target: str, body: bytes) -> tuple:
        """(status, payload, content type) for one request; runs on the executor."""
        path = urllib.parse.urlsplit(target).path
        if self.metrics is not None and self.metrics_path and path == self.metrics_path:
            try:
                return 200, self.metrics.exposition(), "text/plain; version=0.0.4"
            except Exception:  # answered, not a connection dropped without a word
                LOG.exception("Prometheus page failed")
                return 500, b"", "text/plain"
        if not path.lower().startswith("/v1/"):
            return 404, b"", "application/json"
        status, payload = self.api.handle(method, path, body)
        return status, json.dumps(payload, indent=4).encode(), "application/json"

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    request = await self._read_request(reader, writer)
                except _BadRequest as bad:
                    self._write(writer, bad.status, json.dumps({"error": str(bad)}).encode(), "application/json",
                                False)
                    await self._linger(reader, writer)
                    break
                if request is None:
                    break
                method, target, body, keep_alive = request
                with self.idle:
                    draining = self.draining
                    self.in_flight += not draining
                if draining:  # a request on a kept-alive connection after shutdown began
                    self._write(writer, 503, json.dumps({"error": SHUTTING_DOWN}).encode(), "application/json",
                                False)
                    break
                try:
                    # Every method reaches the handler, which answers 400 "Malformed request" for
                    # one it does not serve (TF Serving's RestApiRequestDispatcher does the same).
                    reply = await loop.run_in_executor(self.executor, self._answer, method, target, body)
                    self._write(writer, *reply, keep_alive, head=method == "HEAD")
                    await writer.drain()  # in flight until sent: a drain must not exit with it half-written
                finally:
                    with self.idle:
                        self.in_flight -= 1
                        self.idle.notify_all()
                if not keep_alive:
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _read_request(self, reader, writer):
        """(method, target, body, keep-alive) of the next request; None at the end of the connection.

        A request that is not HTTP/1.x is answered 400 and its connection closed: a request or
        header line over MAX_HEADER_LINE bytes, more than MAX_HEADERS headers, a header line
        without a colon, a bad Content-Length or chunk size. A body over MAX_BODY is answered 413.
        """
        try:
            line = await reader.readline()
            if not line.strip():
                return None
            parts = line.decode("latin-1").split()
            if len(parts) != 3 or not parts[2].startswith("HTTP/"):
                raise _BadRequest(400, f"Bad request syntax ({line[:100]!r})")
            method, target, version = parts
            headers, count = {}, 0
            while (header := await reader.readline()) not in (b"\r\n", b"\n", b""):
                name, colon, value = header.decode("latin-1").partition(":")
                count += 1
                if not colon or not name.strip() or count > MAX_HEADERS:
                    raise _BadRequest(400, f"Bad header line ({header[:100]!r})")
                headers[name.strip().lower()] = value.strip()
        except ValueError:  # StreamReader.readline's answer to a line over its limit
            raise _BadRequest(400, f"Request or header line longer than {MAX_HEADER_LINE} bytes") from None
        connection = headers.get("connection", "").lower()
        keep_alive = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length = headers.get("content-length", "0").strip() or "0"
        if not chunked and not length.isdigit():
            raise _BadRequest(400, f"Bad Content-Length ({length!r})")
        if not chunked and int(length) > MAX_BODY:
            raise _BadRequest(413, f"Request body of {length} bytes is over the limit of {MAX_BODY}")
        if (chunked or int(length)) and headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = await self._read_chunked(reader) if chunked else await reader.readexactly(int(length))
        return method, target, body, keep_alive

    @staticmethod
    async def _linger(reader, writer, seconds: float = 2.0, most: int = 1 << 20) -> None:
        """Sends the answer, then reads and drops what the client still sends (a few seconds, 1 MiB at
        most): closing with unread input makes the kernel reset the connection, which can discard
        the answer before the client reads it."""
        await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

        async def discard():
            dropped = 0
            while dropped < most and (data := await reader.read(65536)):
                dropped += len(data)

        try:
            await asyncio.wait_for(discard(), seconds)
        except (asyncio.TimeoutError, ConnectionError):
            pass

    @staticmethod
    async def _read_chunked(reader) -> bytes:
        """A Transfer-Encoding: chunked body (trailers are read and dropped)."""
        body = bytearray()
        while True:
            line = await reader.readline()
            size = line.split(b";")[0].strip()
            try:
                size = int(size, 16)
            except ValueError:
                raise _BadRequest(400, f"Bad chunk size ({line[:100]!r})") from None
            if size < 0 or len(body) + size > MAX_BODY:
                raise _BadRequest(413 if size > 0 else 400, f"Request body over the limit of {MAX_BODY} bytes")
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
                return bytes(body)
            body += await reader.readexactly(size)
            if (await reader.readline()).strip():
                raise _BadRequest(400, "Chunk longer than its size")

    @staticmethod
    def _write(writer, status: int, payload: bytes, content_type: str, keep_alive: bool, head: bool = False) -> None:
        """Writes one response; `head`: the headers only (the answer to a HEAD request)."""
        lines = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\nContent-Type: {content_type}\r\n"
                 f"Content-Length: {len(payload)}\r\n")
        if not keep_alive:
            lines += "Connection: close\r\n"
        writer.write((lines + "\r\n").encode("latin-1") + (b"" if head else payload))


class _BadRequest(Exception):
    """A request that cannot be read: answered `status` with `message`, then the connection closes."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
