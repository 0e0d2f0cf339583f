"""Text statistics and text checks (components/data/text_stats.py) through the real `kfx run`:
token and length numbers equal a Python count on texts made here (an empty one included),
schema inference marks the feature natural language, validate flags empty texts and an
out-of-vocabulary jump (within a run and against the last validated statistics) and passes a
clean set; bad thresholds fail at config load.
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import FAST_BEAM, kfx, read_json

KNOWN = ("the", "film", "is", "a", "story", "cast", "wonderful", "dull", "plot", "really", "quite", "moving")
UNSEEN = ("zorblax", "quintessa", "vardemon", "plimmish", "ostrovar", "kettleby", "marnox", "fribble")
ODD = ["", "!!! ...", "Café — naïve, déjà vu!", "It's the   FILM's plot... really?"]  # two have no token


def _tokens(text: str) -> list[str]:
    """The text kind's tokens for these texts: lower case, punctuation removed, split on spaces."""
    return re.sub(r"[^\w\s]", "", text.lower()).split()


def _texts(rng, words, n: int, unseen: int = 0) -> list[str]:
    out = []
    for _ in range(n):
        chosen = list(rng.choice(words, int(rng.integers(2, 9)))) + list(rng.choice(UNSEEN, unseen))
        rng.shuffle(chosen)
        out.append(" ".join(chosen).capitalize() + ".")
    return out


def _write(path: Path, texts: list[str]) -> None:
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(path)) as w:
        for i, t in enumerate(texts):
            w.write(tf.train.Example(features=tf.train.Features(feature={
                "text": tf.train.Feature(bytes_list=tf.train.BytesList(value=[t.encode()])),
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[i % 2]))})).SerializeToString())


