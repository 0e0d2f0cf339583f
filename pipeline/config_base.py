"""Base classes of every config section: frozen, and unknown keys are errors."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Section(BaseModel):
    """Base of every config section: immutable, and unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class StageConfig(Section):
    """Settings every stage has."""

    cache: bool = Field(True, description="Reuse a committed execution with the same fingerprint.")
