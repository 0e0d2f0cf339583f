"""Generation metrics on hand-computed tiny cases, and the classifier's path: resolved or failing clearly."""
from __future__ import annotations

import os

import numpy as np
import pytest

from kfx.components.evaluation.generation import classifier_dir, load_classifier, sample_metrics
from kfx.pipeline.component import ComponentError

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def test_sample_metrics_match_hand_computed_values():
    # 6 samples, 3 classes requested twice each; the classifier knows a 4th class "x".
    probs = np.array([[0.9, 0.1, 0.0, 0.0],    # requested a -> a (0.9)
                      [0.6, 0.4, 0.0, 0.0],    # requested b -> a (0.6)
                      [0.0, 0.2, 0.8, 0.0],    # requested c -> c (0.8)
                      [0.3, 0.7, 0.0, 0.0],    # requested a -> b (0.7)
                      [0.0, 0.0, 0.0, 1.0],    # requested b -> x (1.0)
                      [0.1, 0.0, 0.5, 0.4]])   # requested c -> c (0.5)
    m = sample_metrics(probs, ["a", "b", "c", "a", "b", "c"], ["a", "b", "c", "x"], ["a", "b", "c"])
    assert m["sample_confidence"] == pytest.approx((0.9 + 0.6 + 0.8 + 0.7 + 1.0 + 0.5) / 6)
    # classified as a: 2, b: 1, c: 2, x: 1 (not a generator class) -> shares 2/6, 1/6, 2/6
    assert m["classes_covered"] == 3
    assert m["min_class_share"] == pytest.approx(1 / 6) and m["max_class_share"] == pytest.approx(2 / 6)
    assert m["other_classes_share"] == pytest.approx(1 / 6)
    assert m["class_agreement"] == pytest.approx(3 / 6)  # samples 0, 2 and 5 are the class requested
    assert m["per_class"]["c"] == {"requested": 2, "classified_share": pytest.approx(2 / 6), "agreement": 1.0,
                                   "confidence": pytest.approx(0.65)}


def test_a_class_never_produced_is_not_covered_and_has_share_zero():
    probs = np.array([[1.0, 0.0, 0.0]] * 3 + [[0.0, 1.0, 0.0]])
    m = sample_metrics(probs, ["0", "1", "2", "0"], ["0", "1", "2"], ["0", "1", "2"])
    assert (m["classes_covered"], m["min_class_share"], m["max_class_share"]) == (2, 0.0, 0.75)
    assert m["sample_confidence"] == 1.0 and m["class_agreement"] == 0.25


def _saved_model(path):
    import tensorflow as tf

    class M(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image")])
        def serve(self, image):
            return {"probabilities": tf.ones([tf.shape(image)[0], 2]) * 0.5}

    m = M()
    tf.saved_model.save(m, str(path), signatures={"serving_default": m.serve})
    return path


def test_classifier_base_directory_resolves_to_its_highest_version(tmp_path):
    from kfx.models import tasks

    import shutil

    _saved_model(tmp_path / "clf" / "2")
    shutil.copytree(tmp_path / "clf" / "2", tmp_path / "clf" / "10")
    (tmp_path / "clf" / "99-tmp").mkdir()
    assert classifier_dir(str(tmp_path / "clf")) == str(tmp_path / "clf" / "10")
    assert classifier_dir(str(tmp_path / "clf" / "2")) == str(tmp_path / "clf" / "2")
    # Without kfx's task description the classes are unknown: the error names the model.
    with pytest.raises(ComponentError, match=f"classifier {tmp_path / 'clf' / '10'}: .*no task description"):
        load_classifier(str(tmp_path / "clf"))
    tasks.save(str(tmp_path / "clf" / "10"), {"type": "multiclass", "label": "y", "vocabulary": ["a", "b"]})
    _, classes, uri = load_classifier(str(tmp_path / "clf"))
    assert (classes, uri) == (["a", "b"], str(tmp_path / "clf" / "10"))


def test_bad_classifier_paths_fail_naming_the_path(tmp_path):
    missing = str(tmp_path / "no" / "such" / "model")
    with pytest.raises(ComponentError, match=f"evaluate.generation.classifier '{missing}': no such directory"):
        load_classifier(missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ComponentError, match="empty is neither a SavedModel"):
        load_classifier(str(tmp_path / "empty"))
    (tmp_path / "broken" / "1").mkdir(parents=True)
    (tmp_path / "broken" / "1" / "saved_model.pb").write_bytes(b"not a protobuf")
    with pytest.raises(ComponentError, match=f"classifier {tmp_path / 'broken' / '1'}: the model does not load"):
        load_classifier(str(tmp_path / "broken"))


def test_re_pushing_the_classifier_changes_evaluates_source_fingerprint(tmp_path):
    from kfx.components.evaluation.evaluate import SPEC
    from kfx.pipeline.config_evaluation import EvaluateConfig

    cfg = EvaluateConfig(generation={"classifier": str(tmp_path / "clf")})
    assert SPEC.source_fingerprint(EvaluateConfig()) == ""  # no generation: nothing outside the store
    missing = SPEC.source_fingerprint(cfg)
    (tmp_path / "clf" / "1").mkdir(parents=True)
    (tmp_path / "clf" / "1" / "saved_model.pb").write_bytes(b"v1")
    first = SPEC.source_fingerprint(cfg)
    assert first not in ("", missing) and SPEC.source_fingerprint(cfg) == first
    (tmp_path / "clf" / "2").mkdir()
    (tmp_path / "clf" / "2" / "saved_model.pb").write_bytes(b"v2")  # a new version
    second = SPEC.source_fingerprint(cfg)
    (tmp_path / "clf" / "2" / "saved_model.pb").write_bytes(b"v2, overwritten")  # the same version re-pushed
    assert len({first, second, SPEC.source_fingerprint(cfg)}) == 3
