"""Base classes of every config section: frozen, and unknown keys are errors."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Section(BaseModel):
    """Base of every config section: immutable, and unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class StageConfig(Section):
    """Settings every stage has."""

    cache: bool = Field(True, description="Reuse a committed execution with the same fingerprint.")


def imports_user_code(context: dict | None) -> bool:
    """Whether validation may import the user's modules (models, preprocessing) to check them.

    False while `kfx component` checks the cache: the modules are then only located (their
    sources are the cache key), so a cached stage never imports them, nor the TensorFlow they
    import; a stage that must run is validated again with the imports."""
    return (context or {}).get("import_user_code", True)


def relative_to_config(value: str | None, context: dict | None) -> str | None:
    """A relative path or glob from a config: the one beside the config file when it exists
    there, else unchanged (then the working directory, then the project root; config.resolve_path)."""
    import glob
    import os

    config_dir = (context or {}).get("config_dir")
    if not value or not config_dir or "://" in value or os.path.isabs(value):
        return value
    candidate = os.path.join(config_dir, value)
    return candidate if glob.glob(candidate) else value
