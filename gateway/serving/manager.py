"""Model lifecycle: discover versions on disk, compile them, and look them up by name and version."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import openvino as ov

from gateway.config.settings import ModelSettings, ServerSettings, parse_model_entry
from gateway.core.errors import ConfigError, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from gateway.core.records import ModelMetadata, TensorSpec, VersionStatus
from gateway.observability.statistics import ExecutionTimes
from gateway.runtime.executor import InferExecutor, check_device, port_layouts, port_specs, read_model
from gateway.scheduling.adaptive import LoadAdaptiveExecutor
from gateway.scheduling.scheduler import (
    BatchingPolicy,
    DeviceGate,
    Executor,
    ModelScheduler,
    default_queue_size,
)
from gateway.serving.model_version import ModelVersion, State, apply_batching
from gateway.serving.repository import discover_versions, folder_fingerprint, looks_like_model, resolve_inside

log = logging.getLogger(__name__)

PLATFORM = "OpenVINO"  # what OVMS reports in model metadata


@dataclass(frozen=True, eq=False, slots=True)
class ServedModel:
    name: str
    settings: ModelSettings | None
    versions: dict[int, ModelVersion] = field(default_factory=dict)
    error: str = ""  # why the model as a whole cannot be served (bad config, no versions on disk)

    def default_version(self) -> ModelVersion:
        """The highest ready version: what an empty version string means."""
        for number in sorted(self.versions, reverse=True):
            if self.versions[number].ready:
                return self.versions[number]
        raise Unavailable(f"model '{self.name}' has no ready version{self._why()}")

    def _why(self) -> str:
        reasons = self.error or "; ".join(
            f"version {v.version}: {v.reason or v.state.value}" for v in self.versions.values()
        )
        return f" ({reasons})" if reasons else ""


@dataclass(frozen=True, slots=True)
class _CompiledVersion:
    """A version once OpenVINO compiled it: its ports as clients see them and the executor that runs it."""

    compiled: ov.CompiledModel
    inputs: tuple[TensorSpec, ...]
    bounds: tuple
    layouts: list[str]
    outputs: tuple[TensorSpec, ...]
    pad_to: int | None  # a static-batch model's batch size, to which partial batches are padded
    nireq: int
    streams: int
    executor: Executor


class ModelManager:
    def __init__(
        self,
        settings: ServerSettings,
        core: ov.Core | None = None,
        on_execution: Callable[[str, str, ExecutionTimes, list[int]], None] | None = None,
    ):
        self._settings = settings
        self._core = core or ov.Core()
        for device, library in settings.extra_plugins.items():
            if device not in self._core.available_devices:
                try:
                    self._core.register_plugin(library, device)
                except Exception as e:
                    raise ConfigError(f"--register_plugin {device}={library}: {e}") from None
        self._models: dict[str, ServedModel] = {}
        self.loading_done = asyncio.Event()
        # The metrics recorder of each execution: (name, version, its times, its requests' queue times).
        self._on_execution = on_execution
        # (name, version, "hit" | "miss") -> loads, over the process's life (reloads included)
        self.cache_loads: dict[tuple[str, str, str], int] = {}
        self._gates: dict[str, DeviceGate] = {}  # target_device -> the gate its models share

    @property
    def core(self) -> ov.Core:
        return self._core

    async def load_all(self) -> None:
        """Load every configured model; failures are recorded per model, never raised."""
        for name, error in self._settings.model_errors.items():
            self._models[name] = ServedModel(name, None, error=error)
            log.error("model %s not served: %s", name, error)
        for settings in self._settings.models:
            self._models[settings.name] = ServedModel(settings.name, settings)
        loading = [m for m in self._models.values() if m.settings is not None]
        for loaded in await asyncio.gather(*(self._load_model(m) for m in loading)):
            self._models[loaded.name] = loaded
        self.loading_done.set()

    async def _load_model(self, model: ServedModel) -> ServedModel:
        """Load the versions the model's policy selects into `model.versions` (visible, LOADING, while they
        compile); the model as served: itself, or a copy saying why none of it can be served."""
        settings = model.settings
        assert settings is not None
        try:
            check_device(self._core, settings.name, settings.target_device)
            on_disk = discover_versions(settings.name, settings.base_path)
        except ConfigError as e:
            log.error("model %s not served: %s", settings.name, e)
            return replace(model, error=str(e))
        chosen = settings.version_policy.select(list(on_disk))
        if not chosen:
            error = (
                f"model '{settings.name}': field 'model_version_policy' = "
                f"{settings.version_policy.to_dict()}: "
                f"selects none of the versions on disk {sorted(on_disk)}"
            )
            log.error("model %s not served: %s", settings.name, error)
            return replace(model, error=error)
        for number in chosen:
            model.versions[number] = ModelVersion(
                settings.name, number, settings, str(on_disk[number]), on_execution=self._on_execution
            )
        await asyncio.gather(*(self._load_version(v) for v in model.versions.values()))
        return model

    def _compile_config(self, settings: ModelSettings) -> dict:
        config: dict = {k: v for k, v in settings.plugin_config.items()}
        cache_dir = self._settings.cache_dir
        if cache_dir and settings.allow_cache is not False:
            config.setdefault("CACHE_DIR", cache_dir)
        hinted = "PERFORMANCE_HINT" in config or "NUM_STREAMS" in config
        if not hinted and self._supports(settings, "PERFORMANCE_HINT"):
            # A server sees concurrent requests: ask the device for parallel streams.
            config["PERFORMANCE_HINT"] = "THROUGHPUT"
        if "MODEL_PRIORITY" not in config and self._supports(settings, "MODEL_PRIORITY"):
            # Devices that arbitrate between compiled models themselves (AUTO, GPU) get the priority too.
            config["MODEL_PRIORITY"] = {1: "HIGH", 2: "MEDIUM"}.get(settings.priority, "LOW")
        return config

    def _supports(self, settings: ModelSettings, prop: str) -> bool:
        try:
            supported = self._core.get_property(settings.target_device.split(":")[0], "SUPPORTED_PROPERTIES")
        except Exception:
            return False
        return prop in supported

    def _gate(self, device: str) -> DeviceGate:
        gate = self._gates.get(device)
        if gate is None:
            gate = self._gates[device] = DeviceGate(
                device=device, aging_s=self._settings.priority_aging_ms / 1000
            )
        return gate

    async def _load_version(self, version: ModelVersion) -> None:
        """Compile a version, describe it to clients, and give it a scheduler: LOADING -> READY, or FAILED
        with the reason (logged once)."""
        started = time.perf_counter()
        try:
            loaded = await self._compile_executions(version)
        except Exception as e:  # OpenVINO raises plain RuntimeErrors with useful text
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            version.fail(f"failed to load from {version.path}: {reason}")
            log.error("model %s version %d: %s", version.name, version.version, version.reason)
            return
        version.load_seconds = time.perf_counter() - started
        version.streams = loaded.streams
        how = self._count_cache_load(version, loaded.compiled)
        try:
            version.describe(loaded.inputs, loaded.bounds, loaded.outputs, loaded.layouts)
        except ConfigError as e:  # a setting that does not fit the compiled model (e.g. image_inputs)
            version.fail(str(e))
            log.error("model %s version %d: %s", version.name, version.version, version.reason)
            return
        scheduler = self._scheduler(version, loaded)
        version.activate(scheduler)
        log.info(
            "model %s version %d ready on %s in %.2f s (%s; %s; from %s)",
            version.name,
            version.version,
            version.settings.target_device,
            version.load_seconds,
            how,
            _describe_scheduling(loaded, scheduler),
            version.path,
        )

    async def _compile_executions(self, version: ModelVersion) -> _CompiledVersion:
        """The compiled model, its ports as clients see them, and what runs it: one execution, or the
        load-adaptive pair (docs/design/adaptive-execution.md)."""
        settings = version.settings
        compiled = await asyncio.to_thread(self._compile, version)
        inputs, bounds = port_specs(compiled.inputs, "input")
        layouts = port_layouts(compiled.inputs)
        outputs, _ = port_specs(compiled.outputs, "output")
        pad_to = None
        if settings.max_batch_size:
            inputs, bounds, outputs, pad_to = apply_batching(settings, inputs, bounds, outputs)
        nireq = settings.nireq or int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        label = f"{version.name}-{version.version}"
        input_types, output_types = [i.datatype for i in inputs], [o.datatype for o in outputs]
        batch_rows = bool(settings.max_batch_size)
        throughput = InferExecutor(compiled, nireq, input_types, output_types, label, batch_rows)
        streams = _streams(compiled, nireq)
        executor: Executor = throughput
        if streams > 1 and self._adaptive(settings):
            latency_compiled = await asyncio.to_thread(self._compile, version, "LATENCY")
            latency = InferExecutor(
                latency_compiled, 1, input_types, output_types, f"{label}-latency", batch_rows
            )

            async def compile_inline() -> InferExecutor:
                compiled = await asyncio.to_thread(self._compile, version, "LATENCY", one_thread=True)
                log.info(
                    "model %s version %d: lone requests run inline (a one-thread LATENCY-hint execution, "
                    "called from the event loop)",
                    version.name,
                    version.version,
                )
                return InferExecutor(compiled, 1, input_types, output_types, f"{label}-inline", batch_rows)

            executor = LoadAdaptiveExecutor(
                latency=latency, throughput=throughput, compile_inline=compile_inline
            )
        return _CompiledVersion(compiled, inputs, bounds, layouts, outputs, pad_to, nireq, streams, executor)

    def _count_cache_load(self, version: ModelVersion, compiled: ov.CompiledModel) -> str:
        """Whether the version came from the compiled-blob cache (counted for the metrics), in words."""
        cache_dir = self._compile_config(version.settings).get("CACHE_DIR")
        if not cache_dir:
            return "compiled, no cache"
        version.cache_result = "hit" if _loaded_from_cache(compiled) else "miss"
        key = (version.name, str(version.version), version.cache_result)
        self.cache_loads[key] = self.cache_loads.get(key, 0) + 1
        how = "imported from the cache" if version.cache_result == "hit" else "compiled and cached"
        return f"{how} in {cache_dir}"

    def _scheduler(self, version: ModelVersion, loaded: _CompiledVersion) -> ModelScheduler:
        settings = version.settings
        batching = None
        if settings.max_batch_size:
            batching = BatchingPolicy(
                settings.max_batch_size,
                settings.max_queue_delay_microseconds / 1e6,
                settings.preferred_batch_size,
                loaded.pad_to,
            )
        queue_size = settings.max_queue_size
        if queue_size is None:
            queue_size = default_queue_size(loaded.nireq, settings.max_batch_size)
        return ModelScheduler(
            executor=loaded.executor,
            label=f"model '{version.name}' version {version.version}",
            max_queue_size=queue_size,
            batching=batching,
            priority=settings.priority,
            streams=loaded.streams,
            gate=self._gate(settings.target_device),
            on_execution=version.record_execution,
        )

    def _adaptive(self, settings: ModelSettings) -> bool:
        """A latency execution beside the throughput one: on CPU, when the gateway chose the hint."""
        chosen = (
            "PERFORMANCE_HINT" not in settings.plugin_config and "NUM_STREAMS" not in settings.plugin_config
        )
        device = settings.target_device.split(":")[0].split(".")[0].upper()
        return self._settings.adaptive_execution and chosen and device == "CPU"

    def _compile(
        self, version: ModelVersion, hint: str | None = None, one_thread: bool = False
    ) -> ov.CompiledModel:
        settings = version.settings
        config = self._compile_config(settings)
        if hint is not None:
            config["PERFORMANCE_HINT"] = hint
        if one_thread:  # the inline execution (adaptive.py): no worker threads to spin after each run
            config["INFERENCE_NUM_THREADS"] = 1
        if (
            settings.shape is None
            and settings.layout is None
            and settings.batch_size is None
            and not settings.max_batch_size
        ):
            # From the file, OpenVINO checks its blob cache before reading the model at all.
            return self._core.compile_model(version.path, settings.target_device, config)
        model = read_model(self._core, version.path, settings)
        return self._core.compile_model(model, settings.target_device, config)

    # --- the model_repository extension -----------------------------------------------------------

    @property
    def repository_root(self) -> Path | None:
        root = self._settings.model_repository_path
        return Path(root).resolve() if root else None

    def _settings_for_load(self, name: str, entry: dict | None) -> ModelSettings:
        root = self.repository_root
        if root is None:
            raise FailedPrecondition("no model repository is configured (--model_repository_path)")
        # The name becomes a folder under the repository: it must not climb out of it.
        resolve_inside(root, name, f"model name '{name}'")
        if entry is None:
            known = self._models.get(name)
            if known is not None and known.settings is not None:
                return known.settings
            return ModelSettings(name=name, base_path=str(resolve_inside(root, name, f"model name '{name}'")))
        entry = dict(entry.get("config", entry)) if isinstance(entry, dict) else entry
        if not isinstance(entry, dict):
            raise InvalidArgument("the 'config' parameter must be a JSON object (an OVMS model config entry)")
        entry.setdefault("name", name)
        if entry["name"] != name:
            raise InvalidArgument(f"the 'config' parameter names model '{entry['name']}', not '{name}'")
        entry.setdefault("base_path", name)
        if isinstance(entry["base_path"], str):
            entry["base_path"] = str(resolve_inside(root, entry["base_path"], "base_path"))
        try:
            return parse_model_entry(entry)
        except ConfigError as e:
            raise InvalidArgument(str(e)) from None

    async def load(self, name: str, entry: dict | None = None) -> None:
        """Load (or reload) a model by name (the repository API)."""
        await self.load_settings(self._settings_for_load(name, entry))

    async def load_settings(self, settings: ModelSettings) -> None:
        """Blue/green: new versions compile beside the serving ones and take traffic once one is ready;
        the old ones finish their in-flight requests. A failed load leaves the serving model alone."""
        name = settings.name
        candidate = await self._load_model(ServedModel(name, settings))
        ready = any(v.ready for v in candidate.versions.values())
        if not ready:
            reason = candidate._why().strip(" ()") or "no version could be loaded"
            if name not in self._models or not any(v.ready for v in self._models[name].versions.values()):
                self._models[name] = candidate  # reported by the index with its reason
            raise FailedPrecondition(f"failed to load model '{name}': {reason}")
        previous = self._models.get(name)
        self._models[name] = candidate
        if previous is not None:
            self._retire(previous, "replaced by a reload")

    async def unload(self, name: str) -> None:
        model = self.model(name)
        self._retire(model, "unloaded")

    # --- hot reload (config file and version folders) -------------------------------------------

    def served_settings(self) -> dict[str, ModelSettings]:
        return {name: m.settings for name, m in self._models.items() if m.settings is not None and m.versions}

    def _selected_versions(self, settings: ModelSettings) -> dict[int, Path]:
        """Version number -> model file, for the versions the policy would serve from disk now."""
        try:
            found = discover_versions(settings.name, settings.base_path)
        except ConfigError:
            return {}
        return {number: found[number] for number in settings.version_policy.select(list(found))}

    def version_folders(self, settings: ModelSettings) -> tuple[int, ...]:
        """The versions the policy would serve from disk now (what a reload compares)."""
        return tuple(self._selected_versions(settings))

    def version_fingerprints(self, settings: ModelSettings) -> tuple:
        """The selected versions with their files' sizes and times: what the reloader polls."""
        single_file = Path(settings.base_path).is_file()
        return tuple(
            (number, () if single_file else folder_fingerprint(path if path.is_dir() else path.parent))
            for number, path in self._selected_versions(settings).items()
        )

    def ready_version_numbers(self, name: str) -> tuple[int, ...]:
        # A version that failed to load (a folder still being copied, say) counts as missing: the next
        # reload tries it again, as OVMS retries failed versions.
        model = self._models.get(name)
        return tuple(sorted(n for n, v in model.versions.items() if v.ready)) if model else ()

    async def apply(self, wanted: list[ModelSettings]) -> dict[str, str]:
        """Make the serving set match `wanted`: load new or changed models (blue/green), retire removed ones,
        reload a model whose version folders changed. Returns what happened per model."""
        report: dict[str, str] = {}
        wanted_by_name = {s.name: s for s in wanted}
        for name, model in list(self._models.items()):
            if (
                name not in wanted_by_name
                and model.settings is not None
                and any(v.ready for v in model.versions.values())
            ):
                self._retire(model, "removed from the configuration")
                report[name] = "removed"
        for settings in wanted:
            current = self._models.get(settings.name)
            serving = current is not None and any(v.ready for v in current.versions.values())
            changed = current is None or not serving or current.settings != settings
            if not changed and self.version_folders(settings) == self.ready_version_numbers(settings.name):
                continue
            try:
                await self.load_settings(settings)
                report[settings.name] = "reloaded" if serving else "loaded"
            except FailedPrecondition as e:
                report[settings.name] = f"failed: {e.message}"
                log.error(
                    "reload of model %s failed; the serving versions stay: %s", settings.name, e.message
                )
        return report

    @staticmethod
    def _retire(model: ServedModel, reason: str) -> None:
        # In-flight requests hold their own reference to the executor and finish normally;
        # its threads end when the last reference goes.
        for version in model.versions.values():
            version.fail(reason)

    # --- look-ups -------------------------------------------------------------------------------

    def served_names(self) -> list[str]:
        """Every model name the manager knows (ready or not): what a pipeline's name must not clash with."""
        return list(self._models)

    def knows(self, name: str) -> bool:
        return name in self._models

    def model(self, name: str) -> ServedModel:
        model = self._models.get(name)
        if model is None:
            raise NotFound(f"Model with requested name is not found: '{name}'")
        return model

    def version(self, name: str, version: str = "") -> ModelVersion:
        """The ready version a request asks for, or the error the protocol gives."""
        model = self.model(name)
        if not version:
            return model.default_version()
        served = _named_version(model, version)
        if not served.ready:
            raise Unavailable(
                f"model '{name}' version {version} is not ready: {served.reason or served.state.value}"
            )
        return served

    def is_ready(self, name: str, version: str = "") -> bool:
        """Readiness of a model (version); unknown names and versions are NOT_FOUND, as the protocol says."""
        try:
            self.version(name, version)
        except Unavailable:
            return False
        return True

    def existing_version(self, name: str, version: str) -> ModelVersion | None:
        """The version a request names explicitly, ready or not; None when there is no such version."""
        model = self._models.get(name)
        if model is None or not version.isdigit():
            return None
        return model.versions.get(int(version))

    def metadata(self, served: ModelVersion) -> ModelMetadata:
        model = self._models[served.name]
        return ModelMetadata(
            name=served.name,
            versions=tuple(str(v) for v in sorted(model.versions)),
            platform=PLATFORM,
            inputs=served.client_inputs or served.inputs,
            outputs=served.outputs,
        )

    def all_ready(self) -> bool:
        """Server readiness: loading has finished (failures are reported, not waited for)."""
        return self.loading_done.is_set()

    def index(self, ready_only: bool = False) -> list[VersionStatus]:
        rows = []
        root = self.repository_root
        if root is not None and root.is_dir() and not ready_only:
            for child in sorted(root.iterdir()):
                if child.name not in self._models and looks_like_model(child):
                    rows.append(VersionStatus(child.name, "", State.UNAVAILABLE.value, "not loaded"))
        for model in self._models.values():
            if not model.versions and not ready_only:
                rows.append(VersionStatus(model.name, "", State.UNAVAILABLE.value, model.error))
            for number, v in sorted(model.versions.items()):
                if v.ready or not ready_only:
                    rows.append(VersionStatus(model.name, str(number), v.state.value, v.reason))
        return sorted(rows, key=lambda r: (r.name, int(r.version or 0)))

    def versions(self):
        for model in self._models.values():
            yield from model.versions.values()

    def served_versions(self, name: str = "", version: str = "") -> list[ModelVersion]:
        """The versions a statistics request covers: all, one model's, or one version."""
        if not name:
            if version:
                raise InvalidArgument("a version needs a model name")
            return [v for m in self._models.values() for _, v in sorted(m.versions.items())]
        model = self.model(name)
        if not version:
            return [v for _, v in sorted(model.versions.items())]
        return [_named_version(model, version)]


