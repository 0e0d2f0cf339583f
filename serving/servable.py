"""One loaded model version: a SavedModel in a TensorFlow session, as TF Serving holds it.

TF Serving keeps a SavedModelBundle (a Session plus the MetaGraphDef) per version and runs
signatures by feeding and fetching the tensor names the SignatureDefs name. This does the
same with `tf.compat.v1` so every SavedModel TF Serving serves (TF1 builder exports, Keras 3
`model.export()`, `tf.saved_model.save`) loads the same way and answers with the same
SignatureDefs. In-flight requests hold a reference, so unloading waits for them.
"""

import logging
import threading
import time

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2

from kfx.serving import errors

LOG = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"
WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000  # TF Serving's kMaxNumRecords
INIT_OP_SIGNATURE = "__saved_model_init_op"  # TF2 SavedModels' initializer, stored as a signature


class Servable:
    """A loaded SavedModel version.

    Args:
        name: model name.
        version: version number (the directory name).
        path: the version directory.
        tags: MetaGraph tags to load (TF Serving's --saved_model_tags, default "serve").
        session_config: optional tf.compat.v1.ConfigProto.

    Raises:
        Exception: whatever TensorFlow raises when the directory is not a loadable SavedModel.
    """

    # Seconds of the latest run_unbatched (kfx.serving.core runs a lone request of a fast model
    # on the event loop); unknown until the first run, and for subclasses that do not time theirs.
    last_run_seconds = float("inf")

    def __init__(self, name: str, version: int, path: str, tags=("serve",), session_config=None):
        self.name = name
        self.version = version
        self.path = path
        self._track_requests()
        self._graph = tf.Graph()
        self._session = tf.compat.v1.Session(graph=self._graph, config=session_config)
        try:
            with self._graph.as_default():
                meta_graph = tf.compat.v1.saved_model.loader.load(self._session, list(tags), path)
        except Exception:
            self._session.close()
            raise
        self._graph.finalize()  # nothing may add ops once serving starts
        self.signatures = dict(meta_graph.signature_def)
        self._callables = {}
        self._prepare_lock = threading.Lock()
        for key, signature in self.signatures.items():  # the usual call is prepared before serving
            if key == INIT_OP_SIGNATURE:  # runs at load, never served
                continue
            try:
                self._make_callable(key, tuple(sorted(signature.outputs)))
            except (tf.errors.OpError, ValueError) as exc:  # left to fail on its first request
                LOG.warning("Signature %s of %s version %s cannot be prepared: %s", key, name, version, exc)

    def _track_requests(self) -> None:
        """The state behind acquire/release/close: requests in flight, and whether it is unloading."""
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._in_flight = 0
        self._closed = False
        self.batching = None  # a kfx.serving.batching.BatchingQueues when --enable_batching

    def signature(self, name: str):
        """The SignatureDef called `name` ("" means serving_default), or None."""
        return self.signatures.get(name or DEFAULT_SIGNATURE)

    def run(self, signature_name: str, feeds: dict, output_aliases: tuple, deadline=None) -> dict:
        """Runs a signature, through the batching queue when batching is on.

        Args:
            signature_name: a key of `signatures` (already validated).
            feeds: input alias -> validated numpy array, one per signature input.
            output_aliases: the output aliases to fetch, in any order.
            deadline: `time.monotonic()` value after which a queued request gives up.

        Returns:
            output alias -> numpy array.
        """
        output_aliases = tuple(sorted(output_aliases))  # one callable and one batch queue per output set
        if self.batching is not None:
            return self.batching.run(self, signature_name, feeds, output_aliases, deadline)
        return self.run_unbatched(signature_name, feeds, output_aliases)

    def run_unbatched(self, signature_name: str, feeds: dict, output_aliases: tuple) -> dict:
        """Runs a signature in the session now (one Session::Run)."""
        fn, aliases = self._callables.get((signature_name, output_aliases)) or self._make_callable(
            signature_name, output_aliases)
        start = time.perf_counter()
        try:
            outputs = fn(*[feeds[alias] for alias in aliases])
        except tf.errors.OpError as exc:
            raise errors.from_exception(exc) from None
        finally:
            self.last_run_seconds = time.perf_counter() - start
        return dict(zip(output_aliases, outputs))

    def _make_callable(self, signature_name: str, output_aliases: tuple):
        """(callable, input aliases in feed order) for fetching `output_aliases` of a signature.

        The callable is C++ Session::MakeCallable's, fed by tensor name as TF Serving's
        Session::Run is: no Python-side check of fed shapes against the placeholders' static
        shapes (`session.make_callable(feed_list=...)` goes through `Session.run`, which has
        one), so the graph decides what a shape means, as in TF Serving. A wrong dtype is
        still refused by the runtime.
        """
        signature = self.signatures[signature_name]
        aliases = tuple(sorted(signature.inputs))
        options = config_pb2.CallableOptions(
            feed=[signature.inputs[a].name for a in aliases],
            fetch=[signature.outputs[a].name for a in output_aliases])
        with self._prepare_lock:  # not self._lock: requests acquire/release that one while this builds
            entry = self._callables.get((signature_name, output_aliases))
            if entry is None:
                entry = (self._session._make_callable_from_options(options), aliases)  # noqa: SLF001
                self._callables[(signature_name, output_aliases)] = entry
        return entry

    def acquire(self) -> bool:
        """Takes a reference for one request; False once the version is unloading."""
        with self._lock:
            if self._closed:
                return False
            self._in_flight += 1
            return True

    def release(self) -> None:
        """Drops a reference taken with `acquire`."""
        with self._lock:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.notify_all()

    def close(self, timeout: float | None = None) -> bool:
        """Waits for in-flight requests, then frees the session (UNLOADING -> END).

        Args:
            timeout: seconds to wait for in-flight requests; None waits for ever.

        Returns:
            False, leaving the session open, when requests were still running at the timeout.
        """
        with self._lock:
            self._closed = True
            if not self._idle.wait_for(lambda: self._in_flight == 0, timeout):
                return False
        if self.batching is not None:
            self.batching.close_servable(self)
        self._free()
        return True

    def _free(self) -> None:
        self._session.close()


def read_warmup_requests(version_path: str) -> list:
    """Reads assets.extra/tf_serving_warmup_requests (a TFRecord of PredictionLog).

    Returns:
        The PredictionLog messages; empty when the file does not exist.

    Raises:
        ValueError: when there are more than TF Serving's maximum of 1000 records.
    """
    from tensorflow_serving.apis import prediction_log_pb2

    path = f"{version_path.rstrip('/')}/{WARMUP_FILE}"
    if not tf.io.gfile.exists(path):
        return []
    logs = []
    for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
        logs.append(prediction_log_pb2.PredictionLog.FromString(record))
        if len(logs) > MAX_WARMUP_RECORDS:
            raise ValueError(f"Number of warmup records exceeds the maximum ({MAX_WARMUP_RECORDS}) at {path}")
    return logs


def as_object_array(values) -> np.ndarray:
    """A 1-D object array of bytes (how string tensors are fed to a session)."""
    array = np.empty(len(values), dtype=object)
    array[:] = list(values)
    return array
