"""`kfx serve --num_workers N`: N server processes sharing the gRPC (and REST) port.

TF Serving has no such flag; with N = 1 (the default) nothing here runs. With N > 1 the process
that was started becomes a supervisor (it never imports TensorFlow) and starts N workers, each
`python -m kfx.serving` with the same flags: each loads the models and listens on the same ports
with SO_REUSEPORT, so the kernel spreads connections over them and no process's GIL is shared.

The supervisor keeps a private directory (removed on exit) that the workers share:
- `models.config` + its generation: the ModelServerConfig every worker serves. A
  HandleReloadConfigRequest that one worker accepted is written there, as is a changed
  --model_config_file (the supervisor polls it, the workers do not); every worker applies each
  new generation, and a worker started later starts from it.
- `worker-<pid>`: the generation each worker has applied. The worker that received a
  ReloadConfig answers only when every live worker has applied it, so a client that moved a
  label sees the move on every connection once the call returns.
- `metrics/`: prometheus_client's multiprocess files, so the Prometheus page of any worker shows
  the totals (see metrics.py).
New versions on disk reach every worker through its own --file_system_poll_wait_seconds poll.

A worker that dies is replaced (its connections' clients reconnect to the others). SIGTERM or
SIGINT to the supervisor is passed to every worker, which drains as a single server does; the
supervisor exits 0 when they all did. Workers also drain when the supervisor dies.
"""

import argparse
import ctypes
import fcntl
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

LOG = logging.getLogger(__name__)

GROUP_ENV = "KFX_SERVE_WORKER_GROUP"  # the shared directory, set in the workers' environment
GENERATION_ENV = "KFX_SERVE_CONFIG_GENERATION"  # the config generation a worker was started with
CONFIG_FILE = "models.config"
WORKER_PREFIX = "worker-"
SUPERVISOR_TICK = 0.2  # seconds between the supervisor's checks of its workers
WATCH_INTERVAL = 0.1  # seconds between a worker's checks for a new config generation
PEER_TIMEOUT = 120.0  # seconds a reload waits for the other workers to apply it
RESPAWN_DELAY = 1.0  # minimum seconds between two starts of one worker slot (no crash loop)


# ---- the shared config ---------------------------------------------------------------------


def read_config(directory: str) -> tuple:
    """(generation, text proto) of the shared config; (0, "") before the first publish."""
    try:
        with open(os.path.join(directory, CONFIG_FILE), encoding="utf-8") as handle:
            first, _, text = handle.read().partition("\n")
    except FileNotFoundError:
        return 0, ""
    return int(first.split()[-1]), text