def _run(tmp: Path, root: Path, train: list[str], eval_: list[str], *sets: str) -> tuple[int, dict]:
    """`kfx run --to validate` over TFRecords of these texts (text marked by statistics.text_features)."""
    _write(tmp / "train.tfrecord", train)
    _write(tmp / "eval.tfrecord", eval_)
    cfg = {"name": "texts", "root": str(root), "beam_args": FAST_BEAM,
           "ingest": {"format": "tfrecord", "label": "label",
                      "inputs": [{"pattern": str(tmp / "train.tfrecord"), "splits": {"train": 1}},
                                 {"pattern": str(tmp / "eval.tfrecord"), "splits": {"eval": 1}}]},
           "statistics": {"text_features": ["text"]}, "schema": {"label": "label"}}
    (tmp / "texts.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp / "summary.json"
    proc = kfx("run", "-c", str(tmp / "texts.yaml"), "--to", "validate", "--summary-json", str(out),
               *[a for s in sets for a in ("--set", s)])
    return proc.returncode, read_json(out)


@pytest.fixture(scope="module")
def flagged(tmp_path_factory):
    """A run whose train split has two empty texts and whose eval texts are 3/8 unseen words."""
    tmp = tmp_path_factory.mktemp("flagged")
    rng = np.random.default_rng(0)
    train = _texts(rng, KNOWN, 40) + ODD
    eval_ = [" ".join(list(rng.choice(KNOWN, 5)) + list(rng.choice(UNSEEN, 3))) for _ in range(12)]
    code, summary = _run(tmp, tmp / "runs", train, eval_, "validate.block=false")
    assert code == 0, summary.get("error")
    return summary, train, eval_


def _stats(summary) -> dict:
    from kfx.components.data.statistics import load_statistics

    stats = load_statistics(summary["components"]["statistics"]["outputs"]["statistics"])
    return {split: {f.path.step[0]: f for f in ds.features} for split, ds in stats.items()}


def test_token_and_length_statistics_equal_a_python_count(flagged):
    from kfx.components.data.text_stats import nl_statistics

    summary, train, _ = flagged
    fs = _stats(summary)["train"]["text"]
    custom = {c.name: c for c in fs.custom_stats}
    nl = nl_statistics(fs)
    tokens = [_tokens(t) for t in train]
    counts = np.array([len(t) for t in tokens])
    chars = np.array([len(t) for t in train])
    flat = [tok for t in tokens for tok in t]
    assert _tokens(ODD[2]) == ["café", "naïve", "déjà", "vu"] and counts[-4:].tolist() == [0, 0, 4, 5]

    assert (custom["texts"].num, custom["empty_texts"].num, custom["tokens"].num) == (len(train), 2, len(flat))
    assert np.isclose(custom["mean_token_count"].num, counts.mean())
    assert np.isclose(custom["mean_char_length"].num, chars.mean())
    assert (nl.min_sequence_length, nl.max_sequence_length) == (0, counts.max())
    assert np.isclose(nl.avg_token_length, np.mean([len(t) for t in flat]))
    qs = np.linspace(0, 1, 11)
    seq = nl.sequence_length_histogram
    assert seq.type == seq.QUANTILES
    assert np.allclose([b.low_value for b in seq.buckets] + [seq.buckets[-1].high_value], np.quantile(counts, qs))
    cq = custom["char_length_quantiles"].histogram
    assert np.allclose([b.low_value for b in cq.buckets] + [cq.buckets[-1].high_value], np.quantile(chars, qs))
    for name, values in (("token_count_histogram", counts), ("char_length_histogram", chars)):
        want, edges = np.histogram(values, bins=np.linspace(values.min(), values.max(), 11))
        h = custom[name].histogram
        assert [b.sample_count for b in h.buckets] == want.tolist()
        assert np.allclose([b.low_value for b in h.buckets], edges[:-1])
    ranked = sorted(Counter(flat).items(), key=lambda kv: (-kv[1], kv[0]))
    assert [(b.label, b.sample_count) for b in nl.rank_histogram.buckets] == ranked
    assert custom["domain_info"].str == "natural_language_domain {}"
    assert [c.name for c in _stats(summary)["train"]["label"].custom_stats] == ["unique"]

    stats_txt = Path(summary["components"]["statistics"]["outputs"]["statistics"], "stats.txt").read_text()
    top = ", ".join(f"{t}={c}" for t, c in ranked[:3])
    assert f"text 'text': {len(train)} texts, 2 empty; tokens per text mean {counts.mean():.1f}, min 0" in stats_txt
    assert f"{len(flat):,} tokens, {len(ranked)} distinct kept; top: {top}" in stats_txt


def test_schema_inference_marks_the_text_feature_natural_language(flagged):
    from kfx.pipeline.artifacts import load_schema

    schema = load_schema(flagged[0]["components"]["schema"]["outputs"]["schema"])
    f = {f.name: f for f in schema.feature}
    assert f["text"].HasField("natural_language_domain") and not f["text"].domain
    assert not f["label"].HasField("natural_language_domain")


def test_validate_flags_empty_texts_and_the_oov_jump(flagged):
    summary, train, eval_ = flagged
    v = summary["components"]["validate"]
    vocab = {tok for t in train for tok in _tokens(t)}
    eval_tokens = [tok for t in eval_ for tok in _tokens(t)]
    rate = np.mean([tok not in vocab for tok in eval_tokens])
    assert rate == 3 / 8
    text = v["metrics"]["text"]["text"]
    assert text["train"] == {"texts": len(train), "empty_texts": 2}
    assert text["eval"]["empty_texts"] == 0 and np.isclose(text["eval"]["oov_rate"], rate)
    lines = Path(v["outputs"]["anomalies"], "anomalies.txt").read_text().splitlines()
    assert sorted(lines[1:]) == [
        f"feature 'text' (split eval): Out-of-vocabulary rate drift: 37.50% of the {len(eval_tokens)} tokens of "
        f"split eval are outside the vocabulary of the train split ({len(vocab)} most frequent tokens) against "
        "0.00% of the tokens of the train split: +37.50%, above oov_drift_threshold 0.1.",
        f"feature 'text' (split train): Empty texts: 2 of {len(train)} texts (4.55%) have no token after the "
        "text kind's standardization, above max_empty_text_fraction 0."]
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    an = anomalies_pb2.Anomalies.FromString(Path(v["outputs"]["anomalies"], "Split-eval", "SchemaDiff.pb").read_bytes())
    assert [r.type for r in an.anomaly_info["text"].reason] == [anomalies_pb2.AnomalyInfo.FEATURE_COVERAGE_TOO_LOW]


def test_clean_texts_pass_and_new_vocabulary_is_flagged_against_the_baseline(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "runs"
    code, first = _run(tmp_path, root, _texts(rng, KNOWN, 40), _texts(rng, KNOWN, 10))
    assert code == 0, first.get("error")
    v = first["components"]["validate"]["metrics"]
    assert v["anomalies"] == 0 and v["text"]["text"]["eval"] == {"texts": 10, "empty_texts": 0, "oov_rate": 0.0}

    # The next day's data speaks another vocabulary in every split: eval agrees with train, but
    # train is far from the last validated train's vocabulary.
    code, second = _run(tmp_path, root, _texts(rng, UNSEEN, 40), _texts(rng, UNSEEN, 10))
    assert code == 1
    assert ("feature 'text' (split train): Out-of-vocabulary rate drift: 100.00% of the" in second["error"]
            and "outside the vocabulary of the last validated train split (12 most frequent tokens) against 0.00% "
                "of the tokens of the last validated train split: +100.00%" in second["error"])
    assert "(split eval)" not in second["error"]


@pytest.mark.parametrize("key,value,message", [
    ("validate.oov_drift_threshold", 0, "greater than 0"),
    ("validate.oov_drift_threshold", 1.5, "less than or equal to 1"),
    ("validate.max_empty_text_fraction", 1, "less than 1"),
    ("validate.max_empty_text_fraction", -0.1, "greater than or equal to 0"),
    ("statistics.text_max_tokens", 0, "greater than or equal to 1"),
])
def test_bad_text_thresholds_fail_at_load(key, value, message):
    from kfx.pipeline.config import ConfigError, load_config

    with pytest.raises(ConfigError) as err:
        load_config(None, [f"{key}={value}"])
    assert f"key {key!r}: Input should be {message}" in str(err.value) and f"(got {value!r})" in str(err.value)


def test_text_features_must_be_string_columns():
    from kfx.components.data.text_stats import text_features
    from kfx.pipeline.component import ComponentError
    from kfx.pipeline.config import StatisticsConfig

    meta = {"columns": {"text": "string", "n": "int"}, "text_columns": ["text"]}
    assert text_features(meta, StatisticsConfig()) == {"text"}
    with pytest.raises(ComponentError, match=r"text_features \['n'\] must be string columns .* 'n': 'int'"):
        text_features(meta, StatisticsConfig(text_features=("n",)))
    with pytest.raises(ComponentError, match=r"text_features \['text'\] are image columns"):
        text_features({**meta, "images": {"text": None}}, StatisticsConfig())


def test_a_column_both_image_and_text_fails_at_config_load():
    from kfx.pipeline.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError, match="column 'photo' is in both image_columns and text_columns"):
        config_from_dict({"name": "x", "stages": [{"name": "ingest", "component": "ingest"}],
                          "ingest": {"inputs": [{"pattern": "d.csv"}], "image_columns": ["photo"],
                                     "base64_columns": ["photo"], "text_columns": ["photo"]}})


def test_a_natural_language_feature_without_token_statistics_is_noted_not_checked():
    from tensorflow_metadata.proto.v0 import schema_pb2, statistics_pb2

    from kfx.components.data.text_stats import check
    from kfx.components.data.validate import Findings
    from kfx.pipeline.config import ValidateConfig

    schema = schema_pb2.Schema()
    schema.feature.add(name="text", type=schema_pb2.BYTES).natural_language_domain.SetInParent()
    ds = statistics_pb2.DatasetFeatureStatistics(name="train", num_examples=3)
    ds.features.add(type=statistics_pb2.FeatureNameStatistics.STRING).path.step.append("text")
    findings = Findings(schema)
    assert check(findings, schema, {"train": ds}, None, ValidateConfig()) == {"text": {
        "note": "no token statistics (not checked): name the feature in ingest.text_columns or statistics.text_features"}}
    assert findings.lines == []
