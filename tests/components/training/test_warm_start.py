"""Warm start: weights matched by layer name and shape from a SavedModel, a TF Serving model
directory or a .keras file; freeze patterns; the errors; and, through the runner on a tiny
pipeline, previous_push (cold before the first push, then warm: the floor in fewer epochs),
freeze and the fine-tune phase."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.models import tiny_pipeline as tiny

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
LOG = logging.getLogger("test")


def _model(units: int = 4, batch_norm: bool = False, seed: int = 0):
    """x (3 floats) -> hidden Dense -> [bn] -> head Dense(1), every layer named."""
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((3,), name="x")
    h = keras.layers.Dense(units, name="hidden")(inp)
    if batch_norm:
        h = keras.layers.BatchNormalization(name="bn")(h)
    return keras.Model(inp, keras.layers.Dense(1, name="head")(h), name="toy")


def _export(model, path: str) -> str:
    import keras
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", lambda x: model(x), input_signature=[tf.TensorSpec([None, 3], tf.float32)])
    archive.write_out(path, verbose=False)
    return path


def _weights(model) -> dict[str, np.ndarray]:
    return {v.path: v.numpy() for v in model.weights}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    d = tmp_path_factory.mktemp("source")
    model = _model(seed=1)
    model.save(str(d / "toy.keras"))
    _export(_model(seed=2), str(d / "serving" / "toy" / "1"))  # an older version: not used
    return {"model": model, "saved_model": _export(model, str(d / "sm")), "keras": str(d / "toy.keras"),
            "serving": _export(model, str(d / "serving" / "toy" / "2")).rsplit("/", 1)[0], "dir": d}


@pytest.mark.parametrize("kind", ["saved_model", "keras", "serving"])
def test_every_source_kind_gives_the_weights_by_layer_path(source, kind):
    from kfx.components.training.warm_start import read_weights

    got = read_weights(source[kind] if kind != "serving" else source["serving"])
    want = _weights(source["model"])
    assert sorted(got) == sorted(want) == ["head/bias", "head/kernel", "hidden/bias", "hidden/kernel"]
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])


def test_layers_match_by_name_and_shape_and_the_rest_is_reported(source):
    from kfx.components.training.warm_start import load, read_weights

    weights = read_weights(source["saved_model"])
    same = _model(seed=3)
    assert load(same, weights) == (["hidden", "head"], {})
    for k, v in _weights(same).items():
        np.testing.assert_array_equal(v, weights[k])

    wider = _model(units=8, batch_norm=True, seed=3)
    fresh = _weights(wider)
    loaded, skipped = load(wider, weights)
    assert loaded == []
    assert skipped == {"hidden": "hidden/kernel has shape [3, 4] in the source, [3, 8] here",
                       "bn": "no variable bn/gamma in the source",
                       "head": "head/kernel has shape [4, 1] in the source, [8, 1] here"}
    for k, v in _weights(wider).items():  # left at their initialisation
        np.testing.assert_array_equal(v, fresh[k])

    with_bn = _model(batch_norm=True, seed=3)
    loaded, skipped = load(with_bn, weights)
    assert loaded == ["hidden", "head"] and list(skipped) == ["bn"]


def test_a_missing_source_or_one_that_is_not_a_model_is_named(source):
    from kfx.components.training.warm_start import read_weights
    from kfx.pipeline.component import ComponentError

    d = source["dir"]
    (d / "notes.txt").write_text("hello")
    (d / "empty").mkdir(exist_ok=True)
    (d / "broken.keras").write_text("not a zip")
    cases = {str(d / "nowhere"): "does not exist", str(d / "empty"): "is not a model: expected a SavedModel",
             str(d / "notes.txt"): "is not a model", str(d / "broken.keras"): "is not a loadable .keras model"}
    for uri, message in cases.items():
        with pytest.raises(ComponentError, match="warm_start") as err:
            read_weights(uri)
        assert uri in str(err.value) and message in str(err.value)


def test_freeze_patterns_fnmatch_regex_and_no_match(source):
    from kfx.components.training.warm_start import matching_layers
    from kfx.pipeline.component import ComponentError
    from kfx.pipeline.config_warm_start import WarmStartKeys

    model = _model(batch_norm=True)
    assert matching_layers(model, ("hid*",)) == ["hidden"]
    assert matching_layers(model, ("re:h.*", "bn")) == ["hidden", "bn", "head"]
    with pytest.raises(ComponentError, match=r"pattern 'dense\*' matches no layer of model 'toy'; its layers are: "
                                             r"x, hidden, bn, head"):
        matching_layers(model, ("hid*", "dense*"))
    with pytest.raises(ValueError, match=r"pattern 're:\(' is not a regular expression"):
        WarmStartKeys(freeze=["re:("])


def test_freeze_without_a_source_fails_and_previous_push_before_any_push_is_cold(source):
    from kfx.components.training.warm_start import start
    from kfx.pipeline.component import ComponentError
    from kfx.pipeline.config_warm_start import WarmStartKeys

    with pytest.raises(ComponentError, match=r"train.freeze \['hidden'\] needs a warm-start source"):
        start(_model(), WarmStartKeys(freeze=["hidden"]), None, LOG)
    assert start(_model(), WarmStartKeys(), None, LOG) is None
    cold = start(_model(), WarmStartKeys(warm_start="previous_push"), None, LOG)
    assert cold["cold"] == "no model pushed yet" and cold["loaded"] == 0
    with pytest.raises(ComponentError, match="two sources"):
        start(_model(), WarmStartKeys(warm_start=source["keras"]), source["saved_model"], LOG)
    report = start(model := _model(), WarmStartKeys(warm_start=source["keras"], freeze=["head"]), None, LOG)
    assert report["loaded"] == 2 and report["frozen"] == ["head"] and not model.get_layer("head").trainable


# ------------------------------------------------------------------ through the runner
def _stage(name: str, **inputs: str) -> dict:
    return {"name": name, "component": name, "inputs": inputs}


DATA = {"examples": "ingest.examples", "schema": "schema.schema"}
STAGES = [_stage("ingest"), _stage("statistics", examples="ingest.examples"),
          _stage("schema", statistics="statistics.statistics"), _stage("transform", **DATA),
          _stage("train", **DATA, transform_graph="transform.transform_graph"),
          _stage("evaluate", **DATA, model="train.model", baseline_model="history:last_pushed_model"),
          _stage("push", model="train.model", blessing="evaluate.blessing")]
# A small constant learning rate: the cold run needs several epochs to reach its last loss.
TRAIN = {"epochs": 5, "batch_size": 64, "warmup_requests": 0, "early_stopping_patience": 0, "verbose": 0,
         "hyperparameters": {"learning_rate": 0.001}}


def _config(tmp: Path, filename: str, **train) -> Path:
    cfg = tiny.config(tmp, stages=STAGES, train={**TRAIN, **train}, evaluate={"fairness": {"bootstrap_resamples": 0}},
                      push={"require_infra_blessing": False})
    cfg.pop("tune")
    path = tmp / filename
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run(path: Path, **kwargs) -> dict:
    from kfx.pipeline.config import load_config
    from kfx.pipeline.runner import Reporter, run_pipeline

    with open(os.devnull, "w") as quiet:
        return run_pipeline(load_config(path), reporter=Reporter(quiet), **kwargs)


def _epochs_to(history: dict, floor: float) -> int:
    """Epochs run until val_loss first reached `floor` (the count, 1-based)."""
    return next(i + 1 for i, v in enumerate(history["val_loss"]) if v <= floor + 1e-9)


def _history(train: dict) -> dict:
    return json.loads(Path(train["outputs"]["model_run"], "history.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """previous_push twice on unchanged data: cold (nothing pushed yet) then warm from the push."""
    tmp = tmp_path_factory.mktemp("warm")
    tiny.write_csv(tmp / "train.csv", 600, seed=1)
    tiny.write_csv(tmp / "test.csv", 200, seed=2)
    path = _config(tmp, "previous.yaml", warm_start="previous_push")
    first = _run(path)
    assert first["status"] == "succeeded", first["error"]
    second = _run(path, to_stage="train")
    assert second["status"] == "succeeded", second["error"]
    return {"tmp": tmp, "path": path, "first": first, "second": second}


def test_previous_push_trains_cold_first_then_reaches_the_floor_in_fewer_epochs(runs):
    first, second = runs["first"]["components"], runs["second"]["components"]
    assert first["train"]["metrics"]["warm_start"]["cold"] == "no model pushed yet"
    assert first["push"]["metrics"]["pushed"]["version"] == 1
    pushed_model = first["train"]["outputs"]["model"]

    warm = second["train"]
    assert warm["status"] == "succeeded"  # not cached: its base_model input is new
    report = warm["metrics"]["warm_start"]
    assert report["source"] == pushed_model and report["skipped"] == {}
    assert report["loaded_layers"] == ["mlp_dense0", "mlp_dense1", "output"] and report["loaded"] == 3

    cold_history, warm_history = _history(first["train"]), _history(warm)
    floor = cold_history["val_loss"][-1]
    cold_epochs, warm_epochs = _epochs_to(cold_history, floor), _epochs_to(warm_history, floor)
    assert cold_epochs >= 3 and warm_epochs == 1, (cold_history["val_loss"], warm_history["val_loss"])
    assert warm_history["val_loss"][0] < cold_history["val_loss"][0]

    again = _run(runs["path"], to_stage="train")["components"]["train"]  # same push: same fingerprint
    assert again["status"] == "cached" and again["outputs"] == warm["outputs"]


def _variables(saved_model: str) -> dict[str, np.ndarray]:
    from kfx.components.training.warm_start import read_weights

    return read_weights(saved_model)


def test_freeze_keeps_weights_and_fine_tune_continues_at_a_lower_rate(runs):
    source = runs["first"]["components"]["train"]["outputs"]["model"]
    frozen = _run(_config(runs["tmp"], "frozen.yaml", warm_start=source, epochs=2, freeze=["mlp_dense0"],
                          fine_tune={"epochs": 1, "unfreeze": False}), only=["train"])["components"]["train"]
    assert frozen["status"] == "succeeded", frozen["error"]
    before, after = _variables(source), _variables(frozen["outputs"]["model"])
    np.testing.assert_array_equal(after["mlp_dense0/kernel"], before["mlp_dense0/kernel"])
    np.testing.assert_array_equal(after["mlp_dense0/bias"], before["mlp_dense0/bias"])
    assert not np.allclose(after["mlp_dense1/kernel"], before["mlp_dense1/kernel"])
    m = frozen["metrics"]
    assert m["warm_start"]["frozen"] == ["mlp_dense0"] and m["epochs_run"] == 3
    assert m["fine_tune"] == {"epochs_run": 1, "learning_rate": pytest.approx(1e-4)}
    assert _history(frozen)["epoch"] == [0, 1, 2]

    # Another architecture (batch norm): the new layers are skipped and reported; unfreeze trains all.
    resized = _run(_config(runs["tmp"], "resized.yaml", warm_start=source, epochs=1, freeze=["re:mlp_(dense|bn)\\d"],
                           hyperparameters={"learning_rate": 0.001, "batch_norm": True},
                           fine_tune={"epochs": 1, "unfreeze": True}), only=["train"])["components"]["train"]
    assert resized["status"] == "succeeded", resized["error"]
    report = resized["metrics"]["warm_start"]
    assert report["loaded_layers"] == ["mlp_dense0", "mlp_dense1", "output"]
    assert report["skipped"] == {"mlp_bn0": "no variable mlp_bn0/gamma in the source",
                                 "mlp_bn1": "no variable mlp_bn1/gamma in the source"}
    assert report["frozen"] == ["mlp_dense0", "mlp_dense1"]  # not the fresh batch norms
    assert not np.allclose(_variables(resized["outputs"]["model"])["mlp_dense0/kernel"], before["mlp_dense0/kernel"])


KILLABLE = """\"\"\"mlp that dies after its first fine-tune epoch while a flag file exists (a kill).\"\"\"
import os

