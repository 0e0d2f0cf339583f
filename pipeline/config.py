"""Pipeline configuration: one YAML per pipeline, parsed once into frozen, typed objects.

Every stage gets its own section; unknown keys and bad values fail at load time with the key
path and the value received (pydantic does the checking). `--set a.b=value` overrides are
applied to the raw YAML before validation, so they get the same checks.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = PROJECT_ROOT / "pipeline" / "configs" / "adult.yaml"


class ConfigError(ValueError):
    """A pipeline config that cannot be loaded; the message names the key and the value."""


from kfx.pipeline.config_base import Section, StageConfig, relative_to_config  # noqa: E402
from kfx.pipeline.config_timeseries import TimeseriesOptions, check_ingest  # noqa: E402
from kfx.pipeline.config_graph import GraphOptions  # noqa: E402
from kfx.pipeline.config_graph import check_ingest as check_graph_ingest  # noqa: E402


# ---------------------------------------------------------------- ingest
ColumnType = Literal["int", "float", "string"]


class InputSpec(Section):
    """One source pattern and how its rows are split (TFX ExampleGen's input config).

    A single pattern with {train: 8, eval: 1, test: 1} is a hash split; several patterns each
    with one split name are predefined splits; both mix (Adult: adult.data -> train/eval).
    """

    pattern: str
    splits: dict[str, float] = Field(default_factory=lambda: {"train": 8.0, "eval": 1.0, "test": 1.0})

    @field_validator("pattern")
    @classmethod
    def _beside_config(cls, value: str, info: ValidationInfo) -> str:
        return relative_to_config(value, info.context)

    @field_validator("splits")
    @classmethod
    def _positive(cls, value: dict[str, float]) -> dict[str, float]:
        if not value:
            raise ValueError("needs at least one split name")
        for name, weight in value.items():
            if weight <= 0:
                raise ValueError(f"split {name!r} has weight {weight}; weights must be > 0")
            if not name.replace("_", "").isalnum():
                raise ValueError(f"split name {name!r} must be alphanumeric")
        return value


class CsvOptions(Section):
    """How CSV text is read."""

    header: bool = True
    columns: tuple[str, ...] | None = Field(None, description="Column names when the files have no header.")
    delimiter: str = ","
    skip_initial_space: bool = True
    skip_lines_starting_with: tuple[str, ...] = ()
    na_values: tuple[str, ...] = ("",)
    # Per column, raw value -> replacement applied before typing (e.g. Adult's "<=50K." in adult.test).
    replace: dict[str, dict[str, str]] = Field(default_factory=dict)


def _positive_dims(shape: tuple) -> tuple:
    if any(d is not None and d <= 0 for d in shape):
        raise ValueError(f"image shape dimensions must be > 0 or null, got {list(shape)}")
    return shape


ImageShape = Annotated[tuple[int | None, int | None, int | None], AfterValidator(_positive_dims)]


class IngestConfig(StageConfig):
    """Where examples come from and how they are split."""

    format: Literal["builtin", "csv", "tfrecord", "parquet", "tfds", "image_folder"] = "csv"
    name: str | None = Field(None, description="builtin or TFDS dataset name.")
    data_dir: str | None = Field(None, description="TFDS data_dir.")
    inputs: tuple[InputSpec, ...] = ()
    csv: CsvOptions = CsvOptions()
    column_types: dict[str, ColumnType] = Field(default_factory=dict)
    label: str | None = Field(None, description="Rows without a label are rejected.")
    label_values: tuple[str, ...] = Field(
        (), description="Classes of the task: rows with another label are dropped and counted per "
                        "value (ingest metrics `dropped`, `dropped_labels`), not rejected; all kept when empty.")
    text_columns: tuple[str, ...] = Field(
        (), description="Free-text columns: a row whose text is missing or blank is rejected ('empty text').")
    hash_key: tuple[str, ...] = Field((), description="Columns hashed for the split; default all.")
    max_rejected_fraction: float = Field(0.01, ge=0.0, le=1.0)
    num_shards: int = Field(0, ge=0, description="Output shards per split; 0 lets the runner choose.")
    chunk_rows: int = Field(20000, gt=0, description="Rows per batch handed to a Beam worker.")
    image_columns: tuple[str, ...] = Field(
        (), description="Columns of encoded images (PNG, JPEG, ...); rows whose image does not decode are rejected.")
    image_shape: ImageShape | dict[str, ImageShape] | None = Field(
        None, description="Expected [height, width, channels] of every image column (null: any), or per "
                          "column; a numeric column named here is a pixel array of that many values. "
                          "Other images are rejected.")
    base64_columns: tuple[str, ...] = Field(
        (), description="Text columns holding base64 bytes (CSV images), decoded at ingest; bad base64 is rejected.")
    timeseries: TimeseriesOptions | None = Field(
        None, description="Window timestamped series into forecasting examples, split by time (CSV sources).")
    graph: GraphOptions | None = Field(
        None, description="A graph: nodes and edges tables; one example per node, split by mask columns.")

    @model_validator(mode="after")
    def _source_complete(self) -> "IngestConfig":
        if self.format in ("builtin", "tfds") and not self.name:
            raise ValueError(f"format {self.format!r} needs ingest.name")
        if self.graph is not None:
            check_graph_ingest(self)
        elif self.format not in ("builtin", "tfds") and not self.inputs:
            raise ValueError(f"format {self.format!r} needs at least one entry in ingest.inputs")
        if self.label_values and not self.label:
            raise ValueError(f"label_values {list(self.label_values)} needs ingest.label")
        both = [c for c in self.image_columns if c in self.text_columns]
        if both:
            raise ValueError(f"column {both[0]!r} is in both image_columns and text_columns; a column is one or the other")
        if self.timeseries is not None:
            check_ingest(self)
        return self


# ---------------------------------------------------------------- statistics
class StatisticsConfig(StageConfig):
    num_quantiles: int = Field(10, ge=2, le=1000)
    num_histogram_buckets: int = Field(10, ge=1, le=1000)
    top_k: int = Field(20, ge=1)
    max_rank_values: int = Field(1000, ge=1, description="Distinct values kept per string feature.")
    batch_size: int = Field(32768, gt=0)
    text_features: tuple[str, ...] = Field((), description="String features with token statistics besides "
                                                             "ingest.text_columns (components/data/text_stats.py).")
    text_max_tokens: int = Field(20000, ge=1, description="Most frequent tokens kept per text feature and split.")


# ---------------------------------------------------------------- schema
class SchemaConfig(StageConfig):
    path: str | None = Field(None, description="Curated Schema text proto; inferred when absent.")
    label: str | None = None
    sensitive: tuple[str, ...] = ()
    max_domain_values: int = Field(100, ge=1, description="Inferred string domains up to this size.")

    @field_validator("path")
    @classmethod
    def _beside_config(cls, value: str | None, info: ValidationInfo) -> str | None:
        return relative_to_config(value, info.context)


# ---------------------------------------------------------------- validate
class ValidateConfig(StageConfig):
    block: bool = Field(True, description="Blocking anomalies fail the stage.")
    drift_splits: tuple[str, ...] = ("train",)
    categorical_drift_threshold: float = Field(0.1, gt=0, le=1, description="L-infinity default.")
    numeric_drift_threshold: float = Field(0.1, gt=0, le=1, description="Jensen-Shannon default.")
    feature_thresholds: dict[str, float] = Field(default_factory=dict)
    max_empty_text_fraction: float = Field(0.0, ge=0, lt=1, description="Texts without a token, per split.")
    oov_drift_threshold: float = Field(0.1, gt=0, le=1, description="Rise of a text feature's out-of-vocabulary "
                                                                    "rate over train's or the baseline's.")


# Keys of a pipeline YAML that are not stage sections.
PIPELINE_KEYS = ("name", "root", "metadata_url", "beam_args", "max_parallel", "template", "stages")


class PipelineConfig(Section):
    """The whole pipeline: identity, where artifacts go, how Beam runs, its graph and each stage.

    `stages` is the graph (pipeline/graph.py); `sections` holds each stage's settings, validated
    by the config class its component declares (`ComponentSpec.config`), keyed by stage name.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, arbitrary_types_allowed=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    root: str = "runs"
    metadata_url: str | None = Field(None, description="SQLAlchemy URL; SQLite under root if unset.")
    beam_args: tuple[str, ...] = ("--direct_running_mode=multi_processing", "--direct_num_workers=2",
                                  "--default_sdk_harness_log_level=ERROR")
    max_parallel: int = Field(2, ge=1)
    template: str | None = Field(None, description="Built-in graph when `stages` is not given (default tabular).")
    config_dir: str = Field("", description="Folder of the YAML: user modules and relative paths resolve there first.")
    stages: tuple[Any, ...] = ()
    sections: dict[str, Any] = Field(default_factory=dict)

    def stage(self, name: str) -> StageConfig:
        """The config section of stage `name` (defaults for a stage without a section)."""
        return self.sections.get(name) or StageConfig()

    def stages_of(self, component: str) -> list[str]:
        """Names of the stages that run built-in component `component` (or module path)."""
        return [s.name for s in self.stages if s.component == component or s.module == component]


def _set_key(raw: dict, dotted: str, value: Any) -> None:
    node = raw
    keys = dotted.split(".")
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: {key!r} is not a section (it is {child!r})")
        node = child
    node[keys[-1]] = value


def parse_overrides(pairs: list[str] | tuple[str, ...]) -> list[tuple[str, Any]]:
    """Parse `a.b=value` strings; the value is read as YAML (2 -> int, [a, b] -> list)."""
    out = []
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE, got {pair!r}")
        try:
            out.append((key.strip(), yaml.safe_load(text)))
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {key}: cannot read value {text!r}: {err}") from None
    return out


def _format_errors(err: ValidationError, source: str, prefix: str = "") -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in (prefix, *e["loc"]) if p != "") or "(top level)"
        got = e.get("input")
        if e["type"] == "extra_forbidden":
            lines.append(f"unknown key {key!r} (value {got!r})")
        elif e["type"] == "missing":
            lines.append(f"missing key {key!r}")
        else:
            lines.append(f"key {key!r}: {e['msg']} (got {got!r})")
    return f"invalid config {source}: " + "; ".join(lines)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                import_user_code: bool = True) -> PipelineConfig:
    """Read, override and validate a pipeline config.

    Args:
        path: YAML file; the default Adult pipeline when None.
        overrides: `KEY=VALUE` strings applied before validation.
        import_user_code: False: the user's models and preprocessing modules are located, not
            imported and checked (config_base.imports_user_code; for the cache check).

    Returns:
        The frozen PipelineConfig.

    Raises:
        ConfigError: unreadable file, bad YAML, unknown key, wrong type or bad value.
    """
    path = Path(path) if path else DEFAULT_CONFIG
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except OSError as err:
        raise ConfigError(f"cannot read config {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config {path} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path} must be a mapping, got {type(raw).__name__}")
    for key, value in parse_overrides(overrides):
        _set_key(raw, key, value)
    return build_config(raw, str(path), str(path.resolve().parent), import_user_code)


