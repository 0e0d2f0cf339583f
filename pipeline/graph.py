"""What a pipeline is: its stages, and which output feeds which input.

A pipeline YAML lists its `stages:` (name, component, inputs, after), or names a built-in
template (`template: tabular`, the default). This module turns either into `Stage` objects and
checks the structure (names, references, cycles). Checks that need the components themselves
(their inputs, outputs and config classes) are in pipeline/config.py.

Standard library only (yaml is imported inside `load_stages`): the Airflow DAG loads this file
by path, in an environment where kfx, TensorFlow and Beam are not installed.
"""
from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kfx.pipeline.component import ComponentSpec

# Built-in components by short name: the module that defines its SPEC and run.
BUILTIN_COMPONENTS: dict[str, str] = {
    "ingest": "kfx.components.data.ingest",
    "statistics": "kfx.components.data.statistics",
    "schema": "kfx.components.data.schema",
    "validate": "kfx.components.data.validate",
    "transform": "kfx.components.transform.transform",
    "tune": "kfx.components.training.tune",
    "train": "kfx.components.training.train",
    "evaluate": "kfx.components.evaluation.evaluate",
    "infra_validate": "kfx.components.deploy.infra_validate",
    "push": "kfx.components.deploy.push",
}
# Resolvers of `history:NAME` inputs (implemented in pipeline/resolvers.py).
RESOLVERS: tuple[str, ...] = ("last_validated_statistics", "last_pushed_model")
HISTORY_PREFIX = "history:"
STAGE_KEYS = ("name", "component", "inputs", "after")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class GraphError(ValueError):
    """A pipeline graph that cannot run; the message names the stage and the key."""


@dataclass(frozen=True)
class Upstream:
    """An input fed by `stage`'s output `output` in the same run."""

    stage: str
    output: str

    def __str__(self) -> str:
        return f"{self.stage}.{self.output}"


@dataclass(frozen=True)
class History:
    """An input resolved from earlier runs by the resolver named `resolver`."""

    resolver: str

    def __str__(self) -> str:
        return HISTORY_PREFIX + self.resolver


@dataclass(frozen=True)
class Stage:
    """One stage: a component under a name, its input bindings and ordering-only dependencies."""

    name: str
    component: str  # a built-in short name or the dotted path of a user's module
    inputs: dict[str, Upstream | History] = field(default_factory=dict)
    after: tuple[str, ...] = ()  # ordering-only dependencies (a gate such as validate)

    def __hash__(self) -> int:
        return hash((self.name, self.component))

    @property
    def module(self) -> str:
        return BUILTIN_COMPONENTS.get(self.component, self.component)

    @property
    def spec(self) -> "ComponentSpec":
        return importlib.import_module(self.module).SPEC

    @property
    def upstream(self) -> set[str]:
        return {b.stage for b in self.inputs.values() if isinstance(b, Upstream)} | set(self.after)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "component": self.component,
                "inputs": {k: str(v) for k, v in self.inputs.items()}, "after": list(self.after)}


def _tabular() -> tuple[Stage, ...]:
    up = Upstream
    return (
        Stage("ingest", "ingest"),
        Stage("statistics", "statistics", {"examples": up("ingest", "examples")}),
        Stage("schema", "schema", {"statistics": up("statistics", "statistics")}),
        Stage("validate", "validate", {"statistics": up("statistics", "statistics"), "schema": up("schema", "schema"),
                                       "baseline_statistics": History("last_validated_statistics")}),
        Stage("transform", "transform", {"examples": up("ingest", "examples"), "schema": up("schema", "schema")},
              after=("validate",)),
        Stage("tune", "tune", {"examples": up("ingest", "examples"), "schema": up("schema", "schema"),
                               "transform_graph": up("transform", "transform_graph")}),
        Stage("train", "train", {"examples": up("ingest", "examples"), "schema": up("schema", "schema"),
                                 "transform_graph": up("transform", "transform_graph"),
                                 "hyperparameters": up("tune", "hyperparameters")}),
        Stage("evaluate", "evaluate", {"examples": up("ingest", "examples"), "schema": up("schema", "schema"),
                                       "model": up("train", "model"), "baseline_model": History("last_pushed_model")}),
        Stage("infra_validate", "infra_validate", {"model": up("train", "model"), "examples": up("ingest", "examples")}),
        Stage("push", "push", {"model": up("train", "model"), "blessing": up("evaluate", "blessing"),
                               "infra_blessing": up("infra_validate", "infra_blessing")}),
    )


# Built-in graphs by name (`template:` in a pipeline YAML without `stages:`).
TEMPLATES: dict[str, tuple[Stage, ...]] = {"tabular": _tabular()}
DEFAULT_TEMPLATE = "tabular"
STAGES = TEMPLATES[DEFAULT_TEMPLATE]


def parse_binding(stage: str, key: str, text: Any) -> Upstream | History:
    """`STAGE.OUTPUT` or `history:RESOLVER`."""
    where = f"stage {stage!r}: inputs.{key}"
    if not isinstance(text, str):
        raise GraphError(f"{where}: expected 'STAGE.OUTPUT' or 'history:RESOLVER', got {text!r}")
    if text.startswith(HISTORY_PREFIX):
        name = text[len(HISTORY_PREFIX):]
        if name not in RESOLVERS:
            raise GraphError(f"{where}: unknown resolver {name!r}; resolvers are: {', '.join(RESOLVERS)}")
        return History(name)
    src, dot, output = text.partition(".")
    if not dot or not src or not output:
        raise GraphError(f"{where}: expected 'STAGE.OUTPUT' or 'history:RESOLVER', got {text!r}")
    return Upstream(src, output)


