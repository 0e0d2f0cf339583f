"""rnn: a simple recurrent network (keras SimpleRNN, Elman), on sequence features.

The recurrent families share their builder and search space (models/recurrent.py).
"""
from __future__ import annotations

from kfx.models import recurrent

SPACE = recurrent.SPACE


def build(features: dict[str, dict], task: dict, hp: dict):
    """The rnn model for the sequence `features` (and any others) and `task`, sized by `hp`."""
    return recurrent.build_family("rnn", recurrent.SIMPLE, False, features, task, hp)
