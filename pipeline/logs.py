"""Quiet libraries on a healthy run; keep kfx's own lines and every real problem.

`setup()` is called first thing by the CLIs (`kfx`, `kfx serve`, `python -m kfx.serving.cli`),
before TensorFlow is imported. It works at the source where there is one:
- TF_CPP_MIN_LOG_LEVEL=2 (unless the user set it): TensorFlow's C++ INFO and WARNING lines;
- records of the `absl`, `tensorflow` and `apache_beam` Python loggers below ERROR are dropped
  (their warnings are chatter such as argument-name sanitizing or Beam's internal flags); Beam's
  SDK workers are quieted by the pipeline option --default_sdk_harness_log_level=ERROR (beam_args);
- warnings filters by module and message for the known harmless library warnings.

TensorFlow's shared libraries also log while they load, before any setting is read (absl's
"before absl::InitializeLog()" notice, oneDNN/CPU-feature INFO lines), and they probe CUDA even
when no driver is installed ("failed call to cuInit"). Those lines are written to file
descriptor 2 by C++ code (in this process and in Beam's worker processes, which inherit it), so
they are dropped by a small filter process that stderr is routed through: only the exact lines
in STDERR_NOISE (which also holds the lines Beam's worker processes print before they read their
log level), only while TF_CPP_MIN_LOG_LEVEL asks for it, and the cuInit failure only after
TensorFlow said that no CUDA driver is installed (on a GPU machine it is a real error). Every
other line, including tracebacks of a crashing process, passes through unchanged; the filter
outlives its parent, so nothing written before a crash is lost.

`kfx -v` turns all of this off. No TensorFlow import here.
"""
from __future__ import annotations

import atexit
import logging
import os
import re
import subprocess
import sys
import warnings

FILTER_ENV = "KFX_STDERR_FILTER"  # set once stderr is filtered: child processes keep the one filter

# (minimum TF_CPP_MIN_LOG_LEVEL, pattern) for lines written to stderr by native code and Beam workers.
STDERR_NOISE = (
    (1, re.compile(r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR")),
    (1, re.compile(r"I\d{4} .*")),  # absl INFO lines logged while the libraries load
    (1, re.compile(r"To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\.")),
    (2, re.compile(r"W\d{4} .*")),
    (2, re.compile(r"E\d{4} .*Unable to register cu(DNN|FFT|BLAS) factory: .* already been registered")),
    (2, re.compile(r"WARNING:root:apitools not found, and bigquery client libraries are not available.*")),
    (1, re.compile(r"INFO:__main__:Logging handler created\.")),  # Beam SDK worker bootstrap
)
NO_DRIVER = re.compile(r"I\d{4} .*Could not find cuda drivers on your machine, GPU will not be used\.")
CUINIT_FAILED = re.compile(r"E\d{4} .*cuda_platform\.cc:\d+\] failed call to cuInit: .*")

# (category, module regex, message regex) of Python warnings that say nothing to a kfx user.
PY_WARNINGS = (
    # keras.Model.fit on a tf.data pipeline that kfx shuffles itself (KerasTuner passes shuffle=True).
    (UserWarning, r"keras\.src\.trainers\.epoch_iterator", r"`shuffle=True` was passed, but will be ignored"),
    # A tuning trial stopped at its time budget, or a last short epoch: kfx's own deadline logic.
    (UserWarning, r"keras\.src\.trainers\.epoch_iterator", r"Your input ran out of data; interrupting training"),
    # Generated *_pb2 modules of tensorflow / tensorflow-serving-api older than the pinned protobuf.
    (UserWarning, r"google\.protobuf\.runtime_version", r"Protobuf gencode version"),
)
QUIET_LOGGERS = ("absl", "tensorflow", "apache_beam")


class _QuietLibraries(logging.Filter):
    """On kfx's log handler: library records below ERROR, and a library's notice that an optional
    dependency is absent, are dropped. A handler filter, because absl resets its logger's level."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith("apitools not found"):
            return False
        library = record.name.split(".")[0] in QUIET_LOGGERS
        return not library or record.levelno >= logging.ERROR


def setup(verbose: bool = False) -> None:
    """Configure logging for a kfx command: kfx's own INFO lines, libraries quiet (idempotent).

    Args:
        verbose: debug logging for everything, nothing filtered (`kfx -v`).
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if verbose:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _QuietLibraries) for f in handler.filters):
            handler.addFilter(_QuietLibraries())
    for category, module, message in PY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    _filter_native_stderr()


def _filter_native_stderr() -> None:
    """Route file descriptor 2 through a `python -m kfx.pipeline.logs` filter process."""
    if os.environ.get(FILTER_ENV):
        return
    try:
        sys.stderr.flush()
        original = os.dup(2)
    except (OSError, ValueError):  # no usable stderr (closed or replaced): nothing to filter
        return
    read, write = os.pipe()
    proc = subprocess.Popen([sys.executable, "-m", __name__], stdin=read, stdout=original, stderr=original,
                            env={**os.environ, FILTER_ENV: "1"}, start_new_session=True)
    os.close(read)
    os.dup2(write, 2)
    os.close(write)
    os.environ[FILTER_ENV] = "1"

    @atexit.register
    def _drain():
        # Close our end so the filter sees EOF once every child has exited; wait for it to flush.
        sys.stderr.flush()
        os.dup2(original, 2)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # a straggling child still holds the pipe: leave it
            pass


def is_noise(line: str, level: int, no_driver: bool) -> bool:
    """Whether a native stderr line (without its newline) is known library noise at this level."""
    if no_driver and level >= 2 and CUINIT_FAILED.fullmatch(line):
        return True
    return any(level >= minimum and pattern.fullmatch(line) for minimum, pattern in STDERR_NOISE)


def _filter(src, dst, level: int) -> None:
    no_driver = False
    for raw in src:
        line = raw.decode(errors="replace").rstrip("\r\n")
        no_driver = no_driver or bool(NO_DRIVER.fullmatch(line))
        if not is_noise(line, level, no_driver):
            dst.write(raw)
            dst.flush()


if __name__ == "__main__":
    try:
        _level = int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        _level = 0
    _filter(sys.stdin.buffer, sys.stderr.buffer, _level)
