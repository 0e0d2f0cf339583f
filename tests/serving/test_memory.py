"""20 load/unload cycles of a model version keep the server's resident memory bounded.

A cycle is what a user does through ModelService.HandleReloadConfigRequest (the same path as an
edited --model_config_file): add model "cycled" to the config, wait until its version is
AVAILABLE, query it, remove it from the config, wait until the version is END (unloaded).

The cycled model carries 16 MiB of weights, so that a version whose memory is not freed on
unload shows: one kept in memory costs ~35 MiB of RSS (measured by skipping Servable.close:
+216 MiB after 6 cycles), so two such leaks in 20 cycles already exceed the bound.
"""

import time

import numpy as np
from google.protobuf import text_format
from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

from kfx.serving.client import ServingClient
from tests.serving.conftest import ServerProcess, write_config

CYCLES = 20
WARMUP_CYCLES = 2
# RSS may grow this much over the 20 cycles after the warm-up ones while the allocator's caches
# settle: measured +17.7 MiB, flat after ~14 cycles (+20 MiB after 40). A leaked version costs
# ~35 MiB (see above), so the bound fails from the second one.
RSS_GROWTH_BOUND = 48 * 2**20
X = np.array([[1, 2, 3]], np.float32)


def build_heavy(path: str) -> str:
    """A Keras export with a 2048 x 2048 float32 (16 MiB) kernel; deterministic weights."""
    import keras

    inputs = keras.Input((3,), name="x", dtype="float32")
    hidden = keras.layers.Dense(2048, activation="relu", kernel_initializer="ones")(inputs)
    wide = keras.layers.Dense(2048, kernel_initializer=keras.initializers.Constant(1e-3))(hidden)
    outputs = keras.layers.Dense(1, name="y", kernel_initializer="ones")(wide)
    keras.Model({"x": inputs}, {"y": outputs}).export(path, verbose=False)
    return path


def _config(models: list) -> str:
    return "model_config_list {" + "".join(
        f' config {{ name: "{name}" base_path: "{base}" model_platform: "tensorflow" }}' for name, base in models) + " }"


def _reload(stub, text: str) -> None:
    request = model_management_pb2.ReloadConfigRequest()
    text_format.Parse(text, request.config)
    assert stub.HandleReloadConfigRequest(request, timeout=120).status.error_code == 0


def _wait_unloaded(client, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if [s[1] for s in client.status("cycled")] == ["END"]:
            return
        time.sleep(0.05)
    raise AssertionError(f"cycled not unloaded: {client.status('cycled')}")


def test_load_unload_cycles_keep_rss_bounded(models_dir, tmp_path):
    anchor = ("keras", str(models_dir / "keras"))
    cycled = ("cycled", str(tmp_path / "heavy"))
    build_heavy(str(tmp_path / "heavy" / "1"))
    config = write_config(str(tmp_path / "models.config"), [(*anchor, "")])
    server = ServerProcess(tmp_path, f"--model_config_file={config}", "--file_system_poll_wait_seconds=0")
    try:
        server.wait_serving()
        stub = model_service_pb2_grpc.ModelServiceStub(server.channel)
        with ServingClient(server.target, retries=0, timeout=60) as client:

            answers = []

            def cycle() -> int:
                """One load/query/unload cycle; returns the RSS while the version was loaded."""
                _reload(stub, _config([anchor, cycled]))
                answers.append(client.predict("cycled", {"x": X})["y"].tolist())
                loaded = server.rss()
                _reload(stub, _config([anchor]))
                _wait_unloaded(client)
                assert client.predict("keras", {"x": X})["y"].tolist() == [[16.0]]
                return loaded

            for _ in range(WARMUP_CYCLES):
                cycle()
            before = server.rss()
            loaded = [cycle() for _ in range(CYCLES)]
            after = server.rss()
    finally:
        server.stop()
    assert all(answer == answers[0] for answer in answers), answers  # every reload serves the same model
    mib = 2**20
    print(f"\nRSS after {WARMUP_CYCLES} warm-up cycles {before / mib:.1f} MiB, after {CYCLES} more "
          f"{after / mib:.1f} MiB (growth {(after - before) / mib:+.1f} MiB, bound {RSS_GROWTH_BOUND / mib:.0f} MiB); "
          f"loaded peaks {min(loaded) / mib:.1f}-{max(loaded) / mib:.1f} MiB")
    assert after - before <= RSS_GROWTH_BOUND
