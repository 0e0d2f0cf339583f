"""The text kind: token ids [N, sequence_length] over a train-split token vocabulary.

Tokenization is defined once here (`standardize`, `split`): the Beam analyzer counts the tokens
of `tokenize`, and the Keras TextVectorization layer is given the same two functions, so the
vocabulary and the serving-time lookup cannot disagree about what a token is.
"""
from __future__ import annotations

import numpy as np

from kfx.models.kinds.base import SEQUENCE, STRING, built, counts, merge_counts, setting
from kfx.models.kinds.categorical import EMPTY_STRING_VOCABULARY, OneHot, vocabulary_options

SEQUENCE_LENGTH = 64  # tokens kept per value unless the feature sets sequence_length
# Unicode punctuation plus the ASCII symbols Keras' "lower_and_strip_punctuation" also strips
# ($ + < = > ^ ` | ~ are symbols, not punctuation, in Unicode).
PUNCTUATION = r"[\p{P}$+<=>^`|~]"
# Unicode separators (no-break space, ideographic space, ...) become plain spaces: `split`'s
# whitespace is ASCII only.
SPACES = r"[\p{Z}\s]+"
RESERVED_IDS = 2  # TextVectorization: 0 = padding, 1 = OOV, then the vocabulary


def standardize(text):
    """Lower-case (Unicode), punctuation removed, any whitespace a single space: string tensor in and out."""
    import tensorflow as tf

    text = tf.strings.lower(text, encoding="utf-8")  # invalid UTF-8 bytes become U+FFFD, not an error
    return tf.strings.regex_replace(tf.strings.regex_replace(text, PUNCTUATION, ""), SPACES, " ")


def split(text):
    """Standardized strings [N] -> ragged tokens [N, None] (on spaces; none empty)."""
    import tensorflow as tf

    return tf.strings.split(text)


def tokenize(values) -> np.ndarray:
    """All tokens of a batch of raw strings (numpy bytes/object array), as the Keras layer sees them."""
    return tokenize_rows(values)[0]


def tokenize_rows(values) -> tuple[np.ndarray, np.ndarray]:
    """(all tokens, tokens per value) of a batch of raw strings, as the Keras layer sees them."""
    import tensorflow as tf

    if len(values) == 0:
        return np.zeros(0, dtype=object), np.zeros(0, dtype=np.int64)
    tokens = split(standardize(tf.constant(values, dtype=tf.string)))
    return tokens.flat_values.numpy(), tokens.row_lengths().numpy()


def length_quantile(length_counts: dict, q: float) -> int:
    """The smallest token count that at least a `q` share of the texts fit in (at least 1)."""
    if not length_counts:
        return 1
    lengths = np.array(sorted(length_counts))
    cum = np.cumsum([length_counts[n] for n in lengths])
    return max(1, int(lengths[np.searchsorted(cum, q * cum[-1] - 1e-9)]))


class Text(OneHot):
    """Token ids of natural-language strings (state: vocabulary, num_oov_buckets, sequence_length)."""

    NAME = "text"
    DTYPES = (STRING,)

    @classmethod
    def configure(cls, dtype, override, cfg):
        return {**vocabulary_options(override, cfg),
                "sequence_length": setting(override, "sequence_length", SEQUENCE_LENGTH),
                "sequence_length_quantile": setting(override, "sequence_length_quantile", 0.95)}

    def accumulate(self, values, rows=None):
        tokens, lengths = tokenize_rows(values)
        return counts(tokens), counts(lengths)

    def merge(self, a, b):
        return merge_counts(a[0], b[0]), merge_counts(a[1], b[1])

    def finalize(self, acc):
        token_counts, length_counts = acc
        state, report = super().finalize(token_counts)
        length = self.options["sequence_length"]
        if length == "auto":  # from the train texts' lengths: few are cut, little padding
            length = length_quantile(length_counts, self.options["sequence_length_quantile"])
            report["sequence_length"] = {"auto": length, "quantile": self.options["sequence_length_quantile"],
                                         "max_tokens": max(length_counts, default=0)}
        return {**state, "sequence_length": length}, report

    @classmethod
    def layer(cls, state, dtype):
        import keras

        return built(keras.layers.TextVectorization(
            vocabulary=list(state["vocabulary"]) or EMPTY_STRING_VOCABULARY, output_sequence_length=state["sequence_length"],
            standardize=standardize, split=split), (None,))

    @classmethod
    def describe(cls, state):
        return {"kind": SEQUENCE, "cardinality": max(len(state["vocabulary"]), 1) + RESERVED_IDS,
                "length": state["sequence_length"]}
