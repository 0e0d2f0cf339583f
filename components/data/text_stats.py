"""Text statistics and text checks: token and length distributions of natural-language features.

A string feature is text when ingest's `text_columns` (written to columns.json) or
`statistics.text_features` name it, and (in validate) when the schema gives it a
natural_language_domain. A text is an example's values joined by a space; it is tokenized
exactly as the `text` kind tokenizes it (kfx.models.kinds.text.standardize and split), so these
numbers are the model's view of the data.

statistics, per split and text feature, into the FeatureNameStatistics (where TFDV puts them):
  * custom stat `nl_statistics`: TFDV's NaturalLanguageStatistics packed in `any`: tokens per
    text (min, max, quantiles in sequence_length_histogram), characters per token (mean,
    histogram), the most frequent tokens (rank_histogram, at most `statistics.text_max_tokens`);
  * custom stat `domain_info` = "natural_language_domain {}" (TFDV's hint: schema inference
    marks the feature natural language);
  * custom stats `texts`, `empty_texts` (texts without a token), `tokens`, `mean_token_count`,
    `mean_char_length`, `token_count_histogram`, `char_length_histogram` (equal width) and
    `char_length_quantiles`; stats.txt gets a summary.
The counts are exact (value -> count tables); only the token table is pruned to the most
frequent tokens when a split has more than 4 x text_max_tokens distinct tokens.

validate, per text feature:
  * empty texts: a split whose share of empty texts is above `validate.max_empty_text_fraction`;
  * out-of-vocabulary rate drift: the vocabulary is the train split's most frequent tokens (as
    stored by statistics); the share of a split's tokens outside it (tokens beyond the split's own
    stored ones count as outside) is compared with the same share on train (eval, test, ... of
    this run) and with the last validated statistics' same split against their own train
    vocabulary (`validate.drift_splits`); a rise above `validate.oov_drift_threshold` is an
    anomaly (FEATURE_COVERAGE_TOO_LOW: coverage is 1 - OOV rate).
"""
from __future__ import annotations

from typing import Any

import numpy as np

NL_STATS = "nl_statistics"  # TFDV's name for the packed NaturalLanguageStatistics
DOMAIN_INFO, NL_DOMAIN = "domain_info", "natural_language_domain {}"
TEXTS, EMPTY, TOKENS = "texts", "empty_texts", "tokens"
VOCABULARY_SPLIT = "train"


# ------------------------------------------------------------------ statistics
def text_features(meta: dict, cfg) -> set[str]:
    """The string features statistics treats as text: ingest's text_columns + statistics.text_features.

    Raises:
        ComponentError: a configured text feature is not a string column of the examples, or is an
            image column (ingest's `images`).
    """
    from kfx.pipeline.component import ComponentError

    columns = meta["columns"]
    bad = [n for n in cfg.text_features if columns.get(n) != "string"]
    if bad:
        raise ComponentError(f"statistics: text_features {bad} must be string columns of the examples; "
                             f"columns are {columns}")
    text = set(meta.get("text_columns", ())) | set(cfg.text_features)
    both = sorted(text & set(meta.get("images") or ()))
    if both:
        raise ComponentError(f"statistics: text_features {both} are image columns of the examples (ingest "
                             f"image_columns); a column is text or an image, not both")
    return text


def reduce_batch(rt) -> dict:
    """TensorFlow ops: one batch's ragged strings [N, None] -> the reductions `TextAcc.add` folds."""
    import tensorflow as tf

    from kfx.models.kinds.text import split, standardize

    texts = tf.boolean_mask(tf.strings.reduce_join(rt, axis=1, separator=" "), rt.row_lengths() > 0)
    texts = tf.strings.unicode_transcode(texts, "UTF-8", "UTF-8", errors="replace")  # bad bytes -> U+FFFD
    tokens = split(standardize(texts))
    uniq, _, counts = tf.unique_with_counts(tokens.flat_values, out_idx=tf.int64)
    return {"text_tokens": tokens.row_lengths(), "text_chars": tf.strings.length(texts, "UTF8_CHAR"),
            "text_unique": uniq, "text_counts": counts, "text_token_chars": tf.strings.length(uniq, "UTF8_CHAR")}


