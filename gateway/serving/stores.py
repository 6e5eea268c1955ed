"""Where a model's version folders live: a local folder, or a base path in object storage (OVMS's `s3://`).

A store lists the version folders with a fingerprint of each (what the reloader compares), and gives the
manager a local folder per version: the folder itself, or a copy downloaded once into the model cache and
reused while the objects' ETags and sizes are unchanged. Calls block; the manager runs remote ones in a
thread, off the event loop.
"""

from __future__ import annotations

import configparser
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, cast

from gateway.core.errors import ConfigError
from gateway.serving.repository import discover_versions, find_model_file, folder_fingerprint

if TYPE_CHECKING:
    from obstore.store import AzureConfig, ClientConfig, RetryConfig, S3Config

REMOTE_SCHEMES = ("s3", "gs", "az", "azfs")
DEFAULT_REGION = "us-east-1"


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

    def local_folders(self, numbers: Sequence[int]) -> dict[int, Path]:
        """Version number -> its model file (or SavedModel folder) on local disk."""
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

    def local_folders(self, numbers: Sequence[int]) -> dict[int, Path]:
        found = discover_versions(self._model, self._base_path)
        return {n: found[n] for n in numbers if n in found}


@dataclass(frozen=True, slots=True)
class RemoteObject:
    key: str  # relative to the version folder
    size: int
    etag: str


@dataclass(frozen=True, slots=True)
class S3Location:
    """`s3://bucket/path`, or `s3://host:port/bucket/path` (plain HTTP to that endpoint), as OVMS reads it."""

    bucket: str
    prefix: str  # no leading or trailing slash
    endpoint: str | None  # from the URL's host:port, else S3_ENDPOINT; None: AWS

    @classmethod
    def parse(cls, url: str, environ: Mapping[str, str]) -> S3Location:
        rest = url.split("://", 1)[1].strip("/")
        first, _, path = rest.partition("/")
        endpoint = None
        if ":" in first:  # s3://host:port/bucket/path
            endpoint = f"http://{first}"
            first, _, path = path.partition("/")
        elif environ.get("S3_ENDPOINT"):
            endpoint = environ["S3_ENDPOINT"]
            if "://" not in endpoint:  # a bare host:port means plain HTTP, as in OVMS
                endpoint = f"http://{endpoint}"
        if not first:
            raise ValueError("no bucket")
        return cls(first, path.strip("/"), endpoint)


class ObjectStorePath:
    """A model's base path in object storage, through obstore: one paginated listing per call to
    versions(), and each version downloaded once into the model cache. Subclasses make the store."""

    def __init__(self, model: str, url: str, cache_root: str):
        self._model, self._url = model, url
        self._cache = Path(cache_root) / hashlib.sha256(url.encode()).hexdigest()[:16]
        self._store = self._make_store()

    def _make_store(self):
        raise NotImplementedError

    def _fail(self, what: str) -> ConfigError:
        return ConfigError(f"model '{self._model}': field 'base_path' = \"{self._url}\": {what}")

    def _objects(self) -> dict[int, tuple[RemoteObject, ...]]:
        """One paginated listing of the base path, grouped by version folder."""
        import obstore

        by_version: dict[int, list[RemoteObject]] = {}
        try:
            for batch in obstore.list(self._store, chunk_size=1000):
                for meta in batch:
                    folder, _, key = meta["path"].partition("/")
                    if not key or not folder.isdigit() or int(folder) <= 0 or key.endswith("/"):
                        continue  # OVMS serves positive-integer folders only
                    etag = meta.get("e_tag") or ""
                    by_version.setdefault(int(folder), []).append(RemoteObject(key, meta["size"], etag))
        except Exception as e:
            raise self._fail(_why(e)) from None
        return {n: tuple(sorted(objects, key=lambda o: o.key)) for n, objects in by_version.items()}

    def versions(self) -> dict[int, tuple]:
        listed = self._objects()
        if not listed:
            raise self._fail("no version folders (expected <base_path>/<version>/ with integer versions > 0)")
        return {n: tuple((o.key, o.size, o.etag) for o in objects) for n, objects in listed.items()}

    def local_folders(self, numbers: Sequence[int]) -> dict[int, Path]:
        listed = self._objects()
        found = {}
        for number in numbers:
            objects = listed.get(number)
            if not objects:
                continue
            folder = self._fetch(number, objects)
            model_file = find_model_file(folder)
            if model_file is None:
                raise self._fail(f"version folder {number} holds no model file")
            found[number] = model_file
        return found

    def _fetch(self, number: int, objects: tuple[RemoteObject, ...]) -> Path:
        """The version's files in the cache: reused while its objects are unchanged, else downloaded into a
        temporary folder and renamed into place once complete (a crash leaves no half version)."""
        import obstore

        digest = hashlib.sha256(repr(objects).encode()).hexdigest()[:16]
        target = self._cache / f"{number}-{digest}"
        if target.is_dir():
            return target
        self._cache.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{number}-", dir=self._cache))
        try:
            for obj in objects:
                destination = partial / obj.key
                destination.parent.mkdir(parents=True, exist_ok=True)
                response = obstore.get(self._store, f"{number}/{obj.key}")
                with open(destination, "wb") as out:
                    for chunk in response.stream(min_chunk_size=8 << 20):
                        out.write(chunk)
            os.rename(partial, target)
        except Exception as e:
            shutil.rmtree(partial, ignore_errors=True)
            if isinstance(e, OSError) and target.is_dir():  # another process placed it first
                return target
            raise self._fail(f"downloading version {number}: {_why(e)}") from None
        return target


