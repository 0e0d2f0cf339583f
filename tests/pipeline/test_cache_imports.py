"""A cached `kfx component` task (what an Airflow task runs) finishes without importing TensorFlow.

The real CLI runs in a subprocess under `python -X importtime`, which writes one stderr line per
imported module; TensorFlow counts as imported when its top-level package's line is there.
Every run must also show kfx.pipeline.runner's line, so an empty importtime output cannot pass.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from kfx.pipeline import init
from tests.conftest import REPO, read_json, tiny_config, write_tiny_csv


def imported(stderr: str) -> set[str]:
    """Module names of the `-X importtime` lines in `stderr`."""
    return {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines()
            if line.startswith("import time:") and line.count("|") == 2}


def kfx(*args: str, summary) -> tuple[dict, set[str]]:
    """`kfx ARGS --summary-json SUMMARY` in a new process; (summary, imported modules)."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "kfx.pipeline.cli", *args,
                           "--summary-json", str(summary)], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    modules = imported(proc.stderr)
    assert "kfx.pipeline.runner" in modules, proc.stderr[-3000:]
    return read_json(summary), modules


def user_project(tmp, rows: int = 200, **sections):
    """The tiny pipeline with the user's model and preprocessing of `kfx init` beside it: both
    modules import keras / tensorflow at their top, as users write them."""
    write_tiny_csv(tmp / "data" / "part.csv", rows=rows)
    (tmp / "my_model.py").write_text(init.MY_MODEL)
    (tmp / "features.py").write_text(init.FEATURES)
    return tiny_config(tmp, str(tmp / "data" / "*.csv"), train={"model": "my_model.py"},
                       transform={"preprocessing": "features.py:preprocess"}, **sections)


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """ingest and statistics executed by `kfx run --to statistics` (run r1): (config, tmp, summary, modules)."""
    tmp = tmp_path_factory.mktemp("cache")
    cfg = user_project(tmp)
    summary, modules = kfx("run", "-c", str(cfg), "--to", "statistics", "--run-id", "r1", summary=tmp / "r1.json")
    return cfg, tmp, summary, modules


def test_executed_stages_import_tensorflow(executed):
    """The probe sees TensorFlow when stages execute."""
    _, _, summary, modules = executed
    assert [c["status"] for c in summary["components"].values()] == ["succeeded", "succeeded"]
    assert "tensorflow" in modules


@pytest.mark.parametrize("stage", ["ingest", "statistics"])
def test_cached_task_does_not_import_tensorflow(executed, stage):
    """`kfx component STAGE --run-id r2 [--input NAME=URI]` as the DAG's task runs it: a cache hit
    with the executed outputs, and not one module of TensorFlow, Keras or Beam imported (nor the
    user's modules, which import them: they are located and hashed, not imported)."""
    cfg, tmp, first, _ = executed
    outputs = {name: c["outputs"] for name, c in first["components"].items()}
    inputs = [] if stage == "ingest" else ["--input", f"examples={outputs['ingest']['examples']}"]
    again, modules = kfx("component", stage, "-c", str(cfg), "--run-id", "r2", *inputs, summary=tmp / f"{stage}.json")
    assert again["components"][stage]["status"] == "cached"
    assert again["components"][stage]["outputs"] == outputs[stage]
    heavy = sorted(m for m in modules if m.split(".")[0] in ("tensorflow", "keras", "apache_beam"))
    assert heavy == [], f"a cached {stage} imported {heavy[:10]}"
    assert not {m for m in modules if m.startswith("kfx_user_")}


def test_new_data_under_the_same_name_changes_the_fingerprint(tmp_path):
    """The TensorFlow-free source fingerprint still sees new data in the same file."""
    from kfx.components.data.ingest import source_fingerprint
    from kfx.pipeline.config import load_config

    write_tiny_csv(tmp_path / "data" / "part.csv", rows=20)
    cfg = load_config(tiny_config(tmp_path, str(tmp_path / "data" / "*.csv"))).stage("ingest")
    first = source_fingerprint(cfg)
    assert source_fingerprint(cfg) == first
    write_tiny_csv(tmp_path / "data" / "part.csv", rows=20, seed=5)
    assert source_fingerprint(cfg) != first


def test_fingerprints_of_every_stage_import_no_tensorflow(tmp_path):
    """Code versions and source fingerprints of all ten stages, from the config loaded as `kfx
    component` loads it first, without importing TensorFlow, Keras or Beam: the user's modules are
    located and hashed, and so is a built-in family that imports `from keras import ops` inside
    its functions (capsule, tune's here). They equal those of the fully checked config (which
    `kfx run` uses), or a cache filled by one would never serve the other."""
    from kfx.pipeline.config import load_config

    cfg = user_project(tmp_path, rows=10, tune={"model": "capsule"})
    code = ("import json, sys\n"
            "from kfx.pipeline.config import load_config\n"
            "from tests.pipeline.test_cache_imports import cache_keys\n"
            f"located = cache_keys(load_config({str(cfg)!r}, import_user_code=False))\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'apache_beam'))\n"
            "print(json.dumps({'keys': located, 'heavy': heavy}))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["heavy"] == []
    assert len(set(out["keys"]["code"])) == 10 and len(out["keys"]["source"]) == 4
    assert out["keys"] == cache_keys(load_config(cfg))  # imports the user's modules, here in pytest


def cache_keys(cfg) -> dict:
    """Every stage's code version and source fingerprint (what the cache key adds to config and inputs)."""
    from kfx.pipeline.runner import code_version

    return {"code": [code_version(s, cfg) for s in cfg.stages],
            "source": [s.spec.source_fingerprint(cfg.stage(s.name)) for s in cfg.stages if s.spec.source_fingerprint]}