def _bump(table: dict, keys, counts) -> None:
    for k, c in zip(np.asarray(keys).tolist(), np.asarray(counts).tolist()):
        table[k] = table.get(k, 0) + int(c)


class TextAcc:
    """Mergeable text statistics of one feature: exact value -> count tables."""

    def __init__(self, max_tokens: int):
        self.max_tokens = max_tokens  # distinct tokens kept: pruned beyond 4x, to the 2x most frequent
        self.token_counts: dict[int, int] = {}  # tokens in a text -> texts
        self.char_lengths: dict[int, int] = {}  # characters in a text -> texts
        self.token_lengths: dict[int, int] = {}  # characters in a token -> tokens
        self.tokens: dict[bytes, int] = {}  # token -> occurrences (the most frequent when pruned)

    def add(self, r: dict) -> None:
        """Fold one batch's `reduce_batch` output."""
        _bump(self.token_counts, *np.unique(r["text_tokens"], return_counts=True))
        _bump(self.char_lengths, *np.unique(r["text_chars"], return_counts=True))
        _bump(self.token_lengths, r["text_token_chars"], r["text_counts"])
        _bump(self.tokens, r["text_unique"], r["text_counts"])
        self._prune()

    def merge(self, o: "TextAcc") -> "TextAcc":
        for mine, theirs in ((self.token_counts, o.token_counts), (self.char_lengths, o.char_lengths),
                             (self.token_lengths, o.token_lengths), (self.tokens, o.tokens)):
            _bump(mine, list(theirs), list(theirs.values()))
        self._prune()
        return self

    def _prune(self) -> None:
        # Bounded memory on an unbounded vocabulary, as FeatureAcc does for values.
        if len(self.tokens) > 4 * self.max_tokens:
            self.tokens = dict(sorted(self.tokens.items(), key=lambda kv: -kv[1])[: 2 * self.max_tokens])


def _table(table: dict) -> tuple[np.ndarray, np.ndarray]:
    keys = np.array(sorted(table), dtype=np.float64)
    return keys, np.array([table[k] for k in sorted(table)], dtype=np.float64)


def quantiles(values: np.ndarray, weights: np.ndarray, qs: np.ndarray) -> np.ndarray:
    """Quantiles of `values` repeated `weights` times, as np.quantile's default (linear) gives them."""
    cum = np.cumsum(weights)
    pos = qs * (cum[-1] - 1)
    lo, hi = np.floor(pos), np.ceil(pos)
    v_lo = values[np.searchsorted(cum, lo, side="right")]
    v_hi = values[np.searchsorted(cum, hi, side="right")]
    return v_lo + (v_hi - v_lo) * (pos - lo)


def _standard(h, values: np.ndarray, weights: np.ndarray, buckets: int) -> None:
    edges = np.linspace(values[0], values[-1], buckets + 1) if values[0] < values[-1] else values[[0, -1]]
    counts, _ = np.histogram(values, bins=edges, weights=weights)
    h.type = h.STANDARD
    for lo, hi, c in zip(edges[:-1], edges[1:], counts):
        h.buckets.add(low_value=float(lo), high_value=float(hi), sample_count=float(c))


def _quantile_buckets(h, values: np.ndarray, weights: np.ndarray, num: int) -> None:
    qs = quantiles(values, weights, np.linspace(0, 1, num + 1))
    h.type = h.QUANTILES
    for lo, hi in zip(qs[:-1], qs[1:]):
        h.buckets.add(low_value=float(lo), high_value=float(hi), sample_count=weights.sum() / num)


