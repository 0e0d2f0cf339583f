"""Feature kinds (models/kinds): each analyzer's state equals what numpy computes on the same
values, merging partial accumulators in any grouping gives the same state, the Keras side maps
raw values to the expected outputs, Beam and Keras tokenize text identically, and the config
rejects kinds that do not exist."""
from __future__ import annotations

from functools import reduce

import numpy as np
import pytest

from kfx.models import kinds
from kfx.models.kinds import FLOAT, INT, STRING
from kfx.pipeline.config_modeling import FeatureTransform, TransformConfig

CFG = TransformConfig()


def make(name: str, dtype: str, **override):
    """The kind `name` for a feature of `dtype`, with options from the config (as transform plans them)."""
    cls = kinds.get(name)
    feature = FeatureTransform(kinds=(name,), **override) if override else None
    return cls(dtype, cls.configure(dtype, feature, CFG))


def analyze(kind, values: np.ndarray, parts: int = 1, reverse: bool = False):
    """Merged accumulator of `values` split into `parts` batches (merged right to left if `reverse`)."""
    accs = [kind.accumulate(p) for p in np.array_split(values, parts)]
    if reverse:
        return reduce(lambda a, b: kind.merge(b, a), reversed(accs))
    return reduce(kind.merge, accs)


def keras_out(name: str, state: dict, dtype: str, values) -> np.ndarray:
    """The Keras side of kind `name`: raw values -> transformed numpy array."""
    import tensorflow as tf

    cls = kinds.get(name)
    return cls.apply(cls.layer(state, dtype), tf.constant(values), state).numpy()


# ------------------------------------------------------------------ registry
def test_registry_names_match_classes_and_dtypes():
    for name in kinds.names():
        assert kinds.get(name).NAME == name
    assert kinds.accepting(STRING) == ["embed", "encoded_image", "graph_node", "hash", "one_hot", "text"]
    assert "text" not in kinds.accepting(FLOAT) and "normalize" in kinds.accepting(INT)
    with pytest.raises(KeyError, match="unknown kind 'scale'; known kinds: bucketize, embed"):
        kinds.get("scale")
    with pytest.raises(ValueError, match="kind 'normalize' needs a number, got string"):
        kinds.get("normalize")(STRING, {})


@pytest.mark.parametrize("features, key, fragment", [
    ({"age": {"kinds": ["normalize", "scale"]}}, "transform.features.age.kinds.1", "unknown kind 'scale'"),
    ({"city": {"kinds": ["one_hot_encode"]}}, "transform.features.city.kinds.0", "unknown kind 'one_hot_encode'"),
])
def test_unknown_kind_is_rejected_at_load_naming_the_feature_and_the_kind(features, key, fragment):
    from kfx.pipeline.config import ConfigError, load_config

    with pytest.raises(ConfigError) as err:
        load_config(None, [f"transform.features={features}"])
    assert f"key {key!r}" in str(err.value) and fragment in str(err.value)
    assert ("known kinds: bucketize, embed, encoded_image, graph_node, hash, image, normalize, one_hot, passthrough, text, "
            "window" in str(err.value))


def test_numeric_default_must_take_numbers():
    from kfx.pipeline.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="transform.numeric_default.*kind 'text' does not take numbers"):
        load_config(None, ["transform.numeric_default=text"])


