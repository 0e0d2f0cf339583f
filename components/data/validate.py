"""validate: statistics against the schema, and against the last validated statistics (drift).

Schema checks per split: missing or unexpected feature, type, presence, string values outside
the domain, numbers outside int/float domains, values per example, images of another shape or
channel count than the schema's or undecodable (components/data/images.py). Drift on `drift_splits`:
L-infinity distance of category frequencies and Jensen-Shannon divergence (base 2, in [0, 1])
of numeric distributions, each with a per-feature threshold (the schema's drift_comparator,
else `validate.feature_thresholds`, else the defaults). Text features: empty texts and
out-of-vocabulary rate drift (components/data/text_stats.py).

With the optional `examples` input of a time series, also the gaps and out-of-order timestamps
ingest saw in each series (components/data/timeseries.py).

Output `anomalies`: Split-<name>/SchemaDiff.pb (tensorflow_metadata Anomalies, as TFX writes
it) and anomalies.txt. Any anomaly blocks the run when `validate.block` is true.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from kfx.components.data import images, text_stats
from kfx.pipeline.artifacts import ANOMALIES, load_schema, load_statistics, string_domain
from kfx.pipeline.config import ValidateConfig
from kfx.pipeline.component import ComponentError, ComponentSpec, Context

ANOMALIES_FILE = "SchemaDiff.pb"


def _common(fs):
    return fs.string_stats.common_stats if fs.HasField("string_stats") else fs.num_stats.common_stats


def _value_freqs(fs) -> dict[str, float]:
    counts = {b.label: b.sample_count for b in fs.string_stats.rank_histogram.buckets}
    total = sum(counts.values())
    return {k: v / total for k, v in counts.items()} if total else {}


def linf_distance(a, b) -> float:
    """L-infinity distance of two string features' value frequencies."""
    fa, fb = _value_freqs(a), _value_freqs(b)
    return max((abs(fa.get(k, 0.0) - fb.get(k, 0.0)) for k in set(fa) | set(fb)), default=0.0)


def _quantile_buckets(fs) -> tuple[np.ndarray, np.ndarray]:
    for h in fs.num_stats.histograms:
        if h.type == h.QUANTILES:
            lo = np.array([b.low_value for b in h.buckets])
            hi = np.array([b.high_value for b in h.buckets])
            return lo, hi
    return np.empty(0), np.empty(0)


def _cdf(lo: np.ndarray, hi: np.ndarray, v: np.ndarray, strict: bool) -> np.ndarray:
    """CDF of an equal-mass mixture of uniforms on [lo, hi] (point masses where lo == hi)."""
    width = hi - lo
    safe = np.where(width > 0, width, 1.0)
    frac = np.clip((v[:, None] - lo[None, :]) / safe[None, :], 0.0, 1.0)
    point = (v[:, None] > hi[None, :]) if strict else (v[:, None] >= hi[None, :])
    frac = np.where(width[None, :] > 0, frac, point.astype(float))
    return frac.mean(axis=1)


def js_divergence(a, b) -> float:
    """Jensen-Shannon divergence (base 2) of two numeric features, from quantile histograms."""
    (alo, ahi), (blo, bhi) = _quantile_buckets(a), _quantile_buckets(b)
    if not len(alo) or not len(blo):
        return 0.0
    edges = np.unique(np.concatenate([alo, ahi, blo, bhi]))

    def masses(lo, hi):
        at = _cdf(lo, hi, edges, strict=False) - _cdf(lo, hi, edges, strict=True)  # point masses
        between = _cdf(lo, hi, edges[1:], strict=True) - _cdf(lo, hi, edges[:-1], strict=False)
        m = np.clip(np.concatenate([at, between]), 0, None)
        return m / m.sum()

    p, q = masses(alo, ahi), masses(blo, bhi)
    mid = (p + q) / 2

    def kl(x, y):
        nz = x > 0
        return float(np.sum(x[nz] * np.log2(x[nz] / y[nz])))

    return max(0.0, (kl(p, mid) + kl(q, mid)) / 2)


