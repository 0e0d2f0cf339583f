"""A tiny pipeline for the modeling tests: a CSV made here, ingest..validate run in-process.

Shared by tests/components/test_{transform,tune,train}.py (`from tests.models import tiny_pipeline`).

Data: 5 features of every kind the transform handles by default (int, float, string with a
domain, string with missing values) and a binary string label that depends on them, with
noise, so a model learns something in a few epochs.
"""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
KFX = str(Path(sys.executable).parent / "kfx")
COLUMNS = ["age", "hours", "income_k", "color", "city", "target"]


def write_csv(path: Path, rows: int, seed: int) -> None:
    import numpy as np

    rng = np.random.default_rng(seed)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for _ in range(rows):
            age = int(rng.integers(18, 80))
            hours = int(rng.integers(10, 70))
            income = float(np.round(rng.gamma(2.0, 20.0), 2))
            color = str(rng.choice(["red", "green", "blue"], p=[0.3, 0.5, 0.2]))
            city = "" if rng.random() < 0.1 else str(rng.choice(["paris", "oslo", "rome", "lima"]))
            logit = 0.08 * (age - 45) + 0.04 * (income - 40) + (1.5 if color == "red" else -0.5) + rng.normal(0, 0.7)
            w.writerow([age, hours, income, color, city, "pos" if logit > 0 else "neg"])


def config(tmp: Path, **sections) -> dict:
    """The tiny pipeline config as a dict; `sections` replace or add top-level sections."""
    cfg = {
        "name": "tiny",
        "root": str(tmp / "runs"),
        "beam_args": ["--direct_running_mode=in_memory"],
        "max_parallel": 1,
        "ingest": {"format": "csv", "label": "target", "num_shards": 2,
                   "inputs": [{"pattern": str(tmp / "train.csv"), "splits": {"train": 9, "eval": 1}},
                              {"pattern": str(tmp / "test.csv"), "splits": {"test": 1}}]},
        "schema": {"label": "target", "sensitive": ["color"]},
        "transform": {"features": {"age": {"kinds": ["normalize", "bucketize"], "num_buckets": 4},
                                   "income_k": {"kinds": ["normalize"], "log": True}}},
        "tune": {"max_trials": 2, "epochs": 1, "batch_size": 64, "max_seconds": 120},
        "train": {"epochs": 2, "batch_size": 64, "warmup_requests": 3, "early_stopping_patience": 0,
                  "verbose": 0},
    }
    cfg.update(sections)
    return cfg


def write_config(tmp: Path, filename: str = "tiny.yaml", **sections) -> Path:
    """Write the tiny config (with `sections` replaced) to tmp/filename; tests that change it use
    their own filename so the shared one stays as built."""
    path = tmp / filename
    path.write_text(yaml.safe_dump(config(tmp, **sections)))
    return path


def build(tmp: Path, to_stage: str = "validate", rows: int = 600) -> dict:
    """Write data and config under `tmp`, run the pipeline up to `to_stage`; return the summary
    plus "config" (path) and "outputs" ({stage: {output: uri}})."""
    from kfx.pipeline.config import load_config
    from kfx.pipeline.runner import run_pipeline

    write_csv(tmp / "train.csv", rows, seed=1)
    write_csv(tmp / "test.csv", rows // 3, seed=2)
    path = write_config(tmp)
    summary = run_pipeline(load_config(path), to_stage=to_stage)
    assert summary["status"] == "succeeded", summary["error"]
    summary["config"] = path
    summary["outputs"] = {k: v["outputs"] for k, v in summary["components"].items()}
    return summary


def kfx(args: list[str], env: dict | None = None, **kwargs) -> subprocess.Popen:
    """Start the kfx CLI in a subprocess (TensorFlow quiet, repo importable)."""
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.Popen([KFX, *args], env=full_env, cwd=str(REPO), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)


def inputs_args(outputs: dict, **names: tuple[str, str]) -> list[str]:
    """--input NAME=URI arguments from {name: (stage, output)}."""
    args = []
    for name, (stage, output) in names.items():
        args += ["--input", f"{name}={outputs[stage][output]}"]
    return args
