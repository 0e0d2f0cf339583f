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

    @field_validator("frequency")
    @classmethod
    def _offset(cls, value: str | None) -> str | None:
        from pandas.tseries.frequencies import to_offset

        if value is not None:
            try:
                to_offset(value)
            except ValueError:
                raise ValueError(f"frequency {value!r} is not a pandas offset alias (W-SAT, D, h, ...)") from None
        return value

    @model_validator(mode="after")
    def _distinct(self) -> "TimeseriesOptions":
        if self.target is not None and self.values and self.target not in self.values:
            raise ValueError(f"target {self.target!r} is not among values {list(self.values)}")
        # the example's columns: one name each, else one silently overwrites another
        named = {"window_feature": self.window_feature, "target_feature": self.target_feature,
                 "timestamp": self.timestamp, "key": self.key}
        named = {k: v for k, v in named.items() if v is not None}
        for k, v in named.items():
            same = [o for o, w in named.items() if w == v and o != k]
            if same:
                raise ValueError(f"{k} and {same[0]} are both {v!r}: the examples' columns need distinct names")
        shared = [c for c in (self.timestamp, self.key) if c is not None and c in self.values]
        if shared:
            raise ValueError(f"values {list(self.values)} include the timestamp or key column {shared[0]!r}")
        return self


# Ingest keys that the time-series path does not use: setting one with `timeseries` is a mistake.
IGNORED_WITH_TIMESERIES = ("label", "label_values", "text_columns", "image_columns", "image_shape",
                           "base64_columns", "hash_key")


def check_ingest(cfg) -> None:
    """Raise ValueError when an IngestConfig's `timeseries` does not fit the rest of the section.

    Time series are read from CSV (a CSV built-in such as co2, not an image one); the timestamp
    column is required (a built-in may supply it); keys the time-series path ignores may not be set.
    """
    ts = cfg.timeseries
    builtin = None
    if cfg.format == "builtin":
        from kfx.components.data.datasets import BUILTINS  # at validation time: no import cycle

        builtin = BUILTINS.get(cfg.name)
        if builtin is None or builtin.config.get("format") != "csv":
            raise ValueError(f"ingest.timeseries reads CSV sources; built-in {cfg.name!r} is not a CSV dataset "
                             f"(CSV built-ins: {', '.join(BUILTINS)})")
    elif cfg.format != "csv":
        raise ValueError(f"ingest.timeseries reads CSV sources; format is {cfg.format!r}")
    base_ts = builtin.config.get("timeseries") if builtin else None
    if not ts.timestamp and not (base_ts and base_ts.timestamp):
        raise ValueError("ingest.timeseries.timestamp is required: name the timestamp column")
    ignored = [k for k in IGNORED_WITH_TIMESERIES if getattr(cfg, k)]
    if ignored:
        raise ValueError(f"ingest.{ignored[0]} {getattr(cfg, ignored[0])!r} is not used with timeseries (the examples "
                         f"are windows, label {ts.target_feature!r}): remove it")
