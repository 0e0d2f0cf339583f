"""ingest: read a source into split, typed tf.Example shards; quarantine malformed rows.

Sources: CSV files/globs (plain or .bz2; quoted fields may span lines), TFRecord of tf.Example,
Parquet, any TFDS dataset by name, folders of image files with one subfolder per class
(`image_folder`, components/data/images.py), and the offline built-ins (components/datasets.py;
image built-ins are pixel files encoded here to PNG bytes). Columns named in `image_columns` must
hold decodable images (PNG, JPEG, GIF, BMP) of the `image_shape` given, else the row is rejected
with the reason; `base64_columns` are decoded from base64 text (images in CSV). A graph (`graph`: nodes and edges
tables, one example per node) is read by components/data/graphs.py.
Rows are read in chunks (one Beam element per
chunk of rows, not per row: Beam's per-element cost dominates otherwise) and parsed in
parallel by Beam workers; CSV byte ranges and Parquet record batches are typed column-wise
(Arrow), and each chunk's examples are encoded and written as one TFRecord shard per split
(components/data/example_blocks.py). Each row goes to exactly one split by a deterministic hash, or to
`rejected` with its file, line and reason, or is *dropped* when its label is outside
`label_values` (counted per label value: well-formed rows that are not this task's data, such as
the plot summaries among the Rotten Tomatoes reviews); read = accepted + rejected + dropped, always.

Outputs:
    examples: Split-<name>/data_tfrecord-*.gz (gzip TFRecord tf.Example) and part-*.parquet (the
        same rows columnar, pipeline/artifacts/examples.py), columns.json
        (column types, label, splits, image columns with their expected shape) and counts.json.
    rejected: rejected.jsonl, one {"input", "line", "reason", "row"} per malformed row (no "line" for
        a file of an image folder: the input is the file).
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
from typing import Any, Iterable

from kfx.components.data import example_blocks, graphs, images
from kfx.components.data.example_blocks import _field, encode_example, encode_feature  # noqa: F401
from kfx.pipeline.artifacts import examples as columnar
from kfx.pipeline.artifacts import COUNTS_FILE, EXAMPLES, REJECTED, read_columns, read_json, split_dir, write_columns  # noqa: F401
from kfx.pipeline.component import ComponentError, ComponentSpec, Context
from kfx.pipeline.config import IngestConfig

_INFER_ROWS = 1000
COLUMNAR = "columnar"  # the parse step's output of (split, shard name, RecordBatch)
TFRECORD = "tfrecord"  # the parse step's output of (split, shard name, BinaryArray of serialized examples)
csv.field_size_limit(1 << 30)  # a base64 image or a long text exceeds csv's default 128 KiB field


class Dropped(Exception):
    """A well-formed row outside the task (its label is not in `label_values`): counted, not rejected."""


# ------------------------------------------------------------------ row typing and splitting
def _float32(value: float) -> float:
    """value as float32 stores it (infinite beyond float32's range, as examples store floats)."""
    import numpy as np

    with np.errstate(over="ignore"):
        return float(np.float32(value))


class RowParser:
    """Turns raw rows into (split, serialized tf.Example) or a rejection reason.

    Picklable plain object: Beam ships it to workers.
    """

    def __init__(self, columns: dict[str, str], cfg: IngestConfig, split_tables: list[list[tuple[str, float]]]):
        self.columns = columns
        self.names = list(columns)
        self.na = set(cfg.csv.na_values)
        self.replace = {k: dict(v) for k, v in cfg.csv.replace.items()}
        self.label = cfg.label
        self.label_values = set(cfg.label_values)
        self.text_columns = tuple(cfg.text_columns)
        self.hash_idx = [self.names.index(k) for k in cfg.hash_key] if cfg.hash_key else None
        self.split_tables = split_tables  # per input: cumulative (split, upper bound in [0, 1))
        self.images = images.expected_shapes(cfg)  # image column -> expected shape or None
        self.pixels = images.pixel_shapes(cfg)
        self.base64 = set(cfg.base64_columns)

    def split_of(self, input_idx: int, key: str) -> str:
        h = int.from_bytes(hashlib.md5(key.encode("utf-8", "surrogatepass")).digest()[:8], "big")
        u = h / 2.0**64
        for name, upper in self.split_tables[input_idx]:
            if u < upper:
                return name
        return self.split_tables[input_idx][-1][0]

    def value(self, name: str, value: Any) -> list | None:
        """One column's value -> its typed feature values, None when absent (null, NaN, NA value).

        Raises:
            ValueError: naming the column and the value, when it cannot be read as the column's type.
        """
        import numpy as np

        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None
        kind = self.columns[name]
        if isinstance(value, str):
            if value in self.na:
                return None
            value = self.replace.get(name, {}).get(value, value)
        seq = list(np.asarray(value).ravel()) if isinstance(value, (list, tuple, np.ndarray)) else [value]
        try:
            if kind == "int":
                conv = [_to_int(v) for v in seq]
            elif kind == "float":
                conv = [float(v) for v in seq]
                if not all(math.isfinite(_float32(v)) for v in conv):  # NaN, infinities, beyond float32
                    raise ValueError
            elif name not in self.base64:
                conv = [v if isinstance(v, bytes) else str(v).encode() for v in seq]
        except (TypeError, ValueError):
            raise ValueError(f"column {name!r}: cannot read {value!r} as {kind}") from None
        if name in self.base64:  # raises naming the column and the decoder's reason
            conv = [images.decode_base64(name, v) for v in seq]
        if name in self.images:
            for v in conv:
                images.check_image(name, v, self.images[name])
        if name in self.pixels:
            images.check_pixels(name, conv, self.pixels[name])
        return conv

    def typed(self, values: list[Any]) -> dict[str, Any]:
        """Column values -> feature dict; raises ValueError naming the column on a bad value."""
        out = {}
        for name, value in zip(self.names, values):
            conv = self.value(name, value)
            if conv is not None:
                out[name] = conv
        if self.label and self.label not in out:
            raise ValueError(f"missing label {self.label!r}")
        if self.label_values and out[self.label][0].decode() not in self.label_values:
            raise Dropped(out[self.label][0].decode())
        for name in self.text_columns:
            if name not in out or not any(v.strip() for v in out[name]):
                raise ValueError(f"empty text in column {name!r}")
        return out

    def example(self, feats: dict[str, list]) -> bytes:
        """Serialized tf.Example of typed feature values (see `encode_example`)."""
        return encode_example((self.keys[name], self.columns[name], vals) for name, vals in feats.items())

    @property
    def keys(self) -> dict[str, bytes]:
        if not hasattr(self, "_keys"):
            self._keys = {n: _field(1, n.encode()) for n in self.names}
        return self._keys

    def hash_key(self, values: list[Any], raw: str | None) -> str:
        if self.hash_idx is not None:
            return "\x1f".join(str(values[i]) for i in self.hash_idx)
        return raw if raw is not None else repr(values)


def _to_int(v: Any) -> int:
    if isinstance(v, (bool,)):
        return int(v)
    if isinstance(v, float):
        if not v.is_integer():
            raise ValueError
        return int(v)
    if isinstance(v, str):
        return int(v.strip())
    return int(v)


# ------------------------------------------------------------------ readers (run on Beam workers)
_RANGE_BYTES = 32 << 20
_SLICE_BYTES = 8 << 20  # a columnar CSV slice: ~75k Adult rows, ~0.3 GB of Arrow arrays at its peak
_BZ2 = ".bz2"  # tf.io.gfile does not decompress; CSV files ending so are decompressed here


def _read_bytes(path: str, start: int = 0, end: int | None = None) -> bytes:
    """Bytes [start, end) of a file, the whole decompressed file for .bz2.

    A local file is read through Arrow's filesystem, so a Beam worker parsing CSV does not import
    TensorFlow; other URIs go through tf.io.gfile (any scheme TensorFlow reaches)."""
    import bz2

    from kfx.pipeline import fs

    if "://" not in path:
        import pyarrow.fs as pafs

        opened = pafs.LocalFileSystem().open_input_file(path)
    else:
        opened = fs.open_binary(path)
    with opened as f:
        if path.endswith(_BZ2):
            return bz2.decompress(f.read())
        f.seek(start)
        return f.read() if end is None else f.read(end - start)


def _records(lines: Iterable[tuple[int, str]]) -> Iterable[tuple[int, str]]:
    """Physical (line number, text) lines -> CSV records (first line number, text).

    A quoted field may hold newlines (review texts do): lines are joined while the record has
    an odd number of quote characters (an escaped quote is two, so the parity is exact). A byte
    range boundary inside such a field is not handled: ranges split files above 32 MB only.
    """
    pending: list[str] = []
    first = 0
    for lineno, line in lines:
        if not pending:
            first = lineno
        pending.append(line)
        if sum(p.count('"') for p in pending) % 2 == 0:
            yield first, "\n".join(pending)
            pending = []
    if pending:
        yield first, "\n".join(pending)


def text_ranges(path: str, target: int = _RANGE_BYTES) -> list[tuple[str, int, int, int]]:
    """Split a text file into (path, start byte, end byte, first line number) ranges.

    Ranges end on line boundaries, so Beam workers read one large file in parallel, each
    streaming its own range: nothing is materialised, and line numbers stay exact (the driver
    counts newlines once, at C speed). Local files need no TensorFlow (kfx.pipeline.fs).
    """
    from kfx.pipeline import fs

    size = fs.size(path)
    if size <= target or path.endswith(_BZ2):  # a bz2 stream is read whole: no byte offsets into it
        return [(path, 0, size, 1)]
    ranges, start, line, pos = [], 0, 1, 0
    with fs.open_binary(path) as f:
        while True:
            block = f.read(target)
            if not block:
                break
            nl = block.rfind(b"\n")
            if nl < 0 or pos + len(block) >= size:
                end = size
            else:
                end = pos + nl + 1
                f.seek(end)
            ranges.append((path, start, end, line))
            line += block[: end - pos].count(b"\n")
            start = pos = end
            if end >= size:
                break
    return ranges


def _read_text_chunks(item: tuple[int, tuple[str, int, int, int]], skip_header: bool,
                      skip_prefixes: tuple[str, ...], chunk_rows: int, data: bytes | None = None):
    """CSV records of one file range in chunks of (line number, text); comments and blanks dropped.

    `data` is the range's bytes when the caller has read them already."""
    input_idx, (path, start, end, first_line) = item
    chunk: list[tuple[int, str]] = []
    data = _read_bytes(path, start, end) if data is None else data
    lines = ((n, raw.decode("utf-8", "replace").rstrip("\r"))
             for n, raw in enumerate(data.split(b"\n"), start=first_line))
    for lineno, line in _records(lines):
        if (lineno == 1 and skip_header) or not line.strip() or line.startswith(skip_prefixes):
            continue
        chunk.append((lineno, line))
        if len(chunk) >= chunk_rows:
            yield input_idx, path, chunk
            chunk = []
    if chunk:
        yield input_idx, path, chunk


def _route(input_idx: int, path: str, rows, parser: RowParser, files: bool = False):
    """(row number, values, raw text or None, early rejection or None) rows -> tagged outputs:
    per split the accepted rows' serialized examples (TFRECORD) and record batch (COLUMNAR),
    the rejected rows, and the counts.

    With `files`, each row is a file of the folder `path` and raw is its relative path: a
    rejected row's input is that file (no line)."""
    import apache_beam as beam
    import pyarrow as pa

    counts: dict[str, int] = {}
    dropped: dict[str, int] = {}
    typed: dict[str, list[dict]] = {}  # split -> this chunk's typed rows, for its columnar shard
    read = rejected = 0
    first = None
    for rowno, values, raw, reason in rows:
        read += 1
        first = first if first is not None else (rowno, raw)
        if reason is None:
            try:
                feats = parser.typed(values)
            except Dropped as label:
                dropped[str(label)] = dropped.get(str(label), 0) + 1
                continue
            except ValueError as err:
                reason = str(err)
            else:
                split = parser.split_of(input_idx, parser.hash_key(values, raw))
                counts[split] = counts.get(split, 0) + 1
                typed.setdefault(split, []).append(feats)
                continue
        rejected += 1
        where = {"input": f"{path}/{raw}"} if files else {"input": path, "line": rowno}  # a file has no line
        yield beam.pvalue.TaggedOutput(REJECTED, json.dumps(
            {**where, "reason": reason, "row": raw if raw is not None else repr(values)[:2000]}))
    key = f"{input_idx}|{path}|{first}"  # one shard of each kind per chunk and split, named by the chunk's place
    for split, feats in typed.items():
        yield beam.pvalue.TaggedOutput(COLUMNAR, (split, columnar.shard_name(key),
                                                  columnar.record_batch(parser.columns, feats)))
        yield beam.pvalue.TaggedOutput(TFRECORD, (split, example_blocks.shard_name(key),
                                                  pa.array([parser.example(f) for f in feats], pa.binary())))
    yield beam.pvalue.TaggedOutput("counts", {"read": read, "rejected": rejected, "splits": counts,
                                              "dropped": dropped})


def _parse_csv_chunk(chunk, parser: RowParser, delimiter: str, skip_space: bool):
    """One chunk of CSV lines -> tagged outputs (see `_route`)."""
    input_idx, path, lines = chunk
    ncol = len(parser.names)

    def rows():
        for (lineno, line), values in zip(lines, csv.reader((l for _, l in lines), delimiter=delimiter,
                                                             skipinitialspace=skip_space)):
            if len(values) != ncol:
                yield lineno, values, line, f"expected {ncol} columns, found {len(values)}"
            else:
                yield lineno, [v.strip() if skip_space else v for v in values], line, None

    return _route(input_idx, path, rows(), parser)


_INT_RE = r"^\s*[+-]?\d+\s*$"
_FLOAT_RE = r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$"


def _columnar_ok(parser: RowParser) -> bool:
    """Whether `_parse_csv_range` types these columns (else every range takes the per-row path)."""
    return not (parser.base64 or parser.images or parser.pixels or parser.text_columns or parser.label_values
                or parser.hash_idx is not None)


def _parse_csv_range(item, parser: RowParser, opts, chunk_rows: int):
    """One line-aligned byte range of a CSV file -> tagged outputs (see `_route`), columnar.

    Arrow's multi-threaded C++ reader parses the range, a slice of `_SLICE_BYTES` at a time (what
    a worker holds at once, and one shard per split); typing, NA values, replacements,
    quarantine, the split and the tf.Example encoding are vectorised over its columns
    (`_columnar_csv`). A range that holds a quote character (a field may then span lines), or a
    parser with columns this path does not type (`_columnar_ok`), takes the per-row path, and so
    does a slice that is not UTF-8 or holds an integer beyond int64: the results are the same.
    """
    import pyarrow as pa

    input_idx, (path, start, end, first_line) = item
    data = _read_bytes(path, start, end)
    if b'"' in data or not _columnar_ok(parser) or len(opts.delimiter) != 1:
        for chunk in _read_text_chunks(item, opts.header, tuple(opts.skip_lines_starting_with), chunk_rows, data):
            yield from _parse_csv_chunk(chunk, parser, opts.delimiter, opts.skip_initial_space)
        return
    pos, line = 0, first_line
    while pos < len(data):
        cut = data.rfind(b"\n", pos, pos + _SLICE_BYTES) + 1 if pos + _SLICE_BYTES < len(data) else len(data)
        if cut <= pos:  # a line longer than a slice
            cut = data.find(b"\n", pos + _SLICE_BYTES) + 1 or len(data)
        piece = data[pos:cut]
        try:  # all of a slice's outputs or none: on an error the per-row path says which row and why
            out = list(_columnar_csv(piece, input_idx, path, start + pos, line, parser, opts))
        except pa.ArrowInvalid:
            sub = (input_idx, (path, start + pos, start + cut, line))
            out = [o for chunk in _read_text_chunks(sub, opts.header, tuple(opts.skip_lines_starting_with),
                                                    chunk_rows, piece)
                   for o in _parse_csv_chunk(chunk, parser, opts.delimiter, opts.skip_initial_space)]
        yield from out
        del out
        line += piece.count(b"\n")
        pos = cut


def _columnar_csv(data: bytes, input_idx: int, path: str, start: int, first_line: int, parser: RowParser, opts):
    """The tagged outputs of `_parse_csv_range` for one slice of a range without quotes."""
    import apache_beam as beam
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    ncol, names = len(parser.names), parser.names
    # the range's lines as one Arrow array (UTF-8 checked in C), a trailing \r dropped
    lines = pc.split_pattern(pa.array([data], pa.large_binary()).cast(pa.large_string()), "\n").flatten()
    lines = pc.replace_substring_regex(lines, "\r$", "")
    keep = pc.invert(pc.equal(pc.binary_length(pc.ascii_trim_whitespace(lines)), 0))
    for prefix in opts.skip_lines_starting_with:
        keep = pc.and_(keep, pc.invert(pc.starts_with(lines, prefix)))
    keep = keep.to_numpy(zero_copy_only=False).copy()
    if opts.header and first_line == 1:
        keep[0] = False
    found = pc.count_substring(lines, opts.delimiter).to_numpy(zero_copy_only=False) + 1
    good = keep & (found == ncol)
    rejected = [(first_line + i, lines[i].as_py(), f"expected {ncol} columns, found {found[i]}")
                for i in np.flatnonzero(keep & ~good).tolist()]
    counts: dict[str, int] = {}
    if good.any():
        good_lines = lines.filter(pa.array(good))
        nl = pa.scalar("\n", pa.large_string())
        body = pc.binary_join_element_wise(good_lines, pa.scalar("", pa.large_string()), nl)  # lines + "\n"
        offsets = np.frombuffer(body.buffers()[1], dtype=np.int64)
        table = pacsv.read_csv(
            pa.BufferReader(body.buffers()[2].slice(int(offsets[body.offset]),
                                                    int(offsets[body.offset + len(body)] - offsets[body.offset]))),
            read_options=pacsv.ReadOptions(column_names=names, block_size=1 << 24),
            parse_options=pacsv.ParseOptions(delimiter=opts.delimiter, quote_char=False),
            convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in names},
                                                 strings_can_be_null=False))
        n = table.num_rows
        reason = np.full(n, None, dtype=object)
        typed = {}
        for name in names:
            s = table.column(name).combine_chunks()
            if opts.skip_initial_space:
                s = pc.utf8_trim_whitespace(s)
            null = pc.is_in(s, value_set=pa.array(sorted(parser.na), pa.string())).to_numpy(zero_copy_only=False)
            for old, new in parser.replace.get(name, {}).items():
                s = pc.if_else(pc.equal(s, old), new, s)
            kind = parser.columns[name]
            if kind == "string":
                typed[name] = (s.cast(pa.binary()), null)
                continue
            ok = pc.match_substring_regex(s, _INT_RE if kind == "int" else _FLOAT_RE).to_numpy(zero_copy_only=False)
            vals = pc.cast(pc.utf8_trim_whitespace(pc.if_else(pa.array(ok & ~null), s, "0")),
                           pa.int64() if kind == "int" else pa.float64())
            if kind == "float":  # finite after the float32 cast: 1e39 is not a float32
                vals = vals.cast(pa.float32())
                ok &= np.isfinite(vals.to_numpy())
            ok |= null
            for r in np.flatnonzero(~ok & (reason == None)):  # noqa: E711 (elementwise)
                reason[r] = f"column {name!r}: cannot read {s[r].as_py()!r} as {kind}"
            typed[name] = (vals, null)
        if parser.label:
            reason[(reason == None) & typed[parser.label][1]] = f"missing label {parser.label!r}"  # noqa: E711
        accepted = reason == None  # noqa: E711
        rows = np.flatnonzero(good)
        rejected += [(first_line + int(rows[r]), good_lines[r].as_py(), reason[r]) for r in np.flatnonzero(~accepted)]
        if accepted.any():
            keys = good_lines.filter(pa.array(accepted)).cast(pa.large_binary()).to_numpy(zero_copy_only=False)
            cols = {name: (vals.filter(pa.array(accepted)), null[accepted]) for name, (vals, null) in typed.items()}
            counts = yield from _split_outputs(parser, input_idx, f"{input_idx}|{path}|{start}", cols, keys)
    for line, raw, why in rejected:
        yield beam.pvalue.TaggedOutput(REJECTED, json.dumps({"input": path, "line": line, "reason": why, "row": raw}))
    yield beam.pvalue.TaggedOutput("counts", {"read": int(keep.sum()), "rejected": len(rejected), "splits": counts,
                                              "dropped": {}})