# ------------------------------------------------------------------ numeric
@pytest.mark.parametrize("log", [False, True])
def test_normalize_state_is_numpy_moments_and_merge_is_associative(log):
    x = np.random.default_rng(0).gamma(2.0, 50.0, 10_000).astype(np.float32)
    kind = make("normalize", FLOAT, log=log)
    state, _ = kind.finalize(analyze(kind, x))
    ref = np.log1p(x.astype(np.float64)) if log else x.astype(np.float64)
    assert state == pytest.approx({"mean": ref.mean(), "variance": ref.var(), "log": log}, rel=1e-9)
    for parts, reverse in [(7, False), (13, True)]:
        assert kind.finalize(analyze(kind, x, parts, reverse))[0] == pytest.approx(state, rel=1e-9)
    sample = np.array([0.0, 10.0, 1000.0], dtype=np.float32)
    expected = ((np.log1p(sample) if log else sample) - state["mean"]) / np.sqrt(state["variance"])
    out = keras_out("normalize", state, FLOAT, sample)
    assert out.shape == (3, 1) and out.dtype == np.float32
    assert out[:, 0] == pytest.approx(expected, rel=1e-5)
    assert kinds.get("normalize").describe(state) == {"kind": "dense", "width": 1}


def test_passthrough_keeps_numbers_as_floats():
    out = keras_out("passthrough", {}, INT, np.array([3, -1], dtype=np.int64))
    assert out.tolist() == [[3.0], [-1.0]] and out.dtype == np.float32


def test_bucketize_boundaries_are_quantiles_within_sketch_tolerance():
    x = np.random.default_rng(1).normal(0, 1, 40_000)
    kind = make("bucketize", FLOAT, num_buckets=10)
    kind.options["accuracy"] = 500  # far fewer points than values: the summary is compacted
    whole = kind.finalize(analyze(kind, x))[0]["boundaries"]
    merged = [kind.finalize(analyze(kind, x, parts, reverse))[0]["boundaries"] for parts, reverse in [(9, False), (4, True)]]
    for bounds in [whole, *merged]:
        assert len(bounds) == 9 and bounds == sorted(bounds)
        # Each boundary's rank within 1% of the exact decile.
        assert np.abs(np.searchsorted(np.sort(x), bounds) / len(x) - np.arange(1, 10) / 10).max() < 0.01
    # Few distinct values (under the cap): exact, and the same whatever the grouping.
    ints = np.random.default_rng(2).integers(0, 100, 5000).astype(np.float64)
    exact = make("bucketize", INT, num_buckets=4)
    state = exact.finalize(analyze(exact, ints))[0]
    assert state == exact.finalize(analyze(exact, ints, 11, True))[0]
    shares = np.bincount(np.searchsorted(state["boundaries"], ints, side="right")) / len(ints)
    assert len(shares) == 4 and np.abs(shares - 0.25).max() < 0.02
    sample = np.array([-5, state["boundaries"][0], 50, 1000], dtype=np.int64)
    assert keras_out("bucketize", state, INT, sample).tolist() == np.searchsorted(
        state["boundaries"], sample, side="right").tolist()
    assert kinds.get("bucketize").describe(state) == {"kind": "ids", "cardinality": 4, "encoding": "one_hot"}


# ------------------------------------------------------------------ categorical
def test_one_hot_vocabulary_order_top_k_min_frequency_and_lookup():
    values = np.array([b"b"] * 5 + [b"a"] * 5 + [b"c"] * 3 + [b"d"] + [b""] * 9, dtype=object)
    np.random.default_rng(3).shuffle(values)
    kind = make("one_hot", STRING, top_k=3, min_frequency=2)
    state, report = kind.finalize(analyze(kind, values))
    # Most frequent first, ties by value; "" (missing) never; top_k and min_frequency applied.
    assert state == {"vocabulary": ["a", "b", "c"], "num_oov_buckets": CFG.num_oov_buckets}
    assert report["distinct"] == 5 and report["top"] == [["a", 5], ["b", 5], ["c", 3]]
    assert kind.finalize(analyze(kind, values, 6, True))[0] == state
    assert make("one_hot", STRING, min_frequency=2).finalize(analyze(kind, values))[0]["vocabulary"] == ["a", "b", "c"]
    assert make("one_hot", STRING).finalize(analyze(kind, values))[0]["vocabulary"] == ["a", "b", "c", "d"]
    out = keras_out("one_hot", state, STRING, [b"a", b"c", b"zzz", b""])
    assert out.tolist() == [1, 3, 0, 0] and out.dtype == np.int64  # 0: the OOV id
    assert kinds.get("one_hot").describe(state) == {"kind": "ids", "cardinality": 4, "encoding": "one_hot"}


