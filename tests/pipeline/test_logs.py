"""pipeline/logs.py: a healthy run prints kfx's lines and no library WARNING/ERROR lines; a
failing stage and real native errors still show."""
from __future__ import annotations

import re

import yaml

from kfx.pipeline import logs
from tests.conftest import kfx, read_json, tiny_config, write_tiny_csv

# What a library warning or error looks like on stderr: Python logging, absl/C++ lines, warnings.
LIBRARY_LINE = re.compile(r"WARNING|ERROR|^[WE]\d{4} |Warning: ", re.MULTILINE)
PROGRESS = re.compile(r"^\[kfx \d\d:\d\d:\d\d\] ", re.MULTILINE)


def test_known_noise_is_recognised_and_everything_else_passes():
    noise = ["WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
             "I0000 00:00:1795911591.324785   16030 port.cc:153] oneDNN custom operations are on.",
             "E0000 00:00:1795911598.201815   16030 cuda_platform.cc:52] failed call to cuInit: INTERNAL: "
             "CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)",
             "WARNING:root:apitools not found, and bigquery client libraries are not available despite the "
             "import not raising an ImportError."]
    assert all(logs.is_noise(line, level=2, no_driver=True) for line in noise)
    # With a CUDA driver installed, a failed cuInit is a real error.
    assert not logs.is_noise(noise[2], level=2, no_driver=False)
    # The user asked for every C++ line (TF_CPP_MIN_LOG_LEVEL=0).
    assert not any(logs.is_noise(line, level=0, no_driver=True) for line in noise)
    real = ["E0000 00:00:1.0   1 op_kernel.cc:1] OP_REQUIRES failed: INVALID_ARGUMENT",
            "Traceback (most recent call last):", "ERROR:apache_beam.runners.worker.sdk_worker:crashed",
            "[kfx 00:24:19] ▶ ingest"]
    assert not any(logs.is_noise(line, level=2, no_driver=True) for line in real)


def test_a_healthy_run_prints_kfx_lines_only(tmp_path, monkeypatch):
    # As a user runs it: no TF_CPP_MIN_LOG_LEVEL of their own, Beam with worker processes.
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    monkeypatch.delenv(logs.FILTER_ENV, raising=False)
    write_tiny_csv(tmp_path / "data" / "part.csv")
    cfg_path = tiny_config(tmp_path, str(tmp_path / "data" / "*.csv"), tune={"max_trials": 1, "epochs": 1},
                           train={"epochs": 2})
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["beam_args"] = ["--direct_running_mode=multi_processing", "--direct_num_workers=2",
                        "--default_sdk_harness_log_level=ERROR"]
    cfg_path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "summary.json"
    proc = kfx("run", "-c", str(cfg_path), "--to", "train", "--summary-json", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_json(out)["status"] == "succeeded"
    assert LIBRARY_LINE.findall(proc.stderr) == [], proc.stderr
    assert len(PROGRESS.findall(proc.stderr)) >= 2 * 6  # ▶ and ✔ of each stage, ingest..train
    assert "✔ train succeeded" in proc.stderr and "run " in proc.stderr and ": succeeded" in proc.stderr


def test_a_failing_stage_still_shows_its_error(tmp_path, monkeypatch):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    monkeypatch.delenv(logs.FILTER_ENV, raising=False)
    cfg = tiny_config(tmp_path, str(tmp_path / "nothing" / "*.csv"))
    proc = kfx("run", "-c", str(cfg), "--to", "ingest")
    assert proc.returncode == 1
    assert "Stage 'ingest' failed" in proc.stderr and "nothing/*.csv" in proc.stderr
    assert PROGRESS.search(proc.stderr)
