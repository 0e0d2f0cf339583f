"""models/compat.py: the private Keras/KerasTuner targets exist on the pinned versions, and a
changed version that breaks one fails with the target, the version written for and the one installed."""
from __future__ import annotations

import re
import sys
import tomllib

import keras
import pytest

from kfx.models import compat
from tests.conftest import REPO


@pytest.fixture(autouse=True)
def fresh_require():
    # The helpers check their targets once per process: forget that around each test.
    compat._require.cache_clear()
    yield
    compat._require.cache_clear()


def _pins() -> dict[str, str]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return dict(re.fullmatch(r"([\w-]+)(?:\[[\w,-]+\])?==([\w.]+)", d).groups() for d in deps)


def test_written_for_the_pinned_and_installed_versions_and_check_passes():
    pins = _pins()
    for dist, version in compat.WRITTEN_FOR.items():
        assert pins[dist] == version, f"pyproject pins {dist}=={pins[dist]}: review kfx/models/compat.py"
        assert compat.installed_version(dist) == version
    assert compat.check() is None
    assert compat.tuner_role() == "local"
    assert compat.backup_state_path("/b").startswith("/b/")


def test_a_removed_target_names_it_and_both_versions(monkeypatch):
    trainer = sys.modules[compat.IS_MULTI_WORKER.module]
    monkeypatch.delattr(trainer, "_collective_all_reduce_multi_worker")
    monkeypatch.setattr(compat, "installed_version", lambda dist: "3.99.0")
    with pytest.raises(compat.CompatError) as err:
        compat.check()
    message = str(err.value)
    assert message.startswith("keras.src.backend.tensorflow.trainer._collective_all_reduce_multi_worker: "
                              "'_collective_all_reduce_multi_worker' no longer exists")
    assert "written for keras 3.15.1, installed keras is 3.99.0" in message
    # The helper that needs it refuses before patching anything.
    original = trainer.reduce_per_replica
    with pytest.raises(compat.CompatError, match="_collective_all_reduce_multi_worker"):
        compat.patch_multi_worker_reduce()
    assert trainer.reduce_per_replica is original


def test_a_changed_signature_is_reported(monkeypatch):
    trainer = sys.modules[compat.REDUCE_PER_REPLICA.module]
    monkeypatch.setattr(trainer, "reduce_per_replica", lambda strategy, values, reduction="auto": values)
    with pytest.raises(compat.CompatError, match=r"reduce_per_replica: its parameters are now "
                                                 r"\['strategy', 'values', 'reduction'\], expected "
                                                 r"\['values', 'strategy', 'reduction'\] first"):
        compat.check()


def test_backup_and_restore_without_its_private_paths_is_reported(monkeypatch):
    class Renamed(keras.callbacks.Callback):
        def __init__(self, backup_dir, save_freq="epoch", double_checkpoint=False):
            super().__init__()
            self.weights_file = f"{backup_dir}/latest.weights.h5"

    monkeypatch.setattr(keras.callbacks, "BackupAndRestore", Renamed)
    with pytest.raises(compat.CompatError, match=r"keras.callbacks.BackupAndRestore: its instances no longer have "
                                                 r"\['_weights_path', '_training_metadata_path'"):
        compat.backup_state_path("/b")


def test_a_moved_keras_tuner_module_names_keras_tuner_versions(monkeypatch):
    monkeypatch.setitem(sys.modules, "keras_tuner.src.distribute.utils", None)  # import now fails
    with pytest.raises(compat.CompatError) as err:
        compat.tuner_role()
    assert "module keras_tuner.src.distribute.utils cannot be imported" in str(err.value)
    assert "written for keras-tuner 1.4.8, installed keras-tuner is 1.4.8" in str(err.value)


def test_the_reduce_patch_is_installed_once_and_keeps_keras_behaviour_off_multi_worker(monkeypatch):
    import tensorflow as tf

    trainer = sys.modules[compat.REDUCE_PER_REPLICA.module]
    original = trainer.reduce_per_replica
    monkeypatch.setattr(trainer, "reduce_per_replica", original)  # restored after the test
    compat.patch_multi_worker_reduce()
    patched = trainer.reduce_per_replica
    assert patched is not original and patched._kfx_patched
    compat.patch_multi_worker_reduce()
    assert trainer.reduce_per_replica is patched
    values = {"loss": tf.constant(0.5)}
    assert float(patched(values, tf.distribute.get_strategy(), "auto")["loss"]) == 0.5
