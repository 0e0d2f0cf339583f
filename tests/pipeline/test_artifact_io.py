"""No code path reads or writes an artifact URI with open() or os.*: artifact roots may be gs://, s3://, hdfs://.

Two proofs, each covering what the other cannot:
- static: every call in components/, pipeline/ and models/ that touches files outside tf.io.gfile,
  Beam's or Arrow's filesystems (open(), os.* and os.path.* except pure string functions,
  shutil.*, glob.*, pathlib.Path, gzip/bz2/io.open, numpy/pandas file functions) is listed here with
  the reason it never receives an artifact URI. A new call fails the test until it goes through
  tf.io.gfile / kfx.pipeline.fs / pipeline/artifacts/examples.py or is added here with its reason;
  an entry whose call is gone fails it too, so the list stays exact.
- dynamic: tests/pipeline/test_portable_runner.py runs ingest, statistics, schema and transform in
  its own process under a CPython audit hook (tests/pipeline/artifact_audit.py), which records every
  open / listdir / mkdir / rename / remove / rmtree / glob on a path under the artifact root whose
  innermost caller is kfx code (not Beam, Arrow or TensorFlow, which dispatch by URI scheme); none
  may occur. The hook's own failure case is tested below.
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCANNED = ("components", "pipeline", "models")

# os.path functions that only manipulate strings (a URI passes through them intact).
PURE_PATH = {"join", "dirname", "basename", "split", "splitext", "relpath", "isabs"}
# os functions that do not take a file path.
NOT_FILES = {"environ", "getenv", "getpid", "cpu_count", "pipe", "dup", "dup2", "close", "kill", "killpg",
             "getpgid", "setsid", "sched_getaffinity", "urandom", "write", "read", "fdopen", "waitpid", "sep",
             "pathsep", "linesep", "devnull"}
FILE_MODULES = {"shutil", "glob", "_glob", "io", "gzip", "bz2", "lzma", "tarfile", "zipfile"}
NOT_FILE_FUNCTIONS = {"shutil.which", "io.BytesIO", "io.StringIO", "gzip.compress", "gzip.decompress",
                      "bz2.compress", "bz2.decompress"}
DATA_FILE_FUNCTIONS = {"np": {"load", "save", "savez", "savez_compressed", "loadtxt", "savetxt", "fromfile"},
                       "numpy": {"load", "save", "savez", "savez_compressed", "loadtxt", "savetxt", "fromfile"},
                       "pd": {"read_csv", "read_parquet", "read_json", "read_pickle"},
                       "pandas": {"read_csv", "read_parquet", "read_json", "read_pickle"}}

LOCAL_SCRATCH = "a local temporary directory made by tempfile, never an artifact URI"
GUARDED = "the local branch of an `is_local` check; URIs go through tf.io.gfile"
LOCKED = "called only when `_lock` held a local lock"
LOCK_FILE = "local serving directory only: `_lock` yields False for a URI"
SERVER_LOG = "the server log in local scratch; copied into the artifact by tf.io.gfile.copy"
# (file, enclosing function, call) -> why that call never receives an artifact URI.
ALLOWED = {
    ("components/data/datasets.py", "read_pixels", "gzip.open"): "wraps a tf.io.gfile.GFile object, not a path",
    ("components/data/datasets.py", "read_pixels", "np.loadtxt"): "reads the gzip stream of a tf.io.gfile.GFile",
    ("components/data/datasets.py", "_resolve_graph_builtin", "Path"): "built-in data cache under tempfile.gettempdir()",
    ("components/data/datasets.py", "_resolve_graph_builtin", "os.replace"): "built-in data cache under tempfile.gettempdir()",
    ("components/data/datasets.py", "_resolve_graph_builtin", "shutil.rmtree"):
        "built-in data cache under tempfile.gettempdir()",
    ("components/data/datasets.py", "package_folder", "Path"): "an installed package's folder (find_spec), not an artifact",
    ("components/deploy/infra_validate.py", "_stage_model", "os.makedirs"): LOCAL_SCRATCH,
    ("components/deploy/infra_validate.py", "_stage_model", "os.symlink"):
        "links a local model (checked: no scheme or file://) into local scratch; a URI model is copied by tf.io.gfile",
    ("components/deploy/infra_validate.py", "_stage_model", "os.path.abspath"): "a local model path (checked: no scheme)",
    ("components/deploy/infra_validate.py", "_tail", "open"): "the server log in local scratch",
    ("components/deploy/infra_validate.py", "validate", "open"): "the server log in local scratch",
    ("components/deploy/infra_validate.py", "validate", "shutil.rmtree"): LOCAL_SCRATCH,
    ("components/deploy/infra_validate.py", "run", "os.path.exists"):
        SERVER_LOG,
    ("components/deploy/infra_validate.py", "run", "open"):
        SERVER_LOG,
    ("components/deploy/push.py", "_local", "os.path.abspath"): GUARDED,
    ("components/deploy/push.py", "_rename", "os.rename"): GUARDED + " (rename, not atomic there)",
    ("components/deploy/push.py", "_replace", "os.replace"): GUARDED + " (rename, not atomic there)",
    ("components/deploy/push.py", "_lock", "os.makedirs"): LOCK_FILE,
    ("components/deploy/push.py", "_lock", "open"): LOCK_FILE,
    ("components/deploy/push.py", "_remove_leftovers", "os.listdir"): LOCKED,
    ("components/deploy/push.py", "_remove_leftovers", "os.path.isdir"): LOCKED,
    ("components/deploy/push.py", "_remove_leftovers", "shutil.rmtree"): LOCKED,
    ("components/deploy/push.py", "_remove_leftovers", "os.remove"): LOCKED,
    ("components/evaluation/explain.py", "explain", "np.savez_compressed"):
        "into an io.BytesIO, written to the artifact by tf.io.gfile.GFile",
    ("components/training/tune.py", "run", "shutil.rmtree"): "the tuner's local working directory (tempfile)",
    ("pipeline/cli.py", "_write_summary", "Path"): "--summary-json: a local file the user names, not an artifact",
    ("pipeline/cli.py", "_lineage", "os.path.abspath"): "a path given without a scheme (checked on the same line)",
    ("pipeline/config.py", "<module>", "Path"): "the installed package's folder",
    ("pipeline/config.py", "load_config", "Path"): "the pipeline YAML, a local file the user names",
    ("pipeline/config.py", "resolve_path", "Path"): "a source pattern without a scheme (checked on the same line)",
    ("pipeline/config_base.py", "relative_to_config", "glob.glob"):
        "a source pattern without a scheme, relative to the config's folder",
    ("pipeline/fs.py", "exists", "os.path.exists"): GUARDED,
    ("pipeline/fs.py", "isdir", "os.path.isdir"): GUARDED,
    ("pipeline/fs.py", "listdir", "os.listdir"): GUARDED,
    ("pipeline/fs.py", "size", "os.path.getsize"): GUARDED,
    ("pipeline/fs.py", "glob", "_glob.glob"): GUARDED,
    ("pipeline/fs.py", "open_binary", "open"): GUARDED,
    ("pipeline/fs.py", "open_write", "open"): GUARDED,
    ("pipeline/fs.py", "makedirs", "os.makedirs"): GUARDED,
    ("pipeline/fs.py", "rmtree", "shutil.rmtree"): GUARDED,
    ("pipeline/fs.py", "rename", "os.path.isdir"): GUARDED,
    ("pipeline/fs.py", "rename", "shutil.rmtree"): GUARDED,
    ("pipeline/fs.py", "rename", "os.path.exists"): GUARDED,
    ("pipeline/fs.py", "rename", "os.rename"): GUARDED,
    ("pipeline/fs.py", "listing", "os.walk"): GUARDED,
    ("pipeline/fs.py", "listing", "os.stat"): GUARDED,
    ("pipeline/graph.py", "load_stages", "open"): "the pipeline YAML, a local file the DAG names",
    ("pipeline/init.py", "init_project", "Path"): "`kfx init`: the user's new project folder",
    ("pipeline/runner.py", "open_store", "Path"): "SQLite metadata beside a local root; a URI root requires metadata_url",
    ("pipeline/runner.py", "run_pipeline", "os.path.abspath"): GUARDED,
    ("pipeline/user_code.py", "add_import_path", "os.path.abspath"): "the user's code folder (config folder)",
    ("pipeline/user_code.py", "load_module", "Path"): "the user's module file, next to the config",
    ("pipeline/user_code.py", "locate", "Path"): "the user's module file, next to the config",
    ("pipeline/user_code.py", "_module_file", "Path"): "an importable module's source file (find_spec)",
    ("pipeline/user_code.py", "source_files", "Path"): "an imported module's source file",
    ("pipeline/user_code.py", "pickle_by_value", "Path"): "an imported module's source file",
}


def _dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return ".".join([node.id, *reversed(parts)])
    return None


def _file_call(name: str) -> bool:
    """Whether a call of dotted `name` may touch a file by path."""
    head, _, rest = name.partition(".")
    if name in ("open", "Path", "pathlib.Path"):
        return True
    if head == "os":
        if rest.startswith("path."):
            return rest[5:] not in PURE_PATH
        return rest.split(".")[0] not in NOT_FILES
    if head in FILE_MODULES:
        return bool(rest) and name not in NOT_FILE_FUNCTIONS
    return rest in DATA_FILE_FUNCTIONS.get(head, ())


def file_calls() -> dict[tuple[str, str, str], list[int]]:
    """(file, enclosing function, call) -> line numbers, over SCANNED."""
    found: dict[tuple[str, str, str], list[int]] = {}
    for folder in SCANNED:
        for path in sorted((REPO / folder).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()

            def visit(node: ast.AST, where: str) -> None:
                for child in ast.iter_child_nodes(node):
                    inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else where
                    if isinstance(child, ast.Call):
                        name = _dotted(child.func)
                        if name and _file_call(name):
                            found.setdefault((rel, where, name), []).append(child.lineno)
                    visit(child, inner)

            visit(ast.parse(path.read_text(), rel), "<module>")
    return found


def test_every_file_call_outside_the_uri_layers_is_allowed_with_a_reason():
    found = file_calls()
    new = {f"{f}:{lines[0]} {func}(): {call}" for (f, func, call), lines in found.items()
           if (f, func, call) not in ALLOWED}
    assert not new, ("calls that may read or write an artifact URI without tf.io.gfile, kfx.pipeline.fs or "
                     "Arrow's filesystems (use those, or add the call to ALLOWED with the reason it never sees "
                     f"an artifact URI): {sorted(new)}")
    stale = sorted(k for k in ALLOWED if k not in found)
    assert not stale, f"ALLOWED entries whose call is gone (remove them): {stale}"
    assert all(reason.strip() for reason in ALLOWED.values())


def test_the_scan_sees_the_calls_it_must_flag(tmp_path):
    """The scanner's own failure case: each kind of call it must catch is caught, pure string helpers are not."""
    flagged = ["open", "Path", "os.makedirs", "os.path.exists", "os.path.abspath", "os.listdir", "shutil.copy",
               "glob.glob", "gzip.open", "np.load", "pd.read_csv"]
    passed = ["os.path.join", "os.path.dirname", "os.environ.get", "shutil.which", "io.BytesIO", "tf.io.gfile.GFile",
              "np.asarray", "pd.DataFrame"]
    assert [n for n in flagged if not _file_call(n)] == []
    assert [n for n in passed if _file_call(n)] == []


def test_the_audit_hook_catches_kfx_opening_an_artifact_path(tmp_path):
    """artifact_audit's failure case: kfx code calling open() under the audited root is recorded;
    the same file read through kfx.pipeline.fs (its local branch; URIs go to tf.io.gfile) is not."""
    from kfx.components.deploy import push
    from kfx.pipeline import fs
    from tests.pipeline.artifact_audit import artifact_audit

    root = tmp_path / "runs" / "p"
    with artifact_audit(str(root)) as audit:
        with push._lock(str(root / "serving"), "x.lock"):  # open() in kfx code: recorded
            pass
        with fs.open_binary(str(root / "serving" / "x.lock")) as f:  # fs.py's local branch: not recorded
            f.read()
        with open(tmp_path / "outside.txt", "w"):  # not under the root: not recorded
            pass
    assert audit.violations, "open() by kfx code under the audited root was not recorded"
    assert all("push.py" in v and "_lock()" in v for v in audit.violations), audit.violations
    assert any(v.startswith(f"open {root}/serving/x.lock ") for v in audit.violations), audit.violations
    assert audit.seen == {"kfx": len(audit.violations), "kfx.pipeline.fs": 1}, audit.seen
