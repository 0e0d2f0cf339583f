"""Config sections of the approval stages (evaluate, infra_validate, push).

PipelineConfig includes them; kept apart so the gate's settings grow in one place.
"""
from __future__ import annotations

from pipeline.config_base import StageConfig


class EvaluateConfig(StageConfig):
    """Metrics, slices, fairness and the blessing thresholds."""


class InfraValidateConfig(StageConfig):
    """Canary requests against the candidate in a real model server."""


class PushConfig(StageConfig):
    """Where approved models go (TensorFlow Serving layout)."""
