"""evaluate: numbers equal fairlearn's / scikit-learn's, slices, the gate, mitigation, the report.

The component runs for real (kfx.components.evaluation.evaluate.run) on tiny artifacts made in
tests/components/evaluation_fixtures.py: a fair logistic model and a biased one fitted where the
label leaks through sex, both evaluated on test data where it does not.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time

import numpy as np
import pandas as pd
import pytest

from tests.components.evaluation import evaluation_fixtures as fx

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SLICES = [["sex"], ["race"], ["sex", "race"], ["age"]]


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    """examples (train/eval/test), schema, a fair model and a biased one (leaky training data)."""
    d = tmp_path_factory.mktemp("evaluate")
    rows = fx.write_examples(str(d / "examples"), {"train": 3000, "eval": 2000, "test": 3000}, seed=1)
    leaky = fx.make_rows(3000, seed=7, leak=True)
    fair_w, biased_w = fx.fit_weights(rows["train"]), fx.fit_weights(leaky)
    return {"dir": d, "rows": rows, "examples": str(d / "examples"), "schema": fx.write_schema(str(d / "schema")),
            "fair": fx.export_model(str(d / "fair"), fair_w), "biased": fx.export_model(str(d / "biased"), biased_w),
            "fair_weights": fair_w, "biased_weights": biased_w}


def evaluate(art, out, model, baseline=None, **cfg):
    """Run the evaluate component; returns (metrics, evaluation.json, blessing.json, out dir)."""
    from kfx.components.evaluation import evaluate as ev
    from kfx.pipeline.component import Context
    from kfx.pipeline.config import config_from_dict
    from kfx.pipeline.config_evaluation import EvaluateConfig

    out = art["dir"] / out
    shutil.rmtree(out, ignore_errors=True)
    outputs = {k: str(out / k) for k in ev.SPEC.outputs}
    for uri in outputs.values():
        os.makedirs(uri)
    config = EvaluateConfig.model_validate({"slices": SLICES, **cfg})
    pipeline = config_from_dict({"name": "t", "ingest": {"format": "builtin", "name": "adult"}})
    ctx = Context(pipeline=pipeline, config=config, outputs=outputs, run_id="r", execution_id=1,
                  inputs={"examples": art["examples"], "schema": art["schema"], "model": art[model],
                          "baseline_model": art[baseline] if baseline else None})
    metrics = ev.run(ctx)
    evaluation = json.loads((out / "evaluation" / "evaluation.json").read_text())
    blessing = json.loads((out / "blessing" / "blessing.json").read_text())
    return metrics, evaluation, blessing, out


def test_metrics_and_fairness_equal_sklearn_and_fairlearn(art):
    import fairlearn.metrics as flm
    from sklearn import metrics as skm

    _, ev, _, out = evaluate(art, "numbers", "fair")
    pred = pd.read_csv(out / "predictions" / "predictions.csv.gz")
    assert len(pred) == ev["rows"] == 3000
    # The audit file carries the label and slice features of the test rows, in file order.
    assert sorted(pred["sex"].unique()) == ["Female", "Male"]
    y = (pred[fx.LABEL] == ">50K").to_numpy()
    yhat = (pred["prediction"] == ">50K").to_numpy()
    score = pred["score"].to_numpy()
    assert np.array_equal(yhat, score >= 0.5)
    o = ev["overall"]
    assert o["accuracy"] == pytest.approx(skm.accuracy_score(y, yhat), abs=1e-12)
    assert o["precision"] == pytest.approx(skm.precision_score(y, yhat), abs=1e-12)
    assert o["recall"] == pytest.approx(skm.recall_score(y, yhat), abs=1e-12)
    assert o["auc"] == pytest.approx(skm.roc_auc_score(y, score), abs=1e-6)
    assert o["pr_auc"] == pytest.approx(skm.average_precision_score(y, score), abs=1e-6)
    assert o["log_loss"] == pytest.approx(skm.log_loss(y, score), abs=1e-5)
    tn, fp, fn, tp = skm.confusion_matrix(y, yhat).ravel()
    assert o["confusion"] == {"tn": tn, "fp": fp, "fn": fn, "tp": tp}

    gap_fns = {"demographic_parity_difference": flm.demographic_parity_difference,
               "demographic_parity_ratio": flm.demographic_parity_ratio,
               "equalized_odds_difference": flm.equalized_odds_difference,
               "equal_opportunity_difference": flm.equal_opportunity_difference}
    group_fns = {"selection_rate": flm.selection_rate, "tpr": flm.true_positive_rate,
                 "fpr": flm.false_positive_rate, "fnr": flm.false_negative_rate,
                 "precision": skm.precision_score}
    assert set(ev["fairness"]) == set(fx.SENSITIVE)  # default: the schema's sensitive features
    for feature in fx.SENSITIVE:
        fr = ev["fairness"][feature]
        for name, fn in gap_fns.items():
            assert fr["gaps"][name]["value"] == pytest.approx(fn(y, yhat, sensitive_features=pred[feature]),
                                                              abs=1e-12), (feature, name)
            lo, hi = fr["gaps"][name]["lower"], fr["gaps"][name]["upper"]
            assert lo < hi, (feature, name)
        frame = flm.MetricFrame(metrics=group_fns, y_true=y, y_pred=yhat, sensitive_features=pred[feature])
        for group, row in frame.by_group.iterrows():
            for metric in group_fns:
                assert fr["groups"][group][metric] == pytest.approx(row[metric], abs=1e-12), (feature, group, metric)
        assert fr["resamples"] == 200


def test_bootstrap_of_adult_size_takes_well_under_seconds():
    from kfx.components.evaluation.fairness import bootstrap_indices, group_fairness

    rng = np.random.default_rng(0)
    n = 16281  # the Adult test split
    groups = rng.choice(5, n, p=[0.85, 0.1, 0.03, 0.01, 0.01])
    y, pred = rng.random(n) < 0.24, rng.random(n) < 0.2
    started = time.perf_counter()
    boot = bootstrap_indices(n, 200, seed=0)
    result = group_fairness(groups, [f"g{i}" for i in range(5)], y, pred, boot, 0.95)
    assert time.perf_counter() - started < 3.0
    assert result["resamples"] == 200
    # Same seed, same intervals: the CI is reproducible.
    again = group_fairness(groups, [f"g{i}" for i in range(5)], y, pred, bootstrap_indices(n, 200, 0), 0.95)
    assert again["gaps"] == result["gaps"]


def test_slices_crossed_bucketed_and_min_size(art):
    _, ev, blessing, _ = evaluate(art, "slices", "fair", min_slice_size=150,
                                  gate={"slices": [{"slice": ["sex", "race"], "metric": "accuracy", "min": 0.0}]})
    by_name = {s["name"]: s for s in ev["slices"]}
    assert set(by_name) == {"sex", "race", "sex x race", "age"}
    crossed = by_name["sex x race"]["values"]
    assert sum(v["count"] for v in crossed) == 3000
    assert {v["value"] for v in crossed} >= {"Male | White", "Female | Other"}
    assert len(by_name["age"]["values"]) == 4  # quantile buckets of a numeric feature
    assert all(v["value"].startswith("[") for v in by_name["age"]["values"])
    small = [v["value"] for v in crossed if v["count"] < 150]
    assert small and all(not v["gated"] for v in crossed if v["count"] < 150)
    # Per-slice checks exist for the gated slices only; small slices are reported, not gated.
    checked = {c["slice_value"] for c in blessing["checks"] if c["kind"] == "slice"}
    assert checked == {v["value"] for v in crossed if v["count"] >= 150}
    assert not checked & set(small)


def test_biased_model_is_not_blessed_and_the_fairness_check_is_named(art):
    gate = {"value": [{"metric": "accuracy", "min": 0.6}],
            "fairness": [{"feature": "sex", "metric": "equalized_odds_difference", "max": 0.15, "judge": "bound"}]}
    fair_metrics, _, fair_blessing, _ = evaluate(art, "fair_gate", "fair", gate=gate)
    assert fair_metrics["blessed"] is True and fair_blessing["reasons"] == []
    metrics, ev, blessing, out = evaluate(art, "biased_gate", "biased", gate=gate)
    assert metrics["blessed"] is False
    failed = [c for c in blessing["checks"] if not c["passed"]]
    assert [c["name"] for c in failed] == ["sex: equalized_odds_difference (upper 95% bound) <= 0.15"]
    check = failed[0]
    gap = ev["fairness"]["sex"]["gaps"]["equalized_odds_difference"]
    assert check["value"] == gap["value"] and check["bound"] == gap["upper"] and check["judged"] == gap["upper"]
    assert check["threshold"] == {"min": None, "max": 0.15, "judge": "bound"}
    assert "sex: equalized_odds_difference" in metrics["reasons"][0]
    assert (out / "blessing" / "NOT_BLESSED").exists() and not (out / "blessing" / "BLESSED").exists()


def test_gating_on_the_bound_is_stricter_than_on_the_point(art):
    point = {"fairness": [{"feature": "race", "metric": "demographic_parity_difference", "max": 0.12}]}
    bound = {"fairness": [{"feature": "race", "metric": "demographic_parity_difference", "max": 0.12, "judge": "bound"}]}
    _, ev, b_point, _ = evaluate(art, "point", "fair", gate=point)
    gap = ev["fairness"]["race"]["gaps"]["demographic_parity_difference"]
    assert gap["value"] < 0.12 < gap["upper"]  # small groups: wide interval
    _, _, b_bound, _ = evaluate(art, "bound", "fair", gate=bound)
    assert b_point["blessed"] is True and b_bound["blessed"] is False


def test_group_thresholds_mitigation_narrows_the_gap(art):
    gate = {"fairness": [{"feature": "sex", "metric": "equal_opportunity_difference", "max": 0.1}]}
    cfg = {"mitigation": {"method": "group_thresholds", "objective": "equal_opportunity", "feature": "sex"}}
    _, ev, blessing, out = evaluate(art, "mitigated", "biased", gate=gate, **cfg)
    mit = ev["mitigation"]
    before = ev["fairness"]["sex"]["gaps"]["equal_opportunity_difference"]["value"]
    after = mit["fairness"]["gaps"]["equal_opportunity_difference"]["value"]
    assert before > 0.2 and after < before / 2
    assert mit["thresholds"]["Female"] < mit["thresholds"]["Male"]  # the disadvantaged group's is lower
    assert blessing["blessed"] is False  # gate on the model as is (mitigation.gate false)
    assert blessing["decision_thresholds"]["groups"] == mit["thresholds"]
    pred = pd.read_csv(out / "predictions" / "predictions.csv.gz")
    thr = pred["sex"].map(mit["thresholds"])
    assert ((pred["score"] >= thr) == (pred["mitigated_prediction"] == ">50K")).all()
    _, _, gated, _ = evaluate(art, "mitigated_gated", "biased", gate=gate,
                              mitigation={**cfg["mitigation"], "gate": True})
    assert gated["blessed"] is True


def test_change_thresholds_against_a_baseline(art):
    gate = {"change": [{"metric": "auc", "max_worsening": 0.0}, {"metric": "log_loss", "max_worsening": 0.0}]}
    _, ev, blessing, _ = evaluate(art, "vs_fair", "biased", baseline="fair", gate=gate)
    assert ev["baseline"]["uri"] == art["fair"]
    assert ev["baseline"]["comparison"]["auc"]["change"] < 0
    assert not blessing["blessed"]
    assert {c["metric"] for c in blessing["checks"] if not c["passed"]} == {"auc", "log_loss"}
    notes = {c["metric"]: c["note"] for c in blessing["checks"]}
    assert notes["auc"].endswith("(lower is worse)") and notes["log_loss"].endswith("(higher is worse)")
    _, ev, first, _ = evaluate(art, "no_baseline", "biased", gate=gate)
    assert first["blessed"] and "no baseline" in first["checks"][0]["note"]


def test_gate_config_errors_name_the_key_and_value():
    from kfx.pipeline.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="unknown metric 'acuracy'"):
        load_config(overrides=["evaluate.gate.value=[{metric: acuracy, min: 0.8}]"])
    with pytest.raises(ConfigError, match="unknown fairness metric 'parity'"):
        load_config(overrides=["evaluate.gate.fairness=[{metric: parity, max: 0.1}]"])


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium not installed (make test installs it as root)")
def test_report_renders_in_headless_chromium(art):
    _, ev, _, out = evaluate(art, "report", "biased", baseline="fair",
                             mitigation={"method": "group_thresholds", "feature": "sex"},
                             gate={"fairness": [{"feature": "sex", "metric": "equalized_odds_difference", "max": 0.1}]})
    report = out / "evaluation" / "report.html"
    profile = art["dir"] / "chromium-profile"
    dom = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                          f"--user-data-dir={profile}", report.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    plots = set(re.findall(r'<svg[^>]*data-plot="([^"]+)"', dom))
    assert {"roc", "calibration", "baseline", "slice-sex", "slice-sex x race", "fairness-sex", "fairness-race",
            "mitigation", "mitigation-gaps"} <= plots
    # The plots have content: two ROC curves (candidate, baseline), interval whiskers, a threshold line.
    roc = re.search(r'data-plot="roc".*?</svg>', dom, re.S).group(0)
    assert roc.count('class="curve"') == 2
    fairness = re.search(r'data-plot="fairness-sex".*?</svg>', dom, re.S).group(0)
    assert fairness.count('class="interval"') == 3 and 'class="threshold"' in fairness
    assert "NOT BLESSED" in dom and "sex: equalized_odds_difference" in dom
    # Self-contained: nothing fetched from elsewhere.
    assert not re.search(r'(src|href)="(http|//)', report.read_text())


def test_a_baseline_of_another_task_is_not_scored_and_change_checks_pass(tmp_path):
    from kfx.components.evaluation.evaluate import _baseline
    from kfx.models import tasks

    tasks.save(str(tmp_path / "gan"), {"type": "generation", "label": "y", "vocabulary": ["a", "b"]})
    out = _baseline(str(tmp_path / "gan"), None, "y", None, "binary")  # never scored: no data needed
    assert out == {"uri": None, "note": f"the last pushed model {tmp_path / 'gan'} is a generation model, "
                                        f"not binary: change checks pass"}
