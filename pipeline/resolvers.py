"""Resolvers of `history:NAME` inputs: artifacts chosen from earlier runs (TFX's resolver nodes).

A resolver is `resolve(store, pipeline, current, stages_of) -> URI | None`: `current` holds the
inputs already resolved for the stage, `stages_of(component)` names the pipeline's stages that
run a built-in component (a graph may rename them or hold several).
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from kfx.pipeline.metadata import MetadataStore

StagesOf = Callable[[str], list[str]]


def last_validated_statistics(store: "MetadataStore", pipeline: str, current: dict,
                              stages_of: StagesOf) -> str | None:
    """Baseline for drift: the statistics the last successful validate accepted, if different.

    Excluding the current statistics keeps a fully cached re-run cached (its baseline does not
    move) while new data is always compared with the last data that passed.
    """
    for stage in stages_of("validate"):
        for ex in store.committed_executions(pipeline, stage):
            art = store.inputs_of(ex["id"]).get("statistics")
            if art is not None and art.uri != current.get("statistics"):
                return art.uri
    return None


def last_pushed_model(store: "MetadataStore", pipeline: str, current: dict, stages_of: StagesOf) -> str | None:
    """Baseline for evaluate: the model the last push actually published, other than the candidate.

    Pushes that refused the model do not count. Excluding the candidate keeps a fully cached
    re-run cached (its baseline does not move), as for last_validated_statistics. A model given
    by hand (--input model=URI) is not a lineage artifact: its URI is read from pushed.json.
    """
    from kfx.pipeline.artifacts import PUSHED_MODEL, load_pushed

    for stage in stages_of("push"):
        for ex in store.committed_executions(pipeline, stage):
            if not json.loads(ex["metrics"] or "{}").get("pushed"):
                continue
            art = store.inputs_of(ex["id"]).get("model")
            uri = art.uri if art is not None else None
            if uri is None and PUSHED_MODEL in (outs := store.outputs_of(ex["id"])):
                uri = load_pushed(outs[PUSHED_MODEL].uri).get("model")
            if uri and uri != current.get("model"):
                return uri
    return None


RESOLVERS = {"last_validated_statistics": last_validated_statistics, "last_pushed_model": last_pushed_model}
