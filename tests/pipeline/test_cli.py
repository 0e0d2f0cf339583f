"""`kfx component`: every data stage runs alone, inputs from the store or given by hand."""
from __future__ import annotations

from tests.conftest import kfx, read_json


def test_each_data_stage_runs_alone(tiny, tmp_path):
    cfg, _ = tiny
    outputs = {}
    for stage in ("ingest", "statistics", "schema", "validate"):
        out = tmp_path / f"{stage}.json"
        proc = kfx("component", stage, "-c", str(cfg), "--run-id", "r1", "--summary-json", str(out))
        assert proc.returncode == 0, proc.stderr[-2000:]
        s = read_json(out)
        assert s["run_id"] == "r1" and list(s["components"]) == [stage]
        assert s["components"][stage]["status"] == "succeeded"
        outputs[stage] = s["components"][stage]["outputs"]
    assert read_json(tmp_path / "ingest.json")["components"]["ingest"]["metrics"]["read"] == 600

    # An input given by hand wins over the store: statistics of the same examples, uncached.
    out = tmp_path / "again.json"
    proc = kfx("component", "statistics", "-c", str(cfg), "--no-cache",
               "--input", f"examples={outputs['ingest']['examples']}", "--summary-json", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert read_json(out)["components"]["statistics"]["metrics"]["rows"] == 600


def test_stage_without_upstream_and_unknown_stage(tiny, tmp_path):
    cfg, _ = tiny
    out = tmp_path / "s.json"
    proc = kfx("component", "validate", "-c", str(cfg), "--summary-json", str(out))
    assert proc.returncode == 1
    assert "no successful 'statistics' execution" in read_json(out)["error"]
    proc = kfx("component", "nonsense", "-c", str(cfg), "--summary-json", str(out))
    assert proc.returncode == 2 and "unknown stage 'nonsense'" in proc.stderr
    assert read_json(out)["status"] == "failed"


def test_a_component_without_run_id_records_one_finished_run(tmp_path):
    """`kfx component` without --run-id, as from a shell, on a cache miss: its cache-first pass and
    its executing pass share one run id, so the call leaves one run, finished, none left 'running'."""
    import yaml

    from kfx.pipeline.metadata import MetadataStore

    cfg = tmp_path / "toy.yaml"
    cfg.write_text(yaml.safe_dump({"name": "toy", "root": str(tmp_path / "runs"),
                                   "stages": [{"name": "a", "component": "tests.pipeline.toy_writer"}]}))
    proc = kfx("component", "a", "-c", str(cfg), "--summary-json", str(tmp_path / "s.json"), timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = read_json(tmp_path / "s.json")
    assert summary["components"]["a"]["status"] == "succeeded"
    runs = MetadataStore(f"sqlite:///{tmp_path / 'runs' / 'metadata.sqlite'}").list_runs("toy")
    assert [(r["run_id"], r["status"]) for r in runs] == [(summary["run_id"], "succeeded")]
