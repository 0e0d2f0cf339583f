"""Server-side batching: fewer model runs than requests, per-request answers equal to unbatched ones
(padded batches included), batch-size metrics, full queue."""

import json
import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf

from kfx.serving.batching import QUEUE_FULL
from kfx.serving.client import ServingClient
from tests.serving.conftest import ServerProcess, write_config

BATCHING = """
max_batch_size { value: 4 }
batch_timeout_micros { value: 1000000 }
max_enqueued_batches { value: 1 }
num_batch_threads { value: 1 }
allowed_batch_sizes: 2
allowed_batch_sizes: 4
"""


@pytest.fixture(scope="module")
def server(models_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("batching")
    (tmp / "batching.config").write_text(BATCHING)
    (tmp / "monitoring.config").write_text('prometheus_config { enable: true path: "/metrics" }\n')
    config = write_config(str(tmp / "models.config"), [("keras", str(models_dir / "keras"), ""),
                                                        ("tf2", str(models_dir / "tf2"), "")])
    proc = ServerProcess(tmp, f"--model_config_file={config}", "--enable_batching",
                         f"--batching_parameters_file={tmp / 'batching.config'}",
                         f"--monitoring_config_file={tmp / 'monitoring.config'}", rest=True)
    try:
        yield proc.wait_serving()
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def client(server):
    with ServingClient(server.target, retries=0, timeout=60) as c:
        yield c


def _batch_metrics(server) -> tuple:
    """(batches run, sum of their padded sizes) from the Prometheus page; TF Serving's metric has no
    model label, so callers take the difference around their own requests."""
    page = urllib.request.urlopen(f"http://127.0.0.1:{server.rest_port}/metrics").read().decode()
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in page.splitlines()
               if line.startswith(":tensorflow:serving:batching_session:processed_batch_size")}
    name = ":tensorflow:serving:batching_session:processed_batch_size_{}{{}}"
    return samples.get(name.format("count"), 0.0), samples.get(name.format("sum"), 0.0)