def _split_outputs(parser: RowParser, input_idx: int, key: str, cols: dict, hash_keys: Iterable[bytes]):
    """Accepted typed columns of one chunk -> per split its TFRECORD and COLUMNAR outputs (generator).

    Args:
        cols: {column: (Arrow values, numpy null mask)} of the accepted rows, in column order.
        hash_keys: per accepted row the bytes its split is drawn from (md5, as `RowParser.split_of`).
        key: the chunk's place, which names its shards.

    Returns:
        {split: accepted rows} (the generator's return value).
    """
    import apache_beam as beam
    import numpy as np
    import pyarrow as pa

    digests = b"".join([hashlib.md5(k).digest()[:8] for k in hash_keys])
    u = np.frombuffer(digests, dtype=">u8").astype(np.float64) / 2.0**64
    table = parser.split_tables[input_idx]
    which = np.minimum(np.searchsorted([b for _, b in table], u, side="right"), len(table) - 1)
    records = example_blocks.examples([example_blocks.feature_entries(parser.keys[name], parser.columns[name], v, n)
                                       for name, (v, n) in cols.items()])
    counts = {}
    for k, (split, _) in enumerate(table):
        idx = np.flatnonzero(which == k)
        if not len(idx):
            continue
        counts[split] = len(idx)
        take = pa.array(idx)
        yield beam.pvalue.TaggedOutput(TFRECORD, (split, example_blocks.shard_name(key), records.take(take)))
        batch = pa.RecordBatch.from_arrays([_list_column(v.take(take), n[idx]) for v, n in cols.values()],
                                           schema=columnar.arrow_schema(parser.columns))
        yield beam.pvalue.TaggedOutput(COLUMNAR, (split, columnar.shard_name(key), batch))
    return counts


