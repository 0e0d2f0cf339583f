"""Categorical kinds: one_hot and embed (top-k vocabulary lookups) and hash (fixed bins)."""
from __future__ import annotations

import numpy as np

from kfx.models.kinds.base import IDS, NUMBERS, STRING, Kind, built, counts, merge_counts, setting, vocabulary

EMBED_ENCODING = "embed"
TOP_REPORTED = 20  # most frequent values listed in analyzers.json
EMPTY_STRING_VOCABULARY = ["\0"]  # a lookup layer needs one entry; nothing real matches it


def vocabulary_options(override, cfg) -> dict:
    """top_k, min_frequency and num_oov_buckets of a feature (its own, else the transform's)."""
    return {"top_k": setting(override, "top_k", cfg.top_k),
            "min_frequency": setting(override, "min_frequency", cfg.min_frequency),
            "num_oov_buckets": setting(override, "num_oov_buckets", cfg.num_oov_buckets)}


class OneHot(Kind):
    """Category ids [N] from the train split's top-k vocabulary, most frequent first, after the
    OOV ids (state: vocabulary, num_oov_buckets); the model one-hot encodes them.

    A string feature that got one_hot by default (no `transform.features` entry) is recorded as
    embed when its vocabulary is larger than `transform.one_hot_max`.
    """

    NAME = "one_hot"
    DTYPES = (*NUMBERS, STRING)

    @classmethod
    def configure(cls, dtype, override, cfg):
        auto = {"auto_embed_above": cfg.one_hot_max} if override is None and dtype == STRING else {}
        return {**vocabulary_options(override, cfg), **auto}

    def accumulate(self, values, rows=None):
        return counts(values)

    def merge(self, a, b):
        return merge_counts(a, b)

    def finalize(self, acc):
        o = self.options
        vocab, freq = vocabulary(acc, o["top_k"], o["min_frequency"], self.is_string)
        return ({"vocabulary": vocab, "num_oov_buckets": o["num_oov_buckets"]},
                {"distinct": len(acc), "vocabulary_size": len(vocab),
                 "top": [[v, c] for v, c in zip(vocab[:TOP_REPORTED], freq[:TOP_REPORTED])]})

    @property
    def is_string(self) -> bool:
        return self.dtype == STRING

    def recorded_kind(self, state):
        limit = self.options.get("auto_embed_above")
        return Embed.NAME if limit is not None and len(state["vocabulary"]) > limit else self.NAME

    @classmethod
    def layer(cls, state, dtype):
        import keras

        if dtype == STRING:
            layer = keras.layers.StringLookup(vocabulary=list(state["vocabulary"]) or EMPTY_STRING_VOCABULARY,
                                              num_oov_indices=state["num_oov_buckets"], mask_token=None)
        else:
            vocab = np.asarray(state["vocabulary"] or [np.iinfo(np.int64).min], dtype=np.int64)
            layer = keras.layers.IntegerLookup(vocabulary=vocab, num_oov_indices=state["num_oov_buckets"],
                                               mask_token=None)
        return built(layer, (None,))

    @classmethod
    def apply(cls, layer, x, state):
        import tensorflow as tf

        return tf.cast(layer(x), tf.int64)

    @classmethod
    def describe(cls, state):
        return {"kind": IDS, "cardinality": max(len(state["vocabulary"]), 1) + state["num_oov_buckets"],
                "encoding": cls.NAME}


class Embed(OneHot):
    """As one_hot; the model learns an embedding of the ids."""

    NAME = EMBED_ENCODING

    @classmethod
    def configure(cls, dtype, override, cfg):
        return vocabulary_options(override, cfg)


class Hash(Kind):
    """Ids [N] in `num_bins` fixed bins by a fingerprint of the value (no analyzer, no vocabulary)."""

    NAME = "hash"
    DTYPES = (*NUMBERS, STRING)

    @classmethod
    def configure(cls, dtype, override, cfg):
        return {"num_bins": setting(override, "hash_buckets", cfg.hash_buckets)}

    def finalize(self, acc):
        return {"num_bins": self.options["num_bins"]}, {}

    @classmethod
    def layer(cls, state, dtype):
        import keras

        return built(keras.layers.Hashing(num_bins=state["num_bins"]), (None,))

    @classmethod
    def apply(cls, layer, x, state):
        import tensorflow as tf

        return tf.cast(layer(x), tf.int64)

    @classmethod
    def describe(cls, state):
        return {"kind": IDS, "cardinality": state["num_bins"], "encoding": EMBED_ENCODING}
