"""Benchmark: transform's analyzers and evaluate's reads on Adult, tf.Example shards vs Parquet shards.

The same examples artifact is read two ways, side by side in one process: as it is (columnar:
Parquet shards read as Arrow record batches) and as a copy without its Parquet shards (the
previous format: gzip TFRecord parsed with tf.io.parse_example). Rows, each the best of
`--repeat` alternating runs, seconds and the ratio tf.Example / Parquet (> 1: Parquet faster):
  * analyzer pass: transform.analyze_file over every train shard + merge, in-process (what the
    Beam workers compute, without Beam);
  * transform stage: the transform component, Beam with the config's beam_args;
  * evaluate read: the test split as evaluate reads it (columns + missing masks);
  * evaluate stage: the evaluate component (read, score through serving_default, metrics,
    fairness bootstrap, explanations, report) when `--model` is given or trained here.
Outputs of both ways are compared (transform.json; evaluation.json without timings): equal, or
the largest relative float difference (batches of other rows merge means in another order).

Usage:
    python bench/transform.py                                  # ingest..train Adult in a temp root
    python bench/transform.py --examples URI --schema URI [--model URI] [--repeat 3]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _artifacts(args) -> dict[str, str]:
    if args.examples and args.schema:
        return {"examples": args.examples, "schema": args.schema, "model": args.model}
    from kfx.pipeline.config import load_config
    from kfx.pipeline.runner import run_pipeline

    root = tempfile.mkdtemp(prefix="kfx-bench-")
    # A model is needed only to time evaluate: a short tune and train (quality is not measured here).
    cfg = load_config(None, ["tune.max_trials=1", "tune.epochs=1", "train.epochs=1"])
    summary = run_pipeline(cfg, root=root, to_stage="train")
    if summary["status"] != "succeeded":
        raise SystemExit(f"bench: pipeline failed: {summary['error']}")
    outs = {k: v["outputs"] for k, v in summary["components"].items()}
    return {"examples": outs["ingest"]["examples"], "schema": outs["schema"]["schema"], "model": outs["train"]["model"]}


def _old_format(examples: str, dest: str) -> str:
    """A copy of the artifact without Parquet shards or columnar flag (the previous format)."""
    shutil.copytree(examples, dest, ignore=shutil.ignore_patterns("part-*.parquet"))
    meta = json.loads(Path(dest, "columns.json").read_text())
    meta.pop("columnar", None)
    Path(dest, "columns.json").write_text(json.dumps(meta))
    return dest


def _context(component, config_section: str, inputs: dict, out: str):
    from kfx.pipeline.component import Context
    from kfx.pipeline.config import load_config

    cfg = load_config(None)
    shutil.rmtree(out, ignore_errors=True)
    outputs = {name: f"{out}/{name}" for name in component.SPEC.outputs}
    for uri in outputs.values():
        os.makedirs(uri)
    return Context(pipeline=cfg, config=cfg.stage(config_section), inputs=inputs, outputs=outputs,
                   run_id="bench", execution_id=1)


def _analyzer_pass(examples: str, schema: str) -> int:
    from kfx.components.transform import transform as tr
    from kfx.pipeline.artifacts import load_schema, read_columns
    from kfx.pipeline.artifacts.examples import has_columnar
    from kfx.pipeline.config import load_config

    cfg = load_config(None).stage("transform")
    meta = read_columns(examples)
    raw, transforms, task = tr.plan(load_schema(schema), meta["columns"], cfg)
    accs = [a for f in tr._files(examples, "train", has_columnar(meta))
            for a in tr.analyze_file(f, raw, transforms, task, cfg.batch_size)]
    return tr.merge_accumulators(accs, tr.analyzers(raw, transforms, task))["rows"]


def _transform_stage(examples: str, schema: str, out: str) -> dict:
    from kfx.components.transform import transform as tr

    tr.run(_context(tr, "transform", {"examples": examples, "schema": schema}, out))
    return json.loads(Path(out, tr.TRANSFORM_GRAPH, "transform.json").read_text())


def _evaluate_read(examples: str) -> int:
    from kfx.components.evaluation.columnar import read_split
    from kfx.pipeline.artifacts import read_columns

    return read_split(examples, "test", read_columns(examples)).rows


def _evaluate_stage(examples: str, schema: str, model: str, out: str) -> dict:
    from kfx.components.evaluation import evaluate as ev

    ev.run(_context(ev, "evaluate", {"examples": examples, "schema": schema, "model": model,
                                     "baseline_model": None}, out))
    result = json.loads(Path(out, ev.EVALUATION, ev.EVALUATION_FILE).read_text())
    result.pop("seconds")
    result.get("explanations", {}).pop("seconds", None)
    return result


def _differ(a, b) -> float | None:
    """The largest relative difference of two JSON values' floats, or None when they differ otherwise."""
    if isinstance(a, float) and isinstance(b, (int, float)):
        return abs(a - b) / max(abs(a), abs(b), 1e-300)
    if isinstance(a, dict) and isinstance(b, dict) and sorted(a) == sorted(b):
        parts = [_differ(a[k], b[k]) for k in a]
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        parts = [_differ(x, y) for x, y in zip(a, b)]
    else:
        return 0.0 if a == b else None
    return None if None in parts else max(parts, default=0.0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--examples")
    p.add_argument("--schema")
    p.add_argument("--model")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    art = _artifacts(args)
    tmp = tempfile.mkdtemp(prefix="kfx-bench-reads-")
    ways = {"tf.Example": _old_format(art["examples"], f"{tmp}/old_examples"), "Parquet": art["examples"]}
    steps = {
        "analyzer pass (in-process)": lambda way, ex: _analyzer_pass(ex, art["schema"]),
        "transform stage (Beam)": lambda way, ex: _transform_stage(ex, art["schema"], f"{tmp}/t_{way}"),
        "evaluate read (test split)": lambda way, ex: _evaluate_read(ex),
    }
    if art["model"]:
        steps["evaluate stage"] = lambda way, ex: _evaluate_stage(ex, art["schema"], art["model"], f"{tmp}/e_{way}")
    print(f"examples {art['examples']}\n{'step':<30} {'tf.Example s':>13} {'Parquet s':>10} {'ratio':>7}  same output")
    for name, step in steps.items():
        best, outputs = {}, {}
        for _ in range(args.repeat):
            for way, ex in ways.items():
                t = time.perf_counter()
                outputs[way] = step(way, ex)
                best[way] = min(best.get(way, float("inf")), time.perf_counter() - t)
        diff = _differ(outputs["tf.Example"], outputs["Parquet"])
        same = "no" if diff is None else "yes" if diff == 0 else f"floats within {diff:.1e}"
        print(f"{name:<30} {best['tf.Example']:>13.3f} {best['Parquet']:>10.3f} "
              f"{best['tf.Example'] / best['Parquet']:>7.2f}  {same}", flush=True)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
