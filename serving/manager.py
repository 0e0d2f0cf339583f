"""The model manager: which versions are aspired, loaded, served, labelled and unloaded.

It plays the parts of TF Serving's ServerCore, FileSystemStoragePathSource, AspiredVersionsManager
with the AvailabilityPreservingPolicy, and ServableStateMonitor:

- a ModelServerConfig (model_config_list) names the models, base paths, version policies
  (latest{N} / all / specific) and version labels;
- every --file_system_poll_wait_seconds the base paths are listed; numeric directories the
  policy selects are aspired and loaded in the background (warmup included) before they serve,
  from the directory's own name (`00000123` is version 123), as TF Lite when
  --prefer_tflite_model and the version holds model.tflite;
- a version that fails to load ends in END with its error and never replaces a working one;
- versions that leave the policy are unloaded once an aspired version is AVAILABLE, after
  their in-flight requests finish, so swaps fail no request;
- every version ever seen keeps its last state for GetModelStatus, as ServableStateMonitor does.
"""

import concurrent.futures
import contextlib
import dataclasses
import logging
import threading
import time

import tensorflow as tf

from kfx.serving import errors, inference, tflite
from kfx.serving.servable import Servable, read_warmup_requests

LOG = logging.getLogger(__name__)

START, LOADING, AVAILABLE, UNLOADING, END = 10, 20, 30, 40, 50  # ModelVersionStatus.State


@dataclasses.dataclass(frozen=True)
class ManagerOptions:
    """Settings of the manager, from the command-line flags of the same names."""

    file_system_poll_wait_seconds: int = 1
    enable_model_warmup: bool = True
    num_request_iterations_for_warmup: int = 1
    max_num_load_retries: int = 5
    load_retry_interval_micros: int = 60_000_000
    allow_version_labels_for_unavailable_models: bool = False
    saved_model_tags: tuple = ("serve",)
    enable_signature_method_name_check: bool = False
    num_load_threads: int = 2
    prefer_tflite_model: bool = False


@dataclasses.dataclass
class VersionState:
    """The last known state of one model version."""

    state: int = START
    error: errors.ServingError | None = None
    servable: Servable | None = None
    aspired: bool = True


def aspired_versions(policy, on_disk) -> set:
    """Applies a ServableVersionPolicy to the versions found on disk.

    An unset policy is latest{1}, TF Serving's default.
    """
    kind = policy.WhichOneof("policy_choice")
    if kind == "all":
        return set(on_disk)
    if kind == "specific":
        return set(policy.specific.versions) & set(on_disk)
    count = max(policy.latest.num_versions, 1) if kind == "latest" else 1
    return set(sorted(on_disk)[-count:])


def list_versions(base_path: str) -> dict:
    """Numeric subdirectories of a base path (any tf.io.gfile URI): version -> directory name.

    The name is kept as found (TF Serving's own testdata uses `00000123` for version 123). When
    two names give one number, the last in sorted order wins, with a warning, as in TF Serving.
    """
    versions = {}
    for child in sorted(tf.io.gfile.listdir(base_path)):
        name = child.rstrip("/")
        # TF Serving's absl::SimpleAtoi into int64: ASCII digits only (str.isdigit() also takes "²",
        # which int() refuses) and at most 2**63 - 1 (a version is an int64 in every proto).
        if not (name.isascii() and name.isdigit() and int(name) < 2**63):
            continue
        if tf.io.gfile.isdir(f"{base_path.rstrip('/')}/{name}"):
            if int(name) in versions:
                LOG.warning("Duplicate version directories detected. Version %d will be loaded from %s, "
                            "%s will be ignored.", int(name), name, versions[int(name)])
            versions[int(name)] = name
    return versions


