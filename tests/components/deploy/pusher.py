"""A pre-warmed `kfx` for the push fault tests: many real push processes, each one SIGKILL-able.

`python -m tests.components.deploy.pusher EVENTS_FD` starts as the `kfx` console script does
(logs.setup, then TensorFlow and kfx imported), then forks one child per push. Each child runs
`kfx.pipeline.cli.main(argv)` -- the function behind `kfx component push ...` -- so a push costs a
fork instead of a TensorFlow import (seconds on a loaded machine), and the test can SIGKILL it.

Each child reports the push's steps on the inherited file descriptor EVENTS_FD, one line
"TAG INDEX NAME" per step, just before the step runs: "copy <dst>" (each file copied into a
staging directory), "claim <dst>" (the rename of the staging directory to a version),
"config" (models.config update begins) and "config-replace" (the rename of the new
models.config over the old). At step INDEX == hold the child blocks until SIGUSR1 (release) or
SIGKILL, so a kill can land exactly there.

Protocol on stdin/stdout, one JSON object per line:
    {"run": [argv...], "tag": "t", "hold": 3 | null}  ->  {"pid": N}
    {"wait": N}                                       ->  {"pid": N, "status": exit code or -signal}
A child still running after WAIT_SECONDS is killed and reported with status "timeout".
"""
from __future__ import annotations

import itertools
import json
import os
import signal
import sys
import time
import traceback

WAIT_SECONDS = 120


def _install_hooks(events_fd: int, tag: str, hold: int | None) -> None:
    from kfx.components.deploy import push

    counter = itertools.count()

    def step(name: str) -> None:
        index = next(counter)
        os.write(events_fd, f"{tag} {index} {name}\n".encode())
        if index == hold:
            signal.sigwait({signal.SIGUSR1})

    def hooked(fn, name):
        def run(*args, **kwargs):
            step(name(*args))
            return fn(*args, **kwargs)
        return run

    push._copy_file = hooked(push._copy_file, lambda src, dst: f"copy {dst}")
    push._rename = hooked(push._rename, lambda src, dst: f"claim {dst}")
    push.update_models_config = hooked(push.update_models_config, lambda *a: "config")
    push._replace = hooked(push._replace, lambda src, dst: "config-replace")


def _child(events_fd: int, argv: list[str], tag: str, hold: int | None) -> None:
    code = 99
    try:
        os.dup2(2, 1)  # stdout is the protocol channel
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
        _install_hooks(events_fd, tag, hold)
        from kfx.pipeline import cli

        code = cli.main(argv)
    except BaseException:  # noqa: BLE001 - reported through the exit status and the log
        traceback.print_exc()
    finally:
        sys.stderr.flush()
        os._exit(code)


def _wait(pid: int) -> int | str:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return "timeout"


def main() -> None:
    events_fd = int(sys.argv[1])
    from kfx.pipeline import logs

    logs.setup()  # once, before TensorFlow, as `kfx` does; children inherit the filtered stderr
    import tensorflow  # noqa: F401 - the import every child would otherwise pay

    from google.protobuf import text_format  # noqa: F401
    from tensorflow_serving.config import model_server_config_pb2  # noqa: F401

    from kfx.components.deploy import push  # noqa: F401
    from kfx.pipeline import cli, runner  # noqa: F401

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        if "run" in command:
            pid = os.fork()
            if pid == 0:
                _child(events_fd, command["run"], command["tag"], command.get("hold"))
            reply = {"pid": pid}
        else:
            reply = {"pid": command["wait"], "status": _wait(command["wait"])}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
