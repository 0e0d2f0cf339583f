"""The user's code: modules named in a pipeline YAML, how they are loaded and fingerprinted.

A reference is a dotted module path (`my_models.wide`), resolved with the config file's folder
first on the import path, or a `.py` file path, absolute or relative to the config file. A
function reference adds `:NAME` (`features.py:preprocess`). A module's fingerprint covers its
source and that of the modules it imports from its own folder (as TFX hashes its module files),
so editing a user's model re-runs the stages that use it and nothing else.
"""
from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.util
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Callable


class UserCodeError(ValueError):
    """A user module or function that cannot be loaded; the message names it and the cause."""


def add_import_path(folder: str) -> None:
    """Put `folder` first on the import path, here and in child processes (Beam workers)."""
    if not folder:
        return
    folder = os.path.abspath(folder)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if folder not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([folder, *paths])


def is_file_ref(ref: str) -> bool:
    return ref.endswith(".py") or "/" in ref or os.sep in ref


def load_module(ref: str, config_dir: str = "", what: str = "module") -> ModuleType:
    """Import the module `ref` (dotted path or .py file).

    Raises:
        UserCodeError: the file is missing or the module fails to import; names `ref` and the cause.
    """
    add_import_path(config_dir)
    try:
        if not is_file_ref(ref):
            return importlib.import_module(ref)
        path = Path(ref) if os.path.isabs(ref) else Path(config_dir or ".") / ref
        if not path.is_file():
            raise UserCodeError(f"{what} {ref!r}: file {path} does not exist")
        path = path.resolve()
        # One stable module name per file, so pickled references (Beam, Keras) resolve again.
        name = f"kfx_user_{path.stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
        if name in sys.modules:
            return sys.modules[name]
        add_import_path(str(path.parent))  # its own sibling imports
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
        return module
    except UserCodeError:
        raise
    except Exception as err:  # noqa: BLE001 - whatever the user's module raised, say where
        raise UserCodeError(f"{what} {ref!r} cannot be imported: {type(err).__name__}: {err}") from None


@dataclass(frozen=True)
class Source:
    """A user module located without importing it: its file and the package its relative imports
    start from (as the module's __package__ would be once imported)."""

    path: Path
    package: str


def locate(ref: str, config_dir: str = "", what: str = "module") -> Source:
    """Where the module `ref` (dotted path or .py file) is, without importing it: `kfx component`
    fingerprints the user's code this way before it knows whether the stage must run.

    Raises:
        UserCodeError: no such file or module; names `ref`.
    """
    add_import_path(config_dir)
    if is_file_ref(ref):
        path = Path(ref) if os.path.isabs(ref) else Path(config_dir or ".") / ref
        if not path.is_file():
            raise UserCodeError(f"{what} {ref!r}: file {path} does not exist")
        add_import_path(str(path.resolve().parent))  # its sibling imports, found as load_module finds them
        return Source(path.resolve(), "")
    path = _module_file(ref)
    if path is None:
        raise UserCodeError(f"{what} {ref!r}: no module {ref!r} on the import path (config folder first)")
    return Source(path.resolve(), ref if path.name == "__init__.py" else ref.rpartition(".")[0])


def split_function_ref(ref: str, what: str = "function") -> tuple[str, str]:
    """(module reference, function name) of `module:function` or `file.py:function`."""
    module_ref, sep, attr = ref.rpartition(":")
    if not sep or not module_ref or not attr:
        raise UserCodeError(f"{what} {ref!r}: expected MODULE:FUNCTION or FILE.py:FUNCTION")
    return module_ref, attr


def load_function(ref: str, config_dir: str = "", what: str = "function") -> Callable:
    """`module:function` or `file.py:function`."""
    module_ref, attr = split_function_ref(ref, what)
    module = load_module(module_ref, config_dir, what)
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise UserCodeError(f"{what} {ref!r}: module {module_ref!r} has no function {attr!r}")
    return fn


