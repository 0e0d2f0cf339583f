"""Graph ingest: a nodes table and an edges table (CSV) -> one example per node, plus the graph.

`ingest.graph` (pipeline/config_graph.py) names the tables and their columns. Every accepted node
row is a node of the graph; it is an example (its id, its numeric features, its label) of each
split whose mask column is true for it (1/true/yes; 0/false/no/empty are false), so a node may be
an example of several splits or of none (an unlabelled node still passes its features to its
neighbours). The accepted nodes' ids and features and the accepted edges go to graph.json
(pipeline/artifacts/graph.py), from which transform builds the normalised adjacency.

Quarantined in rejected.jsonl with file, line and reason: a node row without an id, with a
duplicate id (the first row keeps it), a missing, non-numeric or infinite feature value, a bad mask value,
or in a split without a label; an edge row with a missing endpoint or an endpoint that is not an
accepted node's id ("edge to unknown node id"). read = nodes + edges + rejected;
max_rejected_fraction applies to all rows read. The tables are read in the driver (a graph's
adjacency is built in memory anyway).
"""
from __future__ import annotations

import json
import math
from typing import Any

from kfx.pipeline.component import ComponentError

_TRUE, _FALSE = {"1", "true", "yes"}, {"0", "false", "no", ""}


def tables(cfg) -> list[list[str]]:
    """[node table files, edge table files] of `cfg.graph` (none without a graph).

    Raises:
        ComponentError: a pattern matching no file, naming it.
    """
    from kfx.pipeline import fs
    from kfx.pipeline.config import resolve_path

    if cfg.graph is None:
        return []
    out = []
    for what, pattern in (("nodes", cfg.graph.nodes), ("edges", cfg.graph.edges)):
        files = sorted(f for f in fs.glob(resolve_path(pattern)) if not fs.isdir(f))
        if not files:
            raise ComponentError(f"ingest.graph.{what}: pattern {pattern!r} matches no file")
        out.append(files)
    return out


def _flag(column: str, text: str) -> bool:
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError(f"mask column {column!r}: cannot read {text!r} as true/false")


def _node_id(kind: str, column: str, text: str, na: set[str]):
    """A node id typed as the nodes table's id column (int or string)."""
    from kfx.components.data.ingest import _to_int

    if text in na:
        raise ValueError(f"missing node id in column {column!r}")
    if kind == "string":
        return text
    try:
        return _to_int(text)
    except ValueError:
        raise ValueError(f"column {column!r}: cannot read {text!r} as a node id ({kind})") from None


def _label(kind: str, column: str, text: str):
    from kfx.components.data.ingest import _to_int

    try:
        return _to_int(text) if kind == "int" else float(text) if kind == "float" else text
    except ValueError:
        raise ValueError(f"column {column!r}: cannot read {text!r} as {kind}") from None


def _columns(cfg, files: list[str], label: str | None, column_types: dict) -> dict[str, str]:
    from kfx.components.data.ingest import _csv_columns

    return _csv_columns(cfg.model_copy(update={"label": label, "column_types": column_types, "text_columns": ()}),
                        files)


def read_nodes(cfg, files: list[str]) -> tuple[list[dict], list[dict], dict[str, str], list[str]]:
    """(accepted nodes, rejections, node table column types, feature columns).

    A node is {"id", "x": [floats], "label" (or None), "splits": [names], "where": "<path> line <n>"}.

    Raises:
        ComponentError: a configured column that is not in the table, or a non-numeric feature column.
    """
    from kfx.components.data.timeseries import _rows

    g = cfg.graph
    types = _columns(cfg, files, cfg.label, {k: v for k, v in cfg.column_types.items()})
    names = list(types)
    masks = list(g.splits.values())
    missing = [c for c in (g.id, *masks, *g.features) if c not in types]
    if missing:
        raise ComponentError(f"ingest.graph: columns {missing} are not in the nodes table {files[0]}; "
                             f"columns are {names}")
    features = list(g.features) or [c for c in names if c not in (g.id, cfg.label, *masks)]
    text = [c for c in features if types[c] == "string"]
    if text:
        raise ComponentError(f"ingest.graph: feature column {text[0]!r} of the nodes table is text; node features "
                             f"are numbers (encode it, or leave it out of graph.features)")
    na = set(cfg.csv.na_values)
    nodes, rejected, seen = [], [], {}
    for path, line, raw, row in _rows(cfg, [files], names):
        try:
            if isinstance(row, str):
                raise ValueError(row)
            node_id = _node_id(types[g.id], g.id, row[g.id], na)
            if node_id in seen:
                raise ValueError(f"duplicate node id {node_id!r} (first at {seen[node_id]})")
            x = []
            for c in features:
                if row[c] in na:
                    raise ValueError(f"node {node_id!r} has no value for feature {c!r}")
                v = _label("float", c, row[c])
                if not math.isfinite(v):
                    raise ValueError(f"node {node_id!r}: feature {c!r} is {row[c]!r}, not a finite number")
                x.append(v)
            splits = [s for s, m in g.splits.items() if _flag(m, row[m])]
            label = None if row[cfg.label] in na else _label(types[cfg.label], cfg.label, row[cfg.label])
            if splits and label is None:
                raise ValueError(f"node {node_id!r} is in split {splits[0]!r} but has no label {cfg.label!r}")
        except ValueError as err:
            rejected.append({"input": path, "line": line, "reason": str(err), "row": raw})
            continue
        seen[node_id] = f"{path} line {line}"
        nodes.append({"id": node_id, "x": x, "label": label, "splits": splits})
    return nodes, rejected, types, features