def parse_stages(raw: Any) -> tuple[Stage, ...]:
    """The `stages:` list of a pipeline YAML as Stage objects (structure checked, not components).

    Raises:
        GraphError: a malformed entry, a duplicate name, a reference to a missing stage, a cycle.
    """
    if not isinstance(raw, list) or not raw:
        raise GraphError(f"stages: expected a non-empty list of {{name, component, inputs, after}}, got {raw!r}")
    stages = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict):
            raise GraphError(f"stages[{i}]: expected a mapping with {', '.join(STAGE_KEYS)}, got {entry!r}")
        name = entry.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise GraphError(f"stages[{i}].name: expected an identifier (letters, digits, _), got {name!r}")
        unknown = sorted(set(entry) - set(STAGE_KEYS))
        if unknown:
            raise GraphError(f"stage {name!r}: unknown key {unknown[0]!r}; keys are: {', '.join(STAGE_KEYS)}")
        component = entry.get("component")
        if not isinstance(component, str) or not component:
            raise GraphError(f"stage {name!r}: component: expected a built-in name or a dotted module path, "
                             f"got {component!r}")
        inputs = entry.get("inputs") or {}
        if not isinstance(inputs, dict):
            raise GraphError(f"stage {name!r}: inputs: expected a mapping INPUT: STAGE.OUTPUT, got {inputs!r}")
        after = entry.get("after") or []
        if isinstance(after, str):
            after = [after]
        if not isinstance(after, list) or not all(isinstance(a, str) for a in after):
            raise GraphError(f"stage {name!r}: after: expected a list of stage names, got {after!r}")
        stages.append(Stage(name, component, {k: parse_binding(name, k, v) for k, v in inputs.items()},
                            tuple(after)))
    check_structure(tuple(stages))
    return tuple(stages)


def check_structure(stages: tuple[Stage, ...]) -> None:
    """Names are unique, references name existing stages, and the graph has no cycle."""
    names = [s.name for s in stages]
    seen: set[str] = set()
    for s in stages:
        if s.name in seen:
            raise GraphError(f"stage {s.name!r}: name used twice")
        seen.add(s.name)
    for s in stages:
        for key, binding in s.inputs.items():
            if isinstance(binding, Upstream) and binding.stage not in seen:
                raise GraphError(f"stage {s.name!r}: inputs.{key}: no stage named {binding.stage!r}; "
                                 f"stages are: {', '.join(names)}")
            if isinstance(binding, Upstream) and binding.stage == s.name:
                raise GraphError(f"stage {s.name!r}: inputs.{key}: a stage cannot consume its own output")
        for dep in s.after:
            if dep not in seen:
                raise GraphError(f"stage {s.name!r}: after: no stage named {dep!r}; stages are: {', '.join(names)}")
    topological_order(stages)


def topological_order(stages: tuple[Stage, ...]) -> list[str]:
    """Stage names, each after everything it depends on (declaration order among equals).

    Raises:
        GraphError: a cycle, naming a stage on it and the key that closes it.
    """
    by_name = {s.name: s for s in stages}
    order: list[str] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = path[path.index(name):] + [name]
            raise GraphError(f"stage {name!r}: inputs/after form a cycle: {' -> '.join(cycle)}")
        state[name] = 1
        for dep in sorted(by_name[name].upstream, key=list(by_name).index):
            visit(dep, path + [name])
        state[name] = 2
        order.append(name)

    for s in stages:
        visit(s.name, [])
    return order


def pipeline_stages(raw: dict) -> tuple[Stage, ...]:
    """The graph of a raw (parsed YAML) pipeline config: its `stages:`, else its template."""
    if raw.get("stages") is not None:
        if raw.get("template") is not None:
            raise GraphError("template: give either stages or template, not both")
        return parse_stages(raw["stages"])
    template = raw.get("template") or DEFAULT_TEMPLATE
    if template not in TEMPLATES:
        raise GraphError(f"template: unknown template {template!r}; templates are: {', '.join(TEMPLATES)}")
    return TEMPLATES[template]


def load_stages(path: str) -> tuple[Stage, ...]:
    """The graph of the pipeline YAML at `path` (for the Airflow DAG: no kfx import)."""
    import yaml

    with open(path) as f:
        return pipeline_stages(yaml.safe_load(f) or {})


def stage_names(stages: tuple[Stage, ...] = STAGES) -> list[str]:
    return [s.name for s in stages]


def get_stage(name: str, stages: tuple[Stage, ...] = STAGES) -> Stage:
    for s in stages:
        if s.name == name:
            return s
    raise KeyError(f"unknown stage {name!r}; stages are: {', '.join(stage_names(stages))}")


def downstream_closure(names: set[str], stages: tuple[Stage, ...] = STAGES) -> set[str]:
    """`names` plus every stage that depends on them, transitively."""
    out = set(names)
    changed = True
    while changed:
        changed = False
        for s in stages:
            if s.name not in out and s.upstream & out:
                out.add(s.name)
                changed = True
    return out


def upstream_closure(names: set[str], stages: tuple[Stage, ...] = STAGES) -> set[str]:
    """`names` plus everything they depend on, transitively."""
    out = set(names)
    changed = True
    while changed:
        changed = False
        for s in stages:
            if s.name in out and not s.upstream <= out:
                out |= s.upstream
                changed = True
    return out