def _list_column(vals, null):
    """One value per row as the shards' list column (null where the row has no value)."""
    import numpy as np
    import pyarrow as pa

    offsets = np.concatenate([[0], np.cumsum(~null)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), vals.filter(pa.array(~null)), mask=pa.array(null))


def _parse_record_chunk(chunk, parser: RowParser):
    """One chunk of (row number, values) from Parquet/TFDS/TFRecord -> tagged outputs (see `_route`)."""
    input_idx, path, records = chunk
    return _route(input_idx, path, ((n, values, None, None) for n, values in records), parser)


def _parse_file_chunk(chunk, parser: RowParser):
    """One chunk of (relative path, values) from a folder source -> tagged outputs (see `_route`)."""
    input_idx, root, files = chunk
    return _route(input_idx, root, ((None, values, rel, None) for rel, values in files), parser, files=True)


def _parquet_file(path: str):
    """A ParquetFile through Arrow's own filesystems (local, gs://, s3://, hdfs://)."""
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    fs, inner = pafs.FileSystem.from_uri(path) if "://" in path else (pafs.LocalFileSystem(), path)
    return pq.ParquetFile(fs.open_input_file(inner))


def _parse_parquet_file(item, parser: RowParser, chunk_rows: int):
    """One Parquet file -> tagged outputs (see `_route`), a record batch at a time.

    A batch whose columns are all scalar takes the columnar path (`_columnar_batch`); one with a
    list column, or a parser this path does not type (`_columnar_ok`), goes row by row through
    `_route`: the results are the same. Rows are numbered from 1 in each file. A column of the
    examples (named by the first file) that this file lacks rejects each of its rows, naming it.
    """
    import pyarrow as pa

    input_idx, path = item
    pfile = _parquet_file(path)
    present = [n for n in parser.names if n in pfile.schema_arrow.names]
    missing = [n for n in parser.names if n not in present]
    why = f"column {missing[0]!r} is missing from this file" if missing else None
    start = 1
    for batch in pfile.iter_batches(batch_size=chunk_rows, columns=present):
        batch = pa.RecordBatch.from_arrays(  # the examples' column order; a missing column is null
            [batch.column(n) if n in present else pa.nulls(batch.num_rows) for n in parser.names], parser.names)
        if why is None and _columnar_ok(parser) and not any(pa.types.is_nested(c.type) for c in batch.columns):
            yield from _columnar_batch(batch, input_idx, path, start, parser)
        else:
            cols = [c.to_pylist() for c in batch.columns]
            yield from _route(input_idx, path, ((start + i, [c[i] for c in cols], None, why)
                                                for i in range(batch.num_rows)), parser)
        start += batch.num_rows


