"""Who runs the pipeline locally: executes stages with caching, atomic commit and lineage.

`run_stage` is the one way a stage is executed (local runner, `kfx component`, Airflow task);
`run_pipeline` walks the stage graph, running independent stages in parallel threads.
"""
from __future__ import annotations

import concurrent.futures as cf
import hashlib
import importlib
import inspect
import json
import logging
import os
import secrets
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kfx.pipeline import __version__, fs
from kfx.pipeline.component import ComponentError, Context
from kfx.pipeline.config import PipelineConfig
from kfx.pipeline.graph import BUILTIN_COMPONENTS, History, Stage, Upstream, downstream_closure, get_stage, upstream_closure
from kfx.pipeline.metadata import MetadataStore
from kfx.pipeline.resolvers import RESOLVERS

BUILTIN_MODULES = set(BUILTIN_COMPONENTS.values())

log = logging.getLogger("kfx")


class RunError(RuntimeError):
    """A stage could not run or failed; the message is the one-paragraph user message."""


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(2)


def open_store(cfg: PipelineConfig, root: str | None = None) -> MetadataStore:
    root = root or cfg.root
    if cfg.metadata_url:
        return MetadataStore(cfg.metadata_url)
    if not fs.is_local(root):
        raise RunError(f"root {root!r} is not local: set metadata_url to a shared database (e.g. Postgres)")
    Path(root).mkdir(parents=True, exist_ok=True)
    return MetadataStore(f"sqlite:///{Path(root).resolve() / 'metadata.sqlite'}")


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def code_version(stage: Stage, cfg: PipelineConfig | None = None) -> str:
    """Fingerprint of the code a stage runs: kfx's version, the component's source and its
    declared helper modules, and the user's modules it uses (with their same-folder imports)."""
    from kfx.pipeline import user_code

    h = hashlib.sha256(__version__.encode())
    spec = stage.spec
    module = importlib.import_module(stage.module)
    if stage.module in BUILTIN_MODULES:
        h.update(inspect.getsource(module).encode())
    else:  # the user's component: its file and the modules it imports from its folder
        h.update(user_code.fingerprint([module]).encode())
    for name in spec.code:
        h.update(inspect.getsource(importlib.import_module(name)).encode())
    if spec.user_code is not None and cfg is not None:
        h.update(user_code.fingerprint(spec.user_code(cfg.stage(stage.name), cfg)).encode())
    return h.hexdigest()


def _uri_fingerprint(store: MetadataStore, uri: str) -> str:
    art = store.artifact_by_uri(uri)
    if art is not None:
        return art.fingerprint
    # A URI given by hand (--input) that kfx did not produce: fingerprint its listing.
    entries = fs.listing(uri)
    return _hash([uri, entries])


@dataclass
class StageResult:
    status: str  # succeeded | cached | failed | skipped
    execution_id: int | None = None
    seconds: float = 0.0
    outputs: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def as_dict(self) -> dict:
        d = {"status": self.status, "execution_id": self.execution_id,
             "seconds": round(self.seconds, 3), "outputs": self.outputs, "metrics": self.metrics}
        if self.error:
            d["error"] = self.error
        return d


def latest_outputs(store: MetadataStore, pipeline: str, stage: str, run_id: str | None = None) -> dict[str, str] | None:
    """Outputs of the stage's committed execution in run `run_id`, else its latest one."""
    ex = (store.latest_execution(pipeline, stage, run_id=run_id) if run_id else None) \
        or store.latest_execution(pipeline, stage)
    if ex is None:
        return None
    return {k: a.uri for k, a in store.outputs_of(ex["id"]).items()}