class Findings:
    """Collects anomalies per split into Anomalies protos."""

    def __init__(self, schema):
        from tensorflow_metadata.proto.v0 import anomalies_pb2

        self.pb = anomalies_pb2
        self.schema = schema
        self.by_split: dict[str, Any] = {}
        self.lines: list[str] = []

    def add(self, split: str, feature: str, kind: str, short: str, detail: str) -> None:
        an = self.by_split.setdefault(split, self.pb.Anomalies(baseline=self.schema))
        an.anomaly_name_format = self.pb.Anomalies.SERIALIZED_PATH
        info = an.anomaly_info[feature]
        info.path.step[:] = [feature]
        info.severity = self.pb.AnomalyInfo.ERROR
        info.reason.add(type=getattr(self.pb.AnomalyInfo, kind), short_description=short, description=detail)
        info.short_description = short if len(info.reason) == 1 else "Multiple errors"
        info.description = " ".join(r.description for r in info.reason)
        self.lines.append(f"feature {feature!r} (split {split}): {short}: {detail}")


def check_schema(findings: Findings, schema, split: str, ds) -> None:
    from tensorflow_metadata.proto.v0 import schema_pb2, statistics_pb2 as st

    stats = {f.path.step[0]: f for f in ds.features}
    n = ds.num_examples
    kinds = {st.FeatureNameStatistics.INT: schema_pb2.INT, st.FeatureNameStatistics.FLOAT: schema_pb2.FLOAT,
             st.FeatureNameStatistics.STRING: schema_pb2.BYTES}
    type_name = {schema_pb2.INT: "INT", schema_pb2.FLOAT: "FLOAT", schema_pb2.BYTES: "BYTES"}
    for f in schema.feature:
        fs = stats.get(f.name)
        required = f.presence.min_count > 0 or f.presence.min_fraction > 0
        if fs is None:
            if required and n > 0:
                findings.add(split, f.name, "SCHEMA_MISSING_COLUMN", "Column dropped",
                             "The feature is in the schema but not in the data (expected in every example).")
            continue
        got = kinds[fs.type]
        if got != f.type:
            findings.add(split, f.name, "UNEXPECTED_DATA_TYPE", "Unexpected data type",
                         f"Expected {type_name[f.type]}, observed {type_name[got]}.")
            continue
        common = _common(fs)
        if n and common.num_non_missing / n < f.presence.min_fraction:
            findings.add(split, f.name, "FEATURE_TYPE_LOW_FRACTION_PRESENT", "Column missing in some examples",
                         f"Present in {common.num_non_missing / n:.4f} of examples, expected at least "
                         f"{f.presence.min_fraction:.4f}.")
        if f.HasField("value_count") and common.num_non_missing:
            if f.value_count.max and common.max_num_values > f.value_count.max:
                findings.add(split, f.name, "FEATURE_TYPE_HIGH_NUMBER_VALUES", "Too many values",
                             f"Up to {common.max_num_values} values per example, expected at most {f.value_count.max}.")
            if common.min_num_values < f.value_count.min:
                findings.add(split, f.name, "FEATURE_TYPE_LOW_NUMBER_VALUES", "Too few values",
                             f"Down to {common.min_num_values} values per example, expected at least {f.value_count.min}.")
        if fs.HasField("string_stats"):
            images.check(findings, split, f, fs)
            domain = string_domain(schema, f)
            if domain is not None:
                extra = {b.label: int(b.sample_count) for b in fs.string_stats.rank_histogram.buckets
                         if b.label not in set(domain)}
                if extra:
                    shown = ", ".join(f"{k!r} ({v})" for k, v in sorted(extra.items(), key=lambda kv: -kv[1])[:10])
                    findings.add(split, f.name, "ENUM_TYPE_UNEXPECTED_STRING_VALUES", "Unexpected string values",
                                 f"Values outside the domain: {shown}; the domain has {len(domain)} values.")
        elif fs.num_stats.common_stats.num_non_missing:
            ns = fs.num_stats
            dom = f.int_domain if f.HasField("int_domain") else f.float_domain if f.HasField("float_domain") else None
            is_int = f.HasField("int_domain")
            if dom is not None and dom.HasField("min") and ns.min < dom.min:
                findings.add(split, f.name, "INT_TYPE_SMALL_INT" if is_int else "FLOAT_TYPE_SMALL_FLOAT",
                             "Out-of-range values", f"Minimum {ns.min:g} is below the domain minimum {dom.min:g}.")
            if dom is not None and dom.HasField("max") and ns.max > dom.max:
                findings.add(split, f.name, "INT_TYPE_BIG_INT" if is_int else "FLOAT_TYPE_BIG_FLOAT",
                             "Out-of-range values", f"Maximum {ns.max:g} is above the domain maximum {dom.max:g}.")
    known = {f.name for f in schema.feature}
    for name in stats:
        if name not in known:
            findings.add(split, name, "SCHEMA_NEW_COLUMN", "New column",
                         "The feature is in the data but not in the schema.")


