"""Model lifecycle: discover versions on disk, compile them, and look them up by name and version."""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import openvino as ov

from gateway.config.settings import ModelSettings, ServerSettings, parse_model_entry
from gateway.core.errors import ConfigError, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from gateway.core.records import ModelMetadata, VersionStatus
from gateway.memory.budget import RequestMemoryBudget
from gateway.observability.statistics import ExecutionTimes
from gateway.runtime.executor import check_device
from gateway.serving.compiler import VersionCompiler
from gateway.serving.model_version import ModelVersion, State
from gateway.serving.repository import looks_like_model, resolve_inside
from gateway.serving.retry import RetrySchedule
from gateway.serving.stores import (
    VersionStore,
    default_model_cache_dir,
    downloaded_version_folder,
    remote_scheme,
    store_for,
)

log = logging.getLogger(__name__)

PLATFORM = "OpenVINO"  # what OVMS reports in model metadata


@dataclass(frozen=True, eq=False, slots=True)
class ServedModel:
    name: str
    settings: ModelSettings | None
    versions: dict[int, ModelVersion] = field(default_factory=dict)
    error: str = ""  # why the model as a whole cannot be served (bad config, no versions on disk)
    # What the load tried: the settings and the chosen versions' fingerprints (None: not listed).
    attempt: tuple | None = None

    @property
    def complete(self) -> bool:
        """Every chosen version serves."""
        return not self.error and bool(self.versions) and all(v.ready for v in self.versions.values())

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


