"""Hot reload under load, corrupt and half-written versions, version policy, config reload."""

import os
import shutil
import threading
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc, predict_pb2, prediction_log_pb2
from tensorflow_serving.config import model_server_config_pb2

from kfx.serving.client import ServingClient
from tests.serving.conftest import ServerProcess, build_keras, write_config

X = np.array([[1.0, 2.0, 3.0]], np.float32)  # y = 6 + bias


def wait_for(check, what: str, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def publish(base, version: int, bias: float, tmp, warmup_inputs=None) -> None:
    """Writes a version elsewhere, then renames it into the base path (as kfx push does)."""
    staging = str(tmp / f"staging-{version}")
    build_keras(staging, bias)
    if warmup_inputs is not None:
        request = predict_pb2.PredictRequest()
        for alias, value in warmup_inputs.items():
            request.inputs[alias].CopyFrom(tf.make_tensor_proto(value))
        os.makedirs(os.path.join(staging, "assets.extra"))
        with tf.io.TFRecordWriter(os.path.join(staging, "assets.extra", "tf_serving_warmup_requests")) as w:
            w.write(prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)).SerializeToString())
    os.rename(staging, str(base / str(version)))


@pytest.fixture(scope="module")
def setup(models_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reload")
    base = tmp / "hot"
    base.mkdir()
    shutil.copytree(models_dir / "keras" / "1", base / "1")
    config = write_config(str(tmp / "models.config"), [("hot", str(base), "")])
    server = ServerProcess(tmp, f"--model_config_file={config}", "--file_system_poll_wait_seconds=1",
                           "--model_config_file_poll_wait_seconds=1", "--max_num_load_retries=0")
    try:
        yield server.wait_serving(), base, tmp
    finally:
        server.stop()


class Load:
    """Background clients predicting on the latest version; records answers and errors."""

    def __init__(self, target: str, clients: int = 8):
        self.stop, self.errors, self.answers = threading.Event(), [], set()
        self.threads = [threading.Thread(target=self._run, args=(target,)) for _ in range(clients)]
        for thread in self.threads:
            thread.start()

    def _run(self, target):
        with ServingClient(target, retries=0, timeout=30) as client:
            while not self.stop.is_set():
                try:
                    self.answers.add(client.predict("hot", {"x": X})["y"].item())
                except Exception as exc:  # any failure during a swap is a bug
                    self.errors.append(repr(exc))

    def finish(self):
        self.stop.set()
        for thread in self.threads:
            thread.join()


def states(client):
    return {version: (state, code, message) for version, state, code, message in client.status("hot")}


def test_hot_reload_and_bad_versions_under_load_fail_no_request(setup):
    server, base, tmp = setup
    with ServingClient(server.target, retries=0) as client:
        load = Load(server.target)
        try:
            publish(base, 2, 10.0, tmp)
            wait_for(lambda: states(client).get(1, ("",))[0] == "END" and states(client)[2][0] == "AVAILABLE",
                     "version 2 to replace version 1")
            wait_for(lambda: 16.0 in load.answers, "answers from version 2")

            (base / "3").mkdir()  # corrupt: not a SavedModel
            (base / "3" / "saved_model.pb").write_bytes(b"\x08\x96\x01 this is not a SavedModel")
            corrupt = wait_for(lambda: states(client).get(3, ("",))[0] == "END" and states(client)[3],
                               "the corrupt version to fail")
            assert corrupt[1] != 0 and corrupt[2]

            (base / "4" / "variables").mkdir(parents=True)  # half-written: no saved_model.pb yet
            half = wait_for(lambda: states(client).get(4, ("",))[0] == "END" and states(client)[4],
                            "the half-written version to fail")
            assert half[1] != 0 and "saved_model" in half[2].lower()

            publish(base, 5, 50.0, tmp, warmup_inputs={"z": X})  # its warmup request is invalid
            warm = wait_for(lambda: states(client).get(5, ("",))[0] == "END" and states(client)[5],
                            "the version with a failing warmup to fail")
            assert warm[1] == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "Signature input alias: x" in warm[2]
            assert states(client)[2][0] == "AVAILABLE"  # still serving through all three failures
            assert client.predict("hot", {"x": X})["y"].item() == 16.0

            publish(base, 6, 100.0, tmp, warmup_inputs={"x": X})
            wait_for(lambda: states(client).get(6, ("",))[0] == "AVAILABLE" and states(client)[2][0] == "END",
                     "version 6 to replace version 2")
            wait_for(lambda: 106.0 in load.answers, "answers from version 6")
        finally:
            load.finish()
    assert load.errors == []
    assert load.answers <= {6.0, 16.0, 106.0} and {6.0, 16.0, 106.0} <= load.answers


def _reload(server, config_text: str):
    request = model_management_pb2.ReloadConfigRequest()
    from google.protobuf import text_format

    text_format.Parse(config_text, request.config)
    stub = model_service_pb2_grpc.ModelServiceStub(server.channel)
    return stub.HandleReloadConfigRequest(request, timeout=120)


def test_version_policy_and_handle_reload_config(setup, models_dir):
    server, base, _ = setup
    keras_base = models_dir / "keras"
    with ServingClient(server.target, retries=0) as client:
        # latest{2}: versions 5 (failed) and 6 are aspired; 6 keeps serving.
        response = _reload(server, f'model_config_list {{ config {{ name: "hot" base_path: "{base}" '
                                   'model_platform: "tensorflow" model_version_policy { latest { num_versions: 2 } } } }')
        assert response.status.error_code == 0
        assert client.predict("hot", {"x": X})["y"].item() == 106.0

        # A label on a version that is not loaded yet is refused, and nothing changes.
        with pytest.raises(grpc.RpcError) as info:
            _reload(server, f'model_config_list {{ config {{ name: "extra" base_path: "{keras_base}" '
                            'model_platform: "tensorflow" version_labels { key: "stable" value: 1 } } }')
        assert (info.value.code(), info.value.details()) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "Request to assign label to version 1 of model extra, which is not currently available for inference")
        assert client.predict("hot", {"x": X})["y"].item() == 106.0

        # Replace the config: "hot" leaves (unloaded), "extra" serves versions 1 and 2.
        _reload(server, f'model_config_list {{ config {{ name: "extra" base_path: "{keras_base}" '
                        'model_platform: "tensorflow" model_version_policy { all {} } } }')
        client.wait_until_available("extra", version=1)  # reload waits for one version, as TF Serving
        assert client.predict("extra", {"x": X}, version=1)["y"].item() == 6.0
        client.wait_until_available("extra", version=2)  # loading in parallel; not what the reload waits for
        assert client.predict("extra", {"x": X})["y"].item() == 16.0
        wait_for(lambda: all(s[0] == "END" for s in states(client).values()), "hot to unload")
        with pytest.raises(grpc.RpcError) as info:
            client.predict("hot", {"x": X})
        assert (info.value.code(), info.value.details()) == (grpc.StatusCode.NOT_FOUND,
                                                             "Servable not found for request: Latest(hot)")

        # Now that version 1 is AVAILABLE a label may point at it; specific{2} then unloads 1.
        _reload(server, f'model_config_list {{ config {{ name: "extra" base_path: "{keras_base}" '
                        'model_platform: "tensorflow" model_version_policy { all {} } '
                        'version_labels { key: "stable" value: 1 } } }')
        assert client.predict("extra", {"x": X}, label="stable")["y"].item() == 6.0
        _reload(server, f'model_config_list {{ config {{ name: "extra" base_path: "{keras_base}" '
                        'model_platform: "tensorflow" model_version_policy { specific { versions: 2 } } } }')
        wait_for(lambda: dict((v, s) for v, s, _, _ in client.status("extra")) == {1: "END", 2: "AVAILABLE"},
                 "specific{2} to unload version 1")
        with pytest.raises(grpc.RpcError) as info:
            client.predict("extra", {"x": X}, label="stable")
        assert info.value.details() == "Unrecognized servable version label: stable"


def test_reload_config_rejects_bad_configs(setup):
    server, _, tmp = setup
    with pytest.raises(grpc.RpcError) as info:
        _reload(server, f'model_config_list {{ config {{ name: "x" base_path: "{tmp}/missing" '
                        'model_platform: "tensorflow" } }')
    assert (info.value.code(), info.value.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT, f"Could not find base path {tmp}/missing for servable x")
    config = model_server_config_pb2.ModelServerConfig()
    assert config.WhichOneof("config") is None


def test_model_config_file_is_polled(setup, models_dir):
    """--model_config_file_poll_wait_seconds: an edit of the file is applied without a request
    (TF Serving's testModelConfigReload). Runs last: it replaces what the tests above configured."""
    server, _, tmp = setup
    write_config(str(tmp / "models.config"), [("polled", str(models_dir / "keras"), "")])
    with ServingClient(server.target, retries=0) as client:
        client.wait_until_available("polled", timeout=60)
        assert client.predict("polled", {"x": X})["y"].item() == 16.0  # version 2: bias 10
        wait_for(lambda: all(state == "END" for _, state, _, _ in client.status("extra")),
                 "extra, which the file no longer lists, to unload")
