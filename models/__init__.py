"""What is learned: model families, built-in by name or the user's own module.

A family is a module defining
  * `build(features, task, hp) -> keras.Model`: the model on the transform's output features;
    `task` is the transform's task description, whose head (`tasks.of(task).output(x)`,
    models/tasks/) may end the model,
  * optionally `SPACE`: its hyperparameters as plain data (models/space.py), defaults included;
    without it, train uses the config's hyperparameters and tune has nothing to search,
  * optionally hooks for training that supervised defaults don't cover: `compile(model, task,
    hp)`, `fit(model, train_ds, eval_ds, hp, callbacks)`, `targets(features, label)`, and for
    the export `signatures(model, spec)`: more endpoints, name -> (function, input signature).
Built-in families are registered in `FAMILIES`; a user's family is named in `train.model` by a
dotted module path or a .py file (relative to the config file). Both are used the same way.
Importing this package is cheap (no TensorFlow), so the config loader can validate models.
"""
from __future__ import annotations

import inspect
from types import ModuleType

# name -> module; the module is imported only when the family is used.
FAMILIES: dict[str, str] = {
    "mlp": "kfx.models.mlp",
    "wide_deep": "kfx.models.wide_deep",
    "cnn": "kfx.models.cnn",
    "resnet": "kfx.models.resnet",
    "rnn": "kfx.models.rnn",
    "lstm": "kfx.models.lstm",
    "gru": "kfx.models.gru",
    "bilstm": "kfx.models.bilstm",
    "cnn1d": "kfx.models.cnn1d",
    "transformer": "kfx.models.transformer",
    "capsule": "kfx.models.capsule",
    "som": "kfx.models.som",
    "rbf": "kfx.models.rbf",
    "gnn": "kfx.models.gnn",
    "gan": "kfx.models.gan",
    "autoencoder": "kfx.models.autoencoder",
    "denoising_autoencoder": "kfx.models.denoising_autoencoder",
    "vae": "kfx.models.vae",
}
BUILD_PARAMS = ("features", "task", "hp")
HOOKS = {"compile": ("model", "task", "hp"), "fit": ("model", "train_ds", "eval_ds", "hp", "callbacks"),
         "targets": ("features", "label"), "signatures": ("model", "spec")}


def names() -> list[str]:
    """Registered family names, sorted."""
    return sorted(FAMILIES)


def get(name: str, config_dir: str = "") -> ModuleType:
    """The family `name`: a registered name, a dotted module path or a .py file path.

    Raises:
        KeyError: an unknown name that is not a module path either; the message lists the known ones.
        ValueError: the user's module fails to import, or its `build` (or a hook) has the wrong
            signature; the message names the module and the cause.
    """
    from kfx.pipeline import user_code

    if name in FAMILIES:
        return user_code.load_module(FAMILIES[name])
    if not user_code.is_file_ref(name) and "." not in name:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(names())}, "
                       f"or a module path (my_models.net) or a .py file")
    module = user_code.load_module(name, config_dir, what="model")
    _check_signature(module, name, "build", BUILD_PARAMS, required=True)
    for hook, params in HOOKS.items():
        _check_signature(module, name, hook, params, required=False)
    return module


def source(name: str, config_dir: str = ""):
    """Where the family `name` is (a `user_code.Source`), without importing it (for cache keys).

    Raises:
        KeyError: as `get`.
        UserCodeError: the user's module does not exist.
    """
    from kfx.pipeline import user_code

    if name in FAMILIES:
        return user_code.locate(FAMILIES[name])
    if not user_code.is_file_ref(name) and "." not in name:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(names())}, "
                       f"or a module path (my_models.net) or a .py file")
    return user_code.locate(name, config_dir, what="model")


def _check_signature(module: ModuleType, ref: str, attr: str, params: tuple[str, ...], required: bool) -> None:
    fn = getattr(module, attr, None)
    if fn is None and not required:
        return
    wanted = f"{attr}({', '.join(params)})"
    if not callable(fn):
        raise ValueError(f"model {ref!r} (module {module.__name__}): must define {wanted}")
    try:
        inspect.signature(fn).bind(*params)
    except TypeError as err:
        raise ValueError(f"model {ref!r} (module {module.__name__}): {attr}{inspect.signature(fn)} cannot be "
                         f"called as {wanted}: {err}") from None


def space_of(family: ModuleType) -> tuple | None:
    """The family's search space, or None when it declares none."""
    return getattr(family, "SPACE", None)