def pickle_by_value(fn: Callable) -> Callable:
    """`fn`, with Beam told to pickle its module, and the imported modules of that module's folder,
    by value: SDK workers of a distributed runner (Dataflow, Flink, Spark) see neither the user's
    files nor the import path set in this process, so a user function a Beam step calls travels
    inside the pipeline itself."""
    from apache_beam.internal.cloudpickle import cloudpickle

    files = set(source_files(sys.modules[fn.__module__]))
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if path and Path(path).resolve() in files:
            cloudpickle.register_pickle_by_value(module)
    return fn


def _imported_names(tree: ast.AST, package: str) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".") if package else []
                parts = parts[:len(parts) - node.level + 1] if node.level > 1 else parts
                base = ".".join([*parts, base] if base else parts)
            # `from pkg import sub` needs pkg/sub.py, not pkg/__init__.py (a registry that grows
            # with every sibling); `from mod import name` needs mod itself.
            for a in node.names:
                full = f"{base}.{a.name}"
                names.add(full if _is_module(full) else base)
    return {n for n in names if n}


def _is_module(name: str) -> bool:
    return _module_file(name) is not None


def _module_file(name: str) -> Path | None:
    """The source file of module `name` (a package's __init__.py), found without importing
    anything: from its longest already imported parent package, else from its top-level name
    (looking that up runs no code), walking the rest on disk. importlib.util.find_spec("keras.layers")
    would import keras, and TensorFlow with it, while the cache key is computed."""
    parts = name.split(".")
    known = next((i for i in range(len(parts), 0, -1) if ".".join(parts[:i]) in sys.modules), 0)
    if known:
        spec = sys.modules[".".join(parts[:known])].__spec__
    else:
        try:
            spec = importlib.util.find_spec(parts[0])
        except (ImportError, ValueError, AttributeError):
            return None
        known = 1
    if spec is None:
        return None
    rest = parts[known:]
    if not rest:
        return Path(spec.origin) if spec.has_location and spec.origin and spec.origin.endswith(".py") else None
    folders = [Path(p) for p in spec.submodule_search_locations or ()]
    for part in rest[:-1]:
        folders = [folder / part for folder in folders if (folder / part).is_dir()]
    for folder in folders:  # the import system's order: package, module (a namespace has no file)
        for candidate in (folder / rest[-1] / "__init__.py", folder / f"{rest[-1]}.py"):
            if candidate.is_file():
                return candidate
    return None


_PARSE_LOCK = threading.Lock()
_PARSE_ATTEMPTS = 3


def _parse(path: Path) -> ast.Module:
    """ast.parse of a file, safe beside other threads parsing (stages run in parallel threads).

    CPython 3.11 keeps the AST converter's recursion depth in per-interpreter state, so a parse
    that another thread's parse interrupts can fail with a spurious "SystemError: AST constructor
    recursion depth mismatch" (python/cpython#106905). Our own parses take turns under a lock; a
    parse interrupted by someone else's (AutoGraph's in a training thread) is retried.
    """
    source = path.read_text()
    with _PARSE_LOCK:
        for attempt in range(_PARSE_ATTEMPTS):
            try:
                return ast.parse(source, str(path))
            except SystemError as exc:
                if "recursion depth mismatch" not in str(exc) or attempt == _PARSE_ATTEMPTS - 1:
                    raise


def source_files(module: ModuleType | Source) -> list[Path]:
    """The module's file and, transitively, the files of the modules it imports that live in its
    own folder (or below it), sorted. Nothing is imported."""
    if isinstance(module, Source):
        first, package = module.path, module.package
    else:
        first, package = Path(module.__file__).resolve(), module.__package__ or ""
    folder = first.parent
    seen: dict[Path, None] = {}
    todo = [(first, package)]
    while todo:
        path, package = todo.pop()
        if path in seen:
            continue
        seen[path] = None
        for name in _imported_names(_parse(path), package):
            origin = _module_file(name)
            origin = origin.resolve() if origin else None
            if origin and folder in origin.parents:
                # The package relative imports in that file start from (find_spec's spec.parent).
                todo.append((origin, name if origin.name == "__init__.py" else name.rpartition(".")[0]))
    return sorted(seen)


def fingerprint(modules: list[ModuleType | Source]) -> str:
    """sha256 over the sources of `modules` (imported or located) and their same-folder imports."""
    h = hashlib.sha256()
    for path in sorted({p for m in modules for p in source_files(m)}):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()