def check_drift(findings: Findings, schema, split: str, ds, base, cfg) -> dict[str, float]:
    """Compare one split with the baseline's same split; returns {feature: distance}."""
    base_feats = {f.path.step[0]: f for f in base.features}
    schema_feats = {f.name: f for f in schema.feature}
    out = {}
    for fs in ds.features:
        name = fs.path.step[0]
        bf = base_feats.get(name)
        if bf is None or bf.type != fs.type:
            continue
        sf = schema_feats.get(name)
        if fs.HasField("string_stats"):
            dist = linf_distance(fs, bf)
            comp = sf.drift_comparator.infinity_norm if sf is not None and sf.HasField("drift_comparator") else None
            default, kind, label = cfg.categorical_drift_threshold, "COMPARATOR_L_INFTY_HIGH", "L-infinity distance"
        else:
            dist = js_divergence(fs, bf)
            comp = (sf.drift_comparator.jensen_shannon_divergence
                    if sf is not None and sf.HasField("drift_comparator") else None)
            default, kind, label = cfg.numeric_drift_threshold, "COMPARATOR_JENSEN_SHANNON_DIVERGENCE_HIGH", "Jensen-Shannon divergence"
        threshold = comp.threshold if comp is not None and comp.threshold else cfg.feature_thresholds.get(name, default)
        out[name] = round(dist, 6)
        if dist > threshold:
            findings.add(split, name, kind, "High drift",
                         f"{label} {dist:.4f} from the last validated data is above the threshold {threshold:g}.")
    return out


def run(ctx: Context) -> dict[str, Any]:
    import tensorflow as tf

    cfg = ctx.config
    schema = load_schema(ctx.inputs["schema"])
    stats = load_statistics(ctx.inputs["statistics"])
    base_uri = ctx.inputs.get("baseline_statistics")
    baseline = load_statistics(base_uri) if base_uri else None
    findings = Findings(schema)
    for split, ds in stats.items():
        check_schema(findings, schema, split, ds)
    if ctx.inputs.get("examples"):  # a time series: gaps and out-of-order rows that ingest saw
        from kfx.components.data.timeseries import check_series

        check_series(findings, ctx.inputs["examples"])
    drift = {}
    if baseline is not None:
        for split in cfg.drift_splits:
            if split in stats and split in baseline:
                drift[split] = check_drift(findings, schema, split, stats[split], baseline[split], cfg)

    text = text_stats.check(findings, schema, stats, baseline, cfg)  # empty texts, OOV-rate drift

    out = ctx.outputs[ANOMALIES]
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    for split in stats:
        an = findings.by_split.get(split, anomalies_pb2.Anomalies(baseline=schema))
        tf.io.gfile.makedirs(f"{out}/Split-{split}")
        with tf.io.gfile.GFile(f"{out}/Split-{split}/{ANOMALIES_FILE}", "wb") as f:
            f.write(an.SerializeToString())
    header = (f"baseline statistics: {base_uri}" if base_uri
              else "baseline statistics: none (first validated data; drift not checked)")
    with tf.io.gfile.GFile(f"{out}/anomalies.txt", "w") as f:
        f.write("\n".join([header, *(findings.lines or ["no anomalies"])]) + "\n")
    metrics = {"anomalies": len(findings.lines), "baseline": base_uri, "drift": drift, "text": text}
    if findings.lines and cfg.block:
        raise ComponentError(f"validate: {len(findings.lines)} blocking anomal"
                             f"{'y' if len(findings.lines) == 1 else 'ies'}: " + "; ".join(findings.lines))
    return metrics


SPEC = ComponentSpec(name="validate", config=ValidateConfig,
                     inputs=("statistics", "schema", "baseline_statistics", "examples"),
                     outputs=(ANOMALIES,), run=run, optional_inputs=("baseline_statistics", "examples"),
                     code=("kfx.pipeline.artifacts", "kfx.components.data.images", "kfx.components.data.text_stats",
                           "kfx.components.data.timeseries"))
