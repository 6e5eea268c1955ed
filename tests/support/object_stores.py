"""One interface over the object stores the tests serve models from (S3 on moto, Azure Blob on Azurite,
GCS on fake-gcs-server): a bucket or container named `models`, URLs as a user writes them, the environment
as a user sets it, and the variants that must fail (refused credentials, a missing container, an
unreachable endpoint)."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.azurite import KEY, start_azurite
from tests.support.gcs import start_gcs_server, start_token_server
from tests.support.s3 import start_s3_server

CONTAINER = "models"
KINDS = ("s3", "azure", "gcs")
_STORE_VARIABLES = ("S3_ENDPOINT", "STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS")


def _base_environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("AWS_", "AZURE_")) and k not in _STORE_VARIABLES}  # fmt: skip


@dataclass
class StoreUnderTest:
    kind: str
    server: Any
    missing_container_cause: str
    _stoppers: list = field(default_factory=list)

    def url(self, path: str, container: str = CONTAINER) -> str:
        if self.kind == "s3":
            return f"s3://127.0.0.1:{self.server.port}/{container}/{path}"
        if self.kind == "gcs":
            return f"gs://{container}/{path}"
        return f"az://{container}/{path}"

    def environ(self) -> dict[str, str]:
        """As a user points the gateway at the store; GCS anonymously, as the OVMS operator's recipe does."""
        if self.kind == "s3":
            return self.server.environ()
        if self.kind == "gcs":
            return {**_base_environ(), "STORAGE_EMULATOR_HOST": f"127.0.0.1:{self.server.port}"}
        return {**_base_environ(), "AZURE_STORAGE_CONNECTION_STRING": self.server.connection_string()}

    def service_account_environ(self, refuse: bool = False) -> dict[str, str]:
        """GCS with GOOGLE_APPLICATION_CREDENTIALS: a service account whose token endpoint grants (or
        refuses) the token; returns the environment, the token server in `self.token_server`."""
        token_server = start_token_server(refuse=refuse)
        self._stoppers.append(token_server.stop)
        self.token_server = token_server
        key_file = token_server.service_account_file(Path(tempfile.mkdtemp(prefix="ovgw-gcs-")))
        return {**self.environ(), "GOOGLE_APPLICATION_CREDENTIALS": str(key_file)}

    def refused_credentials_environ(self) -> dict[str, str]:
        if self.kind == "s3":
            return self.server.environ(AWS_SECRET_ACCESS_KEY="wrong")
        if self.kind == "gcs":
            return self.service_account_environ(refuse=True)
        wrong = "A" * 8 + KEY[8:]
        return {
            **_base_environ(),
            "AZURE_STORAGE_CONNECTION_STRING": self.server.connection_string(key=wrong),
        }

    def unreachable(self, path: str) -> tuple[str, dict[str, str]]:
        """A URL and environment pointing at a port nothing listens on."""
        if self.kind == "s3":
            return f"s3://127.0.0.1:9/{CONTAINER}/{path}", self.environ()
        if self.kind == "gcs":
            return self.url(path), {**self.environ(), "STORAGE_EMULATOR_HOST": "127.0.0.1:9"}
        endpoint = "http://127.0.0.1:9/devstoreaccount1"
        conn = self.server.connection_string(endpoint=endpoint)
        return self.url(path), {**_base_environ(), "AZURE_STORAGE_CONNECTION_STRING": conn}

    def create_container(self) -> None:
        if self.kind == "s3":
            self.server.client().create_bucket(Bucket=CONTAINER)
        elif self.kind == "gcs":
            self.server.create_bucket(CONTAINER)
        else:
            self.server.service().create_container(CONTAINER)

    def upload_folder(self, folder: Path, prefix: str) -> None:
        if self.kind == "s3":
            self.server.upload_folder(folder, CONTAINER, prefix)
            return
        if self.kind == "gcs":
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    self.server.upload(CONTAINER, f"{prefix}/{path.relative_to(folder)}", path.read_bytes())
            return
        container = self.server.service().get_container_client(CONTAINER)
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                with open(path, "rb") as data:
                    container.upload_blob(f"{prefix}/{path.relative_to(folder)}", data, overwrite=True)

    def delete_prefix(self, prefix: str) -> None:
        if self.kind == "s3":
            self.server.delete_prefix(CONTAINER, prefix)
            return
        if self.kind == "gcs":
            for name in self.server.names(CONTAINER, prefix):
                self.server.delete(CONTAINER, name)
            return
        container = self.server.service().get_container_client(CONTAINER)
        for blob in container.list_blobs(name_starts_with=prefix):
            container.delete_blob(blob.name)

    def stop(self) -> None:
        for stop in self._stoppers:
            stop()
        self.server.stop()


def start_store(kind: str) -> StoreUnderTest:
    if kind == "s3":
        return StoreUnderTest(kind, start_s3_server(), "the bucket does not exist")
    if kind == "gcs":
        return StoreUnderTest(kind, start_gcs_server(), "the bucket does not exist")
    return StoreUnderTest(kind, start_azurite(), "the container does not exist")
