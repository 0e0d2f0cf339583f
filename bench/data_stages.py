"""Benchmark: kfx ingest + statistics on a large Adult-shaped CSV versus pandas.

Generates N-row CSVs by resampling the real Adult rows (so types, missing values and
cardinalities are Adult's), then, side by side in this one script:
  - kfx: the ingest and statistics stages (Beam DirectRunner, multi-processing, 2 workers);
  - pandas: read_csv + the same statistics (count, missing, mean, std, min, max, zeros,
    quantiles, histogram, unique, top-k) in one process.
Prints rows/s for each, the ratio, kfx's peak RSS per size, so "memory flat as rows grow" can
be read off the table, and the size of the examples artifact's columnar (Parquet) and
tf.Example (gzip TFRecord, what training reads) shards. The CSV is generated in a child process
and kfx's two stages run in another (its peak RSS is that process and its Beam workers, nothing
of the generator's or of pandas' memory); pandas runs in this process (its peak is above the
RSS it started from).

The statistics time splits into a fixed cost (Beam job and worker start-up, imports: measured as
the statistics time of a --fixed-rows run, 10,000 rows by default, printed first) and a per-row
part: the `stats r/s beyond fixed` column is rows / (statistics seconds - fixed seconds).

    .venv/bin/python bench/data_stages.py [--rows 250000 1000000]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kfx.components.data.datasets import ADULT_COLUMNS, BUILTINS, package_folder  # noqa: E402
from kfx.pipeline.config import load_config  # noqa: E402
from kfx.pipeline.runner import Reporter, run_pipeline  # noqa: E402

INTS = ("age", "fnlwgt", "education-num", "capital-gain", "capital-loss", "hours-per-week")


def make_csv(path: Path, rows: int, seed: int = 0) -> None:
    src = pd.read_csv(package_folder(BUILTINS["adult"]) / "adult.data", header=None, names=ADULT_COLUMNS,
                      skipinitialspace=True)
    rng = np.random.default_rng(seed)
    out = src.iloc[rng.integers(0, len(src), rows)].reset_index(drop=True)
    out["fnlwgt"] = out["fnlwgt"] + rng.integers(-500, 500, rows)  # fewer exact duplicates
    out.to_csv(path, index=False)


class PeakRss:
    """Peak resident memory of this process and all its children (only the children with
    `children_only`), sampled every 0.1 s."""

    def __init__(self, children_only: bool = False):
        self.peak = 0
        self.children_only = children_only
        self._stop = threading.Event()

    def __enter__(self):
        self._sample()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _sample(self):
        me = psutil.Process()
        total = 0
        for p in me.children(recursive=True) + ([] if self.children_only else [me]):
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        self.peak = max(self.peak, total)

    def _run(self):
        while not self._stop.wait(0.1):
            self._sample()

    def __exit__(self, *exc):
        self._sample()  # a run shorter than the sampling period still gets its end state
        self._stop.set()
        self._t.join()


def pandas_stats(path: Path, top_k: int = 20, buckets: int = 10, quantiles: int = 10) -> dict:
    df = pd.read_csv(path, skipinitialspace=True, na_values=["?", ""])
    out = {}
    for col in df.columns:
        s = df[col]
        d = {"count": int(s.count()), "missing": int(s.isna().sum()), "unique": int(s.nunique())}
        if col in INTS:
            v = s.dropna().to_numpy(dtype=float)
            d.update(mean=v.mean(), std=v.std(), min=v.min(), max=v.max(), zeros=int((v == 0).sum()),
                     quantiles=np.quantile(v, np.linspace(0, 1, quantiles + 1)),
                     histogram=np.histogram(v, bins=buckets)[0])
        else:
            d["top"] = s.value_counts().head(top_k)
        out[col] = d
    return out


def artifact_mb(root: str) -> tuple[float, float]:
    """MB of the examples artifact's Parquet shards and of its gzip tf.Example shards."""
    files = list(Path(root).glob("**/examples/Split-*/*"))
    size = lambda suffix: sum(f.stat().st_size for f in files if f.name.endswith(suffix)) / 2**20  # noqa: E731
    return size(".parquet"), size(".gz")


