"""Tasks by name: what kind of problem is learned (models/tasks/base.py defines the interface).

Adding a task (anomaly/reconstruction scoring, generation, ...) is one new module with a Task
subclass plus one line in `TASKS`; the stages ask the task, never test its name. Importing this
package is cheap (no TensorFlow), so the config loader can list task names and metric names.
"""
from __future__ import annotations

import importlib

from kfx.models.tasks.base import TASK_ASSET, Outcomes, Task, load, save  # noqa: F401 (the interface)

# name -> "module:class"; the module is imported when the task is used.
TASKS: dict[str, str] = {
    "binary": "kfx.models.tasks.binary:Binary",
    "multiclass": "kfx.models.tasks.multiclass:Multiclass",
    "regression": "kfx.models.tasks.regression:Regression",
    "forecast": "kfx.models.tasks.forecast:Forecast",
    "clustering": "kfx.models.tasks.clustering:Clustering",
    "node_classification": "kfx.models.tasks.node_classification:NodeClassification",
    "generation": "kfx.models.tasks.generation:Generation",
}
BINARY, MULTICLASS, REGRESSION = "binary", "multiclass", "regression"
AUTO = "auto"  # transform.task: pick from the label (see `auto`)


def names() -> list[str]:
    """Registered task names, sorted."""
    return sorted(TASKS)


def get(name: str) -> type[Task]:
    """The Task class registered as `name`.

    Raises:
        KeyError: unknown name; the message lists the known ones.
    """
    try:
        module, cls = TASKS[name].split(":")
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(names())}") from None
    return getattr(importlib.import_module(module), cls)


def of(info: dict | Task) -> Task:
    """The task object for a task description (transform.json's `task`); a Task is returned as is.

    Raises:
        KeyError: the description names an unknown task.
    """
    return info if isinstance(info, Task) else get(info["type"])(info)


def auto(label_dtype: str, has_domain: bool, class_count: int | None = None) -> str:
    """The task `transform.task: auto` picks for a label.

    A float label, or an int label without a domain, is a regression target; any other label
    names classes: binary with two, multiclass otherwise (also before the classes are counted,
    since multiclass's analysis is what counts them).
    """
    if label_dtype == "float32" or (label_dtype == "int64" and not has_domain):
        return REGRESSION
    return BINARY if class_count == 2 else MULTICLASS


def union(attribute: str) -> tuple[str, ...]:
    """Every registered task's names in a tuple class attribute (e.g. METRICS), in order, once."""
    out: list[str] = []
    for name in TASKS:
        out += [v for v in getattr(get(name), attribute) if v not in out]
    return tuple(out)


def modules() -> tuple[str, ...]:
    """The modules of this package, for the code version of the stages that use tasks."""
    return (__name__, f"{__name__}.base", *sorted({v.split(":")[0] for v in TASKS.values()}))
