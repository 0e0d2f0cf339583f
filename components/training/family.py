"""Which model family a training stage uses, and the user code that goes into its cache key."""
from __future__ import annotations

DEFAULT_FAMILY = "mlp"


def tuned_model(cfg, pipeline) -> str:
    """The family tune searches: its own `model`, else the train stage's, else the default."""
    return cfg.model or getattr(pipeline.stage("train"), "model", None) or DEFAULT_FAMILY


def family_code(cfg, pipeline) -> list:
    """The family module of a tune or train section, located, not imported (`ComponentSpec.user_code`)."""
    from kfx import models

    name = tuned_model(cfg, pipeline) if hasattr(cfg, "tuner") else cfg.model
    return [models.source(name, pipeline.config_dir)]
