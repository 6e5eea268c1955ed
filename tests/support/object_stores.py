"""One interface over the object stores the tests serve models from (S3 on moto, Azure Blob on Azurite): a
container named `models`, URLs as a user writes them, the environment as a user sets it, and the variants
that must fail (refused credentials, a missing container, an unreachable endpoint)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.azurite import KEY, start_azurite
from tests.support.s3 import start_s3_server

CONTAINER = "models"
KINDS = ("s3", "azure")


def _base_environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("AWS_", "AZURE_")) and k != "S3_ENDPOINT"}  # fmt: skip


@dataclass
class StoreUnderTest:
    kind: str
    server: Any
    missing_container_cause: str

    def url(self, path: str, container: str = CONTAINER) -> str:
        if self.kind == "s3":
            return f"s3://127.0.0.1:{self.server.port}/{container}/{path}"
        return f"az://{container}/{path}"

    def environ(self) -> dict[str, str]:
        if self.kind == "s3":
            return self.server.environ()
        return {**_base_environ(), "AZURE_STORAGE_CONNECTION_STRING": self.server.connection_string()}

    def refused_credentials_environ(self) -> dict[str, str]:
        if self.kind == "s3":
            return self.server.environ(AWS_SECRET_ACCESS_KEY="wrong")
        wrong = "A" * 8 + KEY[8:]
        return {
            **_base_environ(),
            "AZURE_STORAGE_CONNECTION_STRING": self.server.connection_string(key=wrong),
        }

    def unreachable(self, path: str) -> tuple[str, dict[str, str]]:
        """A URL and environment pointing at a port nothing listens on."""
        if self.kind == "s3":
            return f"s3://127.0.0.1:9/{CONTAINER}/{path}", self.environ()
        endpoint = "http://127.0.0.1:9/devstoreaccount1"
        conn = self.server.connection_string(endpoint=endpoint)
        return self.url(path), {**_base_environ(), "AZURE_STORAGE_CONNECTION_STRING": conn}

    def create_container(self) -> None:
        if self.kind == "s3":
            self.server.client().create_bucket(Bucket=CONTAINER)
        else:
            self.server.service().create_container(CONTAINER)

    def upload_folder(self, folder: Path, prefix: str) -> None:
        if self.kind == "s3":
            self.server.upload_folder(folder, CONTAINER, prefix)
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
        container = self.server.service().get_container_client(CONTAINER)
        for blob in container.list_blobs(name_starts_with=prefix):
            container.delete_blob(blob.name)

    def stop(self) -> None:
        self.server.stop()


def start_store(kind: str) -> StoreUnderTest:
    if kind == "s3":
        return StoreUnderTest(kind, start_s3_server(), "the bucket does not exist")
    return StoreUnderTest(kind, start_azurite(), "the container does not exist")