class S3Path(ObjectStorePath):
    """A model's base path in S3 or an S3-compatible store (MinIO, Ceph, moto), with OVMS's credentials:
    AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (both), AWS_SESSION_TOKEN, AWS_REGION, AWS_PROFILE (from
    ~/.aws/credentials), https_proxy / http_proxy; no keys and no profile: unsigned requests."""

    def __init__(self, model: str, url: str, cache_root: str, environ: Mapping[str, str] = os.environ):
        self._environ = environ
        try:
            self._location = S3Location.parse(url, environ)
        except ValueError:
            raise ConfigError(
                f"model '{model}': field 'base_path' = \"{url}\": expected s3://bucket/path or "
                "s3://host:port/bucket/path"
            ) from None
        super().__init__(model, url, cache_root)

    def _make_store(self):
        from obstore.store import S3Store  # imported only where a model lives in S3

        environ = self._environ
        config: dict = {
            "region": environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION
        }
        keys = _credentials(environ)
        if keys is None:
            config["skip_signature"] = True  # anonymous, for public buckets; never the instance metadata
        else:
            config.update(keys)
        if self._location.endpoint:
            config["endpoint"] = self._location.endpoint
        return S3Store(
            self._location.bucket,
            prefix=self._location.prefix or None,
            config=cast("S3Config", config),
            client_options=_client_options(environ),
            retry_config=_RETRY,
        )


class AzureBlobPath(ObjectStorePath):
    """`az://container/path` in Azure Blob Storage (or Azurite), as OVMS reads it: the account, key and
    endpoint from AZURE_STORAGE_CONNECTION_STRING (AccountName, AccountKey or SharedAccessSignature,
    BlobEndpoint or DefaultEndpointsProtocol and EndpointSuffix, UseDevelopmentStorage); unset: anonymous
    requests to AZURE_STORAGE_ACCOUNT_NAME's account."""

    def __init__(self, model: str, url: str, cache_root: str, environ: Mapping[str, str] = os.environ):
        self._environ = environ
        container, _, prefix = url.split("://", 1)[1].strip("/").partition("/")
        if not container:
            raise ConfigError(f"model '{model}': field 'base_path' = \"{url}\": expected az://container/path")
        self._container, self._prefix = container, prefix.strip("/")
        super().__init__(model, url, cache_root)

    def _make_store(self):
        from obstore.store import AzureStore  # imported only where a model lives in Azure

        config = _azure_config(self._environ)
        return AzureStore(
            self._container,
            prefix=self._prefix or None,
            config=cast("AzureConfig", config),
            client_options=_client_options(self._environ),
            retry_config=_RETRY,
        )


_RETRY = cast("RetryConfig", {"max_retries": 2, "retry_timeout": timedelta(seconds=10)})