def to_proto(fs, acc: TextAcc, cfg) -> None:
    """Write a TextAcc into FeatureNameStatistics `fs` (custom stats, see the module docstring)."""
    from tensorflow_metadata.proto.v0 import statistics_pb2 as st

    nl = st.NaturalLanguageStatistics()
    custom = {}
    texts = sum(acc.token_counts.values())
    if texts:
        counts, n_texts = _table(acc.token_counts)
        chars, n_chars = _table(acc.char_lengths)
        total = float(counts @ n_texts)
        nl.min_sequence_length, nl.max_sequence_length = int(counts[0]), int(counts[-1])
        _quantile_buckets(nl.sequence_length_histogram, counts, n_texts, cfg.num_quantiles)
        if acc.token_lengths:
            lengths, n_lengths = _table(acc.token_lengths)
            nl.avg_token_length = float(lengths @ n_lengths / n_lengths.sum())
            _standard(nl.token_length_histogram, lengths, n_lengths, cfg.num_histogram_buckets)
        ranked = sorted(acc.tokens.items(), key=lambda kv: (-kv[1], kv[0]))[: cfg.text_max_tokens]
        for i, (token, c) in enumerate(ranked):
            nl.rank_histogram.buckets.add(low_rank=i, high_rank=i, label=token.decode("utf-8", "replace"),
                                          sample_count=c)
        custom = {"mean_token_count": total / texts, "mean_char_length": float(chars @ n_chars) / texts}
        _standard(fs.custom_stats.add(name="token_count_histogram").histogram, counts, n_texts,
                  cfg.num_histogram_buckets)
        _standard(fs.custom_stats.add(name="char_length_histogram").histogram, chars, n_chars,
                  cfg.num_histogram_buckets)
        _quantile_buckets(fs.custom_stats.add(name="char_length_quantiles").histogram, chars, n_chars,
                          cfg.num_quantiles)
    fs.custom_stats.add(name=NL_STATS).any.Pack(nl)
    fs.custom_stats.add(name=DOMAIN_INFO, str=NL_DOMAIN)
    numbers = {TEXTS: texts, EMPTY: acc.token_counts.get(0, 0),
               TOKENS: sum(k * v for k, v in acc.token_counts.items()), **custom}
    for name, value in numbers.items():
        fs.custom_stats.add(name=name, num=value)


def custom_stat(fs, name: str):
    """The custom statistic `name` of a FeatureNameStatistics, or None."""
    return next((c for c in fs.custom_stats if c.name == name), None)


def nl_statistics(fs):
    """The NaturalLanguageStatistics of a text feature's statistics, or None for another feature."""
    from tensorflow_metadata.proto.v0 import statistics_pb2 as st

    c = custom_stat(fs, NL_STATS)
    if c is None:
        return None
    nl = st.NaturalLanguageStatistics()
    c.any.Unpack(nl)
    return nl


def is_text(fs) -> bool:
    """Whether statistics marked the feature natural language (TFDV's domain_info hint)."""
    c = custom_stat(fs, DOMAIN_INFO)
    return c is not None and c.str == NL_DOMAIN


def summary_lines(ds) -> list[str]:
    """stats.txt lines for the text features of one split's DatasetFeatureStatistics."""
    lines = []
    for fs in ds.features:
        nl = nl_statistics(fs)
        if nl is None:
            continue
        num = {c.name: c.num for c in fs.custom_stats}
        line = f"text {fs.path.step[0]!r}: {int(num[TEXTS]):,} texts, {int(num[EMPTY]):,} empty"
        if num[TEXTS]:
            bounds = [b.low_value for b in nl.sequence_length_histogram.buckets]
            at = {q: bounds[round(q * len(bounds))] for q in (0.5, 0.9) if round(q * len(bounds)) < len(bounds)}
            top = ", ".join(f"{b.label}={int(b.sample_count)}" for b in nl.rank_histogram.buckets[:10])
            line += (f"; tokens per text mean {num['mean_token_count']:.1f}, min {nl.min_sequence_length}, "
                     + "".join(f"p{round(q * 100)} {v:g}, " for q, v in at.items())
                     + f"max {nl.max_sequence_length}; characters per text mean {num['mean_char_length']:.1f}; "
                     f"{int(num[TOKENS]):,} tokens, {len(nl.rank_histogram.buckets):,} distinct kept; top: {top}")
        lines.append(line)
    return lines


# ------------------------------------------------------------------ validate
def oov_rate(fs, vocabulary: set[str]) -> float:
    """Share of a text feature's tokens outside `vocabulary` (tokens not stored count as outside)."""
    nl = nl_statistics(fs)
    total = custom_stat(fs, TOKENS).num if nl is not None else 0
    if not total:
        return 0.0
    inside = sum(b.sample_count for b in nl.rank_histogram.buckets if b.label in vocabulary)
    return 1.0 - inside / total


