"""Config of graph ingest (`ingest.graph`): a nodes table and an edges table (CSV) become one
example per node, split by mask columns, with the edges stored beside them
(components/data/graphs.py)."""
from __future__ import annotations

from pydantic import Field, ValidationInfo, field_validator, model_validator

from kfx.pipeline.config_base import Section, relative_to_config


class GraphOptions(Section):
    """Node classification data: nodes (id, numeric features, label, split masks) and edges.

    Every node is part of the graph (its features reach its neighbours); a node is an example of
    each split whose mask column is true (1, true, yes) for it, so a node may be in several
    splits (train and eval) or in none (unlabelled).
    """

    nodes: str = Field(..., description="CSV file (or glob) of the nodes table, with a header.")
    edges: str = Field(..., description="CSV file (or glob) of the edges table, with a header.")
    id: str = Field("node_id", description="Node id column (int or string); the served model's input.")
    source: str = Field("source", description="Edges: the source node id column.")
    target: str = Field("target", description="Edges: the target node id column.")
    features: tuple[str, ...] = Field((), description="Numeric node feature columns; default: every "
                                                      "column but the id, the label and the masks.")
    splits: dict[str, str] = Field(default_factory=lambda: {"train": "train_mask", "eval": "eval_mask",
                                                            "test": "test_mask"},
                                   description="Split name -> mask column of the nodes table.")
    directed: bool = Field(False, description="false: an edge links both ways (the adjacency is symmetric).")

    @field_validator("nodes", "edges")
    @classmethod
    def _beside_config(cls, value: str, info: ValidationInfo) -> str:
        return relative_to_config(value, info.context)

    @field_validator("splits")
    @classmethod
    def _named(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:
            raise ValueError("needs at least one split: {split name: mask column}")
        bad = [s for s in value if not s.replace("_", "").isalnum()]
        if bad:
            raise ValueError(f"split name {bad[0]!r} must be alphanumeric")
        return value

    @model_validator(mode="after")
    def _distinct(self) -> "GraphOptions":
        if self.source == self.target:
            raise ValueError(f"source and target are both {self.source!r}: the edges need two columns")
        roles = [self.id, *self.splits.values()]
        shared = sorted({c for c in self.features if c in roles})
        if shared:
            raise ValueError(f"features {list(self.features)} include the id or a mask column {shared[0]!r}")
        return self


# Ingest keys that graph ingest does not use: setting one with `graph` is a mistake.
IGNORED_WITH_GRAPH = ("inputs", "label_values", "text_columns", "image_columns", "image_shape",
                      "base64_columns", "hash_key", "timeseries")


def check_ingest(cfg) -> None:
    """Raise ValueError when an IngestConfig's `graph` does not fit the rest of the section: graphs
    are read from CSV files (a graph built-in names its own) and the label is required."""
    if cfg.format == "builtin":
        raise ValueError(f"ingest.graph names your own tables; built-in {cfg.name!r} brings its own: remove ingest.graph")
    if cfg.format != "csv":
        raise ValueError(f"ingest.graph reads CSV tables; format is {cfg.format!r}")
    if not cfg.label:
        raise ValueError("ingest.graph needs ingest.label (the node label column)")
    ignored = [k for k in IGNORED_WITH_GRAPH if getattr(cfg, k)]
    if ignored:
        raise ValueError(f"ingest.{ignored[0]} {getattr(cfg, ignored[0])!r} is not used with ingest.graph "
                         f"(the nodes table is given by graph.nodes): remove it")
