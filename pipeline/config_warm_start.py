"""The train section's warm-start keys: where the first weights come from, what stays frozen,
and the fine-tune phase (what components/training/warm_start.py does with them).

Kept apart from TrainConfig (pipeline/config_modeling.py), which includes these keys by
inheriting `WarmStartKeys`, so the warm-start settings grow in one place.
"""
from __future__ import annotations

import re
from typing import ClassVar

from pydantic import Field, ValidationInfo, field_validator

from kfx.pipeline.config_base import Section, relative_to_config

PREVIOUS_PUSH = "previous_push"
REGEX_PREFIX = "re:"


class FineTune(Section):
    """A second phase after the first `train.epochs`: more epochs at a lower, constant learning rate."""

    epochs: int = Field(ge=1, description="Epochs of the fine-tune phase (after train.epochs).")
    learning_rate_factor: float = Field(0.1, gt=0, le=1, description="Its learning rate: the model's times this.")
    unfreeze: bool = Field(True, description="Train the frozen layers too in this phase.")


class WarmStartKeys(Section):
    """Mixin of TrainConfig: warm start, freeze, fine_tune."""

    # Keys no other stage reads: left out of tune's cache key (tune folds in the train section).
    OWN_KEYS: ClassVar[tuple[str, ...]] = ("warm_start", "freeze", "fine_tune")

    warm_start: str | None = Field(
        None, description="previous_push (the model the last push of this pipeline published; cold on the first "
                          "run), or a SavedModel directory, TF Serving model directory, .keras file or a train "
                          "stage's model artifact URI. Layers are matched by name and shape.")
    freeze: tuple[str, ...] = Field(
        (), description="Layer-name patterns (fnmatch, or a regular expression after 're:') whose layers are not "
                        "trained; applied when weights were loaded.")
    fine_tune: FineTune | None = Field(None, description="{epochs, learning_rate_factor, unfreeze}.")

    @field_validator("warm_start")
    @classmethod
    def _source(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or value == PREVIOUS_PUSH:
            return value
        if not value.strip():
            raise ValueError(f"expected {PREVIOUS_PUSH} or a model path/URI, got {value!r}")
        return relative_to_config(value, info.context)

    @field_validator("freeze")
    @classmethod
    def _patterns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in value:
            if not pattern.strip():
                raise ValueError(f"empty layer-name pattern in {list(value)}")
            if pattern.startswith(REGEX_PREFIX):
                try:
                    re.compile(pattern[len(REGEX_PREFIX):])
                except re.error as err:
                    raise ValueError(f"pattern {pattern!r} is not a regular expression: {err}") from None
        return value