def _columnar_batch(batch, input_idx: int, path: str, start: int, parser: RowParser):
    """The tagged outputs of `_route` for a record batch of scalar columns (Parquet), vectorised.

    int64 read as int and floats read as float are cast; any other column is converted by
    `RowParser.value` once per distinct value and gathered, so typing and reasons are the per-row
    path's. The split hashes each row's `repr` of its values, as the per-row path does, built a
    column at a time from each distinct value's repr.
    """
    import apache_beam as beam
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    n = batch.num_rows
    reason = np.full(n, None, dtype=object)
    typed, reprs = {}, []
    arrow_type = {"int": pa.int64(), "float": pa.float32(), "string": pa.binary()}
    for name, col in zip(parser.names, batch.columns):
        kind, t = parser.columns[name], col.type
        enc = col.dictionary_encode()
        distinct = enc.dictionary.to_pylist()
        # each row's index into the distinct values, len(distinct) for a null
        ix = enc.indices.fill_null(len(distinct)).to_numpy(zero_copy_only=False)
        reprs.append(pa.array([repr(v) for v in distinct] + ["None"]).take(pa.array(ix)))
        if (kind == "int" and pa.types.is_integer(t) and t != pa.uint64()
                or kind == "float" and pa.types.is_floating(t)):  # cast; only non-finite floats are bad
            vals = col.cast(pa.int64() if kind == "int" else pa.float64()).cast(arrow_type[kind])
            why = [None if kind == "int" or math.isnan(v) or math.isfinite(_float32(v))
                   else f"column {name!r}: cannot read {v!r} as {kind}" for v in distinct] + [None]
            absent = [kind == "float" and math.isnan(v) for v in distinct] + [True]
        else:  # each distinct value once, through the per-row conversion
            conv, why, absent = [], [], []
            for v in distinct:
                try:
                    c = parser.value(name, v)
                except ValueError as err:
                    c = None
                    why.append(str(err))
                else:
                    why.append(None)
                absent.append(c is None and why[-1] is None)
                conv.append(c[0] if c else None)
            vals = pa.array(conv + [None], arrow_type[kind]).take(pa.array(ix))
            why, absent = why + [None], absent + [True]
        why = np.array(why, dtype=object)[ix]
        first = (why != None) & (reason == None)  # noqa: E711 (elementwise)
        reason[first] = why[first]
        typed[name] = (vals, np.array(absent)[ix])
    if parser.label:
        reason[(reason == None) & typed[parser.label][1]] = f"missing label {parser.label!r}"  # noqa: E711
    accepted = reason == None  # noqa: E711
    text = pc.binary_join_element_wise(*reprs, ", ") if reprs else pa.array([""] * n)
    counts = {}
    if accepted.any():
        keep = pa.array(accepted)
        keys = pc.binary_join_element_wise("[", text.filter(keep), "]", "").cast(pa.binary()).to_numpy(zero_copy_only=False)
        cols = {name: (vals.filter(keep), null[accepted]) for name, (vals, null) in typed.items()}
        counts = yield from _split_outputs(parser, input_idx, f"{input_idx}|{path}|{(start, None)}", cols, keys)
    for r in np.flatnonzero(~accepted).tolist():
        yield beam.pvalue.TaggedOutput(REJECTED, json.dumps(
            {"input": path, "line": start + r, "reason": reason[r], "row": f"[{text[r].as_py()}]"[:2000]}))
    yield beam.pvalue.TaggedOutput("counts", {"read": n, "rejected": int((~accepted).sum()), "splits": counts,
                                              "dropped": {}})


