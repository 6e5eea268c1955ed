"""kserve SDK clients (InferenceRESTClient, InferenceGRPCClient) against a real gateway.

They run in a child process: the kserve SDK and tritonclient cannot share one
(both register `inference.*` in protobuf's descriptor pool).
"""

from __future__ import annotations

import pytest

from tests.support.kserve_sdk import run_kserve_sdk_client


@pytest.mark.parametrize("mode", ["rest", "grpc"])
def test_kserve_sdk_client(gateway_server, mode):
    run_kserve_sdk_client(mode, gateway_server.http_url if mode == "rest" else gateway_server.grpc_url)