def test_integer_one_hot_and_embed_by_default_above_one_hot_max():
    ints = np.array([7, 7, 7, 3, 3, 9], dtype=np.int64)
    kind = make("one_hot", INT)
    state, _ = kind.finalize(analyze(kind, ints, 3))
    assert state["vocabulary"] == [7, 3, 9] and kind.recorded_kind(state) == "one_hot"
    assert keras_out("one_hot", state, INT, np.array([9, 7, 4], dtype=np.int64)).tolist() == [3, 1, 0]
    # A string feature one_hot by default (no override) becomes embed above one_hot_max values.
    many = np.array([f"v{i}".encode() for i in range(CFG.one_hot_max + 1)], dtype=object)
    auto = make("one_hot", STRING)
    big, _ = auto.finalize(analyze(auto, many))
    assert auto.recorded_kind(big) == "embed" and make("one_hot", STRING, top_k=10**6).recorded_kind(big) == "one_hot"
    assert kinds.get("embed").describe(big)["encoding"] == "embed"


def test_hash_bins_are_tensorflow_fingerprints():
    import tensorflow as tf

    kind = make("hash", STRING, hash_buckets=17)
    state, _ = kind.finalize(analyze(kind, np.array([b"x"], dtype=object)))
    assert state == {"num_bins": 17}
    values = [b"red", b"green", b"", b"\xc3\xa9t\xc3\xa9"]
    out = keras_out("hash", state, STRING, values)
    assert out.tolist() == tf.strings.to_hash_bucket_fast(values, 17).numpy().tolist()
    ints = np.array([0, 5, 123456789], dtype=np.int64)  # numbers hash as their decimal strings
    assert keras_out("hash", state, INT, ints).tolist() == tf.strings.to_hash_bucket_fast(
        [b"0", b"5", b"123456789"], 17).numpy().tolist()
    assert kinds.get("hash").describe(state) == {"kind": "ids", "cardinality": 17, "encoding": "embed"}


# ------------------------------------------------------------------ text
SAMPLES = [
    "Hello, World!",
    "  extra   spaces\tand\ttabs\n  ",
    "UPPER lower MiXeD",
    "Élan, CAFÉ & Straße — ¡Olé! «quoted» don’t",
    "numbers 3.14 and 42%",
    "non\u00a0breaking\u3000ideographic space",
    "",
    "punct!!! only??? ...",
    "emoji 🙂 stays",
]


def test_text_beam_and_keras_tokenize_identically():
    from kfx.models.kinds.text import tokenize

    kind = make("text", STRING, sequence_length=12)
    raw = np.array([s.encode() for s in SAMPLES], dtype=object)
    state, _ = kind.finalize(analyze(kind, raw, 4))
    vocab = state["vocabulary"]
    ids = keras_out("text", state, STRING, raw)
    assert ids.shape == (len(SAMPLES), 12) and ids.dtype == np.int64
    for sample, row in zip(SAMPLES, ids):
        beam = [t.decode() for t in tokenize(np.array([sample.encode()], dtype=object))]
        keras = [vocab[i - 2] for i in row if i > 0]  # 0 padding, 1 OOV: none, every token is known
        assert keras == beam, sample
    # What those tokens are: lower-cased (Unicode too), punctuation gone, any whitespace one split.
    assert [t.decode() for t in tokenize(raw[[0, 1, 3, 5]])] == [
        "hello", "world", "extra", "spaces", "and", "tabs",
        "élan", "café", "straße", "olé", "quoted", "dont", "non", "breaking", "ideographic", "space"]
    # Unknown tokens map to OOV (1); the layer pads to sequence_length.
    assert keras_out("text", state, STRING, [b"hello zebra"]).tolist() == [[2 + vocab.index("hello"), 1] + [0] * 10]
    assert kinds.get("text").describe(state) == {"kind": "sequence", "cardinality": len(vocab) + 2, "length": 12}


