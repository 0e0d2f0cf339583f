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
_active: list["Audit"] = []  # the audits in progress


class Audit:
    """What one `artifact_audit` block saw: `violations` (kfx code touching an artifact path
    itself, one line each) and `seen` (every audited operation under the root, counted by who
    made it: a library folder such as '/apache_beam/', 'kfx.pipeline.fs', 'kfx' or 'other')."""

    def __init__(self, root: str):
        self.root = root.rstrip("/") + "/"
        self.violations: list[str] = []
        self.seen: dict[str, int] = {}


def _hook(event: str, args: tuple) -> None:
    if not _active or event not in _EVENTS or not args or not isinstance(args[0], (str, bytes, Path)):
        return
    path = str(args[0], "utf-8", "replace") if isinstance(args[0], bytes) else str(args[0])
    for audit in _active:
        if not path.startswith(audit.root):
            continue
        who, frame = "other", sys._getframe(1)
        while frame is not None:
            name = frame.f_code.co_filename
            lib = next((lib for lib in _URI_AWARE if lib in name), None)
            if lib:  # a scheme-dispatching library did it: a URI would take its own branch
                who = lib
                break
            if name.startswith(_KFX):
                if name.endswith("pipeline/fs.py"):  # fs.py's local branch (URIs go to tf.io.gfile)
                    who = "kfx.pipeline.fs"
                else:
                    who = "kfx"
                    audit.violations.append(f"{event} {path} from {name}:{frame.f_lineno} {frame.f_code.co_name}()")
                break
            frame = frame.f_back
        audit.seen[who] = audit.seen.get(who, 0) + 1


_installed = False


@contextlib.contextmanager
def artifact_audit(pipeline_root: str):
    """An `Audit` of every file operation under `pipeline_root` while the block runs.

    CPython audits open(), listdir, mkdir, rename, remove, rmtree, glob, ... (not os.stat: the
    static test covers os.path.exists and friends). A hook cannot be removed; it is idle outside this block.
    """
    global _installed
    if not _installed:
        sys.addaudithook(_hook)
        _installed = True
    audit = Audit(pipeline_root)
    _active.append(audit)
    try:
        yield audit
    finally:
        _active.remove(audit)
