"""A real Azure Blob Storage server on loopback: Azurite (npm `azurite@3.35.0`, the last release for Node 20),
which checks each request's Shared Key signature against its development account."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.testing import free_port
from tests.support.servers import stop_process, wait_until_answering

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BINARY = ROOT / ".cache" / "azurite" / "node_modules" / ".bin" / "azurite-blob"
# Azurite's well-known development account (public, in Azure's own documentation).
ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def find_azurite() -> str:
    """The azurite-blob launcher from `make azurite`, installed now if missing; the test skips, saying why,
    when that is impossible (no Node.js, no npm registry)."""
    binary = Path(os.environ.get("AZURITE", DEFAULT_BINARY))
    if not binary.exists():
        result = subprocess.run(["make", "--no-print-directory", "azurite"], cwd=ROOT, capture_output=True,
                                text=True, timeout=600)  # fmt: skip
        if result.returncode != 0 or not binary.exists():
            pytest.skip(f"Azurite could not be installed here: {(result.stdout + result.stderr)[-800:]}")
    return str(binary)


@dataclass
class AzuriteServer:
    process: subprocess.Popen
    port: int

    @property
    def blob_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{ACCOUNT}"

    def connection_string(self, key: str = KEY, endpoint: str | None = None) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={key};"
                f"BlobEndpoint={endpoint or self.blob_endpoint};")  # fmt: skip

    def service(self):
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient.from_connection_string(self.connection_string())

    def stop(self) -> None:
        stop_process(self.process)


def start_azurite() -> AzuriteServer:
    try:
        import azure.storage.blob  # noqa: F401
    except ImportError as e:
        pytest.skip(f"the Azure SDK is not installed here (make install-test installs it): {e}")
    binary = find_azurite()
    if shutil.which("node") is None:
        pytest.skip("Node.js is not installed here: Azurite runs on it")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--blobHost", "127.0.0.1", "--blobPort", str(port), "--inMemoryPersistence",
         "--disableTelemetry", "--skipApiVersionCheck"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_until_answering(process, f"http://127.0.0.1:{port}/{ACCOUNT}?comp=list", "Azurite")
    return AzuriteServer(process, port)
