"""Prometheus metrics of one server, named, typed and printed as TF Serving's exporter prints them.

TF Serving (tensorflow_serving/util/prometheus_exporter.cc) turns a metric's name
/tensorflow/serving/x into :tensorflow:serving:x, writes only `# TYPE` lines (no HELP), sorts the
metrics by name, prints counters and gauges as integers without a `_total` suffix, and histograms
as `_bucket{...,le="..."}`, `_sum`, `_count` (bucket limits and sums as C++ prints doubles, six
significant digits). There is no `_created` sample. prometheus_client stores the values (it is
what makes them add up across `--num_workers` processes) and `exposition` prints them that way.

What is recorded follows tensorflow_serving/servables/tensorflow/util.cc and its callers:
- :tensorflow:serving:request_count{model_name,status}: every Predict / Classify / Regress over
  gRPC and every REST request, with the status code's name;
- :tensorflow:serving:request_latency{model_name,API,entrypoint}: microseconds, successful
  requests only; API is "Predict"/"Classify"/"Regress" over gRPC and the URL's verb over REST;
- :tensorflow:serving:batching_session:processed_batch_size: padded batch sizes (no labels);
- :tensorflow:serving:model_version_state{model_name,version,state}: a kfx addition (TF Serving
  has no such metric), 1 for the state each model version is in.

Several processes: when PROMETHEUS_MULTIPROC_DIR is set (kfx serve --num_workers sets it for
its workers), every process writes its values there and the page of any process shows the sums
over all of them (counters and histograms include workers that have exited); a version state is
1 when at least one live worker has the version in that state.
"""

import os

import prometheus_client as prom
from prometheus_client import multiprocess

STATE_NAMES = {10: "START", 20: "LOADING", 30: "AVAILABLE", 40: "UNLOADING", 50: "END"}

# TF Serving's latency buckets: microseconds, scale 10, power 1.8, 33 buckets (~20 minutes).
_LATENCY_BUCKETS = tuple(10 * 1.8 ** i for i in range(33))
# Batch sizes: Buckets::Exponential(1, 2, 14), i.e. 1 .. 8192.
_BATCH_BUCKETS = tuple(2 ** i for i in range(14))
# TF Serving's gRPC method names for the `API` label (REST uses the URL's lower-case verb).
_GRPC_APIS = {"predict": "Predict", "classify": "Classify", "regress": "Regress"}
# Metric names and their label names, in TF Serving's order (multiprocess files sort them by name).
REQUEST_COUNT = (":tensorflow:serving:request_count", ("model_name", "status"))
REQUEST_LATENCY = (":tensorflow:serving:request_latency", ("model_name", "API", "entrypoint"))
BATCH_SIZE = (":tensorflow:serving:batching_session:processed_batch_size", ())
MODEL_STATE = (":tensorflow:serving:model_version_state", ("model_name", "version", "state"))


