"""`kfx init DIR`: a small user project that runs end to end with `kfx run -c pipeline.yaml`.

It holds what a user brings to kfx: a pipeline YAML with its own stage graph, a Keras model
module and a preprocessing function of the project's own, a curated schema, sample data and a
README. Nothing in it is kfx's internals: it is the starting point of "bring your own model".
"""
from __future__ import annotations

import random
from pathlib import Path

PIPELINE_YAML = """\
# A kfx pipeline of your own. Every key is checked at load time; override any with --set KEY=VALUE.
name: churn
root: runs                    # artifacts + metadata (SQLite); any tf.io.gfile URI works
beam_args: [--direct_running_mode=in_memory]

# The graph: each stage is a component (a built-in name or your module's dotted path) with its
# inputs (STAGE.OUTPUT, or history:RESOLVER for artifacts of earlier runs). No tune stage here:
# my_model.py declares no SPACE, so train uses the hyperparameters below.
stages:
  - {name: ingest, component: ingest}
  - {name: statistics, component: statistics, inputs: {examples: ingest.examples}}
  - {name: schema, component: schema, inputs: {statistics: statistics.statistics}}
  - name: validate
    component: validate
    inputs: {statistics: statistics.statistics, schema: schema.schema,
             baseline_statistics: "history:last_validated_statistics"}
  - name: transform
    component: transform
    inputs: {examples: ingest.examples, schema: schema.schema}
    after: [validate]
  - name: train
    component: train
    inputs: {examples: ingest.examples, schema: schema.schema, transform_graph: transform.transform_graph}
  - name: evaluate
    component: evaluate
    inputs: {examples: ingest.examples, schema: schema.schema, model: train.model,
             baseline_model: "history:last_pushed_model"}
  - name: infra_validate
    component: infra_validate
    inputs: {model: train.model, examples: ingest.examples}
  - name: push
    component: push
    inputs: {model: train.model, blessing: evaluate.blessing, infra_blessing: infra_validate.infra_blessing}

# Each stage's settings: the section named after the stage.
ingest:
  format: csv
  inputs: [{pattern: data/*.csv, splits: {train: 8, eval: 1, test: 1}}]
  label: churned

schema:
  path: schema.pbtxt          # curated: label churned, sensitive region

transform:
  preprocessing: features.py:preprocess   # runs inside the exported model, after the analyzers

train:
  model: my_model.py          # build(features, task, hp); a dotted module path works too
  hyperparameters: {learning_rate: 0.003, units: 32}
  epochs: 10
  batch_size: 64

evaluate:
  split: test
  slices: [[region], [contract]]
  gate:
    value:
      - {metric: accuracy, min: 0.7}
      - {metric: auc, min: 0.75}
    fairness:
      - {feature: region, metric: equal_opportunity_difference, max: 0.25}

push:
  model_name: churn
"""

MY_MODEL = '''\
"""My model: a small Keras network on kfx's transformed features.

`features` describes the transform's outputs, name -> description:
  {"kind": "dense", "width": w}        float32 [N, w] (normalized numbers, my ratio)
  {"kind": "ids", "cardinality": n, ...} int64 [N] category ids
`task` is the task description (type, label vocabulary); `hp` the hyperparameters (train.hyperparameters).
"""
import keras


def build(features, task, hp):
    inputs, parts = {}, []
    for name, spec in sorted(features.items()):
        if spec["kind"] == "dense":
            inputs[name] = keras.Input(shape=(spec["width"],), dtype="float32", name=name)
            parts.append(inputs[name])
        elif spec["kind"] == "ids":
            inputs[name] = keras.Input(shape=(), dtype="int64", name=name)
            parts.append(keras.layers.CategoryEncoding(spec["cardinality"], output_mode="one_hot")(inputs[name]))
    x = keras.layers.Concatenate()(parts)
    x = keras.layers.Dense(hp.get("units", 32), activation="relu")(x)
    output = keras.layers.Dense(1, activation="sigmoid", dtype="float32", name="output")(x)
    return keras.Model(inputs, output, name="my_model")
'''

FEATURES = '''\
"""My preprocessing: applied to the transformed features inside the exported model.

kfx's analyzers have already normalized the numbers and indexed the strings; this function adds
what analyzers don't cover. It takes and returns a dict of tensors; new features are float.
"""
import tensorflow as tf


def preprocess(features):
    out = dict(features)
    # charges per month of tenure (both already normalized): a ratio the network need not learn.
    out["charge_rate"] = tf.clip_by_value(features["monthly_charges"] - features["tenure"], -5.0, 5.0)
    return out
'''

README = """\
# churn: a kfx project

    kfx run -c pipeline.yaml                 # the whole pipeline, ends with a pushed model
    kfx component train -c pipeline.yaml     # one stage (inputs: the latest committed ones)
    kfx serve --model_config_file=runs/serving/models.config

- `pipeline.yaml`: the stage graph and each stage's settings.
- `my_model.py`: the Keras model (`build(features, task, hp)`); add `SPACE` to tune it.
- `features.py`: the preprocessing function that runs inside the exported model.
- `schema.pbtxt`: the data contract (types, domains, label and sensitive features).
- `data/`: sample data; point `ingest.inputs` at your own files.

Editing `my_model.py` re-runs train and what follows; nothing before it.
"""

SCHEMA = """\
# Data contract of the sample churn data (tensorflow_metadata Schema).
feature { name: "tenure" type: INT int_domain { min: 0 max: 120 } presence { min_fraction: 1.0 } }
feature { name: "monthly_charges" type: FLOAT presence { min_fraction: 1.0 } }
feature {
  name: "contract" type: BYTES presence { min_fraction: 1.0 }
  string_domain { value: "month" value: "one_year" value: "two_year" }
}
feature {
  name: "region" type: BYTES presence { min_fraction: 1.0 }
  string_domain { value: "north" value: "south" }
  annotation { tag: "sensitive" }
}
feature {
  name: "churned" type: BYTES presence { min_fraction: 1.0 }
  string_domain { value: "no" value: "yes" }
  annotation { tag: "label" }
}
"""


def sample_rows(n: int = 2000, seed: int = 7) -> list[str]:
    """Synthetic churn rows with a learnable signal (deterministic)."""
    import math

    rng = random.Random(seed)
    rows = ["tenure,monthly_charges,contract,region,churned"]
    for _ in range(n):
        contract = rng.choice(["month", "month", "one_year", "two_year"])
        tenure = rng.randint(0, 72)
        charges = round(rng.uniform(20, 120), 2)
        region = rng.choice(["north", "south"])
        score = 1.5 * (contract == "month") - 0.05 * tenure + 0.02 * (charges - 70) + rng.gauss(0, 0.5)
        churned = "yes" if 1 / (1 + math.exp(-score)) > 0.5 else "no"
        rows.append(f"{tenure},{charges},{contract},{region},{churned}")
    return rows


FILES = {"pipeline.yaml": PIPELINE_YAML, "my_model.py": MY_MODEL, "features.py": FEATURES,
         "README.md": README, "schema.pbtxt": SCHEMA}


def init_project(directory: str) -> list[Path]:
    """Write the project into `directory` (created; existing files are never overwritten).

    Raises:
        FileExistsError: a file of the project already exists there.
    """
    root = Path(directory)
    files = {**FILES, "data/customers.csv": "\n".join(sample_rows()) + "\n"}
    clashes = [name for name in files if (root / name).exists()]
    if clashes:
        raise FileExistsError(f"kfx init: {root} already has {', '.join(clashes)}; choose an empty folder")
    written = []
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written