def _describe_scheduling(loaded: _CompiledVersion, scheduler: ModelScheduler) -> str:
    """The start-up log's account of how a version runs: infer requests, streams, executions, batching."""
    adaptive = " + a LATENCY-hint execution for lone requests, where it pays"
    batching = scheduler.batching
    batched = "off"
    if batching is not None:
        batched = f"up to {batching.max_batch_size}" + (
            f" padded to {batching.pad_to}" if batching.pad_to else ""
        )
    return (
        f"nireq {loaded.nireq}, streams {loaded.streams}"
        f"{adaptive if isinstance(loaded.executor, LoadAdaptiveExecutor) else ''}; batching {batched}; "
        f"queue {scheduler.max_queue_size or 'unbounded'}; priority {scheduler.priority}"
    )


def _named_version(model: ServedModel, version: str) -> ModelVersion:
    """The version a request names ("1", "2" ...), ready or not, or the protocol's error: the one place a
    version string from a client is parsed."""
    if not version.isdigit():
        raise InvalidArgument(
            f"model version must be a positive integer; got '{version}' for model '{model.name}'"
        )
    served = model.versions.get(int(version))
    if served is None:
        raise NotFound(f"Model with requested version is not found: model '{model.name}' version {version}")
    return served


def _streams(compiled: ov.CompiledModel, nireq: int) -> int:
    """OpenVINO's execution streams (what ovms_streams reports); devices without the property run nireq."""
    try:
        return int(compiled.get_property("NUM_STREAMS"))
    except Exception:
        return nireq


def _loaded_from_cache(compiled: ov.CompiledModel) -> bool:
    try:
        return bool(compiled.get_property("LOADED_FROM_CACHE"))
    except Exception:  # a device without the property did not import a blob
        return False
