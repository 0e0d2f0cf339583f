"""Time-series ingest: timestamped rows -> windowed forecasting examples, split by time.

`ingest.timeseries` (pipeline/config_timeseries.py) turns CSV rows of a timestamp column, value
columns and an optional series key into supervised examples: per series, rows are put in time
order on the series' regular grid (`frequency`, default the most common step); runs of up to
`max_gap` missing steps are filled by linear interpolation, longer runs break the series. Every
`stride` steps a window of `input_length` steps (all value columns, the target first) is an
example whose label is the next `horizon` values of the target column.

Splits are contiguous spans in time (`splits` in order, by the windows' origins across all
series): every window of a later split starts after every window of an earlier one, and in each
series the first `horizon` windows after a boundary are left out, so no target of one split is
a target of the next. Nothing is shuffled across a boundary.

Quarantined in rejected.jsonl with file, line and reason (as tabular rows): rows with an
unreadable timestamp or value, a duplicate timestamp, a timestamp off the series' grid, and every
row of a series with fewer than input_length + horizon points or a single timestamp. read = series
rows + rejected; rejected.jsonl is written before the checks on it (max_rejected_fraction) and on
the windows, so a failed ingest still says why each row was left out.
What ingest saw in each series (gaps in the grid, rows out of time order) goes to
timeseries.json; validate reports it as anomalies.

Series are assembled in the driver (one series must fit in memory; windows are written per split
as gzip TFRecord shards like every other ingest).
"""
from __future__ import annotations

import csv
import json
import math
from typing import Any

import numpy as np

from kfx.pipeline.component import ComponentError

TIMESERIES_FILE = "timeseries.json"
MAX_EXAMPLES = 5  # gap / out-of-order instances listed per series in timeseries.json


def _rows(cfg, files: list[list[str]], names: list[str]):
    """(path, line, {column: raw text}) of every CSV record, or (path, line, reason) for a bad one."""
    from kfx.components.data.ingest import _read_text_chunks, text_ranges

    for i, fs in enumerate(files):
        for path in fs:
            for r in text_ranges(path):
                for _, _, chunk in _read_text_chunks((i, r), cfg.csv.header, tuple(cfg.csv.skip_lines_starting_with),
                                                     cfg.chunk_rows):
                    records = csv.reader((text for _, text in chunk), delimiter=cfg.csv.delimiter,
                                         skipinitialspace=cfg.csv.skip_initial_space)
                    for (line, text), values in zip(chunk, records):
                        if len(values) != len(names):
                            yield path, line, text, f"expected {len(names)} columns, found {len(values)}"
                        else:
                            yield path, line, text, dict(zip(names, (v.strip() for v in values)))


def _options(ts, names: list[str]):
    """(timestamp column, value columns with the target first, key column), checked against the data."""
    if not ts.timestamp:
        raise ComponentError("ingest.timeseries.timestamp: name the timestamp column")
    values = list(ts.values) or [n for n in names if n not in (ts.timestamp, ts.key)]
    target = ts.target or values[0]
    values = [target] + [v for v in values if v != target]
    for what, cols in (("timestamp", [ts.timestamp]), ("values", values), ("key", [ts.key] if ts.key else [])):
        missing = [c for c in cols if c not in names]
        if missing:
            raise ComponentError(f"ingest.timeseries.{what}: columns {missing} are not in the data; columns are {names}")
    return ts.timestamp, values, ts.key


def _parse(rows, ts, values: list[str], key: str | None, na: set[str]):
    """Typed points per series and the rejected rows.

    Returns:
        ({series key: list of (timestamp ns, [values], path, line, text)}, [rejection dicts]).
    """
    import pandas as pd

    series: dict[str, list] = {}
    rejected = []
    raw = []
    for path, line, text, row in rows:
        if isinstance(row, str):
            rejected.append({"input": path, "line": line, "reason": row, "row": text})
            continue
        raw.append((path, line, text, row))
    stamps = pd.to_datetime(pd.Series([r[3][ts.timestamp] for r in raw], dtype=object),
                            format=ts.timestamp_format, errors="coerce")
    for (path, line, text, row), stamp in zip(raw, stamps):
        if pd.isna(stamp):
            fmt = f" with format {ts.timestamp_format!r}" if ts.timestamp_format else ""
            rejected.append({"input": path, "line": line, "row": text,
                             "reason": f"column {ts.timestamp!r}: cannot read {row[ts.timestamp]!r} as a timestamp{fmt}"})
            continue
        try:
            point = [math.nan if row[c] in na else _number(c, row[c]) for c in values]
        except ValueError as err:
            rejected.append({"input": path, "line": line, "reason": str(err), "row": text})
            continue
        series.setdefault(row[key] if key else "", []).append((stamp.value, point, path, line, text))
    return series, rejected