def _read_tfrecord_chunks(item, names: list[str], chunk_rows: int):
    import tensorflow as tf

    input_idx, path = item
    rows = []
    compression = "GZIP" if path.endswith(".gz") else ""
    for n, rec in enumerate(tf.data.TFRecordDataset(path, compression_type=compression).as_numpy_iterator(), 1):
        try:
            ex = tf.train.Example.FromString(rec)
            values = [_feature_values(ex.features.feature[k]) if k in ex.features.feature else None
                      for k in names]
        except Exception as err:  # noqa: BLE001 - a corrupt record is a rejected row
            values = [f"<unparsable record: {type(err).__name__}>"] + [None] * (len(names) - 1)
        rows.append((n, values))
        if len(rows) >= chunk_rows:
            yield input_idx, path, rows
            rows = []
    if rows:
        yield input_idx, path, rows


def _feature_values(feature) -> list | None:
    kind = feature.WhichOneof("kind")
    vals = list(getattr(feature, kind).value) if kind else []
    if not vals:
        return None
    return vals if len(vals) > 1 else vals[0]


def _read_image_builtin_chunks(item, name: str, chunk_rows: int):
    """Rows (line number, [PNG bytes, label]) of an image built-in's pixel file, encoded in chunks."""
    from kfx.components.data.datasets import encode_png, read_pixels

    import numpy as np

    input_idx, path = item
    pixels, labels = read_pixels(name, path)
    # The files are sorted by class (mnist: 500 zeros, then ones, ...) and the split files keep
    # the reading order, which training's block-wise shuffle would turn into batches of one or two
    # classes: rows go out in a fixed permutation, each keeping its line number.
    order = np.random.default_rng(0).permutation(len(labels))
    for start in range(0, len(labels), chunk_rows):
        rows = order[start:start + chunk_rows]
        pngs = encode_png(pixels[rows])
        yield input_idx, path, [(int(r) + 1, [png, int(labels[r])]) for r, png in zip(rows, pngs)]


