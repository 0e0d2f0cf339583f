"""File access for the cache check: local paths with the standard library, URIs with tf.io.gfile.

Computing a stage's fingerprint and checking its cached outputs must not import TensorFlow (a
cached `kfx component` task then costs a fraction of a second plus Python start-up, instead of
TensorFlow's import), so the few file operations that path needs go through here: a local path
(or file:// URI) is served by the standard library, anything else (gs://, s3://, hdfs://) by
tf.io.gfile, imported only then. The local results equal tf.io.gfile's (hidden files included).
"""
from __future__ import annotations

import glob as _glob
import os
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


def glob(pattern: str) -> list[str]:
    """Paths matching `pattern` (unsorted, as tf.io.gfile.glob)."""
    if is_local(pattern):
        prefix = "file://" if pattern.startswith("file://") else ""
        return [prefix + path for path in _glob.glob(_local(pattern), include_hidden=True)]
    return _gfile().glob(pattern)


def open_binary(uri: str) -> IO[bytes]:
    """`uri` opened for reading bytes."""
    return open(_local(uri), "rb") if is_local(uri) else _gfile().GFile(uri, "rb")
