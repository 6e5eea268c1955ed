"""A model's base path in object storage, over any client that can list and read byte ranges: versions
found from one paginated listing, and each version downloaded once into the model cache.

A download streams each object in parts, several at a time, into a temporary folder that is renamed into
place when complete (a crash leaves no half version); it is reused while the objects' ETags and sizes are
unchanged. Calls block: the manager runs them in a thread, off the event loop.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from gateway.core.errors import ConfigError
from gateway.serving.repository import find_model_file

log = logging.getLogger(__name__)

# Parts as large and as many at a time as S3's own transfer managers use: large weights arrive at the link's
# speed while a part in flight holds at most PART_BYTES * PARALLEL_PARTS of memory.
PART_BYTES = 8 << 20
PARALLEL_PARTS = 8
PROGRESS_EVERY_S = 5.0


@dataclass(frozen=True, slots=True)
class RemoteObject:
    key: str  # relative to the version folder
    size: int
    etag: str


@dataclass(frozen=True, slots=True)
class Download:
    """What bringing one version to local disk cost: nothing when the model cache had it."""

    bytes: int
    seconds: float
    files: int


@dataclass(frozen=True, slots=True)
class LocalVersion:
    """A version's files on local disk, or why they are not there."""

    model_file: Path | None  # or a SavedModel folder; None when `error` says why
    download: Download | None  # None for a local folder
    error: str = ""


