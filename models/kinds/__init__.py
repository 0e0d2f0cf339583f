"""Feature kinds by name: how one raw feature becomes a model input (models/kinds/base.py
defines the interface).

Adding a kind (window, decoded image, ...) is one class plus one line in `KINDS`: transform,
the Preprocessor and config validation read this registry and never test a kind's name.
Importing this package is cheap (numpy, no TensorFlow), so the config loader can check kinds.
"""
from __future__ import annotations

import importlib

from kfx.models.kinds.base import DENSE, FLOAT, IDS, IMAGE, INT, SEQUENCE, STRING, Kind  # noqa: F401 (the interface)

# name -> "module:class"
KINDS: dict[str, str] = {
    "normalize": "kfx.models.kinds.numeric:Normalize",
    "bucketize": "kfx.models.kinds.numeric:Bucketize",
    "passthrough": "kfx.models.kinds.numeric:Passthrough",
    "one_hot": "kfx.models.kinds.categorical:OneHot",
    "embed": "kfx.models.kinds.categorical:Embed",
    "hash": "kfx.models.kinds.categorical:Hash",
    "text": "kfx.models.kinds.text:Text",
    "image": "kfx.models.kinds.image:Image",
    "encoded_image": "kfx.models.kinds.image:EncodedImage",
    "window": "kfx.models.kinds.window:Window",
    "graph_node": "kfx.models.kinds.graph:GraphNode",
}
TEXT = "text"  # what natural-language string features get by default
# what schema image features (image_domain) get by default: encoded bytes, pixel arrays
ENCODED_IMAGE, PIXELS = "encoded_image", "image"


def names() -> list[str]:
    """Registered kind names, sorted."""
    return sorted(KINDS)


def get(name: str) -> type[Kind]:
    """The Kind class registered as `name`.

    Raises:
        KeyError: unknown name; the message lists the known ones.
    """
    try:
        module, cls = KINDS[name].split(":")
    except KeyError:
        raise KeyError(f"unknown kind {name!r}; known kinds: {', '.join(names())}") from None
    return getattr(importlib.import_module(module), cls)


def accepting(dtype: str) -> list[str]:
    """Names of the kinds that accept raw features of `dtype`, sorted."""
    return [n for n in names() if dtype in get(n).DTYPES]


def modules() -> tuple[str, ...]:
    """The modules of this package, for the code version of the stages that use kinds."""
    return (__name__, f"{__name__}.base", *sorted({v.split(":")[0] for v in KINDS.values()}))
