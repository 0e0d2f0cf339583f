"""Server-side dynamic batching with TF Serving's BatchingParameters.

Requests for the same (model version, signature, outputs) are queued into batches of at most
max_batch_size rows; a batch runs when it is full, when a newer batch has been started behind
it, or when its oldest request has waited batch_timeout_micros. num_batch_threads workers
(shared by all models, like TF Serving's batch thread pool) run batches. When a request would
need more than max_enqueued_batches batches, it is answered UNAVAILABLE at once with
TF Serving's message instead of waiting.
"""

import asyncio
import collections
import os
import threading
import time

import numpy as np

from kfx.serving import errors, tensors

QUEUE_FULL = "The batch scheduling queue to which this task was submitted is full"


class _Task:
    """One request in a batch.

    `waiter` is woken on the batch thread once result or error is set: a threading.Event, or an
    (event loop, asyncio future) pair for a request awaiting its batch on a loop.
    """

    __slots__ = ("feeds", "size", "waiter", "result", "error")

    def __init__(self, feeds: dict, size: int, waiter):
        self.feeds, self.size, self.waiter = feeds, size, waiter
        self.result = self.error = None


class _Batch:
    __slots__ = ("tasks", "size", "started")

    def __init__(self):
        self.tasks, self.size, self.started = [], 0, time.monotonic()


def _wake(tasks: list) -> None:
    """Wakes a batch's waiters: threads one by one, each event loop once for all its futures."""
    futures = {}
    for task in tasks:
        if isinstance(task.waiter, threading.Event):
            task.waiter.set()
        else:
            loop, future = task.waiter
            futures.setdefault(loop, []).append(future)
    for loop, pending in futures.items():
        loop.call_soon_threadsafe(_resolve, pending)


def _resolve(futures: list) -> None:
    for future in futures:
        if not future.done():  # a request that gave up at its deadline has a cancelled future
            future.set_result(None)


def _outcome(task: _Task) -> dict:
    if task.error is not None:
        raise task.error
    return task.result


def _param(params, name: str, default: int) -> int:
    return getattr(params, name).value if params.HasField(name) else default