class ModelManager:
    def __init__(
        self,
        settings: ServerSettings,
        core: ov.Core | None = None,
        on_execution: Callable[[str, str, ExecutionTimes, list[int]], None] | None = None,
        memory: RequestMemoryBudget | None = None,
    ):
        """`memory`: the request memory budget, which the schedulers charge with their batches' copies."""
        self._settings = settings
        self._core = core or ov.Core()
        for device, library in settings.extra_plugins.items():
            if device not in self._core.available_devices:
                try:
                    self._core.register_plugin(library, device)
                except Exception as e:
                    raise ConfigError(f"--register_plugin {device}={library}: {e}") from None
        self._models: dict[str, ServedModel] = {}
        self._model_cache_dir = settings.model_cache_dir or default_model_cache_dir()
        self._store_errors = _StoreErrors()
        self._stores: dict[tuple[str, str], VersionStore] = {}
        self._retries = RetrySchedule()
        self.loading_done = asyncio.Event()
        # The metrics recorder of each execution: (name, version, its times, its requests' queue times).
        self._on_execution = on_execution
        self._compiler = VersionCompiler(
            core=self._core,
            cache_dir=settings.cache_dir,
            adaptive_execution=settings.adaptive_execution,
            priority_aging_s=settings.priority_aging_ms / 1000,
            memory=memory,
        )

    @property
    def core(self) -> ov.Core:
        return self._core

    @property
    def cache_loads(self) -> dict[tuple[str, str, str], int]:
        """(name, version, "hit" | "miss") -> loads with a compiled-blob cache, reloads included."""
        return self._compiler.cache_loads

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
            self._schedule_retry(loaded)
        self.loading_done.set()

    def _schedule_retry(self, model: ServedModel) -> None:
        """After a load: forget past failures, or schedule the next try of an incomplete model."""
        if model.complete:
            self._retries.succeeded(model.name)
            return
        delay = self._retries.failed(model.name, (model.settings, model.attempt))
        log.warning(
            "model %s: not every chosen version loaded; tried again when its files or settings change, "
            "or in %.0f s",
            model.name,
            delay,
        )

    def retries_due(self) -> bool:
        """Some model that did not fully load is due to be tried again with the same files."""
        return self._retries.any_due()

    async def _load_model(self, model: ServedModel) -> ServedModel:
        """Load the versions the model's policy selects into `model.versions` (visible, LOADING, while they
        compile); the model as served: itself, or a copy saying why none of it can be served."""
        settings = model.settings
        assert settings is not None
        try:
            check_device(self._core, settings.name, settings.target_device)
            store = self._store(settings)
            available = await self._off_the_loop(settings, store.versions)
            chosen = settings.version_policy.select(list(available))
            model = replace(model, attempt=tuple((n, available[n]) for n in chosen))
            if not chosen:
                raise ConfigError(
                    f"model '{settings.name}': field 'model_version_policy' = "
                    f"{settings.version_policy.to_dict()}: "
                    f"selects none of the versions on disk {sorted(available)}"
                )
            on_disk = await self._off_the_loop(settings, store.local_folders, chosen)
        except ConfigError as e:
            log.error("model %s not served: %s", settings.name, e)
            return replace(model, error=str(e))
        for number in chosen:
            local = on_disk.get(number)
            if local is None:  # gone since the listing
                continue
            version = ModelVersion(
                settings.name, number, settings, str(local.model_file or ""), on_execution=self._on_execution
            )
            version.download = local.download
            if local.error:
                version.fail(local.error)
                log.error("model %s version %d: %s", settings.name, number, local.error)
            model.versions[number] = version
        loading = [v for v in model.versions.values() if v.state is State.LOADING]
        await asyncio.gather(*(self._compiler.load(v) for v in loading))
        return model

    def _store(self, settings: ModelSettings) -> VersionStore:
        """The model's store, made once per base path: a remote one keeps its connections between polls."""
        key = (settings.name, settings.base_path)
        store = self._stores.get(key)
        if store is None:
            store = self._stores[key] = store_for(settings.name, settings.base_path, self._model_cache_dir)
        return store

    @staticmethod
    async def _off_the_loop(settings: ModelSettings, call: Callable, *args):
        """A store's call: in a thread for object storage (network, downloads), inline for a local folder."""
        if remote_scheme(settings.base_path) is None:
            return call(*args)
        return await asyncio.to_thread(call, *args)

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
        self._schedule_retry(candidate)
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
            kept = {v.path for v in candidate.versions.values()}
            await self._forget_downloads([v.path for v in previous.versions.values() if v.path not in kept])

    async def unload(self, name: str) -> None:
        model = self.model(name)
        self._retire(model, "unloaded")

    # --- hot reload (config file and version folders) -------------------------------------------

    def polled_settings(self) -> dict[str, ModelSettings]:
        """The configured models, loaded or not: whose version folders the reloader watches."""
        return {name: m.settings for name, m in self._models.items() if m.settings is not None}

    def _selected_versions(self, settings: ModelSettings) -> dict[int, tuple] | None:
        """Version number -> fingerprint, for the versions the policy would serve from the store now; None
        when the store cannot be listed (logged once per change). Blocks: the reloader calls it in a
        thread."""
        try:
            found = self._store(settings).versions()
        except ConfigError as e:
            self._store_errors.report(settings.name, str(e))
            return None
        self._store_errors.report(settings.name, "")
        return {number: found[number] for number in settings.version_policy.select(list(found))}

    def version_fingerprints(self, settings: ModelSettings) -> tuple | None:
        """The selected versions with their files' sizes and times (ETags in object storage): what the
        reloader polls."""
        selected = self._selected_versions(settings)
        return None if selected is None else tuple(selected.items())

    def ready_version_numbers(self, name: str) -> tuple[int, ...]:
        model = self._models.get(name)
        return tuple(sorted(n for n, v in model.versions.items() if v.ready)) if model else ()

    def _needs_load(self, settings: ModelSettings) -> bool:
        """Whether apply() loads a model whose settings are unchanged: versions came or went, or it did not
        fully load and its retry is due (at once when its files changed since)."""
        current = self._models[settings.name]
        serving = any(v.ready for v in current.versions.values())
        selected = self._selected_versions(settings)
        if selected is None and serving:
            return False  # the store cannot be listed now: the serving versions stay (logged by the listing)
        if serving and tuple(sorted(selected or ())) == self.ready_version_numbers(settings.name):
            return False
        attempt = None if selected is None else tuple(selected.items())
        return self._retries.due(settings.name, (settings, attempt))

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
                await self._forget_downloads([v.path for v in model.versions.values()])
                # Kept for the index (its versions report why they stopped); no settings: not polled.
                self._models[name] = replace(model, settings=None)
                report[name] = "removed"
            elif name not in wanted_by_name and model.settings is not None and not model.versions:
                del self._models[name]  # never loaded: nothing to report as retired
            if name not in wanted_by_name:
                self._retries.forget(name)
        for settings in wanted:
            current = self._models.get(settings.name)
            serving = current is not None and any(v.ready for v in current.versions.values())
            changed = current is None or current.settings != settings
            if not changed and not await asyncio.to_thread(self._needs_load, settings):
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

    async def _forget_downloads(self, paths: list[str]) -> None:
        """Delete the cached downloads of retired versions (a version the store no longer has, or a model
        removed from the configuration): folders of the model cache only, never a user's own folder."""
        folders = [downloaded_version_folder(Path(path), self._model_cache_dir) for path in paths]
        if any(folders):
            await asyncio.to_thread(_remove_folders, [f for f in folders if f is not None])

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
            outputs=served.client_outputs or served.outputs,
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


def _remove_folders(folders: list[Path]) -> None:
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
        log.info("removed the downloaded copy of a retired version: %s", folder)


class _StoreErrors:
    """Logs a store's listing error once per change of state, not at every poll."""

    def __init__(self) -> None:
        self._last: dict[str, str] = {}

    def report(self, model: str, error: str) -> None:
        if self._last.get(model, "") == error:
            return
        self._last[model] = error
        if error:
            log.error(
                "model %s: its repository cannot be listed (loaded versions keep serving): %s",
                model,
                error,
            )
        else:
            log.info("model %s: its repository can be listed again", model)


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
