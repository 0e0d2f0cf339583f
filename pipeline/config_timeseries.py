"""Config of time-series ingest (`ingest.timeseries`): how a timestamp column and value columns
become windowed, time-split supervised examples (components/data/timeseries.py)."""
from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from kfx.pipeline.config_base import Section

WINDOW, TARGET = "window", "target"  # default names of the example features ingest writes


class TimeseriesOptions(Section):
    """One or more series (by `key`) of timestamped values, windowed into (input window, next values).

    Each example holds `window` (the last `input_length` steps of every value column, step-major:
    input_length * channels floats, the target column first), `target` (the next `horizon` values
    of the target column), the forecast origin's timestamp (unix seconds, under the timestamp
    column's name) and the series key. Splits are contiguous spans in time, in the order given.
    """

    timestamp: str | None = Field(None, description="Timestamp column (required).")
    timestamp_format: str | None = Field(None, description="strptime format, e.g. %Y%m%d; default: ISO-like parsing.")
    values: tuple[str, ...] = Field((), description="Value columns (the window's channels); default: all others.")
    target: str | None = Field(None, description="The column forecast; default: the first value column.")
    key: str | None = Field(None, description="Series key column: each key is its own series.")
    input_length: int = Field(32, ge=1, description="Steps of history in a window.")
    horizon: int = Field(1, ge=1, description="Steps forecast after the window.")
    stride: int = Field(1, ge=1, description="Steps between consecutive windows' origins.")
    frequency: str | None = Field(None, description="pandas offset alias (W-SAT, D, h); default: the most common step.")
    max_gap: int = Field(4, ge=0, description="Missing steps in a row filled by linear interpolation; a longer "
                                              "run breaks the series (no window spans it).")
    splits: dict[str, float] = Field(default_factory=lambda: {"train": 8.0, "eval": 1.0, "test": 1.0},
                                     description="Split -> weight, in time order.")
    window_feature: str = WINDOW
    target_feature: str = TARGET

    @field_validator("splits")
    @classmethod
    def _positive(cls, value: dict[str, float]) -> dict[str, float]:
        if not value or any(w <= 0 for w in value.values()):
            raise ValueError(f"needs split names with weights > 0, got {value}")
        return value

    @model_validator(mode="after")
    def _distinct(self) -> "TimeseriesOptions":
        if self.target is not None and self.values and self.target not in self.values:
            raise ValueError(f"target {self.target!r} is not among values {list(self.values)}")
        return self