def _client_options(environ: Mapping[str, str]) -> ClientConfig:
    client: dict = {
        "allow_http": True,
        "connect_timeout": timedelta(seconds=5),
        "timeout": timedelta(minutes=30),  # weights of gigabytes on a slow link
    }
    proxy = next(
        (environ[k] for k in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY") if environ.get(k)),
        None,
    )
    if proxy:
        client["proxy_url"] = proxy
    return cast("ClientConfig", client)


def _azure_config(environ: Mapping[str, str]) -> dict:
    text = environ.get("AZURE_STORAGE_CONNECTION_STRING", "")
    if not text:
        return {"skip_signature": True}
    fields = dict(part.split("=", 1) for part in text.split(";") if "=" in part)
    if fields.get("UseDevelopmentStorage", "").lower() == "true":
        return {"use_emulator": True}
    config: dict = {}
    if fields.get("AccountName"):
        config["account_name"] = fields["AccountName"]
    if fields.get("AccountKey"):
        config["account_key"] = fields["AccountKey"]
    elif fields.get("SharedAccessSignature"):
        config["sas_key"] = fields["SharedAccessSignature"]
    else:
        config["skip_signature"] = True
    endpoint = fields.get("BlobEndpoint")
    if not endpoint and fields.get("EndpointSuffix") and fields.get("AccountName"):
        protocol = fields.get("DefaultEndpointsProtocol", "https")
        endpoint = f"{protocol}://{fields['AccountName']}.blob.{fields['EndpointSuffix']}"
    if endpoint:
        config["endpoint"] = endpoint.rstrip("/")
    return config


def _credentials(environ: Mapping[str, str]) -> dict | None:
    key, secret = environ.get("AWS_ACCESS_KEY_ID"), environ.get("AWS_SECRET_ACCESS_KEY")
    if key and secret:
        keys = {"access_key_id": key, "secret_access_key": secret}
        if environ.get("AWS_SESSION_TOKEN"):
            keys["session_token"] = environ["AWS_SESSION_TOKEN"]
        return keys
    profile = environ.get("AWS_PROFILE")
    if profile:
        path = Path(environ.get("AWS_SHARED_CREDENTIALS_FILE") or Path.home() / ".aws" / "credentials")
        parser = configparser.ConfigParser()
        parser.read(path)
        if parser.has_section(profile) and parser.has_option(profile, "aws_access_key_id"):
            section = parser[profile]
            keys = {"access_key_id": section["aws_access_key_id"],
                    "secret_access_key": section.get("aws_secret_access_key", "")}  # fmt: skip
            if section.get("aws_session_token"):
                keys["session_token"] = section["aws_session_token"]
            return keys
    return None


# What the stores' error codes mean to the user who configured the path (S3's, then Azure's).
_CAUSES = {
    "NoSuchBucket": "the bucket does not exist",
    "InvalidAccessKeyId": "the credentials were refused (unknown access key)",
    "SignatureDoesNotMatch": "the credentials were refused (wrong secret key)",
    "AccessDenied": "access denied: the credentials may not list or read this path",
    "ExpiredToken": "the credentials were refused (expired session token)",
    "InvalidToken": "the credentials were refused (invalid session token)",
    "ContainerNotFound": "the container does not exist",
    "AuthenticationFailed": "the credentials were refused (the account key or signature)",
    "AuthorizationFailure": "the credentials were refused (not authorized)",
    "InvalidAuthenticationInfo": "the credentials were refused (invalid authentication information)",
    "AuthorizationPermissionMismatch": "access denied: the credentials may not list or read this path",
    "NoAuthenticationInformation": "the container is not public and no credentials were given",
}


def _why(error: Exception) -> str:
    """The cause of a store error in a user's words: a missing bucket, refused credentials and an
    unreachable endpoint each read differently. The same cause reads the same each time (no timings), so
    that the poll can tell a change of state from a repetition."""
    text = str(error)
    for code, cause in _CAUSES.items():
        if f"<Code>{code}</Code>" in text:
            return cause
    first = re.sub(r" in [\d.]+(?:ns|µs|us|ms|s)\b", "", text.splitlines()[0])[:300] if text else ""
    if "error sending request" in text or "Connection refused" in text or "dns error" in text:
        return f"the endpoint cannot be reached ({first})"
    return first or type(error).__name__


def store_for(
    model: str, base_path: str, cache_root: str, environ: Mapping[str, str] = os.environ
) -> VersionStore:
    scheme = remote_scheme(base_path)
    if scheme is None:
        return LocalStore(model, base_path)
    if scheme == "s3":
        return S3Path(model, base_path, cache_root, environ)
    if scheme == "az":
        return AzureBlobPath(model, base_path, cache_root, environ)
    raise ConfigError(
        f"model '{model}': field 'base_path' = \"{base_path}\": {scheme}:// repositories are not "
        "supported yet (s3://, az:// and local folders are)"
    )