def resolve_inputs(stage: Stage, cfg: PipelineConfig, store: MetadataStore,
                   produced: dict[str, dict[str, str]], given: dict[str, str],
                   run_id: str | None = None) -> dict[str, str | None]:
    """Input URIs: given by hand, else produced in this run (this process or an earlier task
    of the same run id, as under Airflow), else the latest committed ones."""
    spec = stage.spec
    out: dict[str, str | None] = {}
    for name in spec.inputs:
        if name in given:
            out[name] = given[name]
            continue
        binding = stage.inputs.get(name)
        if isinstance(binding, Upstream):
            outs = produced.get(binding.stage)
            if outs is None:
                outs = latest_outputs(store, cfg.name, binding.stage, run_id)
            if outs is None or binding.output not in outs:
                raise RunError(
                    f"Stage {stage.name!r} needs input {name!r} from stage {binding.stage!r}, but "
                    f"no successful {binding.stage!r} execution exists for pipeline {cfg.name!r}: "
                    f"run that stage first or pass --input {name}=URI.")
            out[name] = outs[binding.output]
    for name, binding in stage.inputs.items():
        if isinstance(binding, History) and name not in given:
            out[name] = RESOLVERS[binding.resolver](store, cfg.name, out, cfg.stages_of)
    for name in spec.inputs:
        if out.get(name) is None and name not in spec.optional_inputs:
            raise RunError(f"Stage {stage.name!r}: required input {name!r} is missing.")
    return out