def kfx_stages(csv: Path, root: str) -> tuple[float, float]:
    cfg = load_config(None, [
        "ingest.format=csv", "ingest.name=null", f"ingest.inputs=[{{pattern: '{csv}', splits: {{train: 9, eval: 1}}}}]",
        "ingest.column_types={age: int, fnlwgt: int, education-num: int, capital-gain: int, capital-loss: int, hours-per-week: int}",
        "ingest.csv={header: true, na_values: ['?', '']}", "ingest.label=income", "ingest.max_rejected_fraction=0",
        "schema.path=null",
    ])
    quiet = Reporter(stream=open(os.devnull, "w"))
    s = run_pipeline(cfg, root=root, to_stage="statistics", use_cache=False, reporter=quiet)
    assert s["status"] == "succeeded", s["error"]
    return s["components"]["ingest"]["seconds"], s["components"]["statistics"]["seconds"]


def _child(*args: str) -> str:
    """Run this script with `args` in a new process; its stdout."""
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


def main() -> None:
    if sys.argv[1:2] == ["--make-csv"]:  # the child that generates a CSV
        make_csv(Path(sys.argv[2]), int(sys.argv[3]))
        return
    if sys.argv[1:2] == ["--kfx"]:  # the child that runs kfx's stages: prints their seconds
        print(json.dumps(kfx_stages(Path(sys.argv[2]), sys.argv[3])))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[250_000, 1_000_000])
    ap.add_argument("--fixed-rows", type=int, default=10_000, help="rows of the run that measures the fixed cost (0: none)")
    args = ap.parse_args()
    print(f"{'rows':>10} {'kfx ingest r/s':>15} {'kfx stats r/s':>14} {'pandas stats r/s':>17} "
          f"{'stats ratio':>12} {'kfx+ingest ratio':>17} {'kfx peak RSS':>13} {'pandas peak RSS':>16} "
          f"{'parquet MB':>11} {'tfrecord MB':>12} {'stats s':>8} {'stats r/s beyond fixed':>23}")
    fixed_s = None
    for rows in ([args.fixed_rows] if args.fixed_rows else []) + args.rows:
        with tempfile.TemporaryDirectory() as tmp:
            csv = Path(tmp) / "adult_big.csv"
            _child("--make-csv", str(csv), str(rows))
            with PeakRss(children_only=True) as mem:
                ingest_s, stats_s = json.loads(_child("--kfx", str(csv), f"{tmp}/runs").splitlines()[-1])
            parquet_mb, tfrecord_mb = artifact_mb(f"{tmp}/runs")
            with PeakRss() as pmem:
                base = psutil.Process().memory_info().rss
                t = time.perf_counter()
                pandas_stats(csv)
                pandas_s = time.perf_counter() - t
            if args.fixed_rows and fixed_s is None:
                fixed_s, beyond = stats_s, "(fixed cost)"
            else:
                beyond = f"{rows / (stats_s - fixed_s):,.0f}" if fixed_s is not None and stats_s > fixed_s else "n/a"
            print(f"{rows:>10,} {rows / ingest_s:>15,.0f} {rows / stats_s:>14,.0f} {rows / pandas_s:>17,.0f} "
                  f"{stats_s / pandas_s:>11.2f}x {(ingest_s + stats_s) / pandas_s:>16.2f}x "
                  f"{mem.peak / 2**20:>10,.0f} MB {(pmem.peak - base) / 2**20:>13,.0f} MB "
                  f"{parquet_mb:>11,.1f} {tfrecord_mb:>12,.1f} {stats_s:>8.1f} {beyond:>23}", flush=True)
    print("ratio = kfx seconds / pandas seconds (lower is better; aim: stats within 3x). The first row "
          f"({args.fixed_rows:,} rows) measures the statistics stage's fixed cost." if args.fixed_rows else "")


if __name__ == "__main__":
    main()