def _read_tfds_chunks(item, name: str, data_dir: str | None, names: list[str], chunk_rows: int):
    import tensorflow_datasets as tfds

    input_idx, split = item
    ds = tfds.load(name, split=split, data_dir=data_dir, download=False)
    rows = []
    for n, ex in enumerate(tfds.as_numpy(ds), 1):
        rows.append((n, [ex.get(k) for k in names]))
        if len(rows) >= chunk_rows:
            yield input_idx, f"tfds:{name}/{split}", rows
            rows = []
    if rows:
        yield input_idx, f"tfds:{name}/{split}", rows


# ------------------------------------------------------------------ column discovery (driver side)
def _infer_type(values: list[str], tolerance: float = 0.01) -> str:
    """int, float or string: the narrowest type that reads all but `tolerance` of the sample.

    A stray bad value in a numeric column then becomes a rejected row, not a string column.
    """
    def fits(conv) -> float:
        bad = 0
        for v in values:
            try:
                conv(v)
            except ValueError:
                bad += 1
        return bad / len(values) if values else 0.0

    if fits(int) <= tolerance:
        return "int"
    if fits(float) <= tolerance:
        return "float"
    return "string"


def _csv_columns(cfg: IngestConfig, files: list[str]) -> dict[str, str]:
    from kfx.pipeline import fs

    sample: list[list[str]] = []
    header = None
    for path in files:
        if path.endswith(_BZ2):
            text = _read_bytes(path).decode("utf-8", "replace").split("\n")
        else:
            with fs.open_binary(path) as f:  # lines end at b"\n" only, as tf.io.gfile's text lines
                text = [line.decode("utf-8", "replace") for _, line in zip(range(4 * _INFER_ROWS), f)]
        lines = []
        for _, line in _records(enumerate((t.rstrip("\r\n") for t in text), 1)):
            if not line.strip() or line.startswith(cfg.csv.skip_lines_starting_with):
                continue
            lines.append(line)
            if len(lines) > _INFER_ROWS or (cfg.csv.header and len(lines) > 1 and sample):
                break
        rows = list(csv.reader(lines, delimiter=cfg.csv.delimiter, skipinitialspace=cfg.csv.skip_initial_space))
        if cfg.csv.header:
            if not rows:
                raise ComponentError(f"ingest: {path} has no header line")
            this = [c.strip() for c in rows[0]]
            if header is not None and this != header:
                raise ComponentError(f"ingest: header of {path} {this} differs from {files[0]}'s {header}")
            header = this
            rows = rows[1:]
        sample.extend(rows)
    names = list(cfg.csv.columns) if cfg.csv.columns else header
    if not names:
        raise ComponentError("ingest: CSV without header needs ingest.csv.columns")
    if cfg.csv.columns and header and list(cfg.csv.columns) != header:
        raise ComponentError(f"ingest: csv.columns {list(cfg.csv.columns)} differ from the file header {header}")
    return _typed_columns(cfg, names, {n: [r[i].strip() for r in sample if len(r) == len(names)
                                           and r[i].strip() not in cfg.csv.na_values]
                                       for i, n in enumerate(names)})


def _typed_columns(cfg: IngestConfig, names: list[str], samples: dict[str, list]) -> dict[str, str]:
    unknown = set(cfg.column_types) - set(names)
    if unknown:
        raise ComponentError(f"ingest: column_types names columns not in the data: {sorted(unknown)}; "
                             f"columns are {names}")
    unknown_text = set(cfg.text_columns) - set(names)
    if unknown_text:
        raise ComponentError(f"ingest: text_columns names columns not in the data: {sorted(unknown_text)}; "
                             f"columns are {names}")
    if cfg.label and cfg.label not in names:
        raise ComponentError(f"ingest: label column {cfg.label!r} not in the data; columns are {names}")
    return {n: cfg.column_types.get(n) or ("string" if n in cfg.base64_columns  # base64 may look numeric
                                           else _infer_type(samples.get(n, [])))
            for n in names}


def _arrow_kind(t) -> str:
    import pyarrow as pa

    while pa.types.is_list(t) or pa.types.is_large_list(t):
        t = t.value_type
    if pa.types.is_integer(t) or pa.types.is_boolean(t):
        return "int"
    if pa.types.is_floating(t):
        return "float"
    return "string"


def _parquet_columns(cfg: IngestConfig, files: list[str]) -> dict[str, str]:
    schema = _parquet_file(files[0]).schema_arrow
    names = list(schema.names)
    return _typed_columns(cfg, names, {}) | {
        n: cfg.column_types.get(n) or _arrow_kind(schema.field(n).type) for n in names}


def _tfrecord_columns(cfg: IngestConfig, files: list[str]) -> dict[str, str]:
    import tensorflow as tf

    kinds: dict[str, str] = {}
    compression = "GZIP" if files[0].endswith(".gz") else ""
    for rec in tf.data.TFRecordDataset(files[0], compression_type=compression).take(_INFER_ROWS).as_numpy_iterator():
        for k, feat in tf.train.Example.FromString(rec).features.feature.items():
            kind = {"int64_list": "int", "float_list": "float", "bytes_list": "string"}.get(feat.WhichOneof("kind"))
            if kind:
                kinds.setdefault(k, kind)
    names = sorted(kinds)
    return _typed_columns(cfg, names, {}) | {n: cfg.column_types.get(n) or kinds[n] for n in names}


def _tfds_columns(cfg: IngestConfig) -> dict[str, str]:
    import tensorflow as tf
    import tensorflow_datasets as tfds

    info = tfds.builder(cfg.name, data_dir=cfg.data_dir).info
    kinds = {}
    for k, feat in info.features.items():
        dtype = tf.as_dtype(feat.dtype)
        kinds[k] = "int" if dtype.is_integer or dtype.is_bool else "float" if dtype.is_floating else "string"
    return _typed_columns(cfg, list(kinds), {}) | {n: cfg.column_types.get(n) or kinds[n] for n in kinds}