def config_from_dict(raw: dict, config_dir: str = "") -> PipelineConfig:
    """A pipeline config from a mapping (as parsed from YAML), validated as load_config does."""
    return build_config(raw, "<mapping>", config_dir)


def build_config(raw: dict, source: str, config_dir: str, import_user_code: bool = True) -> PipelineConfig:
    """Validate a raw config: the graph, each stage's component and section, and the wiring.

    Raises:
        ConfigError: naming the stage and the key: an unknown component, an input naming a
            missing stage or output, a required input left unwired, a cycle, a section for no
            stage, a bad value in a section, or keys that contradict the bound inputs.
    """
    from kfx.pipeline import graph, user_code

    try:
        stages = graph.pipeline_stages(raw)
    except graph.GraphError as err:
        raise ConfigError(f"invalid config {source}: {err}") from None
    names = [s.name for s in stages]
    for key in raw:
        if key not in PIPELINE_KEYS and key not in names:
            raise ConfigError(f"invalid config {source}: section {key!r} names no stage; stages are: "
                              f"{', '.join(names)}")
    user_code.add_import_path(config_dir)  # user components, models and functions resolve here first
    specs = {s.name: _component_spec(s, source) for s in stages}
    for s in stages:
        _check_wiring(s, specs, source)
    sections = {}
    for s in stages:
        body = raw.get(s.name)
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise ConfigError(f"invalid config {source}: section {s.name!r} must be a mapping, got {body!r}")
        try:
            sections[s.name] = specs[s.name].config.model_validate(
                body, context={"config_dir": config_dir, "import_user_code": import_user_code})
        except ValidationError as err:
            raise ConfigError(_format_errors(err, source, prefix=s.name)) from None
    for s in stages:
        if specs[s.name].check_inputs:
            try:
                specs[s.name].check_inputs(sections[s.name], tuple(s.inputs))
            except ValueError as err:
                raise ConfigError(f"invalid config {source}: stage {s.name!r}: {err}") from None
    stages = tuple(_with_implied_inputs(s, specs[s.name], sections[s.name]) for s in stages)
    top = {k: v for k, v in raw.items() if k in PIPELINE_KEYS and k != "stages"}
    try:
        return PipelineConfig.model_validate({**top, "stages": stages, "sections": sections, "config_dir": config_dir})
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def _component_spec(stage, source: str):
    """The ComponentSpec of a stage's component; a clear error when it cannot be loaded."""
    import importlib

    from kfx.pipeline.component import ComponentSpec

    where = f"invalid config {source}: stage {stage.name!r}: component {stage.component!r}"
    try:
        module = importlib.import_module(stage.module)
    except Exception as err:  # noqa: BLE001 - any import failure of the user's module is reported
        raise ConfigError(f"{where} (module {stage.module}) cannot be imported: {type(err).__name__}: {err}") from None
    spec, run = getattr(module, "SPEC", None), getattr(module, "run", None)
    if not isinstance(spec, ComponentSpec) or not callable(run):
        raise ConfigError(f"{where}: module {stage.module} must define SPEC = ComponentSpec(...) and run(ctx) "
                          f"as built-in components do")
    return spec


