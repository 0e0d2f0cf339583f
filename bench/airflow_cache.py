"""Benchmark: a cached `kfx component` task versus the same task executed, as Airflow runs them.

Each Airflow task of the daily DAG runs `kfx component STAGE -c CONFIG --run-id RUN --input
NAME=URI ... --summary-json PATH` in a new process (airflow/dags/kfx_daily_retrain.py). This
script runs the stages of the tiny tabular pipeline (tests/models/tiny_pipeline.py, N rows)
exactly so, in a fresh temporary root: every stage once as run `executed` (nothing cached), then
every stage again as run `cached` (same data, config and code: all cache hits), inputs passed
from the upstream task's summary as the DAG's XComs pass them. It prints, per stage, the wall
time of both tasks (process start to exit) and their ratio, plus the wall time of
`python -c "import tensorflow"`, what a cached task no longer pays.

    .venv/bin/python bench/airflow_cache.py [--rows 3000] [--stages ingest statistics ...]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kfx.pipeline.config import load_config  # noqa: E402
from kfx.pipeline.graph import Upstream  # noqa: E402
from tests.models import tiny_pipeline  # noqa: E402

KFX = str(Path(sys.executable).parent / "kfx")
STAGES = ("ingest", "statistics", "schema", "validate", "transform", "tune", "train", "evaluate")


def task(stage, config: Path, run_id: str, xcoms: dict, tmp: Path) -> tuple[float, dict]:
    """One Airflow-style task: (wall seconds, the stage's summary entry)."""
    argv = [KFX, "component", stage.name, "-c", str(config), "--run-id", run_id]
    for name, binding in sorted(stage.inputs.items()):
        if isinstance(binding, Upstream):
            argv += ["--input", f"{name}={xcoms[binding.stage]['outputs'][binding.output]}"]
    summary = tmp / f"{run_id}-{stage.name}.json"
    started = time.perf_counter()
    proc = subprocess.run([*argv, "--summary-json", str(summary)], cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"{stage.name} ({run_id}) failed with status {proc.returncode}:\n{proc.stderr[-3000:]}")
    return seconds, json.loads(summary.read_text())["components"][stage.name]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3000, help="train.csv rows (test.csv has a third)")
    parser.add_argument("--stages", nargs="+", default=list(STAGES), help="stages, in graph order")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="kfx-bench-cache-") as name:
        tmp = Path(name)
        tiny_pipeline.write_csv(tmp / "train.csv", args.rows, seed=1)
        tiny_pipeline.write_csv(tmp / "test.csv", args.rows // 3, seed=2)
        config = tiny_pipeline.write_config(tmp)
        stages = {s.name: s for s in load_config(config).stages}
        times: dict[str, dict[str, float]] = {}
        for run_id, expected in (("executed", "succeeded"), ("cached", "cached")):
            xcoms: dict[str, dict] = {}
            for stage_name in args.stages:
                seconds, xcoms[stage_name] = task(stages[stage_name], config, run_id, xcoms, tmp)
                status = xcoms[stage_name]["status"]
                if status != expected:
                    sys.exit(f"{stage_name} in run {run_id!r}: status {status!r}, expected {expected!r}")
                times.setdefault(stage_name, {})[run_id] = seconds
                print(f"  {run_id:<9} {stage_name:<15} {seconds:6.1f}s", file=sys.stderr, flush=True)
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import tensorflow"], check=True, capture_output=True)
        import_tf = time.perf_counter() - started

    print(f"\n`kfx component` task wall time (new process each), tiny tabular pipeline, {args.rows:,} rows")
    print(f"{'stage':<15} {'executed s':>11} {'cached s':>9} {'executed/cached':>16}")
    for stage_name, t in times.items():
        print(f"{stage_name:<15} {t['executed']:>11.1f} {t['cached']:>9.2f} {t['executed'] / t['cached']:>16.1f}")
    total = {k: sum(t[k] for t in times.values()) for k in ("executed", "cached")}
    print(f"{'all':<15} {total['executed']:>11.1f} {total['cached']:>9.2f} {total['executed'] / total['cached']:>16.1f}")
    print(f"reference: python -c 'import tensorflow' takes {import_tf:.2f}s")


if __name__ == "__main__":
    main()
