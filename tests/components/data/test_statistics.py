"""statistics: numbers agree with numpy on data made here; the sketches stay accurate and small."""
from __future__ import annotations

import numpy as np
import pandas as pd

from kfx.components.data.statistics import QuantileSketch, load_statistics
from tests.conftest import kfx, read_json, tiny_config


def test_statistics_match_numpy(tmp_path):
    rng = np.random.default_rng(3)
    n = 3000
    df = pd.DataFrame({"x": rng.normal(5, 2, n).round(3), "n": rng.integers(0, 50, n),
                       "color": rng.choice(["red", "green", "blue", "teal"], n, p=[0.4, 0.3, 0.2, 0.1]),
                       "label": rng.choice(["yes", "no"], n)})
    df.loc[::10, "x"] = np.nan  # 10% missing
    df.loc[::7, "n"] = 0
    (tmp_path / "data").mkdir()
    df.to_csv(tmp_path / "data" / "d.csv", index=False)
    cfg = tiny_config(tmp_path, str(tmp_path / "data" / "d.csv"),
                      ingest={"inputs": [{"pattern": str(tmp_path / "data" / "d.csv"), "splits": {"train": 1}}]})
    out = tmp_path / "s.json"
    proc = kfx("run", "-c", str(cfg), "--to", "statistics", "--summary-json", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    stats = load_statistics(read_json(out)["components"]["statistics"]["outputs"]["statistics"])["train"]
    assert stats.num_examples == n
    f = {s.path.step[0]: s for s in stats.features}

    x = df["x"].dropna().to_numpy()
    xs = f["x"].num_stats
    assert xs.common_stats.num_missing == df["x"].isna().sum()
    assert xs.common_stats.num_non_missing == len(x)
    assert np.isclose(xs.mean, x.mean(), rtol=1e-5) and np.isclose(xs.std_dev, x.std(), rtol=1e-4)
    assert np.isclose(xs.min, x.min(), atol=1e-5) and np.isclose(xs.max, x.max(), atol=1e-5)
    assert abs(np.mean(x <= xs.median) - 0.5) < 0.01
    std_hist = [h for h in xs.histograms if h.type == h.STANDARD][0]
    assert np.isclose(sum(b.sample_count for b in std_hist.buckets), len(x))
    q_hist = [h for h in xs.histograms if h.type == h.QUANTILES][0]
    assert len(q_hist.buckets) == 10

    ns = f["n"].num_stats
    assert ns.num_zeros == (df["n"] == 0).sum()
    assert f["n"].custom_stats[0].num == df["n"].nunique()

    cs = f["color"].string_stats
    assert cs.unique == 4
    counts = df["color"].value_counts()
    assert [(v.value, v.frequency) for v in cs.top_values] == list(zip(counts.index, counts.to_numpy()))
    assert np.isclose(cs.avg_length, df["color"].str.len().mean())


def test_quantile_sketch_is_accurate_and_bounded():
    rng = np.random.default_rng(0)
    a, b = QuantileSketch(k=512), QuantileSketch(k=512)
    data = rng.lognormal(0, 1, 400_000)
    for chunk in np.array_split(data[:200_000], 50):
        a.add(chunk)
    for chunk in np.array_split(data[200_000:], 50):
        b.add(chunk)
    merged = a.merge(b)
    assert sum(len(level) for level in merged.levels) < 512 * 12  # memory does not grow with rows
    qs = np.linspace(0.05, 0.95, 19)
    est = merged.quantiles(qs)
    ranks = np.searchsorted(np.sort(data), est) / len(data)
    assert np.max(np.abs(ranks - qs)) < 0.01


def test_distinct_count_of_many_strings_is_not_overestimated():
    """Above the KMV sketch's size the count is estimated from the hashes' range (strings: 2**62)."""
    import tensorflow as tf

    from kfx.components.data.statistics import FeatureAcc, _batch_reducer

    n = 10_000
    examples = [tf.train.Example(features=tf.train.Features(feature={"s": tf.train.Feature(
        bytes_list=tf.train.BytesList(value=[f"value {i}".encode()]))})).SerializeToString() for i in range(n)]
    acc = FeatureAcc("string")
    acc.add({k: v.numpy() for k, v in _batch_reducer({"s": "string"})(tf.constant(examples))["s"].items()}, 1000)
    assert abs(acc.unique() - n) / n < 0.05


def test_image_columns_are_hashed_not_value_counted():
    import tensorflow as tf

    from kfx.components.data import images
    from kfx.components.data.statistics import FeatureAcc, _batch_reducer

    def example(img: bytes, color: bytes) -> bytes:
        feats = {"img": tf.train.Feature(bytes_list=tf.train.BytesList(value=[img])),
                 "color": tf.train.Feature(bytes_list=tf.train.BytesList(value=[color]))}
        return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()

    imgs = [b"png-a", b"png-b", b"png-a", b"png-c", b"png-b"]
    batch = tf.constant([example(i, c) for i, c in zip(imgs, [b"red", b"red", b"blue", b"red", b"blue"])])
    r = {k: {n: v.numpy() for n, v in d.items()}
         for k, d in _batch_reducer({"img": "string", "color": "string"}, image=frozenset({"img"}))(batch).items()}
    assert "unique" not in r["img"] and "counts" not in r["img"]  # no image bytes back to numpy
    assert sorted(zip(r["color"]["unique"].tolist(), r["color"]["counts"].tolist())) == [(b"blue", 2), (b"red", 3)]
    img, color = FeatureAcc("string", image=images.ImageAcc()), FeatureAcc("string")
    img.add(r["img"], 10)
    color.add(r["color"], 10)
    assert img.counts == {} and img.unique() == 3 and img.num_values == 5 and img.bytes_len == 25
    assert color.counts == {b"red": 3, b"blue": 2} and color.unique() == 2


def test_shard_groups_are_sorted_runs_and_merging_them_ignores_arrival_order():
    """Groups depend only on the shard list; merge_in_order gives the same accumulators whatever
    order the groups arrive in (the sketch and the sums are order-sensitive otherwise)."""
    from kfx.components.data.feature_stats import FeatureAcc, merge_in_order, shard_groups

    items = [("train", f"s{i:02d}") for i in (5, 3, 9, 0, 1, 2, 4, 6, 7, 8)] + [("eval", "e1"), ("eval", "e0")]
    groups = shard_groups(items, max_groups=4)
    assert groups == [("train", ("s00", "s01", "s02")), ("train", ("s03", "s04", "s05")),
                      ("train", ("s06", "s07", "s08")), ("train", ("s09",)), ("eval", ("e0",)), ("eval", ("e1",))]
    assert shard_groups([], max_groups=4) == []

    rng = np.random.default_rng(3)

    def part(seed):
        acc = FeatureAcc("float")
        v = np.random.default_rng(seed).normal(size=3000) * 1e6
        acc.add({"rows": len(v), "present": len(v), "num_values": len(v), "min_nv": 1, "max_nv": 1, "values": v,
                 "sum": v.sum(), "sum_sq": v @ v, "min": v.min(), "max": v.max(), "zeros": 0}, 10)
        return {"x": acc}, len(v)

    def merged(order):
        _, (accs, rows) = merge_in_order(("train", [(f"s{i}", part(i)) for i in order]), 10)
        return rows, accs["x"].total, accs["x"].total_sq, np.concatenate(accs["x"].sketch.levels).tolist()

    first = merged(range(6))
    assert all(merged(rng.permutation(6)) == first for _ in range(3))
    assert first[0] == 18000
