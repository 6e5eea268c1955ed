"""Hot reload: watch the config file and the model version folders, and apply changes blue/green.

Every `--file_system_poll_wait_seconds` (and on OVMS's `POST /v1/config/reload`) the
config file is re-read: new models load, removed ones retire, changed settings
and new or removed version folders reload the model beside the serving one (see
ModelManager.apply), and a model that did not fully load is tried again when its
retry is due (serving/retry.py). A config file that does not parse is ignored as a whole, with
an error in the log, and the serving set stays as it was.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from pathlib import Path

from gateway.config.settings import ServerSettings, read_config_file
from gateway.core.errors import ConfigError, InvalidArgument
from gateway.pipelines.registry import PipelineRegistry
from gateway.serving.manager import ModelManager
from gateway.serving.stores import remote_scheme

log = logging.getLogger(__name__)


class Reloader:
    def __init__(self, manager: ModelManager, pipelines: PipelineRegistry, settings: ServerSettings):
        self._manager = manager
        self._pipelines = pipelines
        self._settings = settings
        self._lock = asyncio.Lock()
        self._last: tuple | None = None
        self._remote_listed_at = -math.inf
        self._remote_fingerprints: dict[str, tuple | None] = {}

    def _config_file(self) -> Path | None:
        if not self._settings.config_path:
            return None
        path = Path(self._settings.config_path)
        return path / "config.json" if path.is_dir() else path

    def _snapshot(self) -> tuple:
        """The config file's digest and each configured model's version fingerprints. Object storage is
        listed every `object_store_poll_wait_seconds` (a listing is a billed request); in between, its last
        listing stands."""
        config = self._config_file()
        digest = hashlib.sha256(config.read_bytes()).hexdigest() if config and config.exists() else ""
        now = time.monotonic()
        list_remote = now - self._remote_listed_at >= self._settings.object_store_poll_wait_seconds
        if list_remote:
            self._remote_listed_at = now
        folders = []
        for name, settings in sorted(self._manager.polled_settings().items()):
            remote = remote_scheme(settings.base_path) is not None
            if remote and not list_remote and name in self._remote_fingerprints:
                fingerprints = self._remote_fingerprints[name]
            else:
                fingerprints = self._manager.version_fingerprints(settings)
                if remote:
                    self._remote_fingerprints[name] = fingerprints
            folders.append((name, fingerprints))
        return digest, tuple(folders)

    async def reload(self) -> dict[str, str]:
        """Apply the config file (or, in single-model mode, the version folders) now."""
        async with self._lock:
            # Taken before applying: files that change while models load make the next poll reload again.
            snapshot = await asyncio.to_thread(self._snapshot)
            config = self._config_file()
            if config is None:
                wanted, graphs = list(self._settings.models), self._settings.pipelines
            else:
                try:
                    parsed = await asyncio.to_thread(read_config_file, str(config))
                except ConfigError as e:
                    log.error("config reload ignored, the serving models stay as they are: %s", e)
                    raise InvalidArgument(f"the configuration was not applied: {e}") from None
                wanted, graphs = parsed.models, parsed.pipelines
            report = await self._manager.apply(wanted)
            # after the models: pipelines are validated against the models as they now serve
            report.update(
                self._pipelines.apply(
                    graphs.pipelines, graphs.pipeline_errors, graphs.libraries, graphs.library_errors
                )
            )
            self._last = snapshot
            for name, what in report.items():
                log.info("reload: %s %s", name, what)
            return report

    async def watch(self, interval: float) -> None:
        """Poll for changes until cancelled."""
        self._last = await asyncio.to_thread(self._snapshot)
        while True:
            await asyncio.sleep(interval)
            try:
                current = await asyncio.to_thread(self._snapshot)
                if current != self._last or self._manager.retries_due():
                    await self.reload()
            except InvalidArgument:
                # Logged by reload(); wait for the file to change again before retrying.
                self._last = await asyncio.to_thread(self._snapshot)
            except Exception:  # never let the watcher die: the next poll tries again
                log.exception("config watcher failed")
