"""S3 and Azure Blob base paths through obstore (Rust's object_store): paginated listing, ranged reads,
bounded retries and endpoint overrides, with the credentials OVMS reads from the environment."""

from __future__ import annotations

import configparser
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from obstore.store import AzureConfig, ClientConfig, RetryConfig, S3Config

DEFAULT_REGION = "us-east-1"


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
            raise ValueError("expected s3://bucket/path or s3://host:port/bucket/path")
        return cls(first, path.strip("/"), endpoint)


class ObstoreClient:
    """An ObjectClient (remote_store.py) over one obstore store."""

    def __init__(self, store):
        self._store = store

    def list(self) -> Iterator[tuple[str, int, str]]:
        import obstore

        for batch in obstore.list(self._store, chunk_size=1000):
            for meta in batch:
                yield meta["path"], meta["size"], meta.get("e_tag") or ""

    def read(self, key: str, start: int, end: int) -> bytes:
        import obstore

        return memoryview(obstore.get_range(self._store, key, start=start, end=end)).tobytes()

    def why(self, error: Exception) -> str:
        return _why(error)


def s3_client(url: str, environ: Mapping[str, str] = os.environ) -> ObstoreClient:
    """A client for an S3 or S3-compatible (MinIO, Ceph, moto) base path, with OVMS's credentials:
    AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (both), AWS_SESSION_TOKEN, AWS_REGION, AWS_PROFILE (from
    ~/.aws/credentials), S3_ENDPOINT, https_proxy / http_proxy; no keys and no profile: unsigned requests.
    ValueError for a URL that names no bucket."""
    from obstore.store import S3Store  # imported only where a model lives in S3

    location = S3Location.parse(url, environ)
    config: dict = {
        "region": environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION
    }
    keys = _credentials(environ)
    if keys is None:
        config["skip_signature"] = True  # anonymous, for public buckets; never the instance metadata
    else:
        config.update(keys)
    if location.endpoint:
        config["endpoint"] = location.endpoint
    store = S3Store(
        location.bucket,
        prefix=location.prefix or None,
        config=cast("S3Config", config),
        client_options=_client_options(environ),
        retry_config=_RETRY,
    )
    return ObstoreClient(store)


def azure_blob_client(url: str, environ: Mapping[str, str] = os.environ) -> ObstoreClient:
    """A client for `az://container/path` in Azure Blob Storage (or Azurite), as OVMS reads it: the account,
    key and endpoint from AZURE_STORAGE_CONNECTION_STRING (AccountName, AccountKey or SharedAccessSignature,
    BlobEndpoint or DefaultEndpointsProtocol and EndpointSuffix, UseDevelopmentStorage); unset: anonymous.
    ValueError for a URL that names no container."""
    from obstore.store import AzureStore  # imported only where a model lives in Azure

    container, _, prefix = url.split("://", 1)[1].strip("/").partition("/")
    if not container:
        raise ValueError("expected az://container/path")
    store = AzureStore(
        container,
        prefix=prefix.strip("/") or None,
        config=cast("AzureConfig", _azure_config(environ)),
        client_options=_client_options(environ),
        retry_config=_RETRY,
    )
    return ObstoreClient(store)


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