def publish_config(directory: str, text: str) -> int:
    """Writes a ModelServerConfig text proto as the next generation; returns that generation."""
    with open(os.path.join(directory, "lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the supervisor and any worker may publish at once
        generation = read_config(directory)[0] + 1
        temporary = os.path.join(directory, f".{CONFIG_FILE}.{os.getpid()}")
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(f"# generation {generation}\n{text}")  # a text-proto comment
        os.replace(temporary, os.path.join(directory, CONFIG_FILE))
    return generation


def _write_ack(directory: str, pid: int, generation: int) -> None:
    temporary = os.path.join(directory, f".{WORKER_PREFIX}{pid}")
    with open(temporary, "w") as handle:
        handle.write(str(generation))
    os.replace(temporary, os.path.join(directory, f"{WORKER_PREFIX}{pid}"))


def _acks(directory: str) -> dict:
    """{worker pid: generation applied} of every worker that has started serving."""
    acks = {}
    for name in os.listdir(directory):
        if name.startswith(WORKER_PREFIX):
            try:
                with open(os.path.join(directory, name)) as handle:
                    acks[int(name[len(WORKER_PREFIX):])] = int(handle.read() or 0)
            except (FileNotFoundError, ValueError):  # removed or being replaced right now
                continue
    return acks


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


# ---- the worker's side ---------------------------------------------------------------------


class Member:
    """A worker's link to its group: applies shared configs, publishes its own reloads.

    Args:
        directory: the group's shared directory.
        generation: the config generation the worker was started with.
    """

    def __init__(self, directory: str, generation: int):
        self.directory, self.applied = directory, generation
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server = None

    @classmethod
    def from_env(cls):
        """The Member of this process when a --num_workers supervisor started it, else None."""
        directory = os.environ.get(GROUP_ENV)
        return cls(directory, int(os.environ.get(GENERATION_ENV, "0"))) if directory else None

    def join(self, server) -> None:
        """Called once `server` (a ModelServer) serves: reports it and follows the shared config."""
        self._server = server
        server.core.on_reload = self._publish
        threading.Thread(target=self._watch, name="worker-group", daemon=True).start()
        _write_ack(self.directory, os.getpid(), self.applied)

    def leave(self) -> None:
        """Stops following the shared config; other workers' reloads no longer wait for this one."""
        self._stop.set()
        try:
            os.remove(os.path.join(self.directory, f"{WORKER_PREFIX}{os.getpid()}"))
        except FileNotFoundError:
            pass

    def _publish(self, config) -> None:
        """After this worker applied a ReloadConfig: hands it to the others and waits for them."""
        from google.protobuf import text_format

        with self._lock:
            generation = publish_config(self.directory, text_format.MessageToString(config))
            self.applied = generation
        _write_ack(self.directory, os.getpid(), generation)
        deadline = time.monotonic() + PEER_TIMEOUT
        while time.monotonic() < deadline and not self._stop.is_set():
            behind = [pid for pid, applied in _acks(self.directory).items() if applied < generation and _alive(pid)]
            if not behind:
                return
            time.sleep(WATCH_INTERVAL / 2)
        LOG.warning("Workers %s had not applied config generation %d after %.0fs", behind, generation, PEER_TIMEOUT)

    def _watch(self) -> None:
        while not self._stop.wait(WATCH_INTERVAL):
            try:
                generation, text = read_config(self.directory)
                with self._lock:
                    if generation <= self.applied:
                        continue
                    self.applied = generation
                self._apply(generation, text)
            except Exception:  # a bad config must not stop this worker following later ones
                LOG.exception("Failed to apply the shared model config")

    def _apply(self, generation: int, text: str) -> None:
        """Reloads a published config; a label on a version this worker has not loaded yet waits for it."""
        from google.protobuf import text_format
        from tensorflow_serving.config import model_server_config_pb2

        from kfx.serving import errors

        config = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
        deadline = time.monotonic() + PEER_TIMEOUT
        while True:
            try:
                self._server.manager.reload_config(config)
                break
            except errors.ServingError as error:
                # The worker that accepted this config had the labelled version AVAILABLE; this one
                # loads it from the same disk shortly (its file-system poll runs on its own clock).
                if error.code.name != "FAILED_PRECONDITION" or time.monotonic() > deadline or self._stop.is_set():
                    LOG.error("Worker %d could not apply config generation %d: %s", os.getpid(), generation,
                              error.message)
                    break
                self._server.manager.poll()
                time.sleep(WATCH_INTERVAL)
        _write_ack(self.directory, os.getpid(), generation)
        LOG.info("Worker %d applied config generation %d", os.getpid(), generation)


# ---- the supervisor ------------------------------------------------------------------------


def _worker_command(args: argparse.Namespace, config_file: str) -> list:
    """`python -m kfx.serving` with the supervisor's flags for one worker."""
    from kfx.serving.cli import add_serve_arguments

    flags = vars(add_serve_arguments(argparse.ArgumentParser()).parse_args([]))
    values = {name: getattr(args, name) for name in flags}
    values.update(num_workers=1, model_config_file_poll_wait_seconds=0)  # the supervisor polls
    if config_file:
        values["model_config_file"] = config_file
    return [sys.executable, "-m", "kfx.serving", *(f"--{name}={value}" for name, value in values.items())]


def supervise(args: argparse.Namespace) -> int:
    """Runs args.num_workers workers until SIGTERM/SIGINT, replacing any that dies.

    Returns:
        The exit code: 0 after a drain in which every worker exited 0; a worker's code when it
        failed before all of them were serving (a bad flag or model fails them all alike); 1
        for a --num_workers below 1.
    """
    if args.num_workers < 1:
        print(f"Failed to start server. Error: --num_workers must be at least 1, got {args.num_workers}",
              file=sys.stderr)
        return 1
    from prometheus_client import multiprocess

    directory = tempfile.mkdtemp(prefix="kfx-serve-")
    metrics_dir = os.path.join(directory, "metrics")
    os.mkdir(metrics_dir)
    env = dict(os.environ, **{GROUP_ENV: directory, "PROMETHEUS_MULTIPROC_DIR": metrics_dir})
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())

    def start() -> subprocess.Popen:
        generation, _ = read_config(directory)
        command = _worker_command(args, os.path.join(directory, CONFIG_FILE) if generation else "")
        process = subprocess.Popen(command, env=dict(env, **{GENERATION_ENV: str(generation)}),
                                   preexec_fn=_drain_with_parent)
        process.started = time.monotonic()
        LOG.info("Started worker %d", process.pid)
        return process

    poll_file = args.model_config_file if args.model_config_file_poll_wait_seconds > 0 else ""
    file_text, next_poll = _read_text(poll_file), time.monotonic() + args.model_config_file_poll_wait_seconds
    workers = [start() for _ in range(args.num_workers)]
    serving = False
    try:
        while not stopping.wait(SUPERVISOR_TICK):
            if not serving and set(_acks(directory)) >= {w.pid for w in workers}:
                serving = True
                LOG.info("All %d workers serving: %s", len(workers), [w.pid for w in workers])
            for slot, worker in enumerate(workers):
                code = worker.poll()
                if code is None:
                    continue
                _forget(directory, worker.pid, multiprocess)
                if not serving:
                    print(f"Worker {worker.pid} exited with {code} before serving", file=sys.stderr)
                    _stop_all(workers)
                    return code or 1
                if time.monotonic() - worker.started >= RESPAWN_DELAY:
                    LOG.warning("Worker %d exited with %s; starting a replacement", worker.pid, code)
                    workers[slot] = start()
            if poll_file and time.monotonic() >= next_poll:
                next_poll = time.monotonic() + args.model_config_file_poll_wait_seconds
                text = _read_text(poll_file)
                if text is not None and text != file_text:
                    file_text = text
                    LOG.info("--model_config_file changed: config generation %d",
                             publish_config(directory, text))
        return _stop_all(workers)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _drain_with_parent() -> None:
    """In a new worker: SIGTERM (a drain) when the supervisor dies, even of SIGKILL (Linux prctl)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _read_text(path: str):
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError as exc:  # a file being replaced; the next poll reads it
        LOG.warning("Could not read --model_config_file %s: %s", path, exc)
        return None


def _forget(directory: str, pid: int, multiprocess) -> None:
    """Drops a dead worker's ack and its live gauges (its counters keep counting in the totals)."""
    try:
        os.remove(os.path.join(directory, f"{WORKER_PREFIX}{pid}"))
    except FileNotFoundError:
        pass
    multiprocess.mark_process_dead(pid, os.path.join(directory, "metrics"))


def _stop_all(workers: list) -> int:
    """SIGTERM to every worker (each drains), waits; 0 when all exited 0 (or of that SIGTERM), else
    the first other code."""
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
    codes = [worker.wait() for worker in workers]
    LOG.info("Workers exited with %s", codes)
    # A worker still loading its models has no SIGTERM handler yet and dies of the signal: no request lost.
    return next((code for code in codes if code not in (0, -signal.SIGTERM)), 0)
