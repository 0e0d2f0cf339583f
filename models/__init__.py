"""What is learned: model families by name, each with its search space, shared by tune and train.

A family is a module under models/ defining
  * `SPACE`: its hyperparameters as plain data (models/space.py), defaults included,
  * `build(features, task, hp) -> keras.Model`: the model on the transform's output features;
    `task` is the transform's task description, whose head (`tasks.of(task).output(x)`,
    models/tasks/) ends the model.
Adding a family (cnn, resnet, rnn, transformer, autoencoder, gan, gnn) is one new module plus
one line in `FAMILIES`; nothing else grows. Importing this package is cheap (no TensorFlow), so
the config loader can validate model names and hyperparameters.
"""
from __future__ import annotations

import importlib
from types import ModuleType

# name -> module; the module is imported only when the family is used.
FAMILIES: dict[str, str] = {
    "mlp": "kfx.models.mlp",
    "wide_deep": "kfx.models.wide_deep",
}


def names() -> list[str]:
    """Registered family names, sorted."""
    return sorted(FAMILIES)


def get(name: str) -> ModuleType:
    """The family module registered as `name`.

    Raises:
        KeyError: unknown name; the message lists the known ones.
    """
    try:
        return importlib.import_module(FAMILIES[name])
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(names())}") from None
