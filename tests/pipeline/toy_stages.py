"""Tiny components for runner tests: they write files and coordinate through a barrier."""
from __future__ import annotations

import threading

from kfx.pipeline.component import ComponentError, ComponentSpec, Context

# b and c both wait here: the run only succeeds if the runner executes them at the same time.
BARRIER = threading.Barrier(2, timeout=30)


def _write(ctx: Context, text: str) -> None:
    with open(f"{ctx.outputs['out']}/value.txt", "w") as f:
        f.write(text)


def run_a(ctx: Context) -> dict:
    _write(ctx, "a")
    return {"rows": 1}


def run_parallel(ctx: Context) -> dict:
    try:
        BARRIER.wait()
    except threading.BrokenBarrierError:
        BARRIER.reset()
        raise ComponentError("the sibling stage never ran alongside this one") from None
    return run_copy(ctx)


def run_copy(ctx: Context) -> dict:
    with open(f"{ctx.inputs['src']}/value.txt") as f:
        _write(ctx, f.read() + "+")
    return {"rows": 2}


def run_fail(ctx: Context) -> dict:
    _write(ctx, "partial")
    raise ComponentError("toy failure: bad data in row 7")


A = ComponentSpec(name="a", inputs=(), outputs=("out",), run=run_a)
PAR = ComponentSpec(name="par", inputs=("src",), outputs=("out",), run=run_parallel)
COPY = ComponentSpec(name="copy", inputs=("src",), outputs=("out",), run=run_copy)
FAIL = ComponentSpec(name="fail", inputs=("src",), outputs=("out",), run=run_fail)
