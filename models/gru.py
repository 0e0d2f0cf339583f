"""gru: gated recurrent units (Cho et al. 2014), on sequence features.

The recurrent families share their builder and search space (models/recurrent.py).
"""
from __future__ import annotations

from kfx.models import recurrent

SPACE = recurrent.SPACE


def build(features: dict[str, dict], task: dict, hp: dict):
    """The gru model for the sequence `features` (and any others) and `task`, sized by `hp`."""
    return recurrent.build_family("gru", recurrent.GRU, False, features, task, hp)
