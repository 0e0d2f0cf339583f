"""A toy component for concurrent-writer tests (no TensorFlow work): copies its input's lines and
adds its own (`<run id>:<execution id>`), in several files, so a half-written output (a missing or
short file) is detectable and the content records which execution produced it.

Two environment variables steer it from the test that starts the runs:
KFX_TOY_BARRIER=DIR:N makes a stage without input wait until N runs have reached it (so runs really
overlap); KFX_TOY_FAIL_DEPTH=K makes the stages K steps from the start fail after writing part of
their output; KFX_TOY_HANG=DIR:K makes them hang there instead (after leaving a file named by the
execution id in DIR), for the test to SIGKILL the run mid-stage.
"""
from __future__ import annotations

import os
import time

from kfx.pipeline.component import ComponentError, ComponentSpec, Context

FILES = ("part-0.txt", "part-1.txt", "part-2.txt")
BARRIER_SECONDS = 300  # a loaded machine may take minutes to import TensorFlow in each run


def _barrier(ctx: Context) -> None:
    folder, parties = os.environ["KFX_TOY_BARRIER"].rsplit(":", 1)
    open(os.path.join(folder, ctx.run_id), "w").close()
    deadline = time.monotonic() + BARRIER_SECONDS
    while len(os.listdir(folder)) < int(parties):
        if time.monotonic() > deadline:
            raise ComponentError(f"toy barrier {folder}: only {os.listdir(folder)} of {parties} runs "
                                 f"arrived within {BARRIER_SECONDS}s")
        time.sleep(0.05)


def run(ctx: Context) -> dict:
    src = ctx.inputs.get("src")
    lines = []
    if src:
        with open(os.path.join(src, FILES[0])) as f:
            lines = f.read().splitlines()
    elif os.environ.get("KFX_TOY_BARRIER"):
        _barrier(ctx)
    lines.append(f"{ctx.run_id}:{ctx.execution_id}")
    for name in FILES:
        with open(os.path.join(ctx.outputs["out"], name), "w") as f:
            f.write("\n".join(lines) + "\n")
        if os.environ.get("KFX_TOY_FAIL_DEPTH") == str(len(lines)):
            raise ComponentError(f"toy failure at depth {len(lines)} after writing {name}")
        if os.environ.get("KFX_TOY_HANG", ":").rsplit(":", 1)[1] == str(len(lines)):
            open(os.path.join(os.environ["KFX_TOY_HANG"].rsplit(":", 1)[0], str(ctx.execution_id)), "w").close()
            time.sleep(BARRIER_SECONDS)  # until killed; bounded all the same
            raise ComponentError(f"toy hang at depth {len(lines)} was not killed within {BARRIER_SECONDS}s")
    return {"rows": len(lines)}


SPEC = ComponentSpec(name="writer", inputs=("src",), outputs=("out",), run=run, optional_inputs=("src",))
