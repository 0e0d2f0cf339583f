"""lstm: long short-term memory (Hochreiter and Schmidhuber 1997), on sequence features.

The recurrent families share their builder and search space (models/recurrent.py).
"""
from __future__ import annotations

from kfx.models import recurrent

SPACE = recurrent.SPACE


def build(features: dict[str, dict], task: dict, hp: dict):
    """The lstm model for the sequence `features` (and any others) and `task`, sized by `hp`."""
    return recurrent.build_family("lstm", recurrent.LSTM, False, features, task, hp)