class BatchingQueues:
    """Batching queues and their worker threads.

    Args:
        params: a tensorflow.serving.BatchingParameters message (see kfx.serving.protos); unset
            fields take TF Serving's defaults (max_batch_size 1000, batch_timeout_micros 0,
            max_enqueued_batches 10, num_batch_threads = number of CPUs).
        on_batch: called as on_batch(model_name, batch_size) for every batch run (metrics).

    Raises:
        ValueError: when allowed_batch_sizes is not increasing or does not end at max_batch_size.
    """

    def __init__(self, params, on_batch=None):
        self.max_batch_size = _param(params, "max_batch_size", 1000)
        self.timeout = _param(params, "batch_timeout_micros", 0) / 1e6
        self.max_enqueued = _param(params, "max_enqueued_batches", 10)
        threads = _param(params, "num_batch_threads", os.cpu_count() or 1)
        self.allowed = list(params.allowed_batch_sizes)
        self.pad_variable_length = params.pad_variable_length_inputs
        if self.max_batch_size < 1 or threads < 1 or self.max_enqueued < 1:
            raise ValueError("max_batch_size, num_batch_threads and max_enqueued_batches must be >= 1, "
                             f"got {self.max_batch_size}, {threads}, {self.max_enqueued}")
        if self.allowed and (sorted(set(self.allowed)) != self.allowed or self.allowed[-1] != self.max_batch_size):
            raise ValueError(f"allowed_batch_sizes {self.allowed} must be increasing and end with "
                             f"max_batch_size {self.max_batch_size}")
        self._on_batch = on_batch
        self._queues = {}
        self._cv = threading.Condition()
        self._stopped = False
        self._workers = [threading.Thread(target=self._work, name=f"batch-{i}", daemon=True)
                         for i in range(threads)]
        for worker in self._workers:
            worker.start()

    def run(self, servable, signature_name: str, feeds: dict, outputs: tuple, deadline=None) -> dict:
        """Queues one request and blocks this thread until its batch has run.

        Raises:
            ServingError: INVALID_ARGUMENT for inputs that cannot be batched, UNAVAILABLE when the
                queue is full, DEADLINE_EXCEEDED when `deadline` passes first.
        """
        done = threading.Event()
        task = self._enqueue(servable, signature_name, feeds, outputs, done)
        if not done.wait(None if deadline is None else max(deadline - time.monotonic(), 0)):
            raise errors.deadline_exceeded("Deadline Exceeded")
        return _outcome(task)

    async def run_async(self, servable, signature_name: str, feeds: dict, outputs: tuple, deadline=None) -> dict:
        """Like `run`, but awaits the batch on the running event loop instead of holding a thread."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        task = self._enqueue(servable, signature_name, feeds, outputs, (loop, future))
        try:
            await asyncio.wait_for(future, None if deadline is None else max(deadline - time.monotonic(), 0))
        except TimeoutError:
            raise errors.deadline_exceeded("Deadline Exceeded") from None
        return _outcome(task)

    def _enqueue(self, servable, signature_name: str, feeds: dict, outputs: tuple, waiter) -> _Task:
        """Adds a request to the last open batch of its queue (or a new one).

        A worker is woken only when the request starts a batch or fills one: until then the
        workers already wait for the open batch's timeout.
        """
        sizes = set()
        for array in feeds.values():
            if array.ndim == 0:
                raise errors.invalid_argument("Batching Run() input tensors must have at least one dimension")
            sizes.add(array.shape[0])
        if len(sizes) != 1:
            raise errors.invalid_argument("Batching Run() input tensors must have equal 0th-dimension size")
        task = _Task(feeds, sizes.pop(), waiter)
        if task.size > self.max_batch_size:
            raise errors.invalid_argument(
                f"Task size {task.size} is larger than maximum input batch size {self.max_batch_size}")
        key = (servable, signature_name, outputs)
        with self._cv:
            queue = self._queues.setdefault(key, collections.deque())
            if queue and queue[-1].size + task.size <= self.max_batch_size:
                batch = queue[-1]
                wake = batch.size + task.size == self.max_batch_size
            elif len(queue) < self.max_enqueued:
                batch = _Batch()
                queue.append(batch)
                wake = True
            else:
                raise errors.unavailable(QUEUE_FULL)
            batch.tasks.append(task)
            batch.size += task.size
            if wake:
                self._cv.notify()
        return task

    def _next_ready(self):
        """Pops a batch that may run now; else returns (None, seconds until one may)."""
        now, soonest = time.monotonic(), None
        for key, queue in self._queues.items():
            if not queue:
                continue
            head = queue[0]
            due = head.started + self.timeout
            if head.size >= self.max_batch_size or len(queue) > 1 or due <= now:
                queue.popleft()
                return key, head, None
            soonest = due - now if soonest is None else min(soonest, due - now)
        return None, None, soonest

    def _work(self) -> None:
        while True:
            with self._cv:
                key, batch, wait = self._next_ready()
                while batch is None:
                    if self._stopped:
                        return
                    self._cv.wait(wait)
                    key, batch, wait = self._next_ready()
            self._process(key, batch)

    def _process(self, key, batch: _Batch) -> None:
        servable, signature_name, outputs = key
        tasks = batch.tasks
        try:
            padded = min((s for s in self.allowed if s >= batch.size), default=batch.size)
            merged = {alias: self._merge(alias, [t.feeds[alias] for t in tasks], padded - batch.size)
                      for alias in tasks[0].feeds}
            if self._on_batch:
                self._on_batch(servable.name, padded)
            results = servable.run_unbatched(signature_name, merged, outputs)
            offset = 0
            for task in tasks:
                task.result = {}
                for alias, array in results.items():
                    if array.ndim == 0 or array.shape[0] != padded:
                        raise errors.internal(
                            "Batched output tensor's 0th dimension does not equal the sum of the 0th "
                            f"dimension sizes of the input tensors (output '{alias}')")
                    task.result[alias] = array[offset:offset + task.size]
                offset += task.size
        except Exception as exc:  # every request of a failed batch gets the batch's error
            error = errors.from_exception(exc)
            for task in tasks:
                task.error = error
        _wake(tasks)

    def _merge(self, alias: str, arrays: list, padding: int) -> np.ndarray:
        shapes = {a.shape[1:] for a in arrays}
        if len(shapes) > 1:
            if not self.pad_variable_length:
                raise errors.invalid_argument(
                    f"Tensors with name '{alias}' from different tasks have different shapes and padding "
                    "is turned off. Set pad_variable_length_inputs to true, or ensure that all tensors "
                    "with the same name have equal dimensions starting with the first dim.")
            target = tuple(max(dims) for dims in zip(*shapes))
            arrays = [self._pad_to(a, target) for a in arrays]
        if padding:
            # Like TF Serving, pad up to an allowed batch size with copies of the first row.
            arrays = arrays + [np.repeat(arrays[0][:1], padding, axis=0)]
        return arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)

    @staticmethod
    def _pad_to(array: np.ndarray, target: tuple) -> np.ndarray:
        widths = [(0, 0)] + [(0, t - s) for s, t in zip(array.shape[1:], target)]
        fill = b"" if tensors.dtype_or_none(array) == tensors.types_pb2.DT_STRING else 0
        return np.pad(array, widths, constant_values=fill)

    def close_servable(self, servable) -> None:
        """Forgets the queues of an unloaded servable (they are empty by then)."""
        with self._cv:
            for key in [k for k in self._queues if k[0] is servable]:
                del self._queues[key]

    def stop(self) -> None:
        """Stops the worker threads."""
        with self._cv:
            self._stopped = True
            self._cv.notify_all()
