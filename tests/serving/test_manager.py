"""kfx.serving.manager's reading of a base path: which folders are versions, as TF Serving reads them."""

from kfx.serving.manager import list_versions


def test_list_versions_keeps_names_and_skips_what_tf_serving_skips(tmp_path):
    for name in ("00000123", "005", "5", "abc", "²", "١٢", "99999999999999999999"):
        (tmp_path / name).mkdir()
    (tmp_path / "7").write_text("a file, not a version")
    # 005 and 5 are both version 5: the last in sorted order wins (file_system_storage_path_source.cc);
    # "²" and Arabic-Indic digits are not ASCII digits, 10**20 overflows TF Serving's int64.
    assert list_versions(str(tmp_path)) == {123: "00000123", 5: "5"}
