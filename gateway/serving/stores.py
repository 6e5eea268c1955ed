"""Where a model's version folders live: a local folder, or a base path in object storage (OVMS's `s3://`,
`gs://` and `az://`).

A store lists the version folders with a fingerprint of each (what the reloader compares), and gives the
manager a local copy per version: the folder itself, or a download kept in the model cache
(remote_store.py).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from gateway.core.errors import ConfigError
from gateway.serving.remote_store import LocalVersion, ObjectClient, RemoteStore
from gateway.serving.repository import discover_versions, folder_fingerprint

REMOTE_SCHEMES = ("s3", "gs", "az", "azfs")


def remote_scheme(base_path: str) -> str | None:
    """'s3' for 's3://bucket/path', and so on; None for a local path."""
    scheme, sep, _ = base_path.partition("://")
    return scheme.lower() if sep and scheme.lower() in REMOTE_SCHEMES else None


def default_model_cache_dir() -> str:
    """Where downloaded versions are kept when --model_cache_dir is not given (TMPDIR honoured)."""
    return str(Path(tempfile.gettempdir()) / "ovgw-model-cache")


_DOWNLOADED_VERSION = re.compile(r"^\d+-[0-9a-f]{16}$")


def downloaded_version_folder(model_file: Path, cache_root: str) -> Path | None:
    """The cache folder a downloaded version's model file lies in (`<cache>/<path hash>/<n>-<objects hash>`),
    or None for a file that is not a download of ours."""
    root = Path(cache_root).resolve()
    for folder in model_file.resolve().parents:
        if _DOWNLOADED_VERSION.match(folder.name) and folder.parent.parent == root:
            return folder
    return None


class VersionStore(Protocol):
    """One model's base path."""

    def versions(self) -> dict[int, tuple]:
        """Version number -> a fingerprint of its files; ConfigError naming the path and the cause."""
        ...

    def local_folders(self, numbers: Sequence[int]) -> dict[int, LocalVersion]:
        """Version number -> its model file (or SavedModel folder) on local disk, for versions the last
        call to versions() found."""
        ...


class LocalStore:
    def __init__(self, model: str, base_path: str):
        self._model, self._base_path = model, base_path

    def versions(self) -> dict[int, tuple]:
        found = discover_versions(self._model, self._base_path)
        if Path(self._base_path).is_file():
            return {number: () for number in found}
        return {
            number: folder_fingerprint(path if path.is_dir() else path.parent)
            for number, path in found.items()
        }

    def local_folders(self, numbers: Sequence[int]) -> dict[int, LocalVersion]:
        found = discover_versions(self._model, self._base_path)
        return {n: LocalVersion(found[n], None) for n in numbers if n in found}


def _client(scheme: str, base_path: str, environ: Mapping[str, str]) -> ObjectClient:
    """The client for a remote base path; ValueError for a URL of the scheme's wrong shape."""
    if scheme == "s3":
        from gateway.serving.obstore_clients import s3_client

        return s3_client(base_path, environ)
    if scheme == "az":
        from gateway.serving.obstore_clients import azure_blob_client

        return azure_blob_client(base_path, environ)
    from gateway.serving.gcs_client import GcsClient

    return GcsClient(base_path, environ)


def store_for(
    model: str, base_path: str, cache_root: str, environ: Mapping[str, str] = os.environ
) -> VersionStore:
    scheme = remote_scheme(base_path)
    if scheme is None:
        return LocalStore(model, base_path)
    field = f"model '{model}': field 'base_path' = \"{base_path}\""
    if scheme == "azfs":
        raise ConfigError(
            f"{field}: Azure Files (azfs://) is not supported; copy the models into Blob Storage and use "
            "az://container/path"
        )
    try:
        client = _client(scheme, base_path, environ)
    except ValueError as e:
        raise ConfigError(f"{field}: {e}") from None
    return RemoteStore(model, base_path, cache_root, client)