def vocabulary(fs) -> set[str]:
    """The tokens statistics kept for a text feature (its most frequent ones)."""
    nl = nl_statistics(fs)
    return {b.label for b in nl.rank_histogram.buckets} if nl is not None else set()


def _text_stats(schema, ds) -> dict[str, Any]:
    marked = {f.name for f in schema.feature if f.HasField("natural_language_domain")}
    return {fs.path.step[0]: fs for fs in ds.features
            if nl_statistics(fs) is not None and (is_text(fs) or fs.path.step[0] in marked)}


def _oov_drift(findings, split: str, name: str, fs, vocab_fs, ref_fs, vocab_of: str, ref_of: str,
               threshold: float) -> float:
    """OOV rate of `fs` against `vocab_fs`'s tokens; an anomaly when it exceeds `ref_fs`'s by `threshold`."""
    vocab = vocabulary(vocab_fs)
    rate, ref = oov_rate(fs, vocab), oov_rate(ref_fs, vocab)
    if rate - ref > threshold:
        findings.add(split, name, "FEATURE_COVERAGE_TOO_LOW", "Out-of-vocabulary rate drift",
                     f"{rate:.2%} of the {int(custom_stat(fs, TOKENS).num):,} tokens of split {split} are outside "
                     f"the vocabulary of {vocab_of} ({len(vocab):,} most frequent tokens) against {ref:.2%} of the "
                     f"tokens of {ref_of}: +{rate - ref:.2%}, above oov_drift_threshold {threshold:g}.")
    return round(rate, 6)


def check(findings, schema, stats: dict, baseline: dict | None, cfg) -> dict[str, Any]:
    """Empty texts and OOV-rate drift of every text feature, as anomalies in `findings`.

    Args:
        findings: validate's Findings.
        schema: the Schema.
        stats: {split: DatasetFeatureStatistics} of this run.
        baseline: the last validated statistics, or None.
        cfg: the ValidateConfig (max_empty_text_fraction, oov_drift_threshold, drift_splits).

    Returns:
        {feature: {split: {"texts", "empty_texts"[, "oov_rate"][, "baseline_oov_rate"]}}}; a feature
        the schema marks natural language without token statistics gets a note saying how to get them.
    """
    report: dict[str, Any] = {}
    per_split = {split: _text_stats(schema, ds) for split, ds in stats.items()}
    base = {split: _text_stats(schema, ds) for split, ds in (baseline or {}).items()}
    train, base_train = per_split.get(VOCABULARY_SPLIT, {}), base.get(VOCABULARY_SPLIT, {})
    for split, feats in per_split.items():
        for name, fs in feats.items():
            texts, empty = int(custom_stat(fs, TEXTS).num), int(custom_stat(fs, EMPTY).num)
            row = report.setdefault(name, {}).setdefault(split, {"texts": texts, "empty_texts": empty})
            if texts and empty / texts > cfg.max_empty_text_fraction:
                findings.add(split, name, "CUSTOM_VALIDATION", "Empty texts",
                             f"{empty:,} of {texts:,} texts ({empty / texts:.2%}) have no token after the text "
                             f"kind's standardization, above max_empty_text_fraction "
                             f"{cfg.max_empty_text_fraction:g}.")
            if name in train and split != VOCABULARY_SPLIT:
                row["oov_rate"] = _oov_drift(findings, split, name, fs, train[name], train[name],
                                             "the train split", "the train split", cfg.oov_drift_threshold)
            if split in cfg.drift_splits and name in base_train and name in base.get(split, {}):
                row["baseline_oov_rate"] = _oov_drift(
                    findings, split, name, fs, base_train[name], base[split][name], "the last validated train split",
                    f"the last validated {split} split", cfg.oov_drift_threshold)
    for f in schema.feature:
        if f.HasField("natural_language_domain") and f.name not in report:
            report[f.name] = {"note": "no token statistics (not checked): name the feature in ingest.text_columns "
                                      "or statistics.text_features"}
    return report
