"""Config sections of the modeling stages (transform, tune, train).

Kept apart from pipeline/config.py so the modeling stages' settings grow in one place;
PipelineConfig includes them. Model names and hyperparameter overrides are checked against
the models registry and the family's declared search space at load time (models/ imports no
TensorFlow, so loading a config stays cheap).
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, ValidationInfo, field_validator, model_validator

from kfx.models.kinds.text import SEQUENCE_LENGTH
from kfx.pipeline.config_base import Section, StageConfig, imports_user_code
from kfx.pipeline.config_warm_start import WarmStartKeys

# ---------------------------------------------------------------- transform
def _known_kind(value: str) -> str:
    """A kind of the models/kinds registry (cheap: no TensorFlow is imported)."""
    from kfx.models import kinds

    try:
        kinds.get(value)
    except KeyError as err:
        raise ValueError(err.args[0]) from None
    return value


TransformKind = Annotated[str, AfterValidator(_known_kind)]


class FeatureTransform(Section):
    """How one raw feature becomes model inputs. Several kinds give several outputs.

    With one kind the output keeps the feature's name; with several each output is named
    `<feature>__<kind>` (e.g. age normalized and bucketized).
    """

    kinds: tuple[TransformKind, ...] = Field(min_length=1)
    log: bool = Field(False, description="normalize: log1p(x) first (skewed counts such as capital-gain).")
    num_buckets: int | None = Field(None, ge=2, le=10000, description="bucketize: quantile buckets.")
    top_k: int | None = Field(None, ge=1, description="one_hot/embed/text: vocabulary size cap.")
    min_frequency: int | None = Field(None, ge=1, description="one_hot/embed/text: drop rarer values.")
    num_oov_buckets: int | None = Field(None, ge=1, le=1000)
    hash_buckets: int | None = Field(None, ge=2, description="hash: number of bins.")
    sequence_length: Annotated[int, Field(ge=1, le=100000)] | Literal["auto"] = Field(
        SEQUENCE_LENGTH, description="text: tokens kept per value, or 'auto': the train texts' "
                                     "`sequence_length_quantile` of tokens per text.")
    sequence_length_quantile: float = Field(0.95, gt=0, le=1, description="text: the quantile 'auto' takes.")
    image_shape: tuple[int, ...] | None = Field(None, description="image: [height, width, channels].")
    image_scale: tuple[float, float] | None = Field(
        None, description="encoded_image: fixed [mean, std] (e.g. [0, 255]); default: the train pixels'.")
    window_shape: tuple[int, int] | None = Field(None, description="window: [length, channels].")
    difference: bool = Field(False, description="window: first differences of each channel before scaling.")
    season: int | None = Field(None, ge=1, description="window: season length in steps (the forecast task's "
                                                      "seasonal-naive baseline; 52 for weekly data).")

    @field_validator("image_shape")
    @classmethod
    def _shape(cls, value):
        if value is not None and (len(value) != 3 or min(value) < 1):
            raise ValueError(f"must be [height, width, channels] of positive sizes, got {list(value)}")
        return value

    @field_validator("window_shape")
    @classmethod
    def _window(cls, value):
        if value is not None and min(value) < 1:
            raise ValueError(f"must be [length, channels] of positive sizes, got {list(value)}")
        return value

    @field_validator("image_scale")
    @classmethod
    def _scale(cls, value):
        if value is not None and value[1] <= 0:
            raise ValueError(f"must be [mean, std] with std > 0, got {list(value)}")
        return value


class AnomalyOptions(Section):
    """Which label values mark normal rows (the anomaly task trains on those only), and the false
    positive rate the decision threshold is picked at on the eval split's normal rows."""

    normal_values: tuple[str, ...] = Field(min_length=1, description="Label values of normal rows, e.g. ['0'].")
    false_positive_rate: float = Field(0.05, gt=0, lt=1, description="Share of normal eval rows flagged anomalous.")

    @field_validator("normal_values", mode="before")
    @classmethod
    def _as_text(cls, value):
        # An integer label's values may be written as numbers: [0] means ["0"].
        if isinstance(value, (list, tuple)):
            return [str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
        return value

    @field_validator("normal_values")
    @classmethod
    def _distinct(cls, value):
        if len(set(value)) != len(value):
            raise ValueError(f"lists a value twice: {list(value)}")
        return value


class TransformConfig(StageConfig):
    """Per-feature preprocessing computed with Beam analyzers over the train split."""

    features: dict[str, FeatureTransform] = Field(
        default_factory=dict, description="Per-feature transforms; other features get type defaults.")
    exclude: tuple[str, ...] = Field((), description="Features not given to the model.")
    numeric_default: TransformKind = "normalize"
    string_default: Literal["one_hot", "embed", "hash"] = "one_hot"
    one_hot_max: int = Field(64, ge=1, description="Default one_hot strings with larger vocabularies are embedded.")
    top_k: int = Field(10000, ge=1)
    min_frequency: int = Field(1, ge=1)
    num_oov_buckets: int = Field(1, ge=1, le=1000)
    num_buckets: int = Field(10, ge=2, le=10000)
    hash_buckets: int = Field(1000, ge=2)
    task: str = Field("auto", description="A task of models/tasks (binary, multiclass, regression, ...), or auto: "
                                          "classification for string labels or labels with a string/int domain.")
    label_vocabulary: tuple[str, ...] | None = Field(
        None, description="Class names in index order; default: the schema domain (or the train values), sorted. "
                          "For binary tasks the last one is the positive class.")
    batch_size: int = Field(8192, gt=0, description="Rows parsed at once by an analyzer worker.")
    quantile_accuracy: int = Field(20000, ge=100, description="Points kept by the quantile summary.")
    anomaly: AnomalyOptions | None = Field(None, description="task anomaly: the normal label values and the "
                                                             "threshold's false positive rate.")
    materialize: bool = Field(False, description="Also write transformed train/eval/test examples.")
    preprocessing: str | None = Field(
        None, description="module:function (or file.py:function) applied to the transformed features inside "
                          "the model, after the analyzers' layers: dict of tensors in, dict of tensors out.")

    @field_validator("numeric_default")
    @classmethod
    def _numeric_default(cls, value: str) -> str:
        from kfx.models import kinds

        if value not in kinds.accepting(kinds.FLOAT):
            raise ValueError(f"kind {value!r} does not take numbers; choose one of {kinds.accepting(kinds.FLOAT)}")
        return value

    @field_validator("preprocessing")
    @classmethod
    def _preprocessing(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:
            from kfx.pipeline.user_code import UserCodeError, load_function, locate, split_function_ref

            config_dir, what = (info.context or {}).get("config_dir", ""), "transform.preprocessing"
            try:
                if imports_user_code(info.context):
                    load_function(value, config_dir, what=what)
                else:
                    locate(split_function_ref(value, what)[0], config_dir, what=what)
            except UserCodeError as err:
                raise ValueError(str(err)) from None
        return value

    @field_validator("task")
    @classmethod
    def _task(cls, value: str) -> str:
        from kfx.models import tasks

        if value != tasks.AUTO and value not in tasks.TASKS:
            raise ValueError(f"unknown task {value!r}; known: {tasks.AUTO}, {', '.join(tasks.names())}")
        return value

    @model_validator(mode="after")
    def _anomaly(self) -> "TransformConfig":
        from kfx.models import tasks

        if (self.task == tasks.ANOMALY) != (self.anomaly is not None):
            raise ValueError(f"transform.anomaly (the normal label values) goes with transform.task: anomaly and only "
                             f"with it; got task {self.task!r} and anomaly {self.anomaly and self.anomaly.model_dump()}")
        return self

    @field_validator("label_vocabulary")
    @classmethod
    def _vocab(cls, value):
        if value is not None and (len(value) < 2 or len(set(value)) != len(value)):
            raise ValueError(f"needs at least two distinct class names, got {list(value)}")
        return value


# ---------------------------------------------------------------- models
def _family(name: str, info: ValidationInfo):
    """Load the family `name` (registered, module path or .py file) for load-time checks; only
    locate it (returning None) when the context says not to import user code."""
    from kfx import models
    from kfx.pipeline.user_code import UserCodeError

    config_dir = (info.context or {}).get("config_dir", "")
    try:
        if not imports_user_code(info.context):
            models.source(name, config_dir)
            return None
        return models.get(name, config_dir)
    except (KeyError, ValueError, UserCodeError) as err:
        raise ValueError(err.args[0]) from None


def _check_hyperparameters(family, model: str, values: dict[str, Any]) -> None:
    from kfx import models
    from kfx.models.space import check

    space = models.space_of(family)
    problems = check(space, values) if space is not None else []
    if problems:
        raise ValueError(f"hyperparameters of model {model!r}: " + "; ".join(problems))


# ---------------------------------------------------------------- tune
def _monitors() -> tuple[str, ...]:
    from kfx.models import tasks

    return tasks.union("MONITORS")


# Validation metrics the stages can watch: every task's (models/tasks/); whether the task of
# the data reports the one chosen is checked when tune / train run (val_auc needs binary).
Monitor = Literal[_monitors()]


class TuneConfig(StageConfig):
    """KerasTuner search over the model family's space (the family is `train.model`)."""

    model: str | None = Field(None, description="Family to search (as train.model); default: the train stage's.")
    tuner: Literal["random", "bayesian", "hyperband"] = "random"
    objective: Monitor = Field("val_loss", description="Eval-split metric the search optimises.")
    max_trials: int = Field(6, ge=0, description="0: no search, the space's defaults are written.")
    epochs: int = Field(4, ge=1, description="Epochs per trial (hyperband: max epochs).")
    max_seconds: float = Field(180.0, gt=0, description="Time budget; no trial starts after it, a running one stops.")
    executions_per_trial: int = Field(1, ge=1)
    batch_size: int = Field(512, gt=0)
    train_rows: int | None = Field(None, gt=0, description="Use only this many train rows per trial.")
    hyperband_factor: int = Field(3, ge=2)
    seed: int = 42

    @field_validator("model")
    @classmethod
    def _model(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:
            _family(value, info)
        return value


# ---------------------------------------------------------------- train
class Augmentation(Section):
    """Random image transformations applied to image features in training only (models/augment.py).

    Each is off at 0 / none; e.g. {translation: 0.1, rotation: 0.05, zoom: 0.1, flip: horizontal, contrast: 0.1}.
    """

    translation: float = Field(0.0, ge=0.0, le=0.5, description="Max shift, a fraction of height and width.")
    rotation: float = Field(0.0, ge=0.0, le=0.5, description="Max rotation, a fraction of a full turn (0.05 = 18 deg).")
    zoom: float = Field(0.0, ge=0.0, lt=1.0, description="Max zoom in or out, a fraction of the size.")
    flip: Literal["none", "horizontal", "vertical", "horizontal_and_vertical"] = "none"
    contrast: float = Field(0.0, ge=0.0, lt=1.0, description="Contrast factor drawn in [1 - c, 1 + c].")


class TrainConfig(WarmStartKeys, StageConfig):
    """Keras 3 training and the serving export (warm-start keys: pipeline/config_warm_start.py)."""

    model: str = Field("mlp", description="Model family: a registered name (mlp, wide_deep), a dotted module "
                                          "path, or a .py file (absolute or relative to the config file).")
    hyperparameters: dict[str, Any] = Field(
        default_factory=dict, description="Overrides of tuned/default values, checked against the space.")
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(256, gt=0)
    optimizer: Literal["adam", "adamw", "sgd", "rmsprop"] = "adam"
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="sgd momentum (Nesterov).")
    weight_decay: float = Field(0.0, ge=0.0, lt=1.0, description="Decoupled weight decay (adamw, sgd, ...).")
    clipnorm: float | None = Field(None, gt=0, description="Gradient clipping by global norm.")
    lr_schedule: Literal["constant", "cosine", "step", "plateau"] = "constant"
    step_decay_epochs: int = Field(5, ge=1, description="step: decay every this many epochs.")
    step_decay_rate: float = Field(0.5, gt=0, lt=1)
    plateau_factor: float = Field(0.5, gt=0, lt=1)
    plateau_patience: int = Field(2, ge=1)
    early_stopping_patience: int = Field(4, ge=0, description="Epochs without eval improvement; 0 disables.")
    early_stopping_monitor: Monitor = Field("val_loss", description="Eval-split metric early stopping watches.")
    class_weights: Literal["none", "balanced"] | dict[str, float] = Field(
        "none", description="balanced: inverse class frequency; or class name -> weight.")
    shuffle_buffer: int = Field(50000, ge=1)
    cache_dataset: bool = Field(True, description="Cache the preprocessed data in memory (it must fit).")
    strategy: Literal["auto", "default", "mirrored", "multi_worker", "tpu"] = "auto"
    mixed_precision: Literal["auto", "on", "off"] = Field("auto", description="auto: on when training on GPU.")
    backup_dir: str | None = Field(
        None, description="BackupAndRestore directory; default <root>/<pipeline>/train/.backup/<key>.")
    warmup_requests: int = Field(8, ge=0, le=1000)
    augmentation: Augmentation | None = Field(
        None, description="Image augmentation of the training batches only; the exported model has none.")
    seed: int = 42
    verbose: int = Field(2, ge=0, le=2)

    @field_validator("model")
    @classmethod
    def _model(cls, value: str, info: ValidationInfo) -> str:
        _family(value, info)
        return value

    @field_validator("class_weights")
    @classmethod
    def _weights(cls, value):
        if isinstance(value, dict):
            bad = {k: v for k, v in value.items() if not v > 0}
            if bad:
                raise ValueError(f"class weights must be > 0, got {bad}")
        return value

    @field_validator("hyperparameters")
    @classmethod
    def _hyperparameters(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        # `model` is declared first, so it is validated already (absent when it was invalid).
        family = _family(info.data["model"], info) if "model" in info.data else None
        if family is not None:
            _check_hyperparameters(family, info.data["model"], value)
        return value
