"""A CPython audit hook that records kfx code touching artifact paths with open() or os.* (not a URI layer).

The dynamic half of tests/pipeline/test_artifact_io.py: while `artifact_audit(root)` is active,
every audited file operation (open, listdir, scandir, mkdir, remove, rename, rmtree, glob, ...)
on a path under `root` is traced to its innermost caller: Beam, Arrow, TensorFlow, Keras and fsspec
dispatch by URI scheme (a gs:// root takes their remote branch) and are fine; kfx code is a
violation, except kfx.pipeline.fs's local branch (URIs go to tf.io.gfile there).
"""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCANNED = ("components", "pipeline", "models")

_EVENTS = {"open", "os.listdir", "os.scandir", "os.mkdir", "os.remove", "os.rmdir", "os.rename", "os.chmod",
           "os.symlink", "os.link", "os.truncate", "os.utime", "shutil.rmtree", "shutil.copyfile", "shutil.move",
           "glob.glob", "glob.glob/2"}
_URI_AWARE = ("/apache_beam/", "/pyarrow/", "/tensorflow/", "/keras/", "/fsspec/")  # dispatch by scheme
_KFX = tuple(f"{REPO.as_posix()}/{folder}/" for folder in SCANNED)
_active: list[tuple[str, list[str]]] = []  # (artifact root, violations) while `artifact_audit` runs


def _hook(event: str, args: tuple) -> None:
    if not _active or event not in _EVENTS or not args or not isinstance(args[0], (str, bytes, Path)):
        return
    path = str(args[0], "utf-8", "replace") if isinstance(args[0], bytes) else str(args[0])
    for root, violations in _active:
        if not path.startswith(root):
            continue
        frame = sys._getframe(1)
        while frame is not None:
            name = frame.f_code.co_filename
            if any(lib in name for lib in _URI_AWARE):
                break  # a scheme-dispatching library opened it: a URI would take its own branch
            if name.startswith(_KFX):
                if not name.endswith("pipeline/fs.py"):  # fs.py's local branch (URIs go to tf.io.gfile)
                    violations.append(f"{event} {path} from {name}:{frame.f_lineno} {frame.f_code.co_name}()")
                break
            frame = frame.f_back


_installed = False


@contextlib.contextmanager
def artifact_audit(pipeline_root: str):
    """Collect (yielded list) every file operation under `pipeline_root` made directly by kfx code.

    CPython audits open(), listdir, mkdir, rename, remove, rmtree, glob, ... (not os.stat: the
    static test covers os.path.exists and friends). A hook cannot be removed; it is idle outside this block.
    """
    global _installed
    if not _installed:
        sys.addaudithook(_hook)
        _installed = True
    violations: list[str] = []
    _active.append((pipeline_root.rstrip("/") + "/", violations))
    try:
        yield violations
    finally:
        _active.pop()
