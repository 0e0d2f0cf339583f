"""bilstm: LSTM layers reading both directions, their outputs concatenated, on sequence features.

The recurrent families share their builder and search space (models/recurrent.py).
"""
from __future__ import annotations

from kfx.models import recurrent

SPACE = recurrent.SPACE


def build(features: dict[str, dict], task: dict, hp: dict):
    """The bilstm model for the sequence `features` (and any others) and `task`, sized by `hp`."""
    return recurrent.build_family("bilstm", recurrent.LSTM, True, features, task, hp)
