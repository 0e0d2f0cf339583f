"""Loading the user's modules, and the fingerprint that makes them part of a stage's cache key."""
from __future__ import annotations

import pytest

from kfx.pipeline import user_code


def test_builtin_family_fingerprint_covers_its_imports_not_its_siblings():
    import kfx.models.mlp as mlp

    names = {p.relative_to(p.parents[1]).as_posix() if p.parent.name == "tasks" else p.name
             for p in user_code.source_files(mlp)}
    assert {"mlp.py", "tabular.py", "space.py", "tasks/__init__.py"} <= names
    # Another family, and the registry that lists every family, are not mlp's code.
    assert "wide_deep.py" not in names and "__init__.py" not in names


def test_user_module_fingerprint_follows_same_folder_imports_only(tmp_path):
    (tmp_path / "fp_net.py").write_text("import numpy\nfrom fp_layers import block\n\ndef build(f, t, hp):\n    return block\n")
    (tmp_path / "fp_layers.py").write_text("block = 1\n")
    (tmp_path / "fp_other.py").write_text("x = 1\n")
    module = user_code.load_module("fp_net.py", str(tmp_path))
    files = {p.name for p in user_code.source_files(module)}
    assert files == {"fp_net.py", "fp_layers.py"}  # numpy lives elsewhere; fp_other is not imported
    before = user_code.fingerprint([module])
    (tmp_path / "fp_other.py").write_text("x = 2\n")
    assert user_code.fingerprint([module]) == before
    (tmp_path / "fp_layers.py").write_text("block = 2\n")
    assert user_code.fingerprint([module]) != before


def test_a_file_in_a_subfolder_is_located_with_its_sibling_imports_as_imported(tmp_path, monkeypatch):
    """`models/net.py` (not beside the config) importing its sibling: located without importing
    (kfx component's cache-first pass), its files and fingerprint equal the imported module's, or
    a cache key committed by a run would never match the one computed before the import."""
    import os
    import sys

    monkeypatch.setattr(sys, "path", list(sys.path))  # the located / imported folders stay here
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "sub_net.py").write_text("import sub_helpers\n\nVALUE = sub_helpers.X\n")
    (tmp_path / "models" / "sub_helpers.py").write_text("X = 1\n")
    located = user_code.locate("models/sub_net.py", str(tmp_path))
    assert {p.name for p in user_code.source_files(located)} == {"sub_net.py", "sub_helpers.py"}
    module = user_code.load_module("models/sub_net.py", str(tmp_path))
    assert user_code.fingerprint([located]) == user_code.fingerprint([module])


def test_load_errors_name_the_reference_and_the_cause(tmp_path):
    (tmp_path / "fp_boom.py").write_text("1 / 0\n")
    with pytest.raises(user_code.UserCodeError, match=r"model 'fp_boom.py' cannot be imported: ZeroDivisionError"):
        user_code.load_module("fp_boom.py", str(tmp_path), what="model")
    with pytest.raises(user_code.UserCodeError, match="expected MODULE:FUNCTION"):
        user_code.load_function("fp_boom.py", str(tmp_path))
    with pytest.raises(user_code.UserCodeError, match="does not exist"):
        user_code.load_module("missing.py", str(tmp_path))


def test_a_function_pickled_by_value_runs_where_its_files_are_not(tmp_path):
    """pickle_by_value: Beam's pickle of the user's function (and the module it imports from its
    folder) loads and runs in a process that has neither the files nor the import path; without
    it, the same pickle is a reference that process cannot import (the failure on a cluster)."""
    import subprocess
    import sys

    from apache_beam.internal import pickler

    src = tmp_path / "shipped"
    src.mkdir()
    (src / "pv_feats.py").write_text("import pv_scale\n\ndef twice(x):\n    return pv_scale.K * x\n")
    (src / "pv_scale.py").write_text("K = 2\n")
    fn = user_code.load_function("pv_feats.py:twice", str(src))
    by_reference = pickler.dumps(fn)
    by_value = pickler.dumps(user_code.pickle_by_value(fn))
    for path in src.iterdir():
        path.unlink()
    src.rmdir()
    probe = "import sys; from apache_beam.internal import pickler; print(pickler.loads(sys.argv[1].encode())(21))"
    env = {"PATH": "/usr/bin:/bin"}  # no PYTHONPATH: this process put the user's folder there
    ok = subprocess.run([sys.executable, "-c", probe, by_value.decode()], capture_output=True, text=True,
                        timeout=120, cwd=tmp_path, env=env)
    assert ok.returncode == 0 and ok.stdout.strip() == "42", ok.stderr[-2000:]
    bad = subprocess.run([sys.executable, "-c", probe, by_reference.decode()], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path, env=env)
    assert bad.returncode != 0 and "kfx_user_pv_feats" in bad.stderr, bad.stderr[-2000:]


def test_a_parse_interrupted_by_another_threads_parse_is_retried(tmp_path, monkeypatch):
    """CPython 3.11's spurious "AST constructor recursion depth mismatch" (a parse interrupted by
    another thread's; python/cpython#106905) failed parallel train stages: it is retried, and any
    other SystemError, or the race on every attempt, still raises."""
    import ast

    (tmp_path / "race_net.py").write_text("from race_layers import X\n")
    (tmp_path / "race_layers.py").write_text("X = 1\n")
    real, failures = ast.parse, []

    def flaky(source, *args, **kwargs):
        if len(failures) < budget:
            failures.append(source)
            raise SystemError(message)
        return real(source, *args, **kwargs)

    monkeypatch.setattr(user_code.ast, "parse", flaky)
    source = user_code.load_module("race_net.py", str(tmp_path))
    budget, message = 2, "AST constructor recursion depth mismatch (before=36, after=30)"
    assert [p.name for p in user_code.source_files(source)] == ["race_layers.py", "race_net.py"]
    assert len(failures) == 2
    failures.clear()
    budget = 3
    with pytest.raises(SystemError, match="recursion depth mismatch"):
        user_code.source_files(source)
    failures.clear()
    budget, message = 1, "some other interpreter error"
    with pytest.raises(SystemError, match="other interpreter error"):
        user_code.source_files(source)