import keras

from kfx.models import tasks
from kfx.models.mlp import SPACE, build  # noqa: F401

FLAG = os.path.join(os.path.dirname(__file__), "kill_fine_tune")


class Kill(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):  # after the history and backup callbacks
        raise RuntimeError("killed during fine-tune")


def compile(model, task, hp):
    loss, metrics = tasks.of(task).compile_args()
    model.compile(optimizer=keras.optimizers.Adam(hp["learning_rate"]), loss=loss, metrics=metrics)
    if hp["learning_rate"] < 1e-3 and os.path.exists(FLAG):  # the fine-tune phase's lower rate
        fit = model.fit
        model.fit = lambda *a, callbacks=(), **k: fit(*a, callbacks=[*callbacks, Kill()], **k)
"""


def test_a_kill_during_fine_tune_resumes_fine_tune_not_the_first_phase(runs):
    tmp, source = runs["tmp"], runs["first"]["components"]["train"]["outputs"]["model"]
    (tmp / "killable.py").write_text(KILLABLE)
    (tmp / "kill_fine_tune").write_text("")
    path = _config(tmp, "killable.yaml", model="killable.py", warm_start=source, epochs=2,
                   fine_tune={"epochs": 2, "unfreeze": False})
    killed = _run(path, only=["train"])
    assert killed["status"] == "failed" and "killed during fine-tune" in killed["error"]
    backups = tmp / "runs" / "tiny" / "train" / ".backup"
    assert len(list(backups.glob("*-first_phase/history.json"))) == 1
    (tmp / "kill_fine_tune").unlink()
    rerun = _run(path, only=["train"])["components"]["train"]
    assert rerun["status"] == "succeeded", rerun["error"]
    m = rerun["metrics"]
    assert m["resumed_from_epoch"] == 3  # neither the first phase (0, 1) nor fine-tune's epoch 2 again
    assert m["epochs_run"] == 4 and m["fine_tune"]["epochs_run"] == 2
    assert _history(rerun)["epoch"] == [0, 1, 2, 3]
    assert not list(backups.iterdir()), "the backup is removed once training finished"


def test_bad_sources_and_patterns_fail_the_stage_naming_them(runs):
    from kfx.pipeline.config import ConfigError, load_config

    missing = str(runs["tmp"] / "no_such_model")
    res = _run(_config(runs["tmp"], "missing.yaml", warm_start=missing), only=["train"])
    assert res["status"] == "failed" and f"train.warm_start: {missing} does not exist" in res["error"]
    source = runs["first"]["components"]["train"]["outputs"]["model"]
    res = _run(_config(runs["tmp"], "pattern.yaml", warm_start=source, freeze=["encoder_*"]), only=["train"])
    assert res["status"] == "failed" and "train.freeze: pattern 'encoder_*' matches no layer" in res["error"]
    with pytest.raises(ConfigError, match="learning_rate_factor"):
        load_config(_config(runs["tmp"], "factor.yaml", fine_tune={"epochs": 1, "learning_rate_factor": 0}))


def test_previous_push_binds_the_base_model_input_unless_the_graph_does(runs):
    from kfx.pipeline.config import load_config
    from kfx.pipeline.graph import History, Upstream, get_stage

    def train_inputs(path):
        return get_stage("train", load_config(path).stages).inputs

    assert train_inputs(runs["path"])["base_model"] == History("last_pushed_model")
    assert "base_model" not in train_inputs(_config(runs["tmp"], "plain.yaml"))
    stages = [dict(s) for s in STAGES]
    stages[4] = {**stages[4], "inputs": {**stages[4]["inputs"], "base_model": "transform.transform_graph"}}
    path = _config(runs["tmp"], "wired.yaml", warm_start="previous_push")
    raw = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**raw, "stages": stages}))
    assert train_inputs(path)["base_model"] == Upstream("transform", "transform_graph")


def test_freeze_without_a_source_and_two_sources_fail_at_config_load(runs):
    from kfx.pipeline.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"stage 'train': train.freeze \['mlp_dense0'\] needs a warm-start source: "
                                          r"set train.warm_start or bind inputs.base_model"):
        load_config(_config(runs["tmp"], "freeze_only.yaml", freeze=["mlp_dense0"]))
    stages = [dict(s) for s in STAGES]
    stages[4] = {**stages[4], "inputs": {**stages[4]["inputs"], "base_model": "history:last_pushed_model"}}
    wired = _config(runs["tmp"], "two.yaml", warm_start="model.keras")
    wired.write_text(yaml.safe_dump({**yaml.safe_load(wired.read_text()), "stages": stages}))
    with pytest.raises(ConfigError, match=r"warm start from two sources: train.warm_start='.*model.keras' and "
                                          r"inputs.base_model in the graph"):
        load_config(wired)
    # freeze with a base_model bound in the graph (no train.warm_start) is fine
    wired.write_text(yaml.safe_dump({**yaml.safe_load(_config(runs["tmp"], "f.yaml", freeze=["x"]).read_text()),
                                     "stages": stages}))
    assert load_config(wired).stage("train").freeze == ("x",)
