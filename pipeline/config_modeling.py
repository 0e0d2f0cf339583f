"""Config sections of the modeling stages (transform, tune, train).

Kept apart from pipeline/config.py so the modeling stages' settings grow in one place;
PipelineConfig includes them.
"""
from __future__ import annotations

from pipeline.config_base import StageConfig


class TransformConfig(StageConfig):
    """Per-feature preprocessing computed with Beam analyzers."""


class TuneConfig(StageConfig):
    """KerasTuner search over the model family's space."""


class TrainConfig(StageConfig):
    """Keras 3 training and export."""
