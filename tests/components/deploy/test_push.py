"""push, and the approval path end to end (evaluate + infra_validate + push through the runner).

The serving directory is compared file by file (path and content hash) before and after every
refusal and every crash: "nothing changed" is checked, not assumed.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from tests.components.evaluation import evaluation_fixtures as fx

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

GATE = {"value": [{"metric": "accuracy", "min": 0.6}, {"metric": "auc", "min": 0.7}],
        "change": [{"metric": "auc", "max_worsening": 0.005}],
        "fairness": [{"feature": "sex", "metric": "equalized_odds_difference", "max": 0.15}]}


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    d = tmp_path_factory.mktemp("push")
    rows = fx.write_examples(str(d / "examples"), {"train": 3000, "test": 3000}, seed=5)
    good = fx.fit_weights(rows["train"])
    worse = {**good, "age": good["age"] * 0.6}  # weaker use of the strongest feature: lower AUC
    biased = fx.fit_weights(fx.make_rows(3000, seed=9, leak=True))
    return {"dir": d, "examples": str(d / "examples"), "schema": fx.write_schema(str(d / "schema")),
            "good": fx.export_model(str(d / "good"), good), "good_again": fx.export_model(str(d / "good_again"), good),
            "worse": fx.export_model(str(d / "worse"), worse), "biased": fx.export_model(str(d / "biased"), biased)}


def snapshot(root: Path) -> dict[str, str]:
    """Every file under root: relative path -> sha256 (directories too, as "dir")."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs:
            out[os.path.relpath(os.path.join(dirpath, name), root)] = "dir"
        for name in files:
            p = os.path.join(dirpath, name)
            out[os.path.relpath(p, root)] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
    return out


def run_gate(art, root: Path, model: str) -> dict:
    """evaluate + infra_validate + push on `model`, through the real runner and stage graph."""
    from kfx.pipeline.config import config_from_dict
    from kfx.pipeline.runner import Reporter, run_pipeline

    cfg = config_from_dict({
        "name": "gate", "root": str(root), "max_parallel": 2, "ingest": {"format": "builtin", "name": "adult"},
        "evaluate": {"slices": [["sex"]], "fairness": {"bootstrap_resamples": 50}, "gate": GATE},
        "infra_validate": {"server": "kfx", "canary_examples": 4}})
    with open(os.devnull, "w") as quiet:
        return run_pipeline(cfg, only=["evaluate", "infra_validate", "push"], reporter=Reporter(quiet),
                            given_inputs={"examples": art["examples"], "schema": art["schema"], "model": art[model]})


def test_only_blessed_models_are_pushed_and_versions_increase(art, tmp_path):
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    root = tmp_path / "runs"
    serving = root / "serving"

    first = run_gate(art, root, "good")
    assert first["status"] == "succeeded", first["error"]
    assert first["blessed"] is True
    assert first["pushed"] == {"model_name": "gate", "version": 1, "path": str(serving / "gate" / "1")}
    pushed = snapshot(serving / "gate" / "1")
    assert {k: v for k, v in pushed.items()} == snapshot(Path(art["good"]))  # the SavedModel, unchanged
    config = text_format.Parse((serving / "models.config").read_text(), model_server_config_pb2.ModelServerConfig())
    assert [(c.name, c.base_path, c.model_platform) for c in config.model_config_list.config] == [
        ("gate", str(serving / "gate"), "tensorflow")]
    evaluate_metrics = first["components"]["evaluate"]["metrics"]
    assert evaluate_metrics["baseline"] is None  # first run: no baseline, says so

    before = snapshot(serving)
    worse = run_gate(art, root, "worse")
    assert worse["status"] == "succeeded", worse["error"]  # not blessed is not a failed run
    assert worse["blessed"] is False and worse["pushed"] is None, worse["components"]["evaluate"]["metrics"]
    assert worse["components"]["evaluate"]["metrics"]["baseline"] == art["good"]
    reasons = worse["components"]["push"]["metrics"]["reasons"]
    assert "not blessed by evaluate" in reasons
    assert any("auc no worse than baseline" in r for r in reasons), reasons
    assert snapshot(serving) == before

    biased = run_gate(art, root, "biased")
    assert biased["blessed"] is False and biased["pushed"] is None
    failed = biased["components"]["evaluate"]["metrics"]["reasons"]
    assert any(r.startswith("check failed: sex: equalized_odds_difference (point estimate) <= 0.15") for r in failed), failed
    assert snapshot(serving) == before

    again = run_gate(art, root, "good_again")
    assert again["blessed"] is True
    assert again["pushed"]["version"] == 2
    config = text_format.Parse((serving / "models.config").read_text(), model_server_config_pb2.ModelServerConfig())
    assert len(config.model_config_list.config) == 1
    assert sorted(os.listdir(serving / "gate")) == ["1", "2"]


