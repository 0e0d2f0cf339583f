"""The pipeline graph in config: templates, `stages:` lists, and every way a graph is rejected."""
from __future__ import annotations

import pytest
import yaml

from kfx.pipeline import graph, resolvers
from kfx.pipeline.config import ConfigError, load_config
from tests.conftest import FAST_BEAM, kfx, read_json, write_tiny_csv

DATA_STAGES = [
    {"name": "ingest", "component": "ingest"},
    {"name": "statistics", "component": "statistics", "inputs": {"examples": "ingest.examples"}},
    {"name": "schema", "component": "schema", "inputs": {"statistics": "statistics.statistics"}},
]


def _write(tmp_path, **raw):
    cfg = {"name": "g", "root": str(tmp_path / "runs"), "beam_args": FAST_BEAM,
           "ingest": {"format": "csv", "inputs": [{"pattern": str(tmp_path / "data" / "*.csv"),
                                                   "splits": {"train": 8, "eval": 2}}], "label": "label"},
           "schema": {"label": "label"}}
    cfg.update(raw)
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _error(tmp_path, **raw) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, **raw))
    return str(err.value)


def test_default_template_is_the_tabular_graph():
    cfg = load_config()  # adult.yaml has no stages: the template
    assert [s.name for s in cfg.stages] == graph.stage_names(graph.TEMPLATES["tabular"])
    assert len(cfg.stages) == 10 and cfg.stage("train").model == "mlp"
    assert cfg.stage("push").model_name == "adult"


def test_resolver_names_match_their_implementations():
    assert set(graph.RESOLVERS) == set(resolvers.RESOLVERS)


def test_stages_list_loads_with_sections_validated_by_each_component(tmp_path):
    stages = DATA_STAGES + [{"name": "stats_again", "component": "statistics",
                             "inputs": {"examples": "ingest.examples"}}]
    cfg = load_config(_write(tmp_path, stages=stages, stats_again={"top_k": 3}))
    assert [s.name for s in cfg.stages] == ["ingest", "statistics", "schema", "stats_again"]
    assert cfg.stage("stats_again").top_k == 3 and cfg.stage("statistics").top_k == 20
    assert cfg.stages_of("statistics") == ["statistics", "stats_again"]
    # The component's own config class checks the section: a bad value names stage and key.
    msg = _error(tmp_path, stages=stages, stats_again={"top_k": 0})
    assert "stats_again.top_k" in msg and "got 0" in msg


@pytest.mark.parametrize("change, expected", [
    ({"component": "no_such_component"}, ["stage 'statistics'", "'no_such_component'", "cannot be imported"]),
    ({"inputs": {"examples": "nowhere.examples"}}, ["stage 'statistics'", "inputs.examples", "'nowhere'"]),
    ({"inputs": {"examples": "ingest.nothing"}}, ["stage 'statistics'", "inputs.examples", "no output 'nothing'"]),
    ({"inputs": {}}, ["stage 'statistics'", "inputs.examples", "not wired"]),
    ({"inputs": {"examples": "ingest.examples", "extra": "ingest.examples"}},
     ["stage 'statistics'", "inputs.extra", "has no input 'extra'"]),
    ({"inputs": {"examples": "history:last_week"}}, ["stage 'statistics'", "inputs.examples", "unknown resolver"]),
    ({"inputs": {"examples": "ingest"}}, ["stage 'statistics'", "inputs.examples", "STAGE.OUTPUT"]),
    ({"after": ["later"]}, ["stage 'statistics'", "after", "'later'"]),
    ({"colour": "red"}, ["stage 'statistics'", "unknown key 'colour'"]),
])
def test_bad_graphs_are_rejected_naming_stage_and_key(tmp_path, change, expected):
    stages = [dict(s) for s in DATA_STAGES]
    stages[1] = {"name": "statistics", "component": "statistics", "inputs": {"examples": "ingest.examples"}, **change}
    msg = _error(tmp_path, stages=stages)
    for part in expected:
        assert part in msg, (part, msg)


def test_cycles_duplicates_and_orphan_sections_are_rejected(tmp_path):
    cycle = [{"name": "ingest", "component": "ingest", "after": ["schema"]}] + DATA_STAGES[1:]
    msg = _error(tmp_path, stages=cycle)
    assert "cycle" in msg and "ingest -> " in msg

    msg = _error(tmp_path, stages=DATA_STAGES + [DATA_STAGES[1]])
    assert "stage 'statistics': name used twice" in msg

    msg = _error(tmp_path, stages=DATA_STAGES, train={"epochs": 2})
    assert "section 'train' names no stage" in msg and "ingest, statistics, schema" in msg

    msg = _error(tmp_path, template="images")
    assert "unknown template 'images'" in msg and "tabular" in msg


