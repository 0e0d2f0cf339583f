"""models/tasks/anomaly.py: label analysis, the normal-row filter, the threshold picked at a false
positive rate, the evaluation numbers against hand-computed values, fairness, and the config
checks of `transform.anomaly`."""
from __future__ import annotations

import numpy as np
import pytest

from kfx.models import tasks

INFO = {"type": tasks.ANOMALY, "label": "digit", "label_dtype": "int64", "vocabulary": None, "positive": None,
        "normal_values": ["0"], "false_positive_rate": 0.05}


def test_label_analysis_counts_normal_rows_and_rejects_unknown_normal_values():
    info, report = tasks.of(INFO).analyze_label({"0": 5, "1": 3, "7": 2})
    assert info["normal_rows"] == 5 and report == {"class_counts": {"0": 5, "1": 3, "7": 2}, "normal_rows": 5,
                                                   "anomalous_rows": 5}
    with pytest.raises(ValueError, match=r"normal_values \['9'\] are not values of label 'digit' in the train split "
                                         r"\(its values: \['0', '1'\]\)"):
        tasks.of({**INFO, "normal_values": ["0", "9"]}).analyze_label({"0": 5, "1": 3})
    with pytest.raises(ValueError, match="needs a string or integer label marking the normal rows; 'x' is a float"):
        tasks.get(tasks.ANOMALY).plan("x", "float32", None)


def test_training_rows_keep_normal_labels_only():
    import tensorflow as tf

    keep = tasks.of(INFO).training_rows()
    assert [bool(keep(tf.constant(v, tf.int64))) for v in (0, 3, 10)] == [True, False, False]
    keep = tasks.of({**INFO, "label_dtype": "string", "normal_values": ["ok", "fine"]}).training_rows()
    assert [bool(keep(tf.constant(v))) for v in (b"ok", b"fine", b"bad")] == [True, True, False]
    assert tasks.of({**INFO, "type": tasks.REGRESSION}).training_rows() is None  # other tasks keep every row


@pytest.mark.parametrize("normal_rows, rate, flagged", [(100, 0.05, 5), (61, 0.05, 3), (10, 0.01, 0)])
def test_threshold_gives_the_configured_false_positive_rate_on_the_eval_scores(normal_rows, rate, flagged):
    rng = np.random.default_rng(0)
    normal = rng.permutation(np.arange(normal_rows, dtype=np.float64))
    labels = np.r_[np.zeros(normal_rows, np.int64), np.full(20, 4)]
    scores = np.r_[normal, rng.uniform(0, 2 * normal_rows, 20)]  # the anomalies do not move the threshold
    task = tasks.of(tasks.of({**INFO, "false_positive_rate": rate}).calibrate(labels, scores))
    assert task.threshold == (normal_rows - 1 - flagged + (0.5 if flagged else 0))
    assert int(np.sum(normal > task.threshold)) == flagged
    assert task.info["eval_false_positive_rate"] == pytest.approx(flagged / normal_rows)
    with pytest.raises(ValueError, match=r"the eval split has no normal row \(label 'digit' in \['0'\]\)"):
        tasks.of(INFO).calibrate(np.array([1, 2]), np.array([0.1, 0.2]))


def test_metrics_equal_hand_computed_auc_precision_recall_and_fpr():
    task = tasks.of({**INFO, "threshold": 0.32})
    o = task.outcomes(np.array([0, 0, 0, 1, 2]), np.array([0.1, 0.4, 0.35, 0.8, 0.3]), threshold=0.5)
    assert o.y.tolist() == [0, 0, 0, 1, 1] and o.pred.tolist() == [0, 1, 1, 1, 0]  # the model's threshold, not 0.5
    m = task.metrics(o)
    # anomaly 0.8 outranks all 3 normal rows, 0.3 only 0.1: AUC = (3 + 1) / 6
    assert m["anomaly_auc"] == pytest.approx(4 / 6)
    assert (m["precision"], m["recall"], m["false_positive_rate"]) == pytest.approx((1 / 3, 1 / 2, 2 / 3))
    assert m["confusion"] == {"tn": 1, "fp": 2, "fn": 1, "tp": 1} and m["threshold"] == 0.32
    only_normal = task.metrics(o, mask=np.array([True, True, True, False, False]))
    assert only_normal["anomaly_auc"] is None and only_normal["recall"] is None


def test_fairness_gaps_of_false_positive_rate_and_recall():
    task = tasks.of({**INFO, "threshold": 0.5})
    o = task.outcomes(np.array([0, 0, 5, 5, 0, 0, 5, 5]), np.array([0.9, 0.1, 0.9, 0.9, 0.1, 0.1, 0.9, 0.1]))
    out = task.fairness(o, o.pred, np.array([0, 0, 0, 0, 1, 1, 1, 1]), ["a", "b"], None, 0.95)
    assert out["groups"]["a"]["false_positive_rate"] == 0.5 and out["groups"]["b"]["false_positive_rate"] == 0.0
    assert out["groups"]["a"]["recall"] == 1.0 and out["groups"]["b"]["recall"] == 0.5
    assert out["gaps"]["false_positive_rate_difference"]["value"] == 0.5
    assert out["gaps"]["recall_difference"]["value"] == 0.5
    assert list(out["gaps"])[0] == task.FAIRNESS_METRICS[0]


def test_serving_outputs_flag_scores_above_the_threshold():
    import tensorflow as tf

    out = tasks.of({**INFO, "threshold": 0.5}).serving_outputs(tf.constant([0.2, 0.5, 0.7]))
    assert out["score"].numpy().tolist() == pytest.approx([0.2, 0.5, 0.7]) and out["anomaly"].numpy().tolist() == [0, 0, 1]
    assert tasks.of(INFO).serving_outputs(tf.constant([9.0]))["anomaly"].numpy().tolist() == [0]  # not calibrated


@pytest.mark.parametrize("section, message", [
    ({"task": "anomaly"}, "transform.anomaly \\(the normal label values\\) goes with transform.task: anomaly"),
    ({"task": "multiclass", "anomaly": {"normal_values": ["0"]}}, "got task 'multiclass'"),
    ({"task": "anomaly", "anomaly": {"normal_values": []}}, "normal_values"),
    ({"task": "anomaly", "anomaly": {"normal_values": ["0", "0"]}}, "lists a value twice"),
    ({"task": "anomaly", "anomaly": {"normal_values": ["0"], "false_positive_rate": 1.5}}, "false_positive_rate"),
])
def test_config_errors_name_the_key(section, message):
    from pydantic import ValidationError

    from kfx.pipeline.config_modeling import TransformConfig

    with pytest.raises(ValidationError, match=message):
        TransformConfig.model_validate(section)
    ok = TransformConfig.model_validate({"task": "anomaly", "anomaly": {"normal_values": [0, "7"]}}).anomaly
    assert ok.normal_values == ("0", "7") and ok.false_positive_rate == 0.05


def test_an_epoch_trains_on_the_normal_rows_only():
    task = tasks.of({**INFO, "normal_rows": 300})
    assert task.training_row_count(1000, 1000) == 300  # train: the whole split, its normal rows
    assert task.training_row_count(100, 1000) == 30  # tune on a sample: its normal share
    assert tasks.of(INFO).training_row_count(1000, 1000) == 1000  # not counted: every row
    assert tasks.of({**INFO, "type": tasks.REGRESSION}).training_row_count(100, 1000) == 100
