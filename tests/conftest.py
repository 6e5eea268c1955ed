"""Shared fixtures (the demo model repository, a real gateway on loopback, a real PyPI model, perf_analyzer),
and the layer markers: a test's folder says which layer it is in (unit, e2e, system)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.demo_models import build_repository
from gateway.testing import start_gateway
from loadgen.bench.models import fetch_ppocr_det
from tests.support.perf_analyzer import find_perf_analyzer
from tests.support.servers import start_test_gateway

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache"
LAYERS = ("unit", "e2e", "system")


def pytest_collection_modifyitems(items):
    for item in items:
        layer = next(
            (part for part in Path(item.fspath).relative_to(ROOT / "tests").parts if part in LAYERS), None
        )
        if layer is None:
            raise pytest.UsageError(
                f"{item.nodeid}: every test lives in tests/unit, tests/e2e or tests/system"
            )
        item.add_marker(getattr(pytest.mark, layer))


@pytest.fixture(scope="session")
def perf_analyzer() -> str:
    """Triton's perf_analyzer binary (make perf-analyzer); the test skips, saying why, if it cannot be had."""
    return find_perf_analyzer()


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    build_repository(root)
    return root


@pytest.fixture(scope="session")
def ppocr_det_onnx() -> Path:
    """PP-OCRv4 detection ONNX, taken from the rapidocr-onnxruntime wheel (pip download --no-deps, cached)."""
    try:
        return fetch_ppocr_det(CACHE)
    except RuntimeError as e:
        pytest.skip(f"the real model is not available here: {e}")


@pytest.fixture(scope="session")
def gateway_server(model_repo, tmp_path_factory):
    """One gateway serving the demo repository (config.json mode) for the whole session."""
    gw = start_gateway(
        ["--config_path", str(model_repo / "config.json")], tmp_path_factory.mktemp("logs") / "gw.log"
    )
    yield gw
    code = gw.stop()
    assert code == 0, f"gateway exited with {code} on SIGTERM:\n{gw.log()[-3000:]}"


@pytest.fixture(scope="session")
def mixed_server(tmp_path_factory):
    """A gateway whose config mixes good models with broken ones (see tests/support/model_builders.py)."""
    from tests.support.model_builders import build_mixed_repository

    config = build_mixed_repository(tmp_path_factory.mktemp("mixed"))
    gw = start_test_gateway(["--config_path", str(config)], tmp_path_factory.mktemp("logs") / "mixed.log")
    yield gw
    gw.stop()