@pytest.mark.parametrize("quantile", [0.5, 0.9, 1.0])
def test_text_sequence_length_auto_is_the_quantile_of_train_token_counts(quantile):
    from kfx.models.kinds.text import tokenize

    texts = SAMPLES * 3 + ["one two three four five six seven eight nine ten eleven twelve"]
    raw = np.array([t.encode() for t in texts], dtype=object)
    kind = make("text", STRING, sequence_length="auto", sequence_length_quantile=quantile)
    state, report = kind.finalize(analyze(kind, raw, 4))
    lengths = sorted(len(tokenize(raw[i:i + 1])) for i in range(len(raw)))
    expected = max(1, lengths[int(np.ceil(quantile * len(lengths))) - 1])  # nearest rank
    assert state["sequence_length"] == report["sequence_length"]["auto"] == expected
    assert report["sequence_length"]["max_tokens"] == 12
    assert keras_out("text", state, STRING, raw[:2]).shape == (2, expected)


def test_text_sequence_length_takes_a_number_or_auto_only():
    from kfx.pipeline.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="transform.features.review.sequence_length"):
        load_config(None, ["transform.features={review: {kinds: [text], sequence_length: often}}"])
    with pytest.raises(ConfigError, match="transform.features.review.sequence_length_quantile"):
        load_config(None, ["transform.features={review: {kinds: [text], sequence_length: auto, "
                           "sequence_length_quantile: 1.5}}"])


def test_text_standardization_on_ascii_is_keras_default():
    import keras
    import tensorflow as tf

    from kfx.models.kinds.text import split, standardize

    texts = ["".join(chr(c) for c in range(32, 127)), "It's A  test-case: (ok) [x_y] {z}|~^`$+<=>", " Tab\tNew\nline "]
    tokens = sorted({t.decode() for t in split(standardize(tf.constant(texts))).flat_values.numpy()})
    stock = keras.layers.TextVectorization(vocabulary=tokens, standardize="lower_and_strip_punctuation",
                                           split="whitespace", output_sequence_length=40)
    ours = keras.layers.TextVectorization(vocabulary=tokens, standardize=standardize, split=split,
                                          output_sequence_length=40)
    ids = ours(tf.constant(texts)).numpy()
    assert (ids == stock(tf.constant(texts)).numpy()).all() and (ids != 1).all()  # no OOV: same tokens


def test_text_vocabulary_counts_tokens_with_top_k_and_merges():
    raw = np.array([b"the cat", b"The dog!", b"the cat sat", b"a dog"], dtype=object)
    kind = make("text", STRING, top_k=3)
    state, _ = kind.finalize(analyze(kind, raw, 2))
    assert state == {"vocabulary": ["the", "cat", "dog"], "num_oov_buckets": CFG.num_oov_buckets,
                     "sequence_length": 64}
    assert kind.finalize(analyze(kind, raw, 4, True))[0] == state


# ------------------------------------------------------------------ image
def test_image_scaling_is_numpy_pixel_moments():
    pixels = np.random.default_rng(4).integers(0, 256, (30, 4 * 3 * 1)).astype(np.float32)
    kind = make("image", FLOAT, image_shape=(4, 3, 1))
    assert kind.raw_shape() == [12]
    state, _ = kind.finalize(analyze(kind, pixels.reshape(-1), 5))
    ref = pixels.astype(np.float64)
    assert state["shape"] == [4, 3, 1]
    assert (state["mean"], state["std"]) == pytest.approx((ref.mean(), ref.std()), rel=1e-9)
    other = kind.finalize(analyze(kind, pixels.reshape(-1), 9, True))[0]
    assert (other["mean"], other["std"]) == pytest.approx((state["mean"], state["std"]), rel=1e-9)
    out = keras_out("image", state, FLOAT, pixels[:2])
    assert out.shape == (2, 4, 3, 1)
    assert out.reshape(2, -1) == pytest.approx((pixels[:2] - state["mean"]) / state["std"], rel=1e-4, abs=1e-5)
    with pytest.raises(ValueError, match="image_shape"):
        make("image", FLOAT)


