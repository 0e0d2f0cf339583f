"""Search spaces declared as plain data, defined once per model family.

A family lists its hyperparameters as `Int` / `Float` / `Choice` / `Boolean` entries. The
same declaration is:
  * registered on a `keras_tuner.HyperParameters` by tune (`declare`),
  * turned into default values by train when there is no tuning result (`defaults`), the
    TFX penguin_utils_keras._get_hyperparameters pattern,
  * checked at config load time against `train.hyperparameters` overrides (`check`), without
    importing TensorFlow or KerasTuner.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Union


@dataclass(frozen=True)
class Int:
    name: str
    min_value: int
    max_value: int
    default: int
    step: int = 1
    sampling: str = "linear"

    def check(self, value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"must be an integer, got {value!r}"
        if not self.min_value <= value <= self.max_value:
            return f"must be in [{self.min_value}, {self.max_value}], got {value!r}"
        return None


@dataclass(frozen=True)
class Float:
    name: str
    min_value: float
    max_value: float
    default: float
    sampling: str = "linear"  # or "log"

    def check(self, value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return f"must be a finite number, got {value!r}"
        if not self.min_value <= value <= self.max_value:
            return f"must be in [{self.min_value}, {self.max_value}], got {value!r}"
        return None


@dataclass(frozen=True)
class Choice:
    name: str
    values: tuple
    default: Any

    def check(self, value: Any) -> str | None:
        if value not in self.values:
            return f"must be one of {list(self.values)}, got {value!r}"
        return None


@dataclass(frozen=True)
class Boolean:
    name: str
    default: bool

    def check(self, value: Any) -> str | None:
        if not isinstance(value, bool):
            return f"must be true or false, got {value!r}"
        return None


Param = Union[Int, Float, Choice, Boolean]

# Hyperparameters every family shares (the optimizer's step size).
COMMON: tuple[Param, ...] = (
    Float("learning_rate", 1e-4, 3e-2, default=1e-3, sampling="log"),
)


def defaults(space: tuple[Param, ...]) -> dict[str, Any]:
    """The default value of every hyperparameter of `space`."""
    return {p.name: p.default for p in space}


def check(space: tuple[Param, ...], values: dict[str, Any]) -> list[str]:
    """Problems of `values` against `space`, one message per bad key (empty when valid)."""
    known = {p.name: p for p in space}
    problems = []
    for key, value in values.items():
        param = known.get(key)
        if param is None:
            problems.append(f"{key!r} is not a hyperparameter of this model; known: {sorted(known)}")
            continue
        err = param.check(value)
        if err:
            problems.append(f"{key!r} {err}")
    return problems


def declare(space: tuple[Param, ...], hp) -> dict[str, Any]:
    """Register `space` on a keras_tuner HyperParameters object and return the current values.

    Args:
        space: the family's declaration.
        hp: a `keras_tuner.HyperParameters`.

    Returns:
        name -> value for this trial (the defaults when nothing was sampled yet).
    """
    out = {}
    for p in space:
        if isinstance(p, Int):
            out[p.name] = hp.Int(p.name, p.min_value, p.max_value, step=p.step, sampling=p.sampling,
                                 default=p.default)
        elif isinstance(p, Float):
            out[p.name] = hp.Float(p.name, p.min_value, p.max_value, sampling=p.sampling, default=p.default)
        elif isinstance(p, Choice):
            out[p.name] = hp.Choice(p.name, list(p.values), default=p.default)
        else:
            out[p.name] = hp.Boolean(p.name, default=p.default)
    return out


def resolve(space: tuple[Param, ...], tuned: dict[str, Any] | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """Final values: the space's defaults, then tuned values, then explicit config overrides."""
    names = {p.name for p in space}
    values = defaults(space)
    values.update({k: v for k, v in (tuned or {}).items() if k in names})
    values.update(overrides)
    return values
