"""ingest and statistics on CSV import no TensorFlow through the real CLI, and give the same
artifacts whatever Beam's running mode.

`kfx run --to statistics` runs in a new process with the default beam_args (multi-processing
DirectRunner, two workers, which both stages run as threads: Context.beam_options) under
PYTHONPROFILEIMPORTTIME=1, inherited by any child process: a module's stderr lines count the
processes that imported it. The same config run in this process with the in-memory DirectRunner
must give byte-identical shards, counts.json, columns.json and FeatureStats.pb (the statistics
merge the shards' accumulators in shard-path order, whatever order the workers finish in).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.components.data.test_statistics_imports import MULTI_PROCESS, importers
from tests.conftest import REPO, read_json, tiny_config, write_tiny_csv


def _files(root: str) -> dict[str, bytes]:
    """{path relative to `root`: bytes} of every file under an artifact directory."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(CLI summary, {module: processes}, in-process in-memory summary) of the same three-file CSV."""
    from kfx.pipeline.config import load_config
    from kfx.pipeline.runner import Reporter, run_pipeline

    tmp = tmp_path_factory.mktemp("ingest_imports")
    for i in range(3):  # three files: several shards per split, so the merge order matters
        write_tiny_csv(tmp / "data" / f"part-{i}.csv", rows=3000, seed=i)
    cfg_path = tiny_config(tmp, str(tmp / "data" / "*.csv"))
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, "-m", "kfx.pipeline.cli", "run", "-c", str(cfg_path), "--to", "statistics",
                           "--no-cache", "--root", str(tmp / "cli"), "--set", f"beam_args={json.dumps(MULTI_PROCESS)}",
                           "--summary-json", str(tmp / "s.json")],
                          cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    memory = run_pipeline(load_config(cfg_path), root=str(tmp / "mem"), to_stage="statistics", use_cache=False,
                          reporter=Reporter(stream=open(os.devnull, "w")))
    assert memory["status"] == "succeeded", memory["error"]
    return read_json(tmp / "s.json"), importers(proc.stderr), memory


def test_cli_ingest_and_statistics_import_no_tensorflow(runs):
    summary, modules, _ = runs
    assert summary["components"]["ingest"]["status"] == "succeeded"
    assert summary["components"]["ingest"]["metrics"]["rows"] == 9000
    assert modules.get("kfx.components.data.example_blocks") == 1  # ingest's encoder, in one process
    assert modules.get("apache_beam") == 1  # workers were threads: no process imported Beam again
    heavy = sorted(m for m in modules if m.split(".")[0] in ("tensorflow", "keras"))
    assert heavy == [], f"ingest or statistics imported {heavy[:10]}"


def test_threads_and_in_memory_runs_write_identical_artifacts(runs):
    summary, _, memory = runs
    for stage, output in (("ingest", "examples"), ("statistics", "statistics")):
        cli = _files(summary["components"][stage]["outputs"][output])
        mem = _files(memory["components"][stage]["outputs"][output])
        assert sorted(cli) == sorted(mem)
        assert [k for k in cli if cli[k] != mem[k]] == [], stage
    examples = _files(summary["components"]["ingest"]["outputs"]["examples"])
    assert len([k for k in examples if k.startswith("Split-train/part-")]) == 3  # one shard per file
