"""infra_validate against a real `python -m kfx.serving` subprocess: a good model passes every
signature; a model answering NaN and a model that cannot load are refused, and no server
process outlives the stage."""
from __future__ import annotations

import json
import os
import shutil

import psutil
import pytest

from tests.components.evaluation import evaluation_fixtures as fx

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    d = tmp_path_factory.mktemp("infra")
    rows = fx.write_examples(str(d / "examples"), {"train": 500, "test": 200}, seed=3)
    weights = fx.fit_weights(rows["train"])
    no_vars = fx.export_model(str(d / "no_vars"), weights)
    shutil.rmtree(f"{no_vars}/variables")  # the graph refers to variables that are gone
    bad_warmup = fx.export_model(str(d / "bad_warmup"), weights)
    _write_bad_warmup(bad_warmup)
    return {"dir": d, "examples": str(d / "examples"), "good": fx.export_model(str(d / "good"), weights),
            "nan": fx.export_model(str(d / "nan"), weights, broken=True), "no_vars": no_vars,
            "bad_warmup": bad_warmup}


def _write_bad_warmup(path: str) -> None:
    """A warmup request lacking the model's inputs: loads in process, fails in the server."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.signature_name = "serving_default"
    os.makedirs(f"{path}/assets.extra", exist_ok=True)
    with tf.io.TFRecordWriter(f"{path}/assets.extra/tf_serving_warmup_requests") as w:
        w.write(prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request)).SerializeToString())


def infra_validate(art, model, **cfg):
    from kfx.components.deploy import infra_validate as iv
    from kfx.pipeline.component import Context
    from kfx.pipeline.config import config_from_dict
    from kfx.pipeline.config_evaluation import InfraValidateConfig

    out = art["dir"] / f"out-{model}"
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out / iv.INFRA_BLESSING)
    ctx = Context(pipeline=config_from_dict({"name": "t", "ingest": {"format": "builtin", "name": "adult"}}),
                  config=InfraValidateConfig.model_validate({"server": "kfx", "canary_examples": 8, **cfg}),
                  inputs={"model": art[model], "examples": art["examples"]},
                  outputs={iv.INFRA_BLESSING: str(out / iv.INFRA_BLESSING)}, run_id="r", execution_id=1)
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    metrics = iv.run(ctx)
    # The server is shut down whatever happened.
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before
    result = json.loads((out / iv.INFRA_BLESSING / iv.INFRA_BLESSING_FILE).read_text())
    return metrics, result, out / iv.INFRA_BLESSING


def test_good_model_passes_every_signature_over_grpc(art):
    metrics, result, out = infra_validate(art, "good")
    assert metrics["infra_blessed"] is True and result["blessed"] is True, result["reasons"]
    assert result["server"] == "kfx serve"
    assert {(c["signature"], c["api"]) for c in result["checks"]} == {
        ("serving_default", "Predict"), ("classify", "Classify"), ("regress", "Regress")}
    assert all(c["passed"] and c["requests"] == 8 for c in result["checks"])
    assert (out / "INFRA_BLESSED").exists()
    assert "Successfully loaded servable" in (out / "server.log").read_text()


def test_model_answering_nan_is_refused(art):
    metrics, result, out = infra_validate(art, "nan")
    assert metrics["infra_blessed"] is False
    assert any("non-finite" in r and "serving_default" in r for r in result["reasons"]), result["reasons"]
    assert any("classify" in r for r in result["reasons"])
    assert (out / "INFRA_NOT_BLESSED").exists()


def test_model_the_server_cannot_load_is_refused(art):
    metrics, result, out = infra_validate(art, "bad_warmup", start_timeout_seconds=60)
    assert metrics["infra_blessed"] is False
    # Like tensorflow_model_server, kfx serve exits when its model fails to load (warmup failed).
    assert len(result["reasons"]) == 1, result["reasons"]
    assert "before the model was AVAILABLE" in result["reasons"][0]
    assert "did not become available" in result["reasons"][0]
    assert result["checks"] == []


def test_model_that_does_not_load_at_all_is_refused_without_a_server(art):
    metrics, result, _ = infra_validate(art, "no_vars")
    assert metrics["infra_blessed"] is False and result["server"] is None
    assert "does not load in process" in result["reasons"][0]


def _signature(output, **specs):
    """A concrete function taking keyword inputs, as a loaded SavedModel's signatures do."""
    import tensorflow as tf

    return tf.function(lambda **kw: {"y": output(**kw)}).get_concrete_function(**specs)


def test_a_signature_on_noise_gets_seeded_normal_draws_and_feature_signatures_none():
    import numpy as np
    import tensorflow as tf

    from kfx.components.deploy.infra_validate import _noise_inputs
    from kfx.pipeline.artifacts.scoring import Split

    data = Split(frame={"age": np.array([30.0, 40.0, 50.0])}, missing={"age": np.zeros(3, bool)},
                 serialized=[b"", b"", b""])
    decode = _signature(lambda noise: noise * 2, noise=tf.TensorSpec([None, 4], tf.float32, name="noise"))
    first, again = _noise_inputs(decode, data), _noise_inputs(decode, data)
    assert list(first) == ["noise"] and first["noise"].shape == (3, 4) and first["noise"].dtype == tf.float32
    np.testing.assert_array_equal(first["noise"].numpy(), again["noise"].numpy())  # seeded: the same canaries
    serve = _signature(lambda age: age, age=tf.TensorSpec([None], tf.float32, name="age"))
    examples = _signature(lambda inputs: inputs, inputs=tf.TensorSpec([None], tf.string, name="inputs"))
    assert _noise_inputs(serve, data) is None and _noise_inputs(examples, data) is None
