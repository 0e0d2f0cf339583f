"""What the pipeline is: the stages, and which output feeds which input.

The wiring lives here and only here; components know nothing of each other, and runners
(local, CLI, Airflow) read this graph.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from kfx.pipeline.component import ComponentSpec
    from kfx.pipeline.metadata import MetadataStore


@dataclass(frozen=True)
class Upstream:
    """An input fed by `stage`'s output `output` in the same run."""

    stage: str
    output: str


@dataclass(frozen=True)
class History:
    """An input resolved from earlier runs by `resolve(store, pipeline, current_inputs)`."""

    resolve: Callable[["MetadataStore", str, dict], str | None]


@dataclass(frozen=True)
class Stage:
    name: str
    module: str
    inputs: dict[str, Upstream | History] = field(default_factory=dict)
    after: tuple[str, ...] = ()  # ordering-only dependencies (a gate such as validate)

    @property
    def spec(self) -> "ComponentSpec":
        return importlib.import_module(self.module).SPEC

    @property
    def upstream(self) -> set[str]:
        return {b.stage for b in self.inputs.values() if isinstance(b, Upstream)} | set(self.after)


def last_validated_statistics(store: "MetadataStore", pipeline: str, current: dict) -> str | None:
    """Baseline for drift: the statistics the last successful validate accepted, if different.

    Excluding the current statistics keeps a fully cached re-run cached (its baseline does not
    move) while new data is always compared with the last data that passed.
    """
    for ex in store.committed_executions(pipeline, "validate"):
        art = store.inputs_of(ex["id"]).get("statistics")
        if art is not None and art.uri != current.get("statistics"):
            return art.uri
    return None


def last_pushed_model(store: "MetadataStore", pipeline: str, current: dict) -> str | None:
    """Baseline for evaluate: the model the last push actually published, other than the candidate.

    Pushes that refused the model do not count. Excluding the candidate keeps a fully cached
    re-run cached (its baseline does not move), as for last_validated_statistics. A model given
    by hand (--input model=URI) is not a lineage artifact: its URI is read from pushed.json.
    """
    import json

    from kfx.components.deploy.push import PUSHED_MODEL, load_pushed

    for ex in store.committed_executions(pipeline, "push"):
        if not json.loads(ex["metrics"] or "{}").get("pushed"):
            continue
        art = store.inputs_of(ex["id"]).get("model")
        uri = art.uri if art is not None else None
        if uri is None and PUSHED_MODEL in (outs := store.outputs_of(ex["id"])):
            uri = load_pushed(outs[PUSHED_MODEL].uri).get("model")
        if uri and uri != current.get("model"):
            return uri
    return None


STAGES: tuple[Stage, ...] = (
    Stage("ingest", "kfx.components.data.ingest"),
    Stage("statistics", "kfx.components.data.statistics", {"examples": Upstream("ingest", "examples")}),
    Stage("schema", "kfx.components.data.schema", {"statistics": Upstream("statistics", "statistics")}),
    Stage("validate", "kfx.components.data.validate", {
        "statistics": Upstream("statistics", "statistics"),
        "schema": Upstream("schema", "schema"),
        "baseline_statistics": History(last_validated_statistics),
    }),
    Stage("transform", "kfx.components.transform.transform", {
        "examples": Upstream("ingest", "examples"),
        "schema": Upstream("schema", "schema"),
    }, after=("validate",)),
    Stage("tune", "kfx.components.training.tune", {
        "examples": Upstream("ingest", "examples"),
        "schema": Upstream("schema", "schema"),
        "transform_graph": Upstream("transform", "transform_graph"),
    }),
    Stage("train", "kfx.components.training.train", {
        "examples": Upstream("ingest", "examples"),
        "schema": Upstream("schema", "schema"),
        "transform_graph": Upstream("transform", "transform_graph"),
        "hyperparameters": Upstream("tune", "hyperparameters"),
    }),
    Stage("evaluate", "kfx.components.evaluation.evaluate", {
        "examples": Upstream("ingest", "examples"),
        "schema": Upstream("schema", "schema"),
        "model": Upstream("train", "model"),
        "baseline_model": History(last_pushed_model),
    }),
    Stage("infra_validate", "kfx.components.deploy.infra_validate", {
        "model": Upstream("train", "model"),
        "examples": Upstream("ingest", "examples"),
    }),
    Stage("push", "kfx.components.deploy.push", {
        "model": Upstream("train", "model"),
        "blessing": Upstream("evaluate", "blessing"),
        "infra_blessing": Upstream("infra_validate", "infra_blessing"),
    }),
)


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
    out = set(names)
    for s in reversed(stages):
        if s.name in out:
            out |= s.upstream
    return out