class ObjectClient(Protocol):
    """One base path in one store; blocking calls, safe from several threads."""

    def list(self) -> Iterable[tuple[str, int, str]]:
        """(key relative to the base path, size, ETag) of every object under it, all pages."""
        ...

    def read(self, key: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of one object."""
        ...

    def why(self, error: Exception) -> str:
        """The cause of an error in a user's words; the same cause reads the same each time."""
        ...


class RemoteStore:
    """Versions and their local copies for one model whose base path is in object storage."""

    def __init__(self, model: str, url: str, cache_root: str, client: ObjectClient):
        self._model, self._url, self._client = model, url, client
        self._cache = Path(cache_root) / hashlib.sha256(url.encode()).hexdigest()[:16]
        self._listed: dict[int, tuple[RemoteObject, ...]] = {}

    def _fail(self, what: str) -> ConfigError:
        return ConfigError(f"model '{self._model}': field 'base_path' = \"{self._url}\": {what}")

    def _objects(self) -> dict[int, tuple[RemoteObject, ...]]:
        """One paginated listing of the base path, grouped by version folder."""
        by_version: dict[int, list[RemoteObject]] = {}
        try:
            for path, size, etag in self._client.list():
                folder, _, key = path.partition("/")
                if not key or not folder.isdigit() or int(folder) <= 0 or key.endswith("/"):
                    continue  # OVMS serves positive-integer folders only; "x/" keys are folder markers
                by_version.setdefault(int(folder), []).append(RemoteObject(key, size, etag))
        except Exception as e:
            raise self._fail(self._client.why(e)) from None
        return {n: tuple(sorted(objects, key=lambda o: o.key)) for n, objects in by_version.items()}

    def versions(self) -> dict[int, tuple]:
        """Version number -> (key, size, ETag) of its objects; the listing is kept for local_folders."""
        listed = self._objects()
        if not listed:
            raise self._fail("no version folders (expected <base_path>/<version>/ with integer versions > 0)")
        self._listed = listed
        return {n: tuple((o.key, o.size, o.etag) for o in objects) for n, objects in listed.items()}

    def local_folders(self, numbers: Sequence[int]) -> dict[int, LocalVersion]:
        """The chosen versions on local disk, as the last call to versions() listed them: a version that
        cannot be downloaded says why, and the others are served."""
        found = {}
        for number in numbers:
            objects = self._listed.get(number)
            if not objects:
                continue
            try:
                folder, download = self._fetch(number, objects)
            except ConfigError as e:
                found[number] = LocalVersion(None, None, str(e))
                continue
            model_file = find_model_file(folder)
            if model_file is None:
                found[number] = LocalVersion(
                    None, download, str(self._fail(f"version folder {number} holds no model file"))
                )
            else:
                found[number] = LocalVersion(model_file, download)
        return found

    def _fetch(self, number: int, objects: tuple[RemoteObject, ...]) -> tuple[Path, Download]:
        digest = hashlib.sha256(repr(objects).encode()).hexdigest()[:16]
        target = self._cache / f"{number}-{digest}"
        if target.is_dir():
            return target, Download(0, 0.0, 0)
        self._cache.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{number}-", dir=self._cache))
        progress = _Progress(f"model {self._model} version {number}", objects)
        try:
            _download(self._client, f"{number}/", objects, partial, progress.add)
            os.rename(partial, target)
        except Exception as e:
            shutil.rmtree(partial, ignore_errors=True)
            if isinstance(e, OSError) and target.is_dir():  # another process placed it first
                return target, Download(0, 0.0, 0)
            raise self._fail(f"downloading version {number}: {self._client.why(e)}") from None
        return target, progress.done()


def _download(
    client: ObjectClient,
    prefix: str,
    objects: tuple[RemoteObject, ...],
    into: Path,
    on_bytes: Callable[[int], None],
) -> None:
    """Every object into `into`, each cut into parts fetched several at a time and written in place."""
    parts = []
    for obj in objects:
        destination = into / obj.key
        destination.parent.mkdir(parents=True, exist_ok=True)
        with open(destination, "wb") as out:
            out.truncate(obj.size)
        parts += [(obj, destination, start) for start in range(0, obj.size, PART_BYTES)]

    def fetch(part: tuple[RemoteObject, Path, int]) -> None:
        obj, destination, start = part
        end = min(start + PART_BYTES, obj.size)
        data = client.read(prefix + obj.key, start, end)
        if len(data) != end - start:
            raise OSError(f"{obj.key}: {len(data)} bytes at offset {start}, expected {end - start}")
        fd = os.open(destination, os.O_WRONLY)
        try:
            os.pwrite(fd, data, start)
        finally:
            os.close(fd)
        on_bytes(end - start)

    if len(parts) <= 1:
        for part in parts:
            fetch(part)
        return
    pool = ThreadPoolExecutor(min(PARALLEL_PARTS, len(parts)), thread_name_prefix="ovgw-download")
    try:
        for _ in pool.map(fetch, parts):  # the first failure raises here
            pass
    finally:
        pool.shutdown(cancel_futures=True)  # the parts not yet started are dropped


class _Progress:
    """Logs a download's start, its progress every few seconds, and its end with the rate."""

    def __init__(self, what: str, objects: tuple[RemoteObject, ...]):
        self._what = what
        self._total = sum(o.size for o in objects)
        self._files = len(objects)
        self._done = 0
        self._lock = threading.Lock()
        self._started = self._last_log = time.monotonic()
        log.info("%s: downloading %s in %d files", what, _megabytes(self._total), self._files)

    def add(self, count: int) -> None:
        with self._lock:
            self._done += count
            now = time.monotonic()
            if now - self._last_log < PROGRESS_EVERY_S or self._done >= self._total:
                return
            self._last_log = now
            done = self._done
        log.info(
            "%s: %s of %s downloaded (%.0f%%)",
            self._what, _megabytes(done), _megabytes(self._total), 100 * done / self._total,
        )  # fmt: skip

    def done(self) -> Download:
        seconds = time.monotonic() - self._started
        rate = self._total / seconds / 1e6 if seconds > 0 else 0.0
        log.info(
            "%s: downloaded %s in %.2f s (%.1f MB/s)", self._what, _megabytes(self._total), seconds, rate
        )
        return Download(self._total, seconds, self._files)


def _megabytes(count: int) -> str:
    return f"{count / 1e6:.1f} MB"
