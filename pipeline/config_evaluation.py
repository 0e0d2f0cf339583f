"""Config sections of the approval stages (evaluate, infra_validate, push).

PipelineConfig includes them; kept apart so the gate's settings grow in one place. Metric and
fairness names are checked at load time against the lists below (the evaluate stage computes
exactly these), so a typo in a threshold fails when the YAML is read, not after training.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from kfx.models import tasks
from kfx.pipeline.config_base import Section, StageConfig, relative_to_config

# What evaluate can compute, over every task (models/tasks/); each task offers its own part,
# and evaluate rejects a threshold on a metric the model's task does not report. Lower-is-better
# metrics are gated with `max`, the others with `min`.
METRICS = tasks.union("METRICS")
LOWER_IS_BETTER = frozenset(m for name in tasks.names() for m in tasks.get(name).LOWER_IS_BETTER)
FAIRNESS_METRICS = tasks.union("FAIRNESS_METRICS")


def _known(value: str, names: tuple[str, ...], what: str) -> str:
    if value not in names:
        raise ValueError(f"unknown {what} {value!r}; known: {', '.join(names)}")
    return value


class ValueThreshold(Section):
    """`metric` overall must lie within [min, max] (TFX GenericValueThreshold)."""

    metric: str
    min: float | None = None
    max: float | None = None

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str) -> str:
        return _known(v, METRICS, "metric")

    @model_validator(mode="after")
    def _bounds(self):
        if self.min is None and self.max is None:
            raise ValueError(f"threshold on {self.metric!r} needs min or max")
        return self


class SliceThreshold(ValueThreshold):
    """`metric` of every slice of `slice` (feature names) with at least min_slice_size rows."""

    slice: tuple[str, ...] = Field(min_length=1)


class ChangeThreshold(Section):
    """Candidate vs baseline: `metric` may get worse by at most `max_worsening` (absolute, or a
    fraction of the baseline value when `relative`). Passes, saying so, when there is no baseline."""

    metric: str
    max_worsening: float = Field(0.0, ge=0.0)
    relative: bool = False

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str) -> str:
        return _known(v, METRICS, "metric")


class FairnessThreshold(Section):
    """A fairness metric of one sensitive feature must be <= max (differences) or >= min
    (ratios); `judge: bound` gates on the bootstrap confidence bound instead of the point
    estimate (upper for a max, lower for a min), i.e. "we are confident the gap is small"."""

    feature: str | None = Field(None, description="Sensitive feature; every configured one when None.")
    metric: str
    min: float | None = None
    max: float | None = None
    judge: Literal["point", "bound"] = "point"

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str) -> str:
        return _known(v, FAIRNESS_METRICS, "fairness metric")

    @model_validator(mode="after")
    def _bounds(self):
        if self.min is None and self.max is None:
            raise ValueError(f"fairness threshold on {self.metric!r} needs min or max")
        return self


ROBUSTNESS_ATTACKS = ("fgsm", "pgd", "token_drop", "token_replace")  # components/evaluation/robustness.py


class RobustnessThreshold(Section):
    """Accuracy under `attack` at `epsilon` (on [0, 1] pixels for fgsm/pgd, the token rate for
    token_drop/token_replace) must be >= min_accuracy; needs evaluate.robustness.enabled."""

    epsilon: float = Field(gt=0.0, le=1.0)
    min_accuracy: float = Field(ge=0.0, le=1.0)
    attack: Literal[ROBUSTNESS_ATTACKS] = "pgd"


class GateConfig(Section):
    """The blessing: every check must pass."""

    value: tuple[ValueThreshold, ...] = ()
    change: tuple[ChangeThreshold, ...] = ()
    slices: tuple[SliceThreshold, ...] = ()
    fairness: tuple[FairnessThreshold, ...] = ()
    robustness: RobustnessThreshold | None = None


class FairnessConfig(Section):
    """Group metrics per sensitive feature and their gaps with bootstrap confidence intervals."""

    sensitive: tuple[str, ...] | None = Field(None, description="Default: the schema's sensitive features.")
    bootstrap_resamples: int = Field(200, ge=0, le=100000)
    confidence: float = Field(0.95, gt=0.0, lt=1.0)
    seed: int = 0


class MitigationConfig(Section):
    """Post-processing by per-group decision thresholds chosen on the eval split.

    `equal_opportunity`: each group's threshold gives it the overall true positive rate;
    `demographic_parity`: each group's threshold gives it the overall selection rate. Applied to
    the test split in evaluation (reported beside the unmitigated numbers) and, when the model is
    pushed, written next to it for serving (assets.extra/kfx_decision_thresholds.json).
    """

    method: Literal["none", "group_thresholds"] = "none"
    objective: Literal["equal_opportunity", "demographic_parity"] = "equal_opportunity"
    feature: str | None = Field(None, description="Sensitive feature; default the first one.")
    gate: bool = Field(False, description="Gate fairness and decision metrics on the mitigated decisions.")
    split: str = "eval"


def _fractions(v: tuple[float, ...], what: str) -> tuple[float, ...]:
    for x in v:
        if not 0.0 <= x <= 1.0:
            raise ValueError(f"{what} {x} must be in [0, 1]")
    return v


class RobustnessConfig(Section):
    """Accuracy under perturbation of image and text classifiers (components/evaluation/robustness.py):
    FGSM and PGD at each epsilon (a fraction of the pixel range), tokens dropped or replaced at
    each rate; on `rows` rows of the split drawn with `seed`. Off by default; skipped, saying
    so, for other models (tabular)."""

    enabled: bool = False
    epsilons: tuple[float, ...] = Field((0.05, 0.1), min_length=1)
    pgd_steps: int = Field(10, ge=1, le=1000)
    pgd_step_size: float | None = Field(None, gt=0.0, le=1.0, description="Fraction of epsilon; 2.5 / pgd_steps.")
    token_rates: tuple[float, ...] = Field((0.1, 0.2), min_length=1)
    rows: int = Field(500, ge=1, description="Rows of the split attacked (a seeded sample when fewer).")
    seed: int = 0
    examples: int = Field(4, ge=0, le=64, description="Adversarial examples shown in the report.")
    batch_size: int = Field(256, gt=0)

    @field_validator("epsilons")
    @classmethod
    def _eps(cls, v):
        return _fractions(v, "epsilon")

    @field_validator("token_rates")
    @classmethod
    def _rates(cls, v):
        return _fractions(v, "token rate")


class ExplainConfig(Section):
    """Explaining the model (components/evaluation/explain.py): permutation importance on `rows`
    sampled rows, integrated gradients on `samples` of them, proxies of sensitive features."""

    enabled: bool = True
    rows: int = Field(2000, ge=10, description="Sampled rows for permutation importance and associations.")
    samples: int = Field(200, ge=1, description="Rows explained by integrated gradients (of the sampled rows).")
    steps: int = Field(64, ge=2, le=1024, description="Integrated gradients' path steps.")
    baseline: Literal["zero", "mean"] = "zero"
    permutation_repeats: int = Field(3, ge=0, le=100, description="Shuffles per feature; 0 skips it.")
    proxy_association: float = Field(0.3, ge=0.0, le=1.0, description="Association flagging a proxy.")
    proxy_importance: float = Field(0.05, ge=0.0, le=1.0, description="Importance share flagging a proxy.")
    seed: int = 0


class GenerationConfig(Section):
    """How a generation model is judged (components/evaluation/generation.py): `samples` images
    generated for uniformly requested classes from seeded noise, scored by a classifier."""

    classifier: str = Field(description="A pushed classifier: its base directory (the highest version is used) "
                                        "or one version directory; relative paths as other kfx paths.")
    samples: int = Field(1000, ge=10, le=100000)
    seed: int = 0
    batch_size: int = Field(256, gt=0)
    shown_per_class: int = Field(8, ge=0, le=64, description="Generated images per class in the report.")

    @field_validator("classifier")
    @classmethod
    def _beside_config(cls, value: str, info: ValidationInfo) -> str:
        return relative_to_config(value, info.context)


class EvaluateConfig(StageConfig):
    """Metrics, slices, fairness and the blessing thresholds."""

    split: str = "test"
    batch_size: int = Field(4096, gt=0, description="Rows per call of the serving signature.")
    threshold: float = Field(0.5, gt=0.0, lt=1.0, description="Decision threshold on P(positive).")
    confusion_thresholds: tuple[float, ...] = Field((0.3, 0.5, 0.7), description="Confusion matrices at these.")
    slices: tuple[tuple[str, ...], ...] = Field((), description="Feature lists; [a, b] crosses a and b.")
    numeric_buckets: int = Field(4, ge=2, le=100, description="Quantile buckets of numeric slice features.")
    min_slice_size: int = Field(100, ge=1, description="Smaller slices are reported but not gated.")
    calibration_bins: int = Field(10, ge=2, le=100)
    fairness: FairnessConfig = FairnessConfig()
    mitigation: MitigationConfig = MitigationConfig()
    robustness: RobustnessConfig = RobustnessConfig()
    explain: ExplainConfig = ExplainConfig()
    gate: GateConfig = GateConfig()
    generation: GenerationConfig | None = Field(None, description="Generation models: the samples' classifier.")

    @field_validator("confusion_thresholds")
    @classmethod
    def _unit(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        for t in v:
            if not 0.0 < t < 1.0:
                raise ValueError(f"confusion threshold {t} must be in (0, 1)")
        return v

    @field_validator("slices")
    @classmethod
    def _nonempty(cls, v):
        for s in v:
            if not s:
                raise ValueError("a slice needs at least one feature (the overall slice is always computed)")
        return v

    @model_validator(mode="after")
    def _robustness_gate(self):
        if self.gate.robustness is not None and not self.robustness.enabled:
            raise ValueError(f"gate.robustness ({self.gate.robustness.attack} at epsilon "
                             f"{self.gate.robustness.epsilon}) needs robustness.enabled: true")
        return self


class InfraValidateConfig(StageConfig):
    """Canary requests against the candidate in a real model server."""

    server: Literal["auto", "kfx", "tensorflow_model_server"] = Field(
        "auto", description="auto: tensorflow_model_server when on PATH, else kfx serve.")
    split: str = "test"
    canary_examples: int = Field(16, ge=1, le=10000)
    start_timeout_seconds: float = Field(120.0, gt=0)
    request_timeout_seconds: float = Field(30.0, gt=0)
    rtol: float = Field(1e-4, ge=0)
    atol: float = Field(1e-5, ge=0)


class PushConfig(StageConfig):
    """Where approved models go (TensorFlow Serving layout)."""

    serving_base: str | None = Field(None, description="Default <root>/serving (the artifact root).")
    model_name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$", description="Default: the pipeline name.")
    require_infra_blessing: bool = True
