"""The in-process API: an application calls the Gateway with numpy arrays and no network."""

from __future__ import annotations

import numpy as np
import pytest

from gateway import Gateway, ModelSettings, ServerSettings
from gateway.config.settings import VersionPolicy, VersionPolicyKind
from gateway.core.errors import InvalidArgument, NotFound


@pytest.fixture
async def gateway(model_repo):
    gw = Gateway(
        ServerSettings(
            models=[
                ModelSettings("simple", str(model_repo / "simple")),
                ModelSettings(
                    "versioned",
                    str(model_repo / "versioned"),
                    version_policy=VersionPolicy(VersionPolicyKind.ALL),
                ),
                ModelSettings("identity_bytes", str(model_repo / "identity_bytes")),
            ]
        )
    )
    await gw.start()
    yield gw
    await gw.stop()


async def test_infer_numpy(gateway):
    assert await gateway.ready() and await gateway.model_ready("simple")
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    out = await gateway.infer_numpy("simple", {"INPUT0": a, "INPUT1": a})
    np.testing.assert_array_equal(out["OUTPUT0"], 2 * a)
    np.testing.assert_array_equal(out["OUTPUT1"], 0 * a)


async def test_versions_outputs_and_bytes(gateway):
    x = np.ones((2, 4), np.float32)
    assert (await gateway.infer_numpy("versioned", {"x": x}, version="1"))["y"].tolist() == x.tolist()
    assert (await gateway.infer_numpy("versioned", {"x": x}))["y"].tolist() == (2 * x).tolist()
    out = await gateway.infer_numpy("identity_bytes", {"INPUT0": np.array([["a", "bc"]])})
    assert out["OUTPUT0"].tolist() == [[b"a", b"bc"]]
    a = np.zeros((1, 16), np.int32)
    only = await gateway.infer_numpy("simple", {"INPUT0": a, "INPUT1": a}, outputs=["OUTPUT1"])
    assert list(only) == ["OUTPUT1"]


async def test_errors_are_gateway_errors(gateway):
    with pytest.raises(NotFound):
        await gateway.infer_numpy("nope", {"x": np.zeros(1)})
    with pytest.raises(InvalidArgument, match="INPUT0"):
        await gateway.infer_numpy(
            "simple", {"INPUT0": np.zeros((1, 16), np.float32), "INPUT1": np.zeros((1, 16))}
        )
    meta = await gateway.model_metadata("simple")
    assert [i.name for i in meta.inputs] == ["INPUT0", "INPUT1"]