class ModelManager:
    """Loads and serves the models of a ModelServerConfig.

    Args:
        options: ManagerOptions.
        batching: a kfx.serving.batching.BatchingQueues attached to every servable, or None.
        on_state: optional callback(model_name, version, state) for metrics.
    """

    def __init__(self, options: ManagerOptions, batching=None, on_state=None):
        self.options = options
        self._batching = batching
        self._on_state = on_state
        self._lock = threading.RLock()
        self._config_lock = threading.Lock()
        self._poll_lock = threading.Lock()
        self._models = {}  # name -> ModelConfig currently configured
        self._versions = {}  # name -> {version: VersionState}, kept after unload
        self._labels = {}  # name -> {label: version}
        self._loader = concurrent.futures.ThreadPoolExecutor(max(options.num_load_threads, 1), "load")
        self._stop = threading.Event()
        self._changed = threading.Condition(self._lock)
        self._poller = None

    # ---- configuration -------------------------------------------------------------------

    def reload_config(self, config, wait: bool = True) -> None:
        """Replaces the served ModelServerConfig (ServerCore::ReloadConfig).

        Models left out are unloaded; new ones are loaded. Labels must point at AVAILABLE
        versions unless --allow_version_labels_for_unavailable_models.

        Args:
            config: a tensorflow.serving.ModelServerConfig.
            wait: wait until every configured model has an AVAILABLE version (TF Serving does
                for every config after the first).

        Raises:
            ServingError: with TF Serving's code and message for an invalid config, a label on
                an unavailable version, or models that did not become available.
        """
        kind = config.WhichOneof("config")
        if kind is None:
            LOG.info("Taking no action for empty config.")
            return
        if kind != "model_config_list":
            raise errors.failed_precondition(
                "Cannot transition to requested config. It is only legal to transition from one "
                "ModelConfigList to another.")
        with self._config_lock:
            models = {}
            for model in config.model_config_list.config:
                if model.name in models:
                    raise errors.invalid_argument(f"Illegal to list model {model.name} multiple times in config list")
                if not model.model_platform and not model.model_type:
                    raise errors.invalid_argument(
                        "Illegal setting neither model_type(deprecated) nor model_platform.")
                if model.model_platform not in ("", "tensorflow"):
                    raise errors.invalid_argument(
                        f"Model {model.name} requests unsupported platform {model.model_platform}")
                if not tf.io.gfile.isdir(model.base_path):
                    raise errors.invalid_argument(
                        f"Could not find base path {model.base_path} for servable {model.name}")
                models[model.name] = model
            labels = self._validated_labels(models)
            with self._lock:
                self._models, self._labels = models, labels
            self.poll()
        if wait:
            self.wait_until_available(list(models), wait_for_versions=False)

    def _validated_labels(self, models: dict) -> dict:
        labels = {}
        with self._lock:
            for name, model in models.items():
                for label, version in model.version_labels.items():
                    available = self._state(name, version) == AVAILABLE
                    allow = (self.options.allow_version_labels_for_unavailable_models
                             and self._labels.get(name, {}).get(label, version) == version)
                    if not available and not allow:
                        raise errors.failed_precondition(
                            f"Request to assign label to version {version} of model {name}, which is "
                            "not currently available for inference")
                    labels.setdefault(name, {})[label] = version
        return labels

    def _state(self, name: str, version: int):
        entry = self._versions.get(name, {}).get(version)
        return entry.state if entry else None

    def wait_until_available(self, names, wait_for_versions: bool = True) -> None:
        """Blocks until each model has an AVAILABLE version (WaitUntilConfiguredModelsAvailable).

        Args:
            names: model names.
            wait_for_versions: keep waiting while a base path holds no version yet (TF Serving's
                startup does); otherwise such a model counts as not available.

        Raises:
            ServingError: UNKNOWN "Some models did not become available: {...}" when every
                aspired version of a model failed.
        """
        failed = []
        with self._lock:
            for name in names:
                while not self._stop.is_set():
                    entries = self._versions.get(name, {})
                    aspired = [v for v, e in entries.items() if e.aspired]
                    if any(e.state == AVAILABLE for e in entries.values()):
                        break
                    if aspired and all(entries[v].state == END for v in aspired):
                        failed += [f"{{name: {name} version: {v}}}" for v in sorted(aspired)]
                        break
                    if not aspired and not wait_for_versions:
                        failed.append(f"{{name: {name} version: <none found>}}")
                        break
                    self._changed.wait(0.5)
        if failed:
            raise errors.unknown("Some models did not become available: {" + ", ".join(failed) + ", }")

    # ---- polling, loading, unloading -----------------------------------------------------

    def start_polling(self) -> None:
        """Polls the base paths every file_system_poll_wait_seconds (0: never again)."""
        if self.options.file_system_poll_wait_seconds > 0 and self._poller is None:
            self._poller = threading.Thread(target=self._poll_loop, name="fs-poll", daemon=True)
            self._poller.start()

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.options.file_system_poll_wait_seconds):
            try:
                self.poll()
            except Exception:  # a flaky file system must not stop future polls
                LOG.exception("File system poll failed")

    def poll(self) -> None:
        """Lists every base path once, starts loads of new aspired versions, unloads others."""
        with self._poll_lock:
            with self._lock:
                models = dict(self._models)
            found = {}
            for name, model in models.items():
                try:
                    on_disk = list_versions(model.base_path)
                except tf.errors.OpError as exc:
                    LOG.warning("Could not list base path %s of %s: %s", model.base_path, name, exc)
                    continue
                if not on_disk:
                    LOG.warning("No versions of servable %s found under base path %s", name, model.base_path)
                found[name] = (model, on_disk, aspired_versions(model.model_version_policy, on_disk))
            with self._lock:
                for name, entries in self._versions.items():
                    if name not in models:
                        for entry in entries.values():
                            entry.aspired = False
                for name, (model, on_disk, aspired) in found.items():
                    entries = self._versions.setdefault(name, {})
                    for version, entry in entries.items():
                        entry.aspired = version in aspired
                    for version in sorted(aspired):
                        entry = entries.get(version)
                        if entry is None or (entry.state == END and entry.error is None):
                            entries[version] = VersionState()
                            self._notify(name, version, START)
                            self._loader.submit(self._load, name, version, f"{model.base_path.rstrip('/')}/{on_disk[version]}")
                for name in list(self._versions):
                    self._unload_unaspired(name)

    def _load(self, name: str, version: int, path: str) -> None:
        options = self.options
        self._set(name, version, LOADING)
        error = None
        for attempt in range(options.max_num_load_retries + 1):
            with self._lock:
                entry = self._versions[name][version]
                if not entry.aspired or self._stop.is_set():
                    error = None
                    break
            try:
                if options.prefer_tflite_model and tflite.model_path(path):
                    servable = tflite.TfLiteServable(name, version, path)
                else:
                    servable = Servable(name, version, path, options.saved_model_tags)
            except Exception as exc:  # any load failure is reported in the version's status
                error = errors.from_exception(exc)
                LOG.error("Loading servable: {name: %s version: %s} failed: %s", name, version, error.message)
                if attempt < options.max_num_load_retries:
                    self._stop.wait(max(options.load_retry_interval_micros, 0) / 1e6)
                continue
            try:
                servable.batching = self._batching
                if options.enable_model_warmup:
                    inference.run_warmup(servable, read_warmup_requests(path),
                                         options.num_request_iterations_for_warmup,
                                         options.enable_signature_method_name_check)
            except Exception as exc:  # a warmup failure fails the load, as in TF Serving
                servable.close()
                error = errors.from_exception(exc)
                LOG.error("Warmup of {name: %s version: %s} failed: %s", name, version, error.message)
                break
            with self._lock:
                entry.servable, entry.error = servable, None
                self._set(name, version, AVAILABLE)
                LOG.info("Successfully loaded servable version {name: %s version: %s}", name, version)
                self._unload_unaspired(name)
            return
        with self._lock:
            entry = self._versions[name][version]
            entry.error = error
            self._set(name, version, END)

    def _unload_unaspired(self, name: str) -> None:
        """AvailabilityPreservingPolicy: unload unaspired versions while availability is kept."""
        entries = self._versions.get(name, {})
        while True:
            ready_unaspired = [v for v, e in entries.items() if e.state == AVAILABLE and not e.aspired]
            has_aspired = any(e.aspired for e in entries.values())
            has_aspired_ready = any(e.aspired and e.state == AVAILABLE for e in entries.values())
            if not ready_unaspired or not (not has_aspired or has_aspired_ready or len(ready_unaspired) > 1):
                return
            version = min(ready_unaspired)
            entry = entries[version]
            servable, entry.servable = entry.servable, None
            self._set(name, version, UNLOADING)
            threading.Thread(target=self._finish_unload, args=(name, version, servable),
                             name="unload", daemon=True).start()

    def _finish_unload(self, name: str, version: int, servable: Servable) -> None:
        servable.close()  # waits for the requests still running on it
        with self._lock:
            self._set(name, version, END)
        LOG.info("Done unloading servable version {name: %s version: %s}", name, version)

    def _set(self, name: str, version: int, state: int) -> None:
        with self._lock:
            self._versions[name][version].state = state
            self._changed.notify_all()
        self._notify(name, version, state)

    def _notify(self, name, version, state) -> None:
        if self._on_state:
            self._on_state(name, version, state)

    # ---- request routing -----------------------------------------------------------------

    def _resolve(self, spec):
        """(model name, version or None for latest, request description) for a ModelSpec."""
        if not spec.name:
            raise errors.invalid_argument("ModelSpec has no name specified.")
        choice = spec.WhichOneof("version_choice")
        if choice == "version_label":
            version = self._labels.get(spec.name, {}).get(spec.version_label)
            if version is None:
                raise errors.invalid_argument(f"Unrecognized servable version label: {spec.version_label}")
        elif choice == "version":
            version = spec.version.value
        else:
            return spec.name, None, f"Latest({spec.name})"
        return spec.name, version, f"Specific({spec.name}, {version})"

    @contextlib.contextmanager
    def servable(self, spec):
        """Yields the servable a ModelSpec asks for, held until the request is done.

        Raises:
            ServingError: INVALID_ARGUMENT for an empty name or unknown label, NOT_FOUND
                "Servable not found for request: Latest(m)" / "Specific(m, v)" otherwise.
        """
        with self._lock:
            name, version, description = self._resolve(spec)
            available = {v: e.servable for v, e in self._versions.get(name, {}).items()
                         if e.state == AVAILABLE and name in self._models}
            if version is None and available:
                version = max(available)
            servable = available.get(version)
            if servable is None or not servable.acquire():
                raise errors.not_found(f"Servable not found for request: {description}")
        try:
            yield servable
        finally:
            servable.release()

    def status(self, spec) -> list:
        """[(version, state, ServingError or None)] as GetModelStatus reports them.

        Raises:
            ServingError: NOT_FOUND "Could not find version v of model m" / "Could not find any
                versions of model m"; INVALID_ARGUMENT for an unknown label.
        """
        with self._lock:
            entries = self._versions.get(spec.name, {})
            choice = spec.WhichOneof("version_choice")
            if choice is not None:
                _, version, _ = self._resolve(spec)
                if version not in entries:
                    raise errors.not_found(f"Could not find version {version} of model {spec.name}")
                return [(version, entries[version].state, entries[version].error)]
            if not entries:
                raise errors.not_found(f"Could not find any versions of model {spec.name}")
            return [(v, e.state, e.error) for v, e in sorted(entries.items())]

    def stop(self, deadline: float | None = None) -> bool:
        """Stops polling and loading and frees every loaded version.

        Args:
            deadline: time.monotonic() value after which versions still running requests are
                left loaded instead of waited for; None waits for ever.

        Returns:
            False when some version was left loaded (requests still running at the deadline).
        """
        self._stop.set()
        self._loader.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            servables = [e.servable for entries in self._versions.values() for e in entries.values() if e.servable]
        return all([servable.close(None if deadline is None else max(deadline - time.monotonic(), 0))
                    for servable in servables])
