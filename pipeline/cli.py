"""The `kfx` command line: run the pipeline, one stage, inspect runs and lineage, serve.

Exit status 0 on success; 1 when a stage fails; 2 for a bad command line or config. The summary
JSON (`--summary-json`) is written in every case.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
from pathlib import Path

from kfx.pipeline import logs
from kfx.pipeline.config import ConfigError, load_config


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", help="pipeline YAML (default: pipeline/configs/adult.yaml)")
    p.add_argument("--root", help="artifact root: a directory or any tf.io.gfile URI (default: config root)")
    p.add_argument("--run-id", help="run id (default: a new timestamped id)")
    p.add_argument("--no-cache", action="store_true", help="run every stage even if a cached result exists")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.epochs=2 (repeatable)")
    p.add_argument("--summary-json", help="write the run summary JSON here")


def _write_summary(path: str | None, summary: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(summary, indent=2, default=str) + "\n")


def _failed_summary(args, error: str) -> dict:
    return {"pipeline": None, "run_id": args.run_id, "status": "failed", "root": args.root,
            "error": error, "components": {}}


def _run(args) -> int:
    from kfx.pipeline import runner

    try:
        # `kfx component` checks the cache first, with the user's modules located, not imported:
        # a cached task (an Airflow task of a cached stage) never imports TensorFlow.
        cfg = load_config(args.config, args.overrides, import_user_code=args.command != "component")
        given = {}
        for pair in getattr(args, "inputs", None) or []:
            name, sep, uri = pair.partition("=")
            if not sep:
                raise ConfigError(f"--input expects NAME=URI, got {pair!r}")
            given[name] = uri
        # One id for both passes of `kfx component`: the cache-first pass starts the run it names.
        args.run_id = args.run_id or runner.new_run_id()
        kwargs = dict(root=args.root, run_id=args.run_id, use_cache=not args.no_cache)
        if args.command == "component":
            from kfx.pipeline.graph import get_stage

            get_stage(args.stage, cfg.stages)
            summary = None if args.no_cache else runner.run_pipeline(
                cfg, only=[args.stage], given_inputs=given, cached_only=True,
                reporter=runner.Reporter(stream=io.StringIO()), **kwargs)
            if summary is None:  # the stage runs: the full config checks, importing the user's modules
                cfg = load_config(args.config, args.overrides)
                summary = runner.run_pipeline(cfg, only=[args.stage], given_inputs=given, **kwargs)
        else:
            if args.from_stage or args.to_stage:
                from kfx.pipeline.graph import get_stage

                for name in (args.from_stage, args.to_stage):
                    if name:
                        get_stage(name, cfg.stages)
            summary = runner.run_pipeline(cfg, from_stage=args.from_stage, to_stage=args.to_stage, **kwargs)
    except (ConfigError, KeyError, runner.RunError) as err:
        message = err.args[0] if isinstance(err, KeyError) else str(err)
        print(f"kfx: {message}", file=sys.stderr)
        _write_summary(args.summary_json, _failed_summary(args, message))
        return 2
    _write_summary(args.summary_json, summary)
    print(runner.format_summary(summary), file=sys.stderr)
    return 0 if summary["status"] == "succeeded" else 1


def _runs(args) -> int:
    from kfx.pipeline import runner

    cfg = load_config(args.config)
    store = runner.open_store(cfg, args.root)
    if args.runs_command == "list":
        for r in store.list_runs(cfg.name if not args.all else None):
            print(f"{r['run_id']:<28} {r['pipeline']:<12} {r['status']:<10}")
        return 0
    run = store.get_run(args.run_id)
    if run is None:
        print(f"kfx: no run {args.run_id!r} in {store.engine.url}", file=sys.stderr)
        return 1
    print(json.dumps(json.loads(run["summary"]) if run["summary"] else run, indent=2, default=str))
    return 0


def _lineage(args) -> int:
    from kfx.pipeline import runner

    cfg = load_config(args.config)
    store = runner.open_store(cfg, args.root)
    uri = args.uri if "://" in args.uri else os.path.abspath(args.uri)
    chain = store.lineage(uri)
    if not chain:
        print(f"kfx: {args.uri!r} is not an artifact known to {store.engine.url}", file=sys.stderr)
        return 1
    print(json.dumps(chain, indent=2))
    return 0


def _init(args) -> int:
    from kfx.pipeline.init import init_project

    try:
        written = init_project(args.dir)
    except FileExistsError as err:
        print(str(err), file=sys.stderr)
        return 2
    for path in written:
        print(path)
    print(f"next: cd {args.dir} && kfx run -c pipeline.yaml", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kfx", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the pipeline (or a slice of it)")
    _common(p)
    p.add_argument("--from", dest="from_stage", metavar="STAGE", help="start at this stage")
    p.add_argument("--to", dest="to_stage", metavar="STAGE", help="stop after this stage")
    p.set_defaults(func=_run)

    p = sub.add_parser("component", help="run one stage alone")
    p.add_argument("stage")
    _common(p)
    p.add_argument("--input", dest="inputs", action="append", default=[], metavar="NAME=URI",
                   help="input artifact URI (default: latest successful execution's output)")
    p.set_defaults(func=_run)

    p = sub.add_parser("init", help="write a small project of your own (pipeline YAML, model, preprocessing)")
    p.add_argument("dir", help="folder to create (must not hold the project's files already)")
    p.set_defaults(func=_init)

    p = sub.add_parser("runs", help="list runs or show one")
    p.add_argument("-c", "--config")
    p.add_argument("--root")
    rs = p.add_subparsers(dest="runs_command", required=True)
    lp = rs.add_parser("list")
    lp.add_argument("--all", action="store_true", help="every pipeline in the store")
    sp = rs.add_parser("show")
    sp.add_argument("run_id")
    p.set_defaults(func=_runs)

    p = sub.add_parser("lineage", help="what produced an artifact, from what")
    p.add_argument("uri")
    p.add_argument("-c", "--config")
    p.add_argument("--root")
    p.set_defaults(func=_lineage)

    try:
        from kfx.serving.cli import add_parsers
    except ImportError:  # serving is optional for the pipeline core
        pass
    else:
        add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup(args.verbose)  # before anything imports TensorFlow
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"kfx: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
