"""kfx.serving.servable.Servable: signatures run through the C++ callables prepared at load."""

import numpy as np
import pytest
import tensorflow as tf

from kfx.serving.servable import Servable


@pytest.fixture(scope="module")
def servable(tmp_path_factory):
    """A TF1 SavedModel on strings: s [-1] -> n = length(s) (int32), u = upper(s) (string)."""
    path = str(tmp_path_factory.mktemp("strings") / "1")
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default(), v1.Session(graph=graph) as session:
        s = v1.placeholder(tf.string, [None], name="s")
        builder = v1.saved_model.Builder(path)
        builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map={
            "serving_default": v1.saved_model.signature_def_utils.predict_signature_def(
                {"s": s}, {"n": tf.strings.length(s), "u": tf.strings.upper(s)})})
        builder.save()
    loaded = Servable("strings", 1, path)
    yield loaded
    loaded.close()


@pytest.mark.parametrize("values", [np.array([b"ab", b"c"], object), np.array([b"ab", b"c"]),
                                    np.array(["ab", "c"], object)])
def test_string_tensors_through_the_callable(servable, values):
    """Object arrays of bytes (what tensors.to_numpy gives), fixed-width bytes and str all feed DT_STRING."""
    outputs = servable.run("serving_default", {"s": values}, ("n", "u"))
    assert outputs["n"].tolist() == [2, 1] and outputs["u"].tolist() == [b"AB", b"C"]


def test_output_order_shares_one_callable(servable):
    """An output_filter in another order is the same fetch: it must not build a second executor."""
    feeds = {"s": np.array([b"xyz"], object)}
    first = servable.run("serving_default", feeds, ("u", "n"))
    second = servable.run("serving_default", feeds, ("n", "u"))
    only_n = servable.run("serving_default", feeds, ("n",))
    assert first["n"].tolist() == second["n"].tolist() == only_n["n"].tolist() == [3]
    prepared = sorted(key for key in servable._callables if key[0] == "serving_default")  # noqa: SLF001
    assert prepared == [("serving_default", ("n",)), ("serving_default", ("n", "u"))]