# ------------------------------------------------------------------ the stage
def _resolved(cfg: IngestConfig) -> IngestConfig:
    if cfg.format == "builtin":
        from kfx.components.data.datasets import resolve_builtin

        return resolve_builtin(cfg)
    if cfg.format == "tfds" and not cfg.inputs:
        return cfg.model_copy(update={"inputs": ()})
    if cfg.format == "image_folder":  # columns image (bytes) and label (the class subfolder)
        from kfx.components.data.datasets import IMAGE, LABEL

        return cfg.model_copy(update={"label": cfg.label or LABEL, "image_columns": cfg.image_columns or (IMAGE,)})
    return cfg


def _match(cfg: IngestConfig) -> list[list[str]]:
    """Files of each input, sorted; an input matching nothing is an error naming the pattern."""
    from kfx.pipeline import fs
    from kfx.pipeline.config import resolve_path

    out = []
    for spec in cfg.inputs:
        files = sorted(fs.glob(resolve_path(spec.pattern)))
        if cfg.format == "image_folder":  # the folders' image files, for the fingerprint
            files = [f"{root}/{rel}" for root in files if fs.isdir(root)
                     for rel, _ in images.folder_files(root)]
        files = [f for f in files if not fs.isdir(f)]
        if not files:
            raise ComponentError(f"ingest: input pattern {spec.pattern!r} matches no "
                                 f"{'image in class subfolders' if cfg.format == 'image_folder' else 'file'}")
        out.append(files)
    return out


def source_fingerprint(cfg: IngestConfig) -> str:
    """Content hash of every source file (the cache must see new data under the same name);
    no TensorFlow import for local files (the cache is checked before it)."""
    from kfx.pipeline import fs

    cfg = _resolved(cfg)
    if cfg.format == "tfds":
        return hashlib.sha256(json.dumps([cfg.name, cfg.data_dir, str(tfds_version(cfg))]).encode()).hexdigest()
    h = hashlib.sha256()
    for files in _match(cfg) + graphs.tables(cfg):
        for path in files:
            h.update("/".join(path.rsplit("/", 2)[-2 if cfg.format == "image_folder" else -1:]).encode())  # class/file
            with fs.open_binary(path) as f:
                while block := f.read(1 << 22):
                    h.update(block)
    return h.hexdigest()


def tfds_version(cfg: IngestConfig) -> str:
    import tensorflow_datasets as tfds

    return str(tfds.builder(cfg.name, data_dir=cfg.data_dir).info.version)


def _split_tables(cfg: IngestConfig) -> list[list[tuple[str, float]]]:
    tables = []
    for spec in cfg.inputs:
        total = sum(spec.splits.values())
        acc, table = 0.0, []
        for name, weight in spec.splits.items():
            acc += weight / total
            table.append((name, acc))
        tables.append(table)
    return tables


