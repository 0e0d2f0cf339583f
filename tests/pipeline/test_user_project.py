"""A user's own project outside the repository: `kfx init`, a model module, a preprocessing
function and a custom component, in folders named like kfx's own (models/, pipeline/)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import read_json

APPROVE = '''\
"""My approval step: push only what evaluate blessed AND reached my own accuracy bar."""
import json
import os

from pydantic import Field

from kfx.pipeline.component import ComponentSpec, Context, StageConfig


class ApproveConfig(StageConfig):
    min_accuracy: float = Field(0.5, ge=0, le=1)


def run(ctx: Context) -> dict:
    with open(os.path.join(ctx.inputs["blessing"], "blessing.json")) as f:
        upstream = json.load(f)
    with open(os.path.join(ctx.inputs["evaluation"], "evaluation.json")) as f:
        accuracy = json.load(f)["overall"]["accuracy"]
    ok = accuracy >= ctx.config.min_accuracy
    blessed = bool(upstream["blessed"]) and ok
    out = {**upstream, "blessed": blessed,
           "approve": {"accuracy": accuracy, "min_accuracy": ctx.config.min_accuracy, "passed": ok}}
    with open(os.path.join(ctx.outputs["blessing"], "blessing.json"), "w") as f:
        json.dump(out, f)
    return {"blessed": blessed, "accuracy": accuracy}


SPEC = ComponentSpec(name="approve", inputs=("blessing", "evaluation"), outputs=("blessing",), run=run,
                     config=ApproveConfig)
'''


def _kfx(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("PYTHONPATH", None)
    return subprocess.run([sys.executable, "-m", "kfx.pipeline.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


def _statuses(summary_path: Path) -> dict[str, str]:
    return {k: v["status"] for k, v in read_json(summary_path)["components"].items()}


def test_init_refuses_a_folder_that_holds_the_project_already(tmp_path):
    assert _kfx(tmp_path, "init", "proj").returncode == 0
    proc = _kfx(tmp_path, "init", "proj")
    assert proc.returncode == 2 and "already has pipeline.yaml" in proc.stderr


def test_user_project_runs_and_caches_by_its_own_code(tmp_path):
    proj = tmp_path / "proj"
    assert _kfx(tmp_path, "init", str(proj)).returncode == 0
    # The user's own folders named like kfx's: models/ holds the model, pipeline/ a component.
    (proj / "models").mkdir()
    (proj / "models" / "__init__.py").write_text("")
    (proj / "my_model.py").rename(proj / "models" / "churn_net.py")
    (proj / "pipeline").mkdir()
    (proj / "pipeline" / "__init__.py").write_text("")
    (proj / "pipeline" / "approve.py").write_text(APPROVE)
    cfg = yaml.safe_load((proj / "pipeline.yaml").read_text())
    cfg["train"]["model"] = "models.churn_net"
    cfg["train"]["epochs"] = 4
    push = next(s for s in cfg["stages"] if s["name"] == "push")
    push["inputs"]["blessing"] = "approve.blessing"
    cfg["stages"].insert(-1, {"name": "approve", "component": "pipeline.approve",
                              "inputs": {"blessing": "evaluate.blessing", "evaluation": "evaluate.evaluation"}})
    cfg["approve"] = {"min_accuracy": 0.6}
    (proj / "pipeline.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    summary = proj / "summary.json"

    proc = _kfx(proj, "run", "-c", "pipeline.yaml", "--summary-json", str(summary))
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = read_json(summary)
    assert first["pushed"]["version"] == 1 and first["blessed"] is True
    assert set(_statuses(summary).values()) == {"succeeded"}
    approved = json.loads((Path(first["components"]["approve"]["outputs"]["blessing"]) / "blessing.json").read_text())
    assert approved["approve"]["passed"] is True and approved["approve"]["min_accuracy"] == 0.6
    # The user's preprocessing added a feature that the exported model computes itself.
    transform = json.loads((Path(first["components"]["transform"]["outputs"]["transform_graph"])
                            / "transform.json").read_text())
    assert transform["outputs"]["charge_rate"] == {"kind": "dense", "width": 1}
    assert transform["preprocessing"]["function"] == "features.py:preprocess"

    # Nothing edited: nothing re-runs. An unrelated new model module changes nothing either.
    (proj / "models" / "other_net.py").write_text("def build(features, task, hp):\n    raise NotImplementedError\n")
    proc = _kfx(proj, "run", "-c", "pipeline.yaml", "--summary-json", str(summary))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert set(_statuses(summary).values()) == {"cached"}

    # Editing the model module re-runs train and what follows, nothing before it.
    with open(proj / "models" / "churn_net.py", "a") as f:
        f.write("\n# wider next time\n")
    proc = _kfx(proj, "run", "-c", "pipeline.yaml", "--summary-json", str(summary))
    assert proc.returncode == 0, proc.stderr[-3000:]
    statuses = _statuses(summary)
    rerun = {"train", "evaluate", "infra_validate", "approve", "push"}
    assert {k for k, v in statuses.items() if v == "succeeded"} == rerun, statuses
    assert {k for k, v in statuses.items() if v == "cached"} == set(statuses) - rerun
    assert read_json(summary)["pushed"]["version"] == 2

    # My approval bar can refuse a model: push then publishes nothing.
    proc = _kfx(proj, "run", "-c", "pipeline.yaml", "--set", "approve.min_accuracy=1.0",
                "--summary-json", str(summary))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_json(summary)["components"]["approve"]["metrics"]["blessed"] is False
    assert read_json(summary)["pushed"] is None


def test_tune_passes_defaults_through_for_a_model_without_space(tmp_path):
    from tests.conftest import kfx, tiny_config, write_tiny_csv

    write_tiny_csv(tmp_path / "data" / "part.csv", rows=300)
    (tmp_path / "plain_net.py").write_text(
        "import keras\n\n"
        "def build(features, task, hp):\n"
        "    inputs = {n: keras.Input(shape=(s['width'],) if s['kind'] == 'dense' else (), name=n,\n"
        "                             dtype='float32' if s['kind'] == 'dense' else 'int64') for n, s in features.items()}\n"
        "    parts = [v if features[n]['kind'] == 'dense' else\n"
        "             keras.layers.CategoryEncoding(features[n]['cardinality'], output_mode='one_hot')(v)\n"
        "             for n, v in sorted(inputs.items())]\n"
        "    x = keras.layers.Dense(hp['units'], activation='relu')(keras.layers.Concatenate()(parts))\n"
        "    return keras.Model(inputs, keras.layers.Dense(1, activation='sigmoid')(x))\n")
    path = tiny_config(tmp_path, str(tmp_path / "data" / "*.csv"),
                       train={"model": str(tmp_path / "plain_net.py"), "hyperparameters": {"units": 7}})
    proc = kfx("run", "-c", str(path), "--to", "tune", "--summary-json", str(tmp_path / "s.json"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    tune = read_json(tmp_path / "s.json")["components"]["tune"]["metrics"]
    assert tune["trials"] == 0 and tune["source"] == "defaults (model has no SPACE)"
    assert tune["family"] == str(tmp_path / "plain_net.py")


HOOKED = '''\
"""A family with every hook: each call is logged beside this file."""
import pathlib

import keras

from kfx.models import space

SPACE = space.COMMON + (space.Choice("units", (4, 8), default=4),)
LOG = pathlib.Path(__file__).with_name("calls.log")


def _log(name):
    with open(LOG, "a") as f:
        f.write(name + "\\n")


def build(features, task, hp):
    inputs = {n: keras.Input(shape=(s["width"],) if s["kind"] == "dense" else (), name=n,
                             dtype="float32" if s["kind"] == "dense" else "int64") for n, s in features.items()}
    parts = [v if features[n]["kind"] == "dense" else
             keras.layers.CategoryEncoding(features[n]["cardinality"], output_mode="one_hot")(v)
             for n, v in sorted(inputs.items())]
    x = keras.layers.Dense(hp["units"], activation="relu")(keras.layers.Concatenate()(parts))
    return keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))


def compile(model, task, hp):
    _log("compile")
    model.compile(optimizer=keras.optimizers.Adam(hp["learning_rate"]), loss="binary_crossentropy",
                  metrics=[keras.metrics.BinaryAccuracy(name="accuracy")])


def fit(model, train_ds, eval_ds, hp, callbacks):
    _log("fit")
    return model.fit(train_ds, validation_data=eval_ds, epochs=1, callbacks=callbacks, verbose=0)


def targets(features, label):
    _log("targets")  # traced once per dataset
    return features, label
'''


def test_family_hooks_are_used_by_tune_and_train(tmp_path):
    from tests.conftest import kfx, tiny_config, write_tiny_csv

    write_tiny_csv(tmp_path / "data" / "part.csv", rows=300)
    (tmp_path / "hooked_net.py").write_text(HOOKED)
    path = tiny_config(tmp_path, str(tmp_path / "data" / "*.csv"),
                       tune={"max_trials": 1, "epochs": 1, "objective": "val_accuracy"},
                       train={"model": str(tmp_path / "hooked_net.py"), "epochs": 1, "warmup_requests": 0})
    proc = kfx("run", "-c", str(path), "--to", "train", "--summary-json", str(tmp_path / "s.json"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    comps = read_json(tmp_path / "s.json")["components"]
    assert comps["tune"]["metrics"]["trials"] == 1 and comps["tune"]["metrics"]["source"] == "tuned"
    calls = (tmp_path / "calls.log").read_text().split()
    # tune: KerasTuner builds once to register the space, then one trial (compile, fit, targets
    # for train and eval); train: the same once more.
    assert calls.count("compile") == 3 and calls.count("fit") == 2 and calls.count("targets") == 4, calls
