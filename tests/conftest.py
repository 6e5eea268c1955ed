"""Shared fixtures: the demo model repository, a real gateway process on loopback, and a real PyPI model."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from gateway.demo_models import build_repository
from tests.gateway_process import start_gateway

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache"

# The PP-OCRv4 text-detection model ships inside this wheel; pinned so the test is repeatable.
PPOCR_WHEEL = "rapidocr-onnxruntime==1.4.4"
PPOCR_MEMBER = "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx"


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    build_repository(root)
    return root


@pytest.fixture(scope="session")
def ppocr_det_onnx() -> Path:
    """PP-OCRv4 detection ONNX, taken from the rapidocr-onnxruntime wheel (pip download --no-deps, cached)."""
    target = CACHE / "models" / "ppocr_det" / "1" / "model.onnx"
    if target.exists():
        return target
    wheels = CACHE / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    found = list(wheels.glob("rapidocr_onnxruntime-1.4.4-*.whl"))
    if not found:
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(wheels), PPOCR_WHEEL],
            capture_output=True,
            text=True,
            timeout=600,
        )
        found = list(wheels.glob("rapidocr_onnxruntime-1.4.4-*.whl"))
        if not found:
            pytest.skip(
                f"cannot download {PPOCR_WHEEL} from the package registry: {result.stderr.strip()[-500:]}"
            )
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(found[0]) as wheel:
        target.write_bytes(wheel.read(PPOCR_MEMBER))
    return target


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
    """A gateway whose config mixes good models with broken ones (see tests/model_builders.py)."""
    from tests.model_builders import build_mixed_repository

    config = build_mixed_repository(tmp_path_factory.mktemp("mixed"))
    gw = start_gateway(["--config_path", str(config)], tmp_path_factory.mktemp("logs") / "mixed.log")
    yield gw
    gw.stop()