# ------------------------------------------------------------------ push alone
def _artifacts(tmp: Path, model: str, blessed: bool = True, infra: bool = True, blessed_model: str | None = None):
    (tmp / "blessing").mkdir(parents=True, exist_ok=True)
    (tmp / "infra").mkdir(parents=True, exist_ok=True)
    (tmp / "blessing" / "blessing.json").write_text(json.dumps({
        "blessed": blessed, "model": blessed_model or model, "checks": [],
        "reasons": [] if blessed else ["check failed: auc >= 0.9: got 0.8"],
        "decision_thresholds": {"feature": "sex", "groups": {"Female": 0.4, "Male": 0.5}, "default": 0.5}}))
    (tmp / "infra" / "infra_blessing.json").write_text(json.dumps({
        "blessed": infra, "model": model, "reasons": [] if infra else ["signature 'classify': non-finite"]}))
    return {"model": model, "blessing": str(tmp / "blessing"), "infra_blessing": str(tmp / "infra")}


def push(tmp: Path, inputs: dict, serving: Path) -> tuple[dict, Path]:
    from kfx.components.deploy import push as push_mod
    from kfx.pipeline.component import Context
    from kfx.pipeline.config import config_from_dict
    from kfx.pipeline.config_evaluation import PushConfig

    out = tmp / f"out-{len(list(tmp.glob('out-*')))}"
    os.makedirs(out / push_mod.PUSHED_MODEL)
    ctx = Context(pipeline=config_from_dict({"name": "t", "ingest": {"format": "builtin", "name": "adult"}}),
                  config=PushConfig(serving_base=str(serving), model_name="adult"), inputs=inputs,
                  outputs={push_mod.PUSHED_MODEL: str(out / push_mod.PUSHED_MODEL)}, run_id="r", execution_id=1,
                  root=str(tmp))
    return push_mod.run(ctx), out / push_mod.PUSHED_MODEL


def test_push_writes_version_and_decision_thresholds(art, tmp_path):
    serving = tmp_path / "serving"
    metrics, out = push(tmp_path, _artifacts(tmp_path, art["good"]), serving)
    assert metrics == {"pushed": {"model_name": "adult", "version": 1, "path": str(serving / "adult" / "1")},
                       "reasons": []}
    assert json.loads((out / "pushed.json").read_text())["pushed"]["version"] == 1
    thresholds = json.loads((serving / "adult" / "1" / "assets.extra" / "kfx_decision_thresholds.json").read_text())
    assert thresholds["groups"] == {"Female": 0.4, "Male": 0.5}
    assert not list(out.glob(".staging-*"))


@pytest.mark.parametrize("case", ["not_blessed", "not_infra_blessed", "blessing_of_another_model"])
def test_refused_models_leave_serving_untouched(art, tmp_path, case):
    serving = tmp_path / "serving"
    push(tmp_path, _artifacts(tmp_path / "first", art["good"]), serving)
    before = snapshot(serving)
    inputs = _artifacts(tmp_path / case, art["worse"], blessed=case != "not_blessed",
                        infra=case != "not_infra_blessed",
                        blessed_model=art["good"] if case == "blessing_of_another_model" else None)
    metrics, out = push(tmp_path, inputs, serving)
    assert metrics["pushed"] is None
    expected = {"not_blessed": "not blessed by evaluate", "not_infra_blessed": "not blessed by infra_validate",
                "blessing_of_another_model": f"the blessing is for model {art['good']}"}[case]
    assert any(r.startswith(expected) for r in metrics["reasons"]), metrics["reasons"]
    assert json.loads((out / "pushed.json").read_text())["pushed"] is None
    assert snapshot(serving) == before


def _crash_after(monkeypatch, files: int):
    from kfx.components.deploy import push as push_mod

    real, calls = push_mod._copy_file, []

    def flaky(src, dst):
        calls.append(src)
        if len(calls) > files:
            raise RuntimeError("disk full (simulated) while copying " + os.path.basename(src))
        real(src, dst)

    monkeypatch.setattr(push_mod, "_copy_file", flaky)
    return calls


def test_crash_during_push_leaves_serving_exactly_as_before(art, tmp_path, monkeypatch):
    serving = tmp_path / "serving"
    push(tmp_path, _artifacts(tmp_path / "first", art["good"]), serving)
    before = snapshot(serving)
    calls = _crash_after(monkeypatch, files=2)
    with pytest.raises(RuntimeError, match="disk full"):
        push(tmp_path, _artifacts(tmp_path / "second", art["good_again"]), serving)
    assert len(calls) == 3  # it did crash midway through the copy
    assert snapshot(serving) == before


def test_crash_while_staging_beside_the_versions_leaves_nothing(art, tmp_path, monkeypatch):
    """The fallback when the serving base is on another filesystem: stage in <base>/<name>/."""
    from kfx.components.deploy.push import publish_version

    model_dir = tmp_path / "serving" / "adult"
    publish_version(art["good"], str(model_dir), str(model_dir), {})
    before = snapshot(model_dir)
    _crash_after(monkeypatch, files=2)
    with pytest.raises(RuntimeError, match="disk full"):
        publish_version(art["good"], str(model_dir), str(model_dir), {})
    assert snapshot(model_dir) == before
    monkeypatch.undo()
    assert publish_version(art["good"], str(model_dir), str(model_dir), {}) == 2
    assert sorted(os.listdir(model_dir)) == [".staging.lock", "1", "2"]  # the lock file of stagers here
