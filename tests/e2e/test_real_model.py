"""A real model shipped in a PyPI package (PP-OCRv4 text detection, ONNX) served in single-model mode.

The gateway's answer must equal what OpenVINO computes in-process for the same input.
"""

from __future__ import annotations

import numpy as np
import openvino as ov
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests.support.servers import start_test_gateway


@pytest.fixture(scope="module")
def ppocr_server(ppocr_det_onnx, tmp_path_factory):
    # base_path is the model file itself: served as version 1
    gw = start_test_gateway(
        ["--model_name", "ppocr_det", "--model_path", str(ppocr_det_onnx)],
        tmp_path_factory.mktemp("logs") / "ppocr.log",
    )
    yield gw
    assert gw.stop() == 0


@pytest.fixture(scope="module")
def reference(ppocr_det_onnx):
    core = ov.Core()
    compiled = core.compile_model(str(ppocr_det_onnx), "CPU", {"PERFORMANCE_HINT": "THROUGHPUT"})
    image = np.random.default_rng(3).random((1, 3, 96, 128), dtype=np.float32)
    expected = compiled.create_infer_request().infer({0: image})
    return compiled, image, expected[compiled.outputs[0]]


def test_metadata_describes_the_onnx_model(ppocr_server, reference):
    compiled, _, _ = reference
    client = httpclient.InferenceServerClient(ppocr_server.http_url)
    meta = client.get_model_metadata("ppocr_det")
    client.close()
    assert meta["versions"] == ["1"] and meta["platform"] == "OpenVINO"
    assert meta["inputs"] == [
        {"name": compiled.inputs[0].get_any_name(), "datatype": "FP32", "shape": [-1, 3, -1, -1]}
    ]
    assert meta["outputs"][0]["name"] == compiled.outputs[0].get_any_name()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_output_equals_openvino_in_process(ppocr_server, reference, protocol):
    compiled, image, expected = reference
    module = grpcclient if protocol == "grpc" else httpclient
    url = ppocr_server.grpc_url if protocol == "grpc" else ppocr_server.http_url
    client = module.InferenceServerClient(url)
    tensor = module.InferInput(compiled.inputs[0].get_any_name(), list(image.shape), "FP32")
    tensor.set_data_from_numpy(image)
    result = client.infer("ppocr_det", [tensor])
    client.close()
    got = result.as_numpy(compiled.outputs[0].get_any_name())
    assert got.shape == expected.shape == (1, 1, 96, 128)
    np.testing.assert_array_equal(got, expected)
