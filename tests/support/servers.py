"""Gateways for tests that are not about load-adaptive execution."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.testing import GatewayProcess, start_gateway


def start_test_gateway(args: list[str], log_path: Path, **kwargs: Any) -> GatewayProcess:
    """start_gateway with one execution per model (unless `args` choose): start-up compiles each model once,
    and no inline execution compiles in the background while the test runs. The session's shared gateway
    (tests/conftest.py) and tests/e2e/test_adaptive_execution.py keep the default."""
    if not any(a.startswith("--adaptive_execution") for a in args):
        args = [*args, "--adaptive_execution", "false"]
    return start_gateway(args, log_path, **kwargs)