def read_edges(cfg, files: list[str], index: dict, id_kind: str) -> tuple[list[list[int]], list[dict], int]:
    """(edges as [source position, target position], rejections, rows read)."""
    from kfx.components.data.timeseries import _rows

    g = cfg.graph
    types = _columns(cfg, files, None, {})
    missing = [c for c in (g.source, g.target) if c not in types]
    if missing:
        raise ComponentError(f"ingest.graph: columns {missing} are not in the edges table {files[0]}; "
                             f"columns are {list(types)}")
    na = set(cfg.csv.na_values)
    edges, rejected, read = [], [], 0
    for path, line, raw, row in _rows(cfg, [files], list(types)):
        read += 1
        try:
            if isinstance(row, str):
                raise ValueError(row)
            ends = []
            for c in (g.source, g.target):
                node_id = _node_id(id_kind, c, row[c], na)
                if node_id not in index:
                    raise ValueError(f"edge to unknown node id {node_id!r} (column {c!r})")
                ends.append(index[node_id])
        except ValueError as err:
            rejected.append({"input": path, "line": line, "reason": str(err), "row": raw})
            continue
        edges.append(ends)
    return edges, rejected, read


def run(ctx, cfg) -> dict[str, Any]:
    """The graph ingest (called by ingest.run when `ingest.graph` is set)."""
    import tensorflow as tf

    from kfx.components.data.ingest import _field, check_rejected, encode_example
    from kfx.pipeline.artifacts import COUNTS_FILE, EXAMPLES, REJECTED, split_dir, write_columns
    from kfx.pipeline.artifacts.graph import write_graph

    g = cfg.graph
    node_files, edge_files = tables(cfg)
    nodes, rejected, types, features = read_nodes(cfg, node_files)
    node_rows = len(nodes) + len(rejected)
    index = {n["id"]: i for i, n in enumerate(nodes)}
    edges, edge_rejected, edge_rows = read_edges(cfg, edge_files, index, types[g.id])
    rejected += edge_rejected

    # The reasons first: whatever fails below, rejected.jsonl says what happened to each row.
    examples, rejected_uri = ctx.outputs[EXAMPLES], ctx.outputs[REJECTED]
    tf.io.gfile.makedirs(rejected_uri)
    with tf.io.gfile.GFile(f"{rejected_uri}/rejected.jsonl", "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rejected))
    read = node_rows + edge_rows
    assert read == len(nodes) + len(edges) + len(rejected), \
        f"row counts do not reconcile: read {read} != {len(nodes)} + {len(edges)} + {len(rejected)}"
    check_rejected(read, len(rejected), cfg.max_rejected_fraction, rejected_uri)

    columns = {g.id: types[g.id], **{c: "float" for c in features}, cfg.label: types[cfg.label]}
    keys = {c: _field(1, c.encode()) for c in columns}
    counts = {s: 0 for s in g.splits}
    for split in g.splits:
        tf.io.gfile.makedirs(split_dir(examples, split))
        with tf.io.TFRecordWriter(f"{split_dir(examples, split)}/data_tfrecord-00000-of-00001.gz",
                                  options="GZIP") as writer:
            for n in nodes:
                if split in n["splits"]:
                    ident = n["id"].encode() if isinstance(n["id"], str) else n["id"]
                    label = n["label"].encode() if isinstance(n["label"], str) else n["label"]
                    feats = [(keys[g.id], columns[g.id], [ident]),
                             *[(keys[c], "float", [v]) for c, v in zip(features, n["x"])],
                             (keys[cfg.label], columns[cfg.label], [label])]
                    writer.write(encode_example(feats))
                    counts[split] += 1
    first = next(iter(g.splits))
    if not counts[first]:
        raise ComponentError(f"ingest.graph: no node is in split {first!r} (mask column {g.splits[first]!r}); "
                             f"{len(nodes)} nodes accepted")
    write_graph(examples, {"id": g.id, "id_dtype": types[g.id], "features": features, "directed": g.directed,
                           "nodes": [n["id"] for n in nodes], "x": [n["x"] for n in nodes], "edges": edges})
    with tf.io.gfile.GFile(f"{examples}/{COUNTS_FILE}", "w") as f:
        json.dump({"read": read, "rejected": len(rejected), "splits": counts, "dropped": {}}, f, indent=2)
    write_columns(examples, columns, cfg.label, list(g.splits))
    metrics = {"rows": sum(counts.values()), "read": read, "rejected": len(rejected), "nodes": len(nodes),
               "edges": len(edges), "unlabelled_nodes": sum(n["label"] is None for n in nodes), "splits": counts}
    ctx.log.info("ingest (graph) %s", metrics)
    return metrics