def _send_concurrently(client, model: str, inputs: list) -> tuple:
    """Sends every request at once from its own thread; returns ({i: outputs}, failures).

    max_enqueued_batches is 1: a request that finds the open batch too full to join is answered
    UNAVAILABLE at once, as by TF Serving, and is sent again. Rejected requests never run, so
    batch counts still hold.
    """
    results, failures = {}, []

    def send(i):
        for _ in range(200):
            try:
                results[i] = {k: v.tolist() for k, v in client.predict(model, inputs[i]).items()}
                return
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or QUEUE_FULL not in exc.details():
                    failures.append(f"request {i}: {exc.code().name}: {exc.details()}")
                    return
            time.sleep(0.05)
        failures.append(f"request {i}: queue still full after 200 attempts")

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(inputs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, failures


def test_concurrent_requests_are_batched_and_answered_individually(server, client, models_dir):
    # Requests of 1, 2 and 3 rows (15 rows in all, an odd number, so some batch is padded),
    # integer-valued so batched and unbatched float sums are exactly equal.
    rng = np.random.default_rng(0)
    inputs = [rng.integers(0, 100, size=(1 + i % 3, 3)).astype(np.float32) for i in range(8)]
    unbatched = tf.saved_model.load(str(models_dir / "keras" / "2")).signatures["serving_default"]
    expected = [unbatched(x=tf.constant(x))["y"].numpy().tolist() for x in inputs]
    runs_before, rows_before = _batch_metrics(server)
    results, failures = _send_concurrently(client, "keras", [{"x": x} for x in inputs])
    assert failures == []
    # Every response equals what the model answers for that request alone, row for row.
    assert {i: r["y"] for i, r in results.items()} == dict(enumerate(expected))
    runs_after, rows_after = _batch_metrics(server)
    runs, padded_rows = runs_after - runs_before, rows_after - rows_before
    print(f"\n{len(inputs)} requests ({sum(len(x) for x in inputs)} rows) ran in {runs:.0f} model runs "
          f"({padded_rows:.0f} rows after padding)")
    assert runs < len(inputs)  # requests were merged
    assert padded_rows > sum(len(x) for x in inputs)  # some batch was padded to an allowed size
    assert padded_rows % 2 == 0 and 2 * runs <= padded_rows <= 4 * runs  # only allowed sizes (2, 4) run


def test_string_and_int_inputs_batch_and_split_like_unbatched_runs(server, client, models_dir):
    # Several inputs (int64 age, string name) and outputs (float score, string greeting), 7 requests
    # of 1-3 rows with names of different lengths: every answer equals the unbatched model's.
    inputs = [{"age": np.arange(1 + i % 3, dtype=np.int64) + 10 * i,
               "name": np.array([f"n{i}{'x' * j}".encode() for j in range(1 + i % 3)], object)} for i in range(7)]
    unbatched = tf.saved_model.load(str(models_dir / "tf2" / "1")).signatures["serving_default"]
    expected = {i: {k: v.numpy().tolist() for k, v in unbatched(age=tf.constant(x["age"]),
                                                                 name=tf.constant(x["name"])).items()}
                for i, x in enumerate(inputs)}
    runs_before, rows_before = _batch_metrics(server)
    results, failures = _send_concurrently(client, "tf2", inputs)
    assert failures == []
    assert results == expected
    runs, padded_rows = (after - before for after, before in zip(_batch_metrics(server),
                                                                (runs_before, rows_before)))
    assert runs < len(inputs) and padded_rows % 2 == 0 and padded_rows >= sum(len(x["age"]) for x in inputs)


def test_single_row_is_padded_to_allowed_size(client):
    assert client.predict("keras", {"x": np.array([[1, 2, 3]], np.float32)})["y"].tolist() == [[16.0]]


def test_full_queue_answers_unavailable_at_once(client):
    # One open batch (3 of 4 rows, waiting for its 1 s timeout) fills max_enqueued_batches=1,
    # so a 2-row request cannot be queued and is rejected without waiting.
    for _ in range(3):
        outcomes = []

        def send(rows):
            try:
                y = client.predict("keras", {"x": np.ones((rows, 3), np.float32)})["y"]
                outcomes.append(("ok", rows, y.ravel().tolist()))
            except grpc.RpcError as exc:
                outcomes.append((exc.code(), rows, exc.details()))

        first = threading.Thread(target=send, args=(3,))
        first.start()
        second = threading.Thread(target=send, args=(2,))
        second.start()
        first.join()
        second.join()
        rejected = [o for o in outcomes if o[0] != "ok"]
        if rejected:
            break
    assert len(rejected) == 1
    assert rejected[0][0] == grpc.StatusCode.UNAVAILABLE and rejected[0][2] == QUEUE_FULL
    accepted = [o for o in outcomes if o[0] == "ok"][0]
    assert accepted[2] == [13.0] * accepted[1]


def test_task_larger_than_max_batch_size(client):
    with pytest.raises(grpc.RpcError) as info:
        client.predict("keras", {"x": np.ones((5, 3), np.float32)})
    assert (info.value.code(), info.value.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT, "Task size 5 is larger than maximum input batch size 4")


def test_rest_goes_through_batching_too(server):
    request = urllib.request.Request(f"http://127.0.0.1:{server.rest_port}/v1/models/keras:predict",
                                     data=json.dumps({"instances": [[1, 1, 1]]}).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        assert json.loads(response.read()) == {"predictions": [[13.0]]}


def test_request_that_times_out_in_its_batch_leaves_the_batch_serving(client):
    # The first request gives up (DEADLINE_EXCEEDED) while its batch waits for the 1 s timeout;
    # the batch still runs and the next request, which joins it, gets its own answer.
    with pytest.raises(grpc.RpcError) as info:
        client.predict("keras", {"x": np.ones((1, 3), np.float32)}, timeout=0.2)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert client.predict("keras", {"x": np.array([[1, 2, 3]], np.float32)})["y"].tolist() == [[16.0]]