class Metrics:
    """Request counts, latencies, batch sizes and model version states."""

    def __init__(self):
        self.registry = prom.CollectorRegistry()
        self._multiprocess_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        self.request_count = prom.Counter(REQUEST_COUNT[0], "The total number of requests.", REQUEST_COUNT[1],
                                          registry=self.registry)
        self.request_latency = prom.Histogram(
            REQUEST_LATENCY[0], "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
            REQUEST_LATENCY[1], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = prom.Histogram(BATCH_SIZE[0], "Tracks the batch size distribution on processing.",
                                         BATCH_SIZE[1], buckets=_BATCH_BUCKETS, registry=self.registry)
        self.model_state = prom.Gauge(
            MODEL_STATE[0], "1 for the state each model version is in (START, LOADING, AVAILABLE, UNLOADING, END).",
            MODEL_STATE[1], registry=self.registry, multiprocess_mode="livemax")

    def record_request(self, model: str, api: str, entrypoint: str, status: str, micros: float) -> None:
        """Counts one request and, when it succeeded, records its latency (as TF Serving does).

        Args:
            model: the request's model name.
            api: kfx's lower-case API name (predict, classify, regress, metadata, ...).
            entrypoint: "GRPC" or "REST".
            status: the gRPC status code's name ("OK", "NOT_FOUND", ...).
            micros: wall time of the request.
        """
        if entrypoint == "GRPC":
            api = _GRPC_APIS.get(api)
            if api is None:  # TF Serving counts only Predict, Classify and Regress over gRPC
                return
        self.request_count.labels(model, status).inc()
        if status == "OK" and api.lower() in _GRPC_APIS:
            self.request_latency.labels(model, api, entrypoint).observe(micros)

    def record_batch(self, model: str, size: int) -> None:
        """Records the (padded) size of one processed batch; TF Serving's metric has no model label."""
        del model
        self.batch_size.observe(size)

    def record_state(self, model: str, version: int, state: int) -> None:
        """Marks `state` as the current state of a model version."""
        for code, name in STATE_NAMES.items():
            self.model_state.labels(model, str(version), name).set(1 if code == state else 0)

    def exposition(self) -> bytes:
        """The page TF Serving's /monitoring/prometheus/metrics serves (sums over all workers)."""
        if self._multiprocess_dir:
            families = multiprocess.MultiProcessCollector(None, self._multiprocess_dir).collect()
        else:
            families = self.registry.collect()
        return render(families, dict((REQUEST_COUNT, REQUEST_LATENCY, BATCH_SIZE, MODEL_STATE)))


def _double(value: float) -> str:
    """A double as absl::StrCat prints it (six significant digits)."""
    return f"{value:.6g}"


def _labels(labels: dict, order=()) -> str:
    """k="v",... in `order` (then the others), with backslash and double quote escaped as TF
    Serving's SanitizeLabelValue does."""
    labels = sorted(labels.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order))
    return ",".join('{}="{}"'.format(k, str(v).replace("\\", "\\\\").replace('"', '\\"')) for k, v in labels)


def render(families, label_order: dict | None = None) -> bytes:
    """Prometheus text as TF Serving's PrometheusExporter::GeneratePage writes it.

    Args:
        families: prometheus_client Metric families (a registry's or a collector's collect()).
        label_order: {metric name: label names in the order to print them}.
    """
    label_order = label_order or {}
    lines = []
    for family in sorted(families, key=lambda f: f.name):
        kind = family.type if family.type in ("counter", "gauge", "histogram") else "untyped"
        order = label_order.get(family.name, ())
        lines.append(f"# TYPE {family.name} {kind}")
        if kind != "histogram":
            lines += [f"{family.name}{{{_labels(s.labels, order)}}} {int(s.value)}"
                      for s in family.samples if not s.name.endswith("_created")]
            continue
        points = {}  # label values -> {"buckets": [(le, count)], "sum": x, "count": n}
        for sample in family.samples:
            key = tuple((k, v) for k, v in sample.labels.items() if k != "le")
            point = points.setdefault(key, {"buckets": [], "sum": 0.0, "count": 0})
            if sample.name.endswith("_bucket"):
                point["buckets"].append((float(sample.labels["le"]), sample.value))
            elif sample.name.endswith("_sum"):
                point["sum"] = sample.value
            elif sample.name.endswith("_count"):
                point["count"] = sample.value
        for key, point in points.items():
            labels = _labels(dict(key), order)
            prefix = f"{family.name}_bucket{{{labels}{',' if labels else ''}"
            for le, count in sorted(point["buckets"]):
                lines.append(f'{prefix}le="{"+Inf" if le == float("inf") else _double(le)}"}} {int(count)}')
            lines.append(f"{family.name}_sum{{{labels}}} {_double(point['sum'])}")
            lines.append(f"{family.name}_count{{{labels}}} {int(point['count'])}")
    return ("\n".join(lines) + "\n").encode()
