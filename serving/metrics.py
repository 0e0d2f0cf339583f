"""Prometheus metrics of one server, named after TF Serving's (/tensorflow/serving/... with
'/' turned into ':' as its Prometheus exporter does). Each server owns its registry."""

import prometheus_client as prom

STATE_NAMES = {10: "START", 20: "LOADING", 30: "AVAILABLE", 40: "UNLOADING", 50: "END"}

# TF Serving's latency buckets: microseconds, scale 10, power 1.8, 33 buckets (~20 minutes).
_LATENCY_BUCKETS = tuple(10 * 1.8 ** i for i in range(33))
_BATCH_BUCKETS = tuple(2 ** i for i in range(15))


class Metrics:
    """Request counts, latencies, batch sizes and model version states."""

    def __init__(self):
        self.registry = prom.CollectorRegistry()
        self.request_count = prom.Counter(
            ":tensorflow:serving:request_count", "The total number of requests.",
            ["model_name", "status"], registry=self.registry)
        self.request_latency = prom.Histogram(
            ":tensorflow:serving:request_latency",
            "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
            ["model_name", "API", "entrypoint", "status"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = prom.Histogram(
            ":tensorflow:serving:batching_session:processed_batch_size",
            "Tracks the batch size distribution on processing (padded size).",
            ["model_name"], buckets=_BATCH_BUCKETS, registry=self.registry)
        self.model_state = prom.Gauge(
            ":tensorflow:serving:model_version_state",
            "1 for the state each model version is in (START, LOADING, AVAILABLE, UNLOADING, END).",
            ["model_name", "version", "state"], registry=self.registry)

    def record_request(self, model: str, api: str, entrypoint: str, status: str, micros: float) -> None:
        """Counts one request and records its latency."""
        self.request_count.labels(model, status).inc()
        self.request_latency.labels(model, api, entrypoint, status).observe(micros)

    def record_batch(self, model: str, size: int) -> None:
        """Records the (padded) size of one processed batch."""
        self.batch_size.labels(model).observe(size)

    def record_state(self, model: str, version: int, state: int) -> None:
        """Marks `state` as the current state of a model version."""
        for code, name in STATE_NAMES.items():
            self.model_state.labels(model, str(version), name).set(1 if code == state else 0)

    def exposition(self) -> bytes:
        """The text exposition format page."""
        return prom.generate_latest(self.registry)
