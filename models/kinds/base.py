"""The feature-kind interface: what one transform kind (normalize, one_hot, text, ...) owns.

A kind is one class. Built from a raw dtype and its options (read from the transform config by
`configure`), it runs on both sides of the transform graph:
  * Beam (components/transform): `accumulate` turns one batch of numpy values into a partial
    accumulator, `merge` combines two (associative and commutative, so Beam may merge in any
    order), `finalize` turns the merged accumulator into the JSON `state` stored in
    transform.json plus the lines analyzers.json reports;
  * Keras (models/preprocess.py): `layer` builds the Keras layer (or None) from the state and
    `apply` maps the raw tensor to the transformed one, inside the exported model;
  * the model (models/tabular.py): `describe` is the output description a family builds on.
Also here: the numpy analyzer helpers kinds share (moments, value counts, quantile summaries,
vocabularies). Nothing imports TensorFlow at module level: the config loader reads the class
attributes.
"""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

INT, FLOAT, STRING = "int64", "float32", "string"  # raw dtypes (transform.json raw_features)
NUMBERS = (INT, FLOAT)
DENSE, IDS, SEQUENCE, IMAGE = "dense", "ids", "sequence", "image"  # output descriptions' kinds


class Kind:
    """Base of every feature kind; subclasses set the class attributes and override what they use.

    Attributes:
        dtype: the raw feature's dtype (`INT`, `FLOAT` or `STRING`).
        options: this feature's settings from `configure` (not stored: the state is).
    """

    NAME: ClassVar[str]
    DTYPES: ClassVar[tuple[str, ...]]  # raw dtypes the kind accepts
    # A missing raw number is parsed as the train mean (normalized: 0) rather than as 0.
    FILL_MEAN: ClassVar[bool] = False

    def __init__(self, dtype: str, options: dict[str, Any]):
        if dtype not in self.DTYPES:
            raise ValueError(f"kind {self.NAME!r} needs {describe_dtypes(self.DTYPES)}, got {dtype}")
        self.dtype = dtype
        self.options = dict(options)

    # ------------------------------------------------------------ config
    @classmethod
    def configure(cls, dtype: str, override, cfg) -> dict[str, Any]:
        """The kind's options for one feature.

        Args:
            dtype: the raw dtype.
            override: the feature's `transform.features` entry (FeatureTransform), or None.
            cfg: the TransformConfig (defaults for every feature).

        Raises:
            ValueError: a required setting is missing, naming it.
        """
        return {}

    def raw_shape(self) -> list[int]:
        """The raw feature's fixed shape per row ([] for a scalar)."""
        return []

    # ------------------------------------------------------------ Beam analyzer
    def accumulate(self, values: np.ndarray, rows: int | None = None) -> Any:
        """Partial accumulator of one batch of the feature's present values (flat numpy array)
        from `rows` rows (None: unknown; kinds with a fixed value count per row check it)."""
        return None

    def merge(self, a: Any, b: Any) -> Any:
        """Two accumulators combined."""
        return None

    def finalize(self, acc: Any) -> tuple[dict, dict]:
        """(state for transform.json, analyzers.json lines) from the merged accumulator."""
        return {}, {}

    def recorded_kind(self, state: dict) -> str:
        """The kind recorded in transform.json (a kind may hand over to another after analysis)."""
        return self.NAME

    # ------------------------------------------------------------ Keras
    @classmethod
    def layer(cls, state: dict, dtype: str):
        """The built Keras layer holding the state, or None when `apply` is plain arithmetic."""
        return None

    @classmethod
    def apply(cls, layer, x, state: dict):
        """Raw tensor [N] (or [N, size]) -> transformed tensor (see `describe`)."""
        raise NotImplementedError

    @classmethod
    def describe(cls, state: dict) -> dict[str, Any]:
        """The output description models read: {"kind": DENSE | IDS | SEQUENCE | IMAGE, ...}."""
        raise NotImplementedError


def built(layer, input_shape: tuple):
    """`layer`, built now (eagerly) if the constructor did not: built lazily inside a tf.data map
    or a symbolic call, its constants would live in a graph that is gone later."""
    if not layer.built:
        layer.build(input_shape)
    return layer


def describe_dtypes(dtypes: tuple[str, ...]) -> str:
    """'a number', 'a string' or 'a number or a string', for messages."""
    words = (["a number"] if set(NUMBERS) & set(dtypes) else []) + (["a string"] if STRING in dtypes else [])
    return " or ".join(words)


def setting(override, key: str, default):
    """A feature's own setting `key` when given, else `default` (the transform-wide value)."""
    value = getattr(override, key, None) if override is not None else None
    return default if value is None else value


# ------------------------------------------------------------ numpy analyzers
def moments(x) -> list:
    """[count, mean, M2 (sum of squared deviations), min, max] of `x`."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return [0, 0.0, 0.0, float("inf"), float("-inf")]
    mean = float(x.mean())
    return [int(x.size), mean, float(((x - mean) ** 2).sum()), float(x.min()), float(x.max())]


def merge_moments(a: list, b: list) -> list:
    """Chan et al.'s parallel update of [count, mean, M2, min, max]."""
    na, ma, m2a, lo_a, hi_a = a
    nb, mb, m2b, lo_b, hi_b = b
    n = na + nb
    if n == 0:
        return a
    delta = mb - ma
    return [n, ma + delta * nb / n, m2a + m2b + delta * delta * na * nb / n, min(lo_a, lo_b), max(hi_a, hi_b)]


def counts(values) -> dict:
    """{value: occurrences} of a numpy array (bytes for strings)."""
    if len(values) == 0:
        return {}
    uniq, cnt = np.unique(values, return_counts=True)
    return dict(zip(uniq.tolist(), cnt.tolist()))


def merge_counts(a: dict, b: dict) -> dict:
    merged = dict(a)
    for k, c in b.items():
        merged[k] = merged.get(k, 0) + c
    return merged


def quantile_summary(values, weights, cap: int) -> tuple[np.ndarray, np.ndarray]:
    """Weighted points summarising a distribution: exact up to `cap` distinct values, then compacted."""
    values = np.asarray(values, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    uniq, inv = np.unique(values, return_inverse=True)
    w = np.bincount(inv, weights=weights, minlength=len(uniq)) if len(uniq) else np.zeros(0)
    if len(uniq) <= cap:
        return uniq, w
    cum = np.cumsum(w)
    targets = (np.arange(cap) + 0.5) * cum[-1] / cap
    idx = np.minimum(np.searchsorted(cum, targets), len(uniq) - 1)
    return uniq[idx], np.full(cap, cum[-1] / cap)


def merge_summaries(a, b, cap: int) -> tuple[np.ndarray, np.ndarray]:
    return quantile_summary(np.concatenate([a[0], b[0]]), np.concatenate([a[1], b[1]]), cap)


def decode(v) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def vocabulary(value_counts: dict, top_k: int, min_frequency: int, is_string: bool) -> tuple[list, list]:
    """Most frequent first, ties by value (deterministic); returns (values, counts).

    The empty string (a missing value) is never a vocabulary entry: it maps to OOV.
    """
    items = [(k, c) for k, c in value_counts.items() if c >= min_frequency and (not is_string or k != b"")]
    items.sort(key=lambda kc: (-kc[1], kc[0]))
    items = items[:top_k]
    return [(decode(k) if is_string else int(k)) for k, _ in items], [int(c) for _, c in items]