def test_window_state_is_per_channel_moments_of_the_differences_and_keras_applies_it():
    rng = np.random.default_rng(0)
    rows = np.cumsum(rng.normal(0.5, 2.0, (30, 6, 2)), axis=1)  # 30 windows, 6 steps, 2 channels
    kind = make("window", FLOAT, window_shape=(6, 2), difference=True, season=4)
    merged = reduce(kind.merge, [kind.accumulate(r.reshape(-1)) for r in np.array_split(rows, 3)])
    state, report = kind.finalize(merged)
    d = np.diff(rows, axis=1)
    assert state["mean"] == pytest.approx(d.mean(axis=(0, 1)).tolist(), rel=1e-9)
    assert state["std"] == pytest.approx(d.std(axis=(0, 1)).tolist(), rel=1e-9)
    assert (state["length"], state["channels"], state["season"]) == (6, 2, 4) and report["differenced"]
    out = keras_out("window", state, FLOAT, rows[:3].reshape(3, -1).astype(np.float32))
    assert out.shape == (3, 6, 2) and np.all(out[:, 0] == 0)
    assert out[:, 1:] == pytest.approx((d[:3] - state["mean"]) / state["std"], rel=1e-4, abs=1e-4)
    assert kinds.get("window").describe(state) == {"kind": "window", "length": 6, "channels": 2}
    plain = make("window", FLOAT, window_shape=(6, 2))
    assert plain.finalize(plain.accumulate(rows.reshape(-1)))[0]["mean"] == pytest.approx(
        rows.mean(axis=(0, 1)).tolist(), rel=1e-9)
    with pytest.raises(ValueError, match="rows of length \\* channels = 12 values; got 10 values"):
        kind.accumulate(np.zeros(10))
    # A window_shape that does not match the data: 24 values are 2 rows of 12, but come from 3 rows.
    with pytest.raises(ValueError, match=r"window_shape \[6, 2\] .* got 8 values a row .*ingest.timeseries.input_length"):
        kind.accumulate(np.zeros(24), rows=3)
    assert kind.accumulate(np.zeros(24), rows=2)[0][0] == 10  # 2 rows x 5 differences
    with pytest.raises(ValueError, match="season 6 must be shorter than the window length 6"):
        make("window", FLOAT, window_shape=(6, 2), season=6)
    with pytest.raises(ValueError, match="window_shape"):
        make("window", FLOAT)


def test_text_preprocessor_survives_savedmodel_export(tmp_path):
    """The standardize/split callables are traced into the SavedModel: the loaded model tokenizes
    as the Python layer does (serving needs no kfx code)."""
    import tensorflow as tf

    from kfx.models.preprocess import make_preprocessor

    spec = {"raw_features": {"review": {"dtype": STRING, "shape": [], "default": ""}},
            "transforms": [{"feature": "review", "kind": "text", "output": "review",
                            "state": {"vocabulary": ["good", "café"], "num_oov_buckets": 1, "sequence_length": 4}}]}
    pre = make_preprocessor(spec)
    module = tf.Module()
    module.pre = pre
    module.f = tf.function(lambda x: pre({"review": x})["review"], input_signature=[tf.TensorSpec([None], tf.string)])
    tf.saved_model.save(module, str(tmp_path))
    texts = tf.constant(["Good, CAFÉ!", "bad\u00a0good"])
    assert tf.saved_model.load(str(tmp_path)).f(texts).numpy().tolist() == [[2, 3, 0, 0], [1, 2, 0, 0]]