def _with_implied_inputs(stage, spec, section):
    """The stage with the history inputs its config implies (ComponentSpec.implied_inputs) bound
    where the graph leaves them unbound (an explicit binding in the graph wins)."""
    import dataclasses

    from kfx.pipeline.graph import HISTORY_PREFIX, parse_binding

    implied = spec.implied_inputs(section) if spec.implied_inputs else {}
    extra = {k: parse_binding(stage.name, k, HISTORY_PREFIX + resolver)
             for k, resolver in implied.items() if k not in stage.inputs}
    return dataclasses.replace(stage, inputs={**stage.inputs, **extra}) if extra else stage


def _check_wiring(stage, specs: dict, source: str) -> None:
    from kfx.pipeline.graph import Upstream

    spec = specs[stage.name]
    where = f"invalid config {source}: stage {stage.name!r}"
    for key, binding in stage.inputs.items():
        if key not in spec.inputs:
            raise ConfigError(f"{where}: inputs.{key}: component {stage.component!r} has no input {key!r}; "
                              f"its inputs are: {', '.join(spec.inputs) or '(none)'}")
        if isinstance(binding, Upstream) and binding.output not in specs[binding.stage].outputs:
            raise ConfigError(f"{where}: inputs.{key}: stage {binding.stage!r} has no output {binding.output!r}; "
                              f"its outputs are: {', '.join(specs[binding.stage].outputs)}")
    for key in spec.inputs:
        if key not in stage.inputs and key not in spec.optional_inputs:
            raise ConfigError(f"{where}: inputs.{key}: required input of component {stage.component!r} is not "
                              f"wired; give it as {key}: STAGE.OUTPUT")


def resolve_path(path: str) -> str:
    """A path from a config: URIs and absolute paths as they are, else CWD, else project root."""
    if "://" in path or Path(path).is_absolute() or Path(path).exists():
        return path
    candidate = PROJECT_ROOT / path
    return str(candidate) if candidate.exists() else path