def _number(column: str, text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise ValueError(f"column {column!r}: cannot read {text!r} as float") from None
    if math.isinf(v):
        raise ValueError(f"column {column!r}: cannot read {text!r} as a finite float")
    return v


def _grid(points: list, frequency: str | None):
    """The series on its regular grid.

    Returns:
        (grid timestamps ns [T], values [T, c] with NaN where missing, kept points, rejections,
        record of what was seen: out-of-order rows, duplicates, gaps).
    """
    import pandas as pd

    record: dict[str, Any] = {"rows": len(points), "non_monotonic": 0, "non_monotonic_examples": []}
    for prev, cur in zip(points, points[1:]):
        if cur[0] < prev[0]:
            record["non_monotonic"] += 1
            if len(record["non_monotonic_examples"]) < MAX_EXAMPLES:
                record["non_monotonic_examples"].append(
                    {"line": cur[3], "timestamp": _iso(cur[0]), "after": _iso(prev[0])})
    ordered = sorted(points, key=lambda p: p[0])
    kept, rejected = [], []
    for p in ordered:
        if kept and p[0] == kept[-1][0]:
            rejected.append(_reject(p, f"duplicate timestamp {_iso(p[0])} (first at line {kept[-1][3]})"))
        else:
            kept.append(p)
    stamps = np.array([p[0] for p in kept], dtype=np.int64)
    if frequency:
        grid = pd.date_range(pd.Timestamp(stamps[0]), pd.Timestamp(stamps[-1]), freq=frequency).asi8
    else:  # the most common step
        steps, times = np.unique(np.diff(stamps), return_counts=True)
        step = int(steps[times.argmax()])  # integer arithmetic: np.arange would count in floats
        grid = stamps[0] + step * np.arange((stamps[-1] - stamps[0]) // step + 1, dtype=np.int64)
    step = frequency or (str(pd.Timedelta(int(grid[1] - grid[0]))) if len(grid) > 1 else "none")
    index = np.searchsorted(grid, stamps)
    on_grid = (index < len(grid)) & (grid[np.minimum(index, len(grid) - 1)] == stamps)
    values = np.full((len(grid), len(kept[0][1])), np.nan)
    for p, i, ok in zip(kept, index, on_grid):
        if ok:
            values[i] = p[1]
        else:
            rejected.append(_reject(p, f"timestamp {_iso(p[0])} is not on the series' grid ({step} steps "
                                       f"from {_iso(grid[0])})"))
    present = np.zeros(len(grid), bool)
    present[index[on_grid]] = True
    gaps = _runs(~present)
    record.update(start=_iso(grid[0]), end=_iso(grid[-1]), steps=int(len(grid)), frequency=step,
                  gaps=len(gaps), missing_steps=int((~present).sum()),
                  gap_examples=[{"after": _iso(grid[a - 1]), "missing_steps": int(b - a)} for a, b in gaps[:MAX_EXAMPLES]])
    return grid, values, [p for p, ok in zip(kept, on_grid) if ok], rejected, record


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) index ranges where `mask` is true."""
    edges = np.diff(np.r_[0, mask.astype(np.int8), 0])
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def _iso(ns: int) -> str:
    import pandas as pd

    return pd.Timestamp(int(ns)).isoformat()


def _reject(point, reason: str) -> dict:
    return {"input": point[2], "line": point[3], "reason": reason, "row": point[4]}


def fill(values: np.ndarray, max_gap: int) -> tuple[np.ndarray, int]:
    """Linear interpolation of inner runs of at most `max_gap` missing steps (per channel);
    longer runs, and missing ends, stay NaN. Returns (values, filled steps)."""
    out = values.copy()
    filled = 0
    for c in range(out.shape[1]):
        col = out[:, c]
        for a, b in _runs(np.isnan(col)):
            if a > 0 and b < len(col) and b - a <= max_gap:
                col[a:b] = np.interp(np.arange(a, b), [a - 1, b], [col[a - 1], col[b]])
                filled += b - a
    return out, filled


def windows(values: np.ndarray, length: int, horizon: int, stride: int) -> np.ndarray:
    """Origins (index of a window's last input step) whose inputs and targets are all present."""
    ok = ~np.isnan(values).any(axis=1)
    span = length + horizon
    if len(ok) < span:
        return np.zeros(0, np.int64)
    bad = np.r_[0, np.cumsum(~ok)]
    starts = np.arange(0, len(ok) - span + 1)
    full = bad[starts + span] - bad[starts] == 0
    origins = starts[full] + length - 1
    return origins[(origins - (length - 1)) % stride == 0]


def assign_splits(origins: dict[str, np.ndarray], grids: dict[str, np.ndarray], splits: dict[str, float],
                  horizon: int) -> tuple[dict[str, list], int]:
    """Each window's split by time, with `horizon` steps left out after a boundary in each series.

    The cut times are quantiles of all windows' origin times (by the split weights, in order).

    Returns:
        ({series: [split name or None (left out) per origin]}, windows left out).
    """
    times = np.sort(np.concatenate([grids[k][o] for k, o in origins.items()])) if origins else np.zeros(0)
    names = list(splits)
    weights = np.cumsum(list(splits.values())) / sum(splits.values())
    cuts = [times[min(len(times) - 1, int(round(w * len(times))))] if len(times) else 0 for w in weights[:-1]]
    out, left_out = {}, 0
    for k, o in origins.items():
        which = np.searchsorted(np.asarray(cuts), grids[k][o], side="right")
        labels: list = [names[i] for i in which]
        for i in range(1, len(names)):
            before = o[which < i]
            if len(before):
                # origins within `horizon` steps of the previous split's last origin share its targets
                for j in np.flatnonzero((which == i) & (o <= before.max() + horizon)):
                    labels[j] = None
                    left_out += 1
        out[k] = labels
    return out, left_out


def run(ctx, cfg, files: list[list[str]], columns: dict[str, str]) -> dict[str, Any]:
    """The time-series ingest (called by ingest.run when `ingest.timeseries` is set)."""
    import tensorflow as tf

    from kfx.components.data.ingest import _field, check_rejected, encode_example, first_rejection
    from kfx.pipeline.artifacts import COUNTS_FILE, EXAMPLES, REJECTED, split_dir, write_columns

    ts = cfg.timeseries
    if cfg.format != "csv":
        raise ComponentError(f"ingest.timeseries reads CSV sources; format is {cfg.format!r}")
    names = list(columns)
    stamp_col, values, key = _options(ts, names)
    rows = list(_rows(cfg, files, names))
    series, rejected = _parse(rows, ts, values, key, set(cfg.csv.na_values))
    span = ts.input_length + ts.horizon
    grids, filled_values, origins, records = {}, {}, {}, {}
    kept_rows = 0
    for k, points in sorted(series.items()):
        distinct = len({p[0] for p in points})
        if len(points) < span or distinct < 2:  # one timestamp has no step: no grid
            why = (f"{len(points)} points, fewer than input_length + horizon = {span}" if len(points) < span
                   else f"{len(points)} rows but one distinct timestamp ({_iso(points[0][0])}); a series needs 2 or more")
            rejected += [_reject(p, f"series {k!r} has {why}") for p in points]
            records[k] = {"rows": len(points), "rejected": "too short"}
            continue
        grid, vals, kept, rej, record = _grid(points, ts.frequency)
        rejected += rej
        kept_rows += len(kept)
        vals, record["interpolated_steps"] = fill(vals, ts.max_gap)
        grids[k], filled_values[k], records[k] = grid, vals, record
        origins[k] = windows(vals, ts.input_length, ts.horizon, ts.stride)
    labels, left_out = assign_splits(origins, grids, ts.splits, ts.horizon)

    # The reasons first: whatever fails below, rejected.jsonl says what happened to each row.
    examples, rejected_uri = ctx.outputs[EXAMPLES], ctx.outputs[REJECTED]
    tf.io.gfile.makedirs(rejected_uri)
    with tf.io.gfile.GFile(f"{rejected_uri}/rejected.jsonl", "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in sorted(rejected, key=lambda r: (r["input"], r["line"]))))
    read = len(rows)
    assert read == kept_rows + len(rejected), f"row counts do not reconcile: read {read} != {kept_rows} + {len(rejected)}"
    check_rejected(read, len(rejected), cfg.max_rejected_fraction, rejected_uri)

    out_columns = {ts.window_feature: "float", ts.target_feature: "float", stamp_col: "int"}
    if key:
        out_columns[key] = "string"
    keys = {n: _field(1, n.encode()) for n in out_columns}
    counts = {s: 0 for s in ts.splits}
    spans: dict[str, list] = {}
    writers = {}
    for s in ts.splits:
        tf.io.gfile.makedirs(split_dir(examples, s))
        writers[s] = tf.io.TFRecordWriter(f"{split_dir(examples, s)}/data_tfrecord-00000-of-00001.gz",
                                          options="GZIP")
    try:
        for k in sorted(origins):
            vals, grid = filled_values[k], grids[k]
            for o, split in zip(origins[k], labels[k]):
                if split is None:
                    continue
                feats = [(keys[ts.window_feature], "float", vals[o - ts.input_length + 1:o + 1].reshape(-1).tolist()),
                         (keys[ts.target_feature], "float", vals[o + 1:o + 1 + ts.horizon, 0].tolist()),
                         (keys[stamp_col], "int", [int(grid[o] // 10**9)])]
                if key:
                    feats.append((keys[key], "string", [k.encode()]))
                writers[split].write(encode_example(feats))
                counts[split] += 1
                lo, hi = spans.setdefault(split, [grid[o], grid[o]])
                spans[split] = [min(lo, grid[o]), max(hi, grid[o])]
    finally:
        for w in writers.values():
            w.close()
    if not counts.get(next(iter(ts.splits))):
        first = f"; {len(rejected):,} rows rejected (first: {first_rejection(rejected_uri)})" if rejected else ""
        raise ComponentError(f"ingest.timeseries: no window of input_length {ts.input_length} + horizon "
                             f"{ts.horizon} fits in the train span; series: "
                             f"{ {k: r.get('steps', r['rows']) for k, r in records.items()} }{first}")
    info = {"timestamp": stamp_col, "key": key, "values": values, "target": values[0],
            "feature": ts.window_feature, "label": ts.target_feature, "input_length": ts.input_length,
            "horizon": ts.horizon, "stride": ts.stride, "channels": len(values), "series": records,
            "splits": {s: {"windows": counts[s], "first_origin": _iso(spans[s][0]), "last_origin": _iso(spans[s][1])}
                       for s in ts.splits if s in spans}}
    metrics = {"rows": sum(counts.values()), "read": read, "rejected": len(rejected), "series_rows": kept_rows,
               "series": len(grids), "windows_left_out": left_out, "splits": counts,
               "interpolated_steps": sum(r.get("interpolated_steps", 0) for r in records.values())}
    for name, obj in ((TIMESERIES_FILE, info), (COUNTS_FILE, {"read": read, "rejected": len(rejected),
                                                              "splits": counts, "dropped": {}})):
        with tf.io.gfile.GFile(f"{examples}/{name}", "w") as f:
            json.dump(obj, f, indent=2)
    write_columns(examples, out_columns, ts.target_feature, ts.splits)
    ctx.log.info("ingest (time series) %s", metrics)
    return metrics


# ------------------------------------------------------------------ validate
def check_series(findings, examples_uri: str) -> int:
    """Anomalies for what ingest saw in each series (timeseries.json): gaps in the series' grid and
    rows out of time order, on the timestamp column, under the split whose span the first instance
    falls in. Returns the number added (0 when the examples are not a time series)."""
    import tensorflow as tf

    path = f"{examples_uri}/{TIMESERIES_FILE}"
    if not tf.io.gfile.exists(path):
        return 0
    with tf.io.gfile.GFile(path) as f:
        info = json.load(f)
    splits = info["splits"]
    added = 0

    def split_of(iso: str) -> str:
        for name, s in splits.items():
            if iso <= s["last_origin"]:
                return name
        return next(reversed(splits), "train")

    for key, r in sorted(info["series"].items()):
        where = f"series {key!r}: " if info.get("key") else ""
        if r.get("gaps"):
            first = r["gap_examples"][0]
            findings.add(split_of(first["after"]), info["timestamp"], "CUSTOM_VALIDATION", "Irregular time steps",
                         f"{where}{r['gaps']} gaps in the {r['frequency']} grid, {r['missing_steps']} steps without a "
                         f"row (first: {first['missing_steps']} after {first['after']}).")
            added += 1
        if r.get("non_monotonic"):
            first = r["non_monotonic_examples"][0]
            findings.add(split_of(first["timestamp"]), info["timestamp"], "CUSTOM_VALIDATION", "Non-monotonic timestamps",
                         f"{where}{r['non_monotonic']} rows earlier than the row before them (first: line "
                         f"{first['line']}, {first['timestamp']} after {first['after']}).")
            added += 1
    return added
