"""A model version held as TensorFlow Lite, as TF Serving serves it with --prefer_tflite_model.

TF Serving (servables/tensorflow/tflite_session.cc) serves `<version>/model.tflite` instead of
the SavedModel when --prefer_tflite_model is set and that file exists. Its SignatureDefs are the
TF1-style ones stored in the model's `signature_defs_metadata` (a flexbuffer map of serialized
SignatureDefs, tensorflow/lite/tools/signature); a model without them gets one generated
`serving_default` (predict) signature whose aliases are the tensor names without a `:N` suffix.
A fed tensor whose shape differs from the input's is resized to, as TF Serving does.
"""

import os
import queue
import warnings

import numpy as np
import tensorflow as tf
from flatbuffers import flexbuffers
from tensorflow.core.protobuf import meta_graph_pb2

from kfx.serving import errors, tensors
from kfx.serving.inference import PREDICT_METHOD
from kfx.serving.servable import DEFAULT_SIGNATURE, Servable

MODEL_FILE = "model.tflite"
SIGNATURE_DEFS_METADATA = b"signature_defs_metadata"  # signature_def_util.cc's metadata name
POOL_SIZE = os.cpu_count() or 1  # TF Serving's --num_tflite_pools default: NumSchedulableCPUs()


def model_path(version_path: str) -> str | None:
    """`<version>/model.tflite` when it exists (TfLiteModelFound), else None."""
    path = f"{version_path.rstrip('/')}/{MODEL_FILE}"
    return path if tf.io.gfile.exists(path) else None


def stored_signatures(content: bytes) -> dict:
    """The SignatureDefs in a .tflite file's `signature_defs_metadata`; empty when there are none."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(content))
    for metadata in model.metadata or []:
        if metadata.name == SIGNATURE_DEFS_METADATA:
            root = flexbuffers.GetRoot(bytes(model.buffers[metadata.buffer].data)).AsMap
            return {key.AsKey: meta_graph_pb2.SignatureDef.FromString(value.AsStringBytes)
                    for key, value in zip(root.Keys, root.Values)}
    return {}


def _tensor_info(detail: dict) -> meta_graph_pb2.TensorInfo:
    info = meta_graph_pb2.TensorInfo(name=detail["name"], dtype=tensors.dtype_of(np.empty(0, detail["dtype"])))
    for size in detail["shape"]:  # the tensor's dims before any resize, as TfLiteTensorToTensorInfo
        info.tensor_shape.dim.add(size=int(size))
    return info


def _interpreter(content: bytes, path: str) -> tf.lite.Interpreter:
    try:
        with warnings.catch_warnings():  # tf.lite.Interpreter's deprecation notice
            warnings.simplefilter("ignore")
            interpreter = tf.lite.Interpreter(model_content=content)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise errors.invalid_argument(f"Cannot build Interpreter from {path}/{MODEL_FILE}: {exc}") from None
    return interpreter


class TfLiteServable(Servable):
    """A loaded `model.tflite` version, with the interface of `Servable`.

    Args:
        name: model name.
        version: version number.
        path: the version directory (holding model.tflite).

    Raises:
        ServingError: INVALID_ARGUMENT when the file is not a TF Lite model, INTERNAL when a
            stored signature names a tensor the model does not have.
    """

    def __init__(self, name: str, version: int, path: str):  # noqa: D107 - no session to open
        self.name, self.version, self.path = name, version, path
        with tf.io.gfile.GFile(model_path(path), "rb") as handle:
            content = handle.read()
        first = _interpreter(content, path)
        inputs = {d["name"]: d for d in first.get_input_details()}
        outputs = {d["name"]: d for d in first.get_output_details()}
        self.signatures = stored_signatures(content)
        for signature in self.signatures.values():
            for kind, known in (("input", inputs), ("output", outputs)):
                for alias, info in getattr(signature, f"{kind}s").items():
                    legacy = info.name.split(":", 1)[0]  # early converters dropped the ":0" suffix
                    if info.name not in known and legacy not in known:  # FixTfLiteTensorName + context
                        raise errors.internal(f"Unknown tensor '{info.name}'.\n\t"
                                              f"Signature {kind} {alias} references an unknown tensor")
                    if info.name not in known:
                        info.name = legacy
        if not self.signatures:  # TF Serving generates one: "No signature def found in TFLite model"
            generated = meta_graph_pb2.SignatureDef(method_name=PREDICT_METHOD)
            for known, field in ((inputs, generated.inputs), (outputs, generated.outputs)):
                for tensor_name, detail in known.items():
                    field[tensor_name.split(":", 1)[0]].CopyFrom(_tensor_info(detail))
            self.signatures = {DEFAULT_SIGNATURE: generated}
        self._index = {n: d["index"] for n, d in (inputs | outputs).items()}
        # One Interpreter runs one request at a time: a pool of them, as many as TF Serving's default
        # --num_tflite_pools (the CPU count); each with the input shapes it is allocated for.
        self._pool = queue.SimpleQueue()
        for interpreter in [first] + [_interpreter(content, path) for _ in range(POOL_SIZE - 1)]:
            self._pool.put((interpreter, {d["index"]: tuple(d["shape"]) for d in inputs.values()}))
        self._track_requests()

    def run_unbatched(self, signature_name: str, feeds: dict, output_aliases: tuple) -> dict:
        """Sets the inputs (resizing them to the fed shapes), invokes, reads the outputs."""
        signature = self.signatures[signature_name]
        interpreter, shapes = self._pool.get()
        try:
            resized = False
            for alias, array in feeds.items():
                index = self._index[signature.inputs[alias].name]
                if shapes.get(index) != array.shape:
                    interpreter.resize_tensor_input(index, array.shape)
                    shapes[index], resized = array.shape, True
            if resized:
                interpreter.allocate_tensors()
            for alias, array in feeds.items():
                interpreter.set_tensor(self._index[signature.inputs[alias].name], array)
            interpreter.invoke()
            return {alias: interpreter.get_tensor(self._index[signature.outputs[alias].name])
                    for alias in output_aliases}
        except (ValueError, RuntimeError) as exc:
            shapes.clear()  # a failed resize or allocation: the next request resizes and allocates again
            raise errors.internal(f"TF Lite model {self.name} version {self.version}: {exc}") from None
        finally:
            self._pool.put((interpreter, shapes))

    def _free(self) -> None:
        self._pool = None
