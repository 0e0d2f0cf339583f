"""The local runner on a toy graph: parallel stages, caching, failure handling, atomic commit."""
from __future__ import annotations

import io
import os

import pytest

from kfx.pipeline.config import load_config
from kfx.pipeline.graph import Stage, Upstream
from kfx.pipeline.metadata import MetadataStore
from kfx.pipeline.runner import Reporter, run_pipeline

GRAPH = (
    Stage("a", "tests.pipeline.toy_a"),
    Stage("b", "tests.pipeline.toy_par", {"src": Upstream("a", "out")}),
    Stage("c", "tests.pipeline.toy_par", {"src": Upstream("a", "out")}),
)


def _run(tmp_path, stages=GRAPH, **kw):
    cfg = load_config(None, ["name=toy"])
    out = io.StringIO()
    s = run_pipeline(cfg, root=str(tmp_path), stages=stages, reporter=Reporter(stream=out), **kw)
    return s, out.getvalue()


def _store(tmp_path):
    return MetadataStore(f"sqlite:///{tmp_path}/metadata.sqlite")


def test_independent_stages_run_in_parallel_and_progress_is_shown(tmp_path):
    summary, progress = _run(tmp_path)
    assert summary["status"] == "succeeded", summary["error"]
    assert [summary["components"][n]["status"] for n in "abc"] == ["succeeded"] * 3
    b_out = summary["components"]["b"]["outputs"]["out"]
    assert open(f"{b_out}/value.txt").read() == "a+"
    assert "▶ b" in progress and "✔ c succeeded" in progress and "rows=2" in progress


def test_second_run_is_all_cached_and_no_cache_reruns(tmp_path):
    first, _ = _run(tmp_path)
    second, _ = _run(tmp_path)
    assert {c["status"] for c in second["components"].values()} == {"cached"}
    assert second["components"]["b"]["outputs"] == first["components"]["b"]["outputs"]
    third, _ = _run(tmp_path, use_cache=False)
    assert {c["status"] for c in third["components"].values()} == {"succeeded"}


def test_failed_stage_commits_nothing_and_skips_dependents(tmp_path):
    graph = (Stage("a", "tests.pipeline.toy_a"),
             Stage("f", "tests.pipeline.toy_fail", {"src": Upstream("a", "out")}),
             Stage("g", "tests.pipeline.toy_par", {"src": Upstream("f", "out")}))
    summary, _ = _run(tmp_path, stages=graph)
    assert summary["status"] == "failed"
    assert summary["components"]["f"]["status"] == "failed"
    assert summary["components"]["g"]["status"] == "skipped"
    assert "Stage 'f' failed: toy failure: bad data in row 7" in summary["error"]
    ex_id = summary["components"]["f"]["execution_id"]
    assert not os.path.exists(tmp_path / "toy" / "f" / str(ex_id))  # never committed
    assert (tmp_path / "toy" / "f" / f".failed-{ex_id}" / "traceback.txt").exists()
    store = _store(tmp_path)
    assert store.latest_execution("toy", "f") is None
    assert store.execution(ex_id)["status"] == "failed"


def test_from_and_to_slices_resolve_inputs_from_the_store(tmp_path):
    graph = (Stage("a", "tests.pipeline.toy_a"),
             Stage("d", "tests.pipeline.toy_copy", {"src": Upstream("a", "out")}))
    first, _ = _run(tmp_path, stages=graph)
    only_d, _ = _run(tmp_path, stages=graph, from_stage="d", use_cache=False)
    assert list(only_d["components"]) == ["d"]
    assert only_d["components"]["d"]["status"] == "succeeded"
    assert open(f"{only_d['components']['d']['outputs']['out']}/value.txt").read() == "a+"
    to_a, _ = _run(tmp_path, stages=graph, to_stage="a")
    assert list(to_a["components"]) == ["a"]


def test_lineage_links_outputs_to_inputs(tmp_path):
    summary, _ = _run(tmp_path)
    chain = _store(tmp_path).lineage(summary["components"]["b"]["outputs"]["out"])
    assert [step["component"] for step in chain] == ["b", "a"]
    assert chain[0]["inputs"]["src"] == summary["components"]["a"]["outputs"]["out"]


def test_missing_upstream_is_a_clear_error(tmp_path):
    graph = (Stage("a", "tests.pipeline.toy_a"),
             Stage("d", "tests.pipeline.toy_copy", {"src": Upstream("a", "out")}))
    summary, _ = _run(tmp_path, stages=graph, only=["d"])
    assert summary["status"] == "failed"
    assert "no successful 'a' execution" in summary["error"]


@pytest.mark.parametrize("bad, needle", [
    (["statistics.top_k=-3"], "key 'statistics.top_k'"),
    (["ingest.bogus=1"], "unknown key 'ingest.bogus'"),
    (["validate.block=maybe"], "key 'validate.block'"),
    (["max_parallel=two"], "key 'max_parallel'"),
])
def test_config_errors_name_the_key_and_value(bad, needle):
    from kfx.pipeline.config import ConfigError

    with pytest.raises(ConfigError) as err:
        load_config(None, bad)
    assert needle in str(err.value)
    assert bad[0].split("=", 1)[1] in str(err.value)


def test_config_override_and_frozen():
    cfg = load_config(None, ["statistics.top_k=5", "beam_args=[--direct_running_mode=in_memory]"])
    assert cfg.stage("statistics").top_k == 5 and cfg.beam_args == ("--direct_running_mode=in_memory",)
    with pytest.raises(Exception):
        cfg.stage("statistics").top_k = 7  # frozen


def test_broken_yaml_file(tmp_path):
    from kfx.pipeline.config import ConfigError

    p = tmp_path / "bad.yaml"
    p.write_text("name: x\ningest: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
