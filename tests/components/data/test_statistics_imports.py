"""The statistics stage on columnar examples imports no TensorFlow, in its launching process or in
a worker process, and its TensorFlow-free pieces equal what they replace.

The real CLI (`kfx component statistics`) runs with the default beam_args (multi-processing
DirectRunner, two workers) under PYTHONPROFILEIMPORTTIME=1, which child processes inherit: each
process writes a stderr line per imported module, so a module's lines count the processes that
imported it. There the stage runs its workers as threads (statistics.beam_options); what a worker
process of a distributed runner does (unpickle the stage's functions, read a shard, merge, write)
runs in a fresh Python process that imported Beam's SDK worker first.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from kfx.components.data.feature_stats import KMV_K, FeatureAcc, hash_numbers
from kfx.pipeline import fs
from tests.conftest import REPO, read_json, tiny_config, write_tiny_csv

MULTI_PROCESS = ["--direct_running_mode=multi_processing", "--direct_num_workers=2",
                 "--default_sdk_harness_log_level=ERROR"]


def importers(stderr: str) -> dict[str, int]:
    """{module: how many processes imported it} from `-X importtime` lines."""
    out: dict[str, int] = {}
    for line in stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            name = line.rsplit("|", 1)[1].strip()
            out[name] = out.get(name, 0) + 1
    return out


@pytest.fixture(scope="module")
def statistics_run(tmp_path_factory):
    """Ingest (in this process, in-memory Beam), then `kfx component statistics` in a new process
    with the default beam_args (multi-processing DirectRunner, two worker processes: (summary, {module: processes}, the CSV)."""
    from kfx.pipeline.config import load_config
    from kfx.pipeline.runner import Reporter, run_pipeline

    tmp = tmp_path_factory.mktemp("stats_imports")
    write_tiny_csv(tmp / "data" / "part.csv", rows=600)
    cfg_path = tiny_config(tmp, str(tmp / "data" / "*.csv"))  # in-memory Beam for ingest
    first = run_pipeline(load_config(cfg_path), to_stage="ingest", reporter=Reporter(stream=open(os.devnull, "w")))
    examples = first["components"]["ingest"]["outputs"]["examples"]
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, "-m", "kfx.pipeline.cli", "component", "statistics", "-c", str(cfg_path),
                           "--input", f"examples={examples}", "--no-cache",
                           "--set", f"beam_args={json.dumps(MULTI_PROCESS)}", "--summary-json", str(tmp / "s.json")],
                          cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return read_json(tmp / "s.json"), importers(proc.stderr), tmp / "data" / "part.csv", examples


def test_statistics_launcher_imports_no_tensorflow_and_starts_no_worker_process(statistics_run):
    summary, modules, _, _ = statistics_run
    assert summary["components"]["statistics"]["status"] == "succeeded"
    assert modules.get("kfx.components.data.feature_stats") == 1  # the stage ran, in one process
    assert modules.get("apache_beam") == 1  # Beam's workers were threads: no process imported Beam again
    heavy = sorted(m for m in modules if m.split(".")[0] in ("tensorflow", "keras"))
    assert heavy == [], f"the statistics stage imported {heavy[:10]}"


WORKER = """
import json, sys
import apache_beam.runners.worker.sdk_worker_main  # what a Beam worker process has imported
from apache_beam.internal import pickler
stats, merge, write, items, args, out, settings = pickler.loads(open(sys.argv[1], 'rb').read())
parts = [p for item in items for _, p in stats(item, *args)]
write((items[0][0], merge(parts, args[-1])), out, settings)
print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras'))))
"""


def test_a_worker_process_running_the_stage_imports_no_tensorflow(statistics_run, tmp_path):
    """The stage's functions, pickled as Beam pickles them, run in a new process on the train
    split's shards: no TensorFlow imported, and the FeatureStats.pb equals the stage's."""
    from apache_beam.internal import pickler

    from kfx.components.data import statistics
    from kfx.pipeline.artifacts import examples as columnar
    from kfx.pipeline.artifacts import read_columns, split_dir

    summary, _, _, _ = statistics_run
    examples = statistics_run[3]
    cfg = statistics.StatisticsConfig()
    items = [("train", s) for s in columnar.shards(split_dir(examples, "train"))]
    payload = (statistics.shard_stats, statistics.merge, statistics.write_split, items,
               (read_columns(examples)["columns"], cfg.batch_size, cfg.max_rank_values), str(tmp_path),
               SimpleNamespace(**cfg.model_dump()))
    (tmp_path / "fns.pkl").write_bytes(pickler.dumps(payload))
    proc = subprocess.run([sys.executable, "-c", WORKER, str(tmp_path / "fns.pkl")], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.splitlines()[-1]) == []
    stage_out = summary["components"]["statistics"]["outputs"]["statistics"]
    assert (tmp_path / "Split-train" / "FeatureStats.pb").read_bytes() == \
        open(f"{stage_out}/Split-train/FeatureStats.pb", "rb").read()


def test_statistics_of_the_tensorflow_free_run_equal_numpy(statistics_run):
    from kfx.pipeline.artifacts import load_statistics

    summary, _, csv, _ = statistics_run
    stats = load_statistics(summary["components"]["statistics"]["outputs"]["statistics"])
    assert sum(d.num_examples for d in stats.values()) == 600
    n = [next(f for f in d.features if f.path.step[0] == "n").num_stats for d in stats.values()]
    values = pd.read_csv(csv)["n"].dropna().to_numpy(dtype=float)
    assert sum(s.common_stats.num_non_missing for s in n) == len(values)
    assert np.isclose(sum(s.mean * s.common_stats.num_non_missing for s in n) / len(values), values.mean())
    assert min(s.min for s in n) == values.min() and max(s.max for s in n) == values.max()


def test_hash_numbers_equals_pandas():
    values = np.array([0.0, -0.0, 1.5, np.nan, np.inf, -np.inf, 3.0, 1e300, -7.0, 2.0**53 + 2])
    assert (hash_numbers(values) == pd.util.hash_array(values, categorize=False)).all()


def test_distinct_sketch_is_the_same_fed_in_batches_or_at_once():
    """Dropping hashes above the K-th smallest before np.unique keeps the K smallest exactly."""
    rng = np.random.default_rng(1)
    values = rng.integers(0, 50_000, 40_000).astype(np.float64)

    def reductions(v):
        return {"rows": len(v), "present": len(v), "num_values": len(v), "min_nv": 1, "max_nv": 1, "values": v,
                "sum": v.sum(), "sum_sq": v @ v, "min": v.min(), "max": v.max(), "zeros": int((v == 0).sum())}

    whole, batched = FeatureAcc("int"), FeatureAcc("int")
    whole.add(reductions(values), 10)
    for part in np.array_split(values, 13):
        batched.add(reductions(part), 10)
    assert len(whole.kmv) == KMV_K
    assert (whole.kmv == batched.kmv).all()
    assert whole.unique() == batched.unique()
    assert abs(whole.unique() - len(np.unique(values))) / len(np.unique(values)) < 0.05


def test_fs_commit_operations(tmp_path):
    """The runner's commit steps on a local root: makedirs, write, listing, rename (refusing to
    replace unless told), rmtree."""
    work, final = str(tmp_path / ".tmp-1"), str(tmp_path / "1")
    fs.makedirs(f"{work}/out")
    with fs.open_write(f"{work}/out/a.txt") as f:
        f.write("hello")
    with fs.open_write(f"{work}/out/b.pb", binary=True) as f:
        f.write(b"\x00\x01")
    assert [(p, n) for p, n, _ in fs.listing(work)] == [("out/a.txt", 5), ("out/b.pb", 2)]
    fs.rename(work, final)
    assert not fs.exists(work) and fs.exists(f"{final}/out/a.txt")
    fs.makedirs(work)
    with pytest.raises(FileExistsError, match=r"destination exists"):
        fs.rename(work, final)
    fs.rename(work, final, overwrite=True)
    assert fs.listing(final) == []
    fs.rmtree(final)
    assert not fs.exists(final)