def test_a_user_component_that_fails_to_import_or_is_not_a_component(tmp_path):
    (tmp_path / "broken_step.py").write_text("import no_such_package\n")
    (tmp_path / "plain_module.py").write_text("X = 1\n")
    msg = _error(tmp_path, stages=DATA_STAGES + [{"name": "mine", "component": "broken_step"}])
    assert "stage 'mine'" in msg and "broken_step" in msg and "No module named 'no_such_package'" in msg
    msg = _error(tmp_path, stages=DATA_STAGES + [{"name": "mine", "component": "plain_module"}])
    assert "stage 'mine'" in msg and "must define SPEC" in msg


def test_user_model_module_errors_name_the_module_and_the_cause(tmp_path):
    (tmp_path / "bad_import.py").write_text("raise RuntimeError('weights file missing')\n")
    (tmp_path / "bad_build.py").write_text("def build(features, task):\n    return None\n")
    msg = _error(tmp_path, train={"model": "bad_import.py"})
    assert "train.model" in msg and "bad_import.py" in msg and "RuntimeError: weights file missing" in msg
    msg = _error(tmp_path, train={"model": "bad_build.py"})
    assert "train.model" in msg and "bad_build" in msg and "build(features, task, hp)" in msg
    msg = _error(tmp_path, train={"model": "no_such_file.py"})
    assert "no_such_file.py" in msg and "does not exist" in msg
    msg = _error(tmp_path, transform={"preprocessing": "bad_build.py:nothing"})
    assert "transform.preprocessing" in msg and "no function 'nothing'" in msg


def test_bad_graph_exits_2_from_the_cli(tmp_path):
    path = _write(tmp_path, stages=[DATA_STAGES[0], {"name": "statistics", "component": "statistics"}, DATA_STAGES[2]])
    proc = kfx("run", "-c", str(path), "--summary-json", str(tmp_path / "s.json"))
    assert proc.returncode == 2, proc.stderr
    assert "stage 'statistics': inputs.examples" in proc.stderr
    assert read_json(tmp_path / "s.json")["status"] == "failed"


def test_two_instances_of_train_each_with_its_own_section_and_evaluate(tmp_path):
    write_tiny_csv(tmp_path / "data" / "part.csv", rows=400)
    common = {"examples": "ingest.examples", "schema": "schema.schema"}
    stages = DATA_STAGES + [
        {"name": "transform", "component": "transform", "inputs": common},
        {"name": "train_mlp", "component": "train", "inputs": {**common, "transform_graph": "transform.transform_graph"}},
        {"name": "train_wide_deep", "component": "train",
         "inputs": {**common, "transform_graph": "transform.transform_graph"}},
        {"name": "evaluate_mlp", "component": "evaluate", "inputs": {**common, "model": "train_mlp.model"}},
        {"name": "evaluate_wide_deep", "component": "evaluate", "inputs": {**common, "model": "train_wide_deep.model"}},
    ]
    fast = {"epochs": 2, "batch_size": 64, "verbose": 0, "warmup_requests": 0}
    path = _write(tmp_path, stages=stages, train_mlp={"model": "mlp", **fast},
                  train_wide_deep={"model": "wide_deep", **fast},
                  evaluate_mlp={"split": "eval", "fairness": {"bootstrap_resamples": 0}},
                  evaluate_wide_deep={"split": "eval", "fairness": {"bootstrap_resamples": 0}})
    proc = kfx("run", "-c", str(path), "--summary-json", str(tmp_path / "s.json"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    comps = read_json(tmp_path / "s.json")["components"]
    assert comps["train_mlp"]["metrics"]["model"] == "mlp"
    assert comps["train_wide_deep"]["metrics"]["model"] == "wide_deep"
    for name in ("evaluate_mlp", "evaluate_wide_deep"):
        assert comps[name]["status"] == "succeeded" and 0.0 <= comps[name]["metrics"]["accuracy"] <= 1.0
    # Each instance writes under its own stage name.
    assert "/g/train_mlp/" in comps["train_mlp"]["outputs"]["model"]
    assert "/g/train_wide_deep/" in comps["train_wide_deep"]["outputs"]["model"]
