"""Shared test helpers: run the real `kfx` CLI in a subprocess, and small datasets made here."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
FAST_BEAM = ["--direct_running_mode=in_memory"]


def kfx(*args: str, timeout: float = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `kfx ARGS` as a user would (a new process, from the repository root)."""
    full_env = {**os.environ, **(env or {})}  # the CLI quiets TensorFlow itself (pipeline/logs.py)
    return subprocess.run([sys.executable, "-m", "kfx.pipeline.cli", *args], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def read_json(path) -> dict:
    return json.loads(Path(path).read_text())


def write_tiny_csv(path: Path, rows: int = 600, seed: int = 0, shift: float = 0.0,
                   colors=("red", "green", "blue")) -> None:
    """A small labelled CSV: x (float), n (int), color (string), label (yes/no)."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["x,n,color,label"]
    for i in range(rows):
        x = rng.normal(50, 10) + shift
        color = colors[i % len(colors)]
        lines.append(f"{x:.3f},{int(rng.integers(0, 5))},{color},{'yes' if x > 50 else 'no'}")
    path.write_text("\n".join(lines) + "\n")


def tiny_config(tmp: Path, pattern: str, **sections) -> Path:
    """A pipeline YAML for CSV files matching `pattern`, schema inferred, in-memory Beam."""
    cfg = {"name": "tiny", "root": str(tmp / "runs"), "beam_args": FAST_BEAM,
           "ingest": {"format": "csv", "inputs": [{"pattern": pattern, "splits": {"train": 8, "eval": 2}}],
                      "label": "label", "max_rejected_fraction": 0.2},
           "schema": {"label": "label"}}
    for key, value in sections.items():
        cfg.setdefault(key, {}).update(value)
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def tiny(tmp_path):
    """A tiny CSV pipeline: (config path, data file)."""
    data = tmp_path / "data" / "part.csv"
    write_tiny_csv(data)
    return tiny_config(tmp_path, str(tmp_path / "data" / "*.csv")), data