def run(ctx: Context) -> dict[str, Any]:
    import apache_beam as beam

    from kfx.pipeline import fs

    cfg = _resolved(ctx.config)
    if cfg.graph is not None:  # nodes + edges tables, one example per node (components/data/graphs.py)
        return graphs.run(ctx, cfg)
    if cfg.format == "tfds":
        from kfx.pipeline.config import InputSpec

        inputs = cfg.inputs or (InputSpec(pattern="train", splits={"train": 9, "eval": 1}),
                                InputSpec(pattern="test", splits={"test": 1}))
        cfg = cfg.model_copy(update={"inputs": inputs})
        columns = _tfds_columns(cfg)
        items = [(i, spec.pattern) for i, spec in enumerate(cfg.inputs)]
    elif cfg.format == "builtin":  # an image built-in (datasets.IMAGE_BUILTINS): pixels -> PNG
        from kfx.components.data.datasets import IMAGE, LABEL

        items = [(i, f) for i, files in enumerate(_match(cfg)) for f in files]
        columns = {IMAGE: "string", LABEL: "int"}
    elif cfg.format == "image_folder":
        from kfx.pipeline.config import resolve_path

        _match(cfg)  # every input has images
        items = [it for i, spec in enumerate(cfg.inputs)
                 for root in sorted(fs.glob(resolve_path(spec.pattern))) if fs.isdir(root)
                 for it in images.folder_items(i, root.rstrip("/"))]
        columns = {cfg.image_columns[0]: "string", cfg.label: "string"}
    else:
        files = _match(cfg)
        items = [(i, f) for i, paths in enumerate(files) for f in paths]
        if cfg.format == "csv":
            items = [(i, r) for i, f in items for r in text_ranges(f)]
        columns = {"csv": _csv_columns, "parquet": _parquet_columns,
                   "tfrecord": _tfrecord_columns}[cfg.format](cfg, [f for paths in files for f in paths])
        if cfg.timeseries is not None:  # windowed, time-split examples (components/data/timeseries.py)
            from kfx.components.data import timeseries

            return timeseries.run(ctx, cfg, files, columns)
    try:
        images.check_columns(cfg, columns)
    except ValueError as err:
        raise ComponentError(f"ingest: {err}") from None
    split_names = list(dict.fromkeys(s for spec in cfg.inputs for s in spec.splits))
    parser = RowParser(columns, cfg, _split_tables(cfg))
    names = list(columns)
    examples, rejected_uri = ctx.outputs[EXAMPLES], ctx.outputs[REJECTED]
    num_shards = cfg.num_shards  # 0: one shard per chunk and split, no shuffle of the data (streams)

    # CSV and Parquet are parsed, typed, encoded, compressed and written by Arrow and zlib, which
    # release the GIL: a multi-processing DirectRunner's workers run as threads (Context.beam_options).
    threads = cfg.format in ("csv", "parquet") and _columnar_ok(parser)
    with beam.Pipeline(options=ctx.beam_options(threads)) as p:
        # Only file names / byte ranges are shuffled: it spreads them over the workers, and each
        # worker then streams its own rows (memory stays flat as the data grows).
        src = p | "Files" >> beam.Create(items) | "Spread" >> beam.Reshuffle()
        if cfg.format == "csv":  # read and parse a byte range in one step, columnar (`_parse_csv_range`)
            chunks, parse = src, beam.FlatMap(_parse_csv_range, parser, cfg.csv, cfg.chunk_rows)
        elif cfg.format == "parquet":  # record batches, columnar (`_parse_parquet_file`)
            chunks, parse = src, beam.FlatMap(_parse_parquet_file, parser, cfg.chunk_rows)
        elif cfg.format == "image_folder":
            chunks = src | "Read" >> beam.FlatMap(images.read_folder_chunk)
            parse = beam.FlatMap(_parse_file_chunk, parser)
        else:
            reader = {"tfrecord": lambda it: _read_tfrecord_chunks(it, names, cfg.chunk_rows),
                      "tfds": lambda it: _read_tfds_chunks(it, cfg.name, cfg.data_dir, names, cfg.chunk_rows),
                      "builtin": lambda it: _read_image_builtin_chunks(it, cfg.name, cfg.chunk_rows)}[cfg.format]
            chunks = src | "Read" >> beam.FlatMap(reader)
            parse = beam.FlatMap(_parse_record_chunk, parser)
        tagged = (chunks | "Parse" >> parse.with_outputs(REJECTED, "counts", COLUMNAR, TFRECORD))
        _ = tagged[COLUMNAR] | "WriteColumnar" >> beam.MapTuple(
            lambda split, name, batch: columnar.write_shard(split_dir(examples, split), name, batch))
        if not num_shards:  # each chunk's block of records is one shard: no element per row
            _ = tagged[TFRECORD] | "WriteTFRecord" >> beam.MapTuple(
                lambda split, name, records: example_blocks.write_shard(split_dir(examples, split), name, records))
        for split in split_names if num_shards else ():  # a fixed number of shards: Beam's sink, a row each
            _ = (tagged[TFRECORD] | f"Records{split}" >> beam.FlatMapTuple(
                     lambda s, name, records, split=split: records.to_pylist() if s == split else [])
                 | f"Write{split}" >> beam.io.WriteToTFRecord(
                     f"{split_dir(examples, split)}/data_tfrecord", file_name_suffix=".gz",
                     num_shards=num_shards, compression_type=beam.io.filesystem.CompressionTypes.GZIP))
        _ = tagged[REJECTED] | "WriteRejected" >> beam.io.WriteToText(
            f"{rejected_uri}/rejected", file_name_suffix=".jsonl", shard_name_template="", num_shards=1)
        _ = (tagged["counts"] | "Sum" >> beam.CombineGlobally(_sum_counts)
             | "CountsJson" >> beam.Map(json.dumps, sort_keys=True)
             | "WriteCounts" >> beam.io.WriteToText(f"{examples}/counts", file_name_suffix=".json",
                                                    shard_name_template="", num_shards=1))

    counts = read_json(examples, COUNTS_FILE)
    write_columns(examples, columns, cfg.label, split_names, cfg.text_columns, images.expected_shapes(cfg),
                  columnar=True)
    accepted = sum(counts["splits"].values())
    read, rej, dropped = counts["read"], counts["rejected"], sum(counts["dropped"].values())
    assert read == accepted + rej + dropped, \
        f"row counts do not reconcile: read {read} != {accepted} + {rej} + {dropped}"
    metrics = {"rows": accepted, "read": read, "rejected": rej,
               "splits": {s: counts["splits"].get(s, 0) for s in split_names}}
    if cfg.label_values:
        metrics["dropped"] = dropped
        metrics["dropped_labels"] = dict(sorted(counts["dropped"].items()))
    ctx.log.info("ingest %s", metrics)
    check_rejected(read, rej, cfg.max_rejected_fraction, rejected_uri)
    return metrics


def check_rejected(read: int, rejected: int, max_fraction: float, rejected_uri: str) -> None:
    """Fail on a source without rows or above `max_fraction` rejected (rejected.jsonl written first).

    Raises:
        ComponentError: naming the counts, the limit and the first rejected row's place and reason.
    """
    if read == 0:
        raise ComponentError("ingest: the source has no rows")
    if rejected / read > max_fraction:
        raise ComponentError(
            f"ingest: {rejected:,} of {read:,} rows ({rejected / read:.2%}) were rejected, above "
            f"max_rejected_fraction {max_fraction:.2%}; reasons per row in "
            f"rejected/rejected.jsonl (first: {first_rejection(rejected_uri)})")


def first_rejection(rejected_uri: str) -> str:
    """'<input> line <n>: <reason>' of the first row in rejected.jsonl (no line for a file row), or 'none'."""
    from kfx.pipeline import fs

    with fs.open_binary(f"{rejected_uri}/rejected.jsonl") as f:
        line = f.readline().decode("utf-8")
    if not line:
        return "none"
    r = json.loads(line)
    where = f"{r['input']} line {r['line']}" if "line" in r else r["input"]
    return f"{where}: {r['reason']}"


def _sum_counts(parts: Iterable[dict]) -> dict:
    total = {"read": 0, "rejected": 0, "splits": {}, "dropped": {}}
    for c in parts:
        total["read"] += c["read"]
        total["rejected"] += c["rejected"]
        for k, v in c["dropped"].items():
            total["dropped"][k] = total["dropped"].get(k, 0) + v
        for k, v in c["splits"].items():
            total["splits"][k] = total["splits"].get(k, 0) + v
    return total


SPEC = ComponentSpec(name="ingest", config=IngestConfig, inputs=(), outputs=(EXAMPLES, REJECTED), run=run,
                     source_fingerprint=source_fingerprint,
                     code=("kfx.pipeline.artifacts", "kfx.pipeline.artifacts.examples", "kfx.components.data.datasets",
                           "kfx.components.data.example_blocks",
                           "kfx.components.data.images",
                           "kfx.components.data.timeseries", "kfx.components.data.graphs",
                           "kfx.pipeline.artifacts.graph"))
