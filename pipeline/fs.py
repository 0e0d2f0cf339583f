"""File access for the runner and the TensorFlow-free stages: local paths with the standard library, URIs with tf.io.gfile.

Computing a stage's fingerprint and checking its cached outputs must not import TensorFlow (a
cached `kfx component` task then costs a fraction of a second plus Python start-up, instead of
TensorFlow's import), nor must committing the outputs of a stage that needs no TensorFlow
(statistics on columnar examples), so the few file operations those paths need go through here: a local path
(or file:// URI) is served by the standard library, anything else (gs://, s3://, hdfs://) by
tf.io.gfile, imported only then. The local results equal tf.io.gfile's (hidden files included).
"""
from __future__ import annotations

import glob as _glob
import os
import shutil
from typing import IO


def is_local(uri: str) -> bool:
    """Whether `uri` is a local path or a file:// URI."""
    return "://" not in uri or uri.startswith("file://")


def _local(uri: str) -> str:
    return uri.removeprefix("file://")


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


def exists(uri: str) -> bool:
    return os.path.exists(_local(uri)) if is_local(uri) else _gfile().exists(uri)


def isdir(uri: str) -> bool:
    return os.path.isdir(_local(uri)) if is_local(uri) else _gfile().isdir(uri)


def listdir(uri: str) -> list[str]:
    return os.listdir(_local(uri)) if is_local(uri) else _gfile().listdir(uri)


def size(uri: str) -> int:
    """The size of the file `uri` in bytes."""
    return os.path.getsize(_local(uri)) if is_local(uri) else _gfile().stat(uri).length


def glob(pattern: str) -> list[str]:
    """Paths matching `pattern` (unsorted, as tf.io.gfile.glob)."""
    if is_local(pattern):
        prefix = "file://" if pattern.startswith("file://") else ""
        return [prefix + path for path in _glob.glob(_local(pattern), include_hidden=True)]
    return _gfile().glob(pattern)


def open_binary(uri: str) -> IO[bytes]:
    """`uri` opened for reading bytes."""
    return open(_local(uri), "rb") if is_local(uri) else _gfile().GFile(uri, "rb")


def open_write(uri: str, binary: bool = False) -> IO:
    """`uri` opened for writing (text, or bytes when `binary`), replacing any file there."""
    if not is_local(uri):
        return _gfile().GFile(uri, "wb" if binary else "w")
    return open(_local(uri), "wb") if binary else open(_local(uri), "w", encoding="utf-8")


def makedirs(uri: str) -> None:
    """Create the directory `uri` and its parents (no error when it exists)."""
    if is_local(uri):
        os.makedirs(_local(uri), exist_ok=True)
    else:
        _gfile().makedirs(uri)


def rmtree(uri: str) -> None:
    """Remove the directory `uri` and everything in it."""
    if is_local(uri):
        shutil.rmtree(_local(uri))
    else:
        _gfile().rmtree(uri)


def rename(src: str, dst: str, overwrite: bool = False) -> None:
    """Rename `src` to `dst` (both local, or both URIs); `overwrite` replaces an existing `dst` tree."""
    if not is_local(src):
        _gfile().rename(src, dst, overwrite=overwrite)
        return
    if overwrite and os.path.isdir(_local(dst)):
        shutil.rmtree(_local(dst))
    if not overwrite and os.path.exists(_local(dst)):
        raise FileExistsError(f"cannot rename {src} to {dst}: the destination exists")
    os.rename(_local(src), _local(dst))


def listing(uri: str) -> list[tuple[str, int, int]]:
    """(path relative to `uri`, size in bytes, mtime in ns) of every file under the directory `uri`, sorted."""
    if not is_local(uri):
        g = _gfile()
        out = []
        for dirpath, _dirs, files in g.walk(uri):
            for f in files:
                st = g.stat(f"{dirpath.rstrip('/')}/{f}")
                out.append((f"{dirpath.rstrip('/')}/{f}"[len(uri.rstrip('/')) + 1:], st.length, st.mtime_nsec))
        return sorted(out)
    base = _local(uri)
    out = []
    for dirpath, _dirs, files in os.walk(base):
        for f in files:
            st = os.stat(os.path.join(dirpath, f))
            out.append((os.path.relpath(os.path.join(dirpath, f), base), st.st_size, st.st_mtime_ns))
    return sorted(out)