class Reporter:
    """Progress on the terminal: stage start/finish with elapsed time and rows, a heartbeat."""

    def __init__(self, stream=None, heartbeat: float = 30.0):
        self.stream = stream or sys.stderr
        self.running: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._heartbeat = heartbeat

    def __enter__(self):
        threading.Thread(target=self._beat, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self._stop.set()

    def _beat(self):
        while not self._stop.wait(self._heartbeat):
            with self._lock:
                now = time.time()
                if self.running:
                    self.say("… running: " + ", ".join(
                        f"{k} {now - t:.0f}s" for k, t in self.running.items()))

    def say(self, text: str) -> None:
        print(f"[kfx {time.strftime('%H:%M:%S')}] {text}", file=self.stream, flush=True)

    def start(self, name: str) -> None:
        with self._lock:
            self.running[name] = time.time()
        self.say(f"▶ {name}")

    def finish(self, name: str, res: StageResult) -> None:
        with self._lock:
            self.running.pop(name, None)
        rows = res.metrics.get("rows")
        extra = f"  rows={rows:,}" if isinstance(rows, int) else ""
        mark = {"succeeded": "✔", "cached": "↺", "failed": "✘"}.get(res.status, "·")
        self.say(f"{mark} {name} {res.status} in {res.seconds:.1f}s{extra}"
                 + (f"\n    {res.error}" if res.error else ""))


def run_stage(stage: Stage, cfg: PipelineConfig, store: MetadataStore, run_id: str, root: str,
              inputs: dict[str, str | None], use_cache: bool = True, execute: bool = True) -> StageResult:
    """Execute one stage: reuse a cached execution, or run it and commit its outputs atomically.

    The cache is checked before TensorFlow is imported (the fingerprint hashes source files and
    metadata, pipeline/fs.py checks local outputs), so a cached stage on a local root costs no
    TensorFlow import: an Airflow task of a cached stage finishes in about a second. With
    `execute` False a cache miss returns status "uncached" and records nothing.
    """
    spec = stage.spec
    stage_cfg = cfg.stage(stage.name)
    cfg_json = stage_cfg.model_dump(mode="json", by_alias=True, exclude={"cache"})
    version = code_version(stage, cfg)
    fp_parts = {"component": stage.name, "code": version, "config": cfg_json,
                "inputs": {k: (_uri_fingerprint(store, v) if v else None) for k, v in inputs.items()}}
    for section in spec.config_sections:
        other = cfg.stage(section)  # its OWN_KEYS concern only its own stage (train's warm start, not tune)
        fp_parts[f"config.{section}"] = other.model_dump(mode="json", by_alias=True,
                                                         exclude={"cache", *getattr(other, "OWN_KEYS", ())})
    if spec.source_fingerprint is not None:
        fp_parts["source"] = spec.source_fingerprint(stage_cfg)
    fingerprint = _hash(fp_parts)
    started = time.time()

    if use_cache and stage_cfg.cache:
        hit = store.find_cached(cfg.name, stage.name, fingerprint)
        if hit is not None:
            outs = store.outputs_of(hit["id"])
            if outs and all(fs.exists(a.uri) for a in outs.values()):
                ex_id = store.start_execution(cfg.name, run_id, stage.name, fingerprint, cfg_json, version)
                store.record_inputs(ex_id, inputs)
                metrics = json.loads(hit["metrics"] or "{}")
                store.commit_execution(ex_id, {k: (a.uri, a.fingerprint) for k, a in outs.items()},
                                       metrics, status="cached", cached_from=hit["id"])
                return StageResult("cached", ex_id, time.time() - started,
                                   {k: a.uri for k, a in outs.items()}, metrics)
    if not execute:
        return StageResult("uncached")

    ex_id = store.start_execution(cfg.name, run_id, stage.name, fingerprint, cfg_json, version)
    store.record_inputs(ex_id, inputs)
    stage_dir = f"{root.rstrip('/')}/{cfg.name}/{stage.name}"
    final_dir = f"{stage_dir}/{ex_id}"
    # Local roots: write beside, rename on success. Object stores have no atomic rename; there
    # the metadata commit below is what makes outputs visible.
    work_dir = f"{stage_dir}/.tmp-{ex_id}" if fs.is_local(root) else final_dir
    if fs.exists(work_dir):
        fs.rmtree(work_dir)
    outputs = {name: f"{work_dir}/{name}" for name in spec.outputs}
    for uri in outputs.values():
        fs.makedirs(uri)
    ctx = Context(pipeline=cfg, config=stage_cfg, inputs=dict(inputs), outputs=outputs,
                  run_id=run_id, execution_id=ex_id, root=root)
    try:
        metrics = spec.run(ctx) or {}
    except Exception as err:  # noqa: BLE001 - every failure is recorded, then reported
        if isinstance(err, ComponentError):
            message = str(err)
        else:
            message = f"{type(err).__name__}: {err}"
        failed_dir = f"{stage_dir}/.failed-{ex_id}"
        if work_dir != final_dir:
            fs.rename(work_dir, failed_dir, overwrite=True)
        else:
            failed_dir = work_dir
        with fs.open_write(f"{failed_dir}/traceback.txt") as f:
            f.write(traceback.format_exc())
        store.fail_execution(ex_id, message)
        return StageResult("failed", ex_id, time.time() - started, {}, {},
                           f"{message} (partial outputs and traceback kept, uncommitted, in {failed_dir})")
    if work_dir != final_dir:
        fs.rename(work_dir, final_dir, overwrite=False)
    final = {name: f"{final_dir}/{name}" for name in spec.outputs}
    store.commit_execution(ex_id, {k: (v, _hash([fingerprint, k])) for k, v in final.items()}, metrics)
    return StageResult("succeeded", ex_id, time.time() - started, final, metrics)


def select_stages(stages: tuple[Stage, ...], from_stage: str | None, to_stage: str | None) -> list[str]:
    names = {s.name for s in stages}
    if from_stage:
        get_stage(from_stage, stages)
        names &= downstream_closure({from_stage}, stages)
    if to_stage:
        get_stage(to_stage, stages)
        names &= upstream_closure({to_stage}, stages)
    return [s.name for s in stages if s.name in names]


def run_pipeline(cfg: PipelineConfig, *, root: str | None = None, run_id: str | None = None,
                 from_stage: str | None = None, to_stage: str | None = None, use_cache: bool = True,
                 only: list[str] | None = None, given_inputs: dict[str, str] | None = None,
                 stages: tuple[Stage, ...] | None = None, reporter: Reporter | None = None,
                 cached_only: bool = False) -> dict | None:
    """Run the selected stages of the graph; returns the run summary (never raises for a stage).

    Args:
        cfg: the loaded pipeline config.
        root: artifact root (overrides cfg.root).
        run_id: the run's id (new when None); an orchestrator passes its own.
        from_stage, to_stage: run only this slice of the graph; inputs from outside the slice
            come from the latest committed executions.
        use_cache: False disables cache hits for every stage (`--no-cache`).
        only: run exactly these stages (`kfx component`).
        given_inputs: input URIs given by hand (`--input NAME=URI`), for `only` runs.
        stages: the stage graph (default: the config's; tests pass small graphs).
        reporter: progress printer.
        cached_only: only reuse cached executions: None, with no execution recorded, unless
            every selected stage is a cache hit (`kfx component` tries this first).
    """
    root = root or cfg.root
    if fs.is_local(root):
        root = os.path.abspath(root.removeprefix("file://"))
    stages = stages if stages is not None else cfg.stages
    run_id = run_id or new_run_id()
    store = open_store(cfg, root)
    selected = only if only is not None else select_stages(stages, from_stage, to_stage)
    reporter = reporter or Reporter()
    summary: dict[str, Any] = {"pipeline": cfg.name, "run_id": run_id, "status": "running",
                               "root": root, "error": None, "components": {}}
    store.start_run(cfg.name, run_id)
    results: dict[str, StageResult] = {}
    produced: dict[str, dict[str, str]] = {}
    pending = [get_stage(n, stages) for n in selected]
    failed: str | None = None

    def submit(pool, stage):
        reporter.start(stage.name)
        def work():
            inputs = resolve_inputs(stage, cfg, store, produced, given_inputs or {}, run_id)
            return run_stage(stage, cfg, store, run_id, root, inputs, use_cache, execute=not cached_only)
        return pool.submit(work)

    with reporter, cf.ThreadPoolExecutor(max_workers=cfg.max_parallel) as pool:
        running: dict[cf.Future, Stage] = {}
        while pending or running:
            if failed is None:
                for stage in list(pending):
                    deps = stage.upstream & set(selected)
                    if all(d in results and results[d].status in ("succeeded", "cached") for d in deps):
                        pending.remove(stage)
                        running[submit(pool, stage)] = stage
            if not running:
                break
            done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for fut in done:
                stage = running.pop(fut)
                try:
                    res = fut.result()
                except RunError as err:
                    res = StageResult("failed", error=str(err))
                except Exception as err:  # noqa: BLE001 - runner faults are reported like stage faults
                    res = StageResult("failed", error=f"{type(err).__name__}: {err}")
                results[stage.name] = res
                reporter.finish(stage.name, res)
                if res.status in ("succeeded", "cached"):
                    produced[stage.name] = res.outputs
                elif failed is None:
                    failed = stage.name
    if cached_only and any(res.status != "cached" for res in results.values()):
        return None
    for stage in pending:
        results[stage.name] = StageResult("skipped")
    summary["components"] = {n: results[n].as_dict() for n in selected if n in results}
    # The approval outcome, lifted from the gate's and the pusher's metrics when they ran (the
    # last such stage in graph order when a pipeline has several).
    for key, component in (("blessed", "evaluate"), ("pushed", "push")):
        for name in [s.name for s in stages if s.component == component and s.name in summary["components"]]:
            summary[key] = summary["components"][name]["metrics"].get(key)
    if failed:
        summary["status"] = "failed"
        summary["error"] = (f"Stage {failed!r} failed: {results[failed].error} "
                            f"Stages after it were skipped; nothing it wrote was committed.")
    else:
        summary["status"] = "succeeded"
    store.finish_run(cfg.name, run_id, summary["status"], summary)
    return summary


def format_summary(summary: dict) -> str:
    """The run summary as a small table for the terminal."""
    lines = [f"run {summary['run_id']} of {summary['pipeline']}: {summary['status']}  (root {summary['root']})"]
    for name, c in summary["components"].items():
        m = c.get("metrics") or {}
        shown = ", ".join(f"{k}={v}" for k, v in m.items() if not isinstance(v, (dict, list)))[:100]
        lines.append(f"  {name:<15} {c['status']:<10} {c['seconds']:>8.1f}s  {shown}")
    if "blessed" in summary or "pushed" in summary:
        pushed = summary.get("pushed")
        where = f"{pushed['model_name']} version {pushed['version']} at {pushed['path']}" if pushed else "nothing"
        lines.append(f"blessed: {summary.get('blessed')}; pushed: {where}")
    if summary.get("error"):
        lines.append(summary["error"])
    return "\n".join(lines)
