"""The REST API's OpenAPI document (GET /openapi.json) against the server that serves it.

schemathesis (the real CLI, fixed seeds) fuzzes a live gateway from the document: no 5xx, and every status,
content type, header and body conforms to it. Its `positive_data_acceptance` check is left out: a JSON
schema cannot say that a tensor's `data` must fit its `shape` and datatype, so schema-valid requests are
often (rightly) 400. The control-plane operations (load, unload, reload), which change what is served, run
against a gateway of their own, so the data-plane run never meets a model that the fuzzer unloaded (which
would rightly be 503).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from gateway.transports.rest.openapi import document
from gateway.transports.rest.server import build_app
from tests.support.servers import start_test_gateway

SCHEMATHESIS = str(Path(sys.executable).parent / "schemathesis")
EXAMPLES = os.environ.get("SCHEMATHESIS_EXAMPLES", "25")
CONTROL_PLANE = "repository|config/reload|sharedmemory"


def test_every_route_the_server_registers_is_documented_and_nothing_else():
    app = build_app(gateway=None, max_body_bytes=0)  # type: ignore[arg-type] - routes only, never called
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    documented = {(method, path) for path, item in document()["paths"].items() for method in item}
    assert served == documented


def test_the_served_document_lists_the_served_models_as_examples(gateway_server):
    with urllib.request.urlopen(f"http://{gateway_server.http_url}/openapi.json", timeout=10) as r:
        doc = json.loads(r.read())
    assert doc["openapi"].startswith("3.")
    model = doc["paths"]["/v2/models/{model}/infer"]["post"]["parameters"][0]
    assert {"simple", "dummy"} <= set(model["examples"])


def run_schemathesis(gw, *args: str, cwd: Path) -> str:
    """The schemathesis CLI; `cwd` takes the cache it writes (.schemathesis/), outside the checkout."""
    result = subprocess.run(
        [
            SCHEMATHESIS, "run", f"http://{gw.http_url}/openapi.json",
            "--checks", "all", "--exclude-checks", "positive_data_acceptance",
            "--max-examples", EXAMPLES, "--workers", "1", "--no-color", "--generation-database", "none",
            *args,
        ],
        capture_output=True, text=True, timeout=600, cwd=cwd,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert "passed" in output
    return output


@pytest.fixture
def fresh_gateway(model_repo, tmp_path):
    gw = start_test_gateway(["--config_path", str(model_repo / "config.json")], tmp_path / "gw.log")
    yield gw
    assert gw.stop() == 0


@pytest.mark.parametrize("seed", ["1", "2"])
def test_schemathesis_data_plane(fresh_gateway, seed, tmp_path):
    run_schemathesis(fresh_gateway, "--seed", seed, "--exclude-path-regex", CONTROL_PLANE, cwd=tmp_path)
    log = fresh_gateway.log()
    assert "Traceback" not in log and "[ERROR]" not in log, log[-3000:]


def test_schemathesis_control_plane(model_repo, tmp_path):
    # shared memory on: off, register and unregister answer 501, which schemathesis takes for a server error
    gw = start_test_gateway(
        ["--config_path", str(model_repo / "config.json"), "--allow_client_shm"], tmp_path / "gw.log"
    )
    try:
        run_schemathesis(gw, "--seed", "3", "--include-path-regex", CONTROL_PLANE, cwd=tmp_path)
        assert "Traceback" not in gw.log(), gw.log()[-3000:]
    finally:
        assert gw.stop() == 0
