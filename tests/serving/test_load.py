"""30 seconds of 32 concurrent clients: zero errors, correct answers, bounded server memory."""

import threading
import time

import numpy as np

from kfx.serving.client import ServingClient

CLIENTS = 32
SECONDS = 30
# Growth allowed over the run, after a warm-up phase has filled caches and thread pools.
# A per-request leak of even 1 KB over the ~10^5 requests of the run would exceed it.
RSS_GROWTH_BOUND = 64 * 2**20


def _hammer(target: str, stop: threading.Event, counts: list, errors: list, seed: int) -> None:
    rng = np.random.default_rng(seed)
    with ServingClient(target, retries=0, timeout=30) as client:
        while not stop.is_set():
            x = rng.integers(0, 100, size=(1, 3)).astype(np.float32)
            try:
                if seed % 4 == 0:
                    age = int(x[0, 0])
                    out = client.predict("tf2", {"age": np.array([age], np.int64), "name": np.array([b"n"])})
                    ok = out["score"].tolist() == [age * 0.5]
                else:
                    ok = client.predict("keras", {"x": x}, version=1)["y"].tolist() == [[float(x.sum())]]
                if not ok:
                    errors.append(f"wrong answer for {x}")
            except Exception as exc:  # every failure is counted, none may happen
                errors.append(repr(exc))
            counts[seed] += 1


def _run(target: str, seconds: float) -> tuple:
    stop, errors, counts = threading.Event(), [], [0] * CLIENTS
    threads = [threading.Thread(target=_hammer, args=(target, stop, counts, errors, i)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    return sum(counts), errors


def test_32_clients_for_30_seconds_zero_errors_bounded_memory(main_server):
    warm_requests, warm_errors = _run(main_server.target, 3)
    assert warm_errors == []
    before = main_server.rss()
    requests, errors = _run(main_server.target, SECONDS)
    after = main_server.rss()
    assert errors == []
    assert requests > CLIENTS * 10
    assert after - before < RSS_GROWTH_BOUND, f"RSS grew {(after - before) / 2**20:.1f} MiB over {requests} requests"
    print(f"\n{requests} requests in {SECONDS}s, RSS {before / 2**20:.0f} -> {after / 2**20:.0f} MiB")
