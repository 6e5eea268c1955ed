"""Encoded image inputs (OVMS's binary inputs) and the preprocessing flags, end to end.

Real PNG and JPEG files made here with OpenCV, sent by tritonclient gRPC and HTTP, the kserve SDK and
raw requests to models built with OpenVINO's Python API whose outputs are their inputs, in NCHW: the
answer is the BGR planes the server decoded and resized. PNG is lossless, so values are exact (against
OpenCV's own resize, which the server uses, as OVMS does); JPEG is compared within a decoder's tolerance.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import openvino as ov
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from openvino import opset13 as ops
from tritonclient.utils import InferenceServerException

from gateway.demo_models import save
from gateway.proto import ovgw_grpc_service_pb2 as pb
from tests.support.perf_analyzer import run_pa
from tests.support.raw_grpc import RawGrpc
from tests.support.servers import start_test_gateway

ROOT = Path(__file__).resolve().parents[2]


def identity(shape, element_type=ov.Type.f32, name="x") -> ov.Model:
    """OUT = x (+ 0): what the model was given comes back, in the model's own layout."""
    x = ops.parameter(ov.PartialShape(shape), element_type, name=name)
    x.output(0).get_tensor().set_names({name})
    zero = ops.constant(np.zeros((), dtype=x.get_element_type().to_dtype()))
    out = ops.add(x, zero)
    out.output(0).get_tensor().set_names({"out"})
    return ov.Model([out.output(0)], [x], "identity")


RANGE = ov.Dimension(4, 16)
MODELS = {
    # name: (model, config keys)
    "bgr": (identity([1, 3, 8, 8]), {"layout": "NHWC:NCHW"}),
    "bgr_batch": (identity([-1, 3, 8, 8]), {"layout": "NHWC:NCHW"}),
    "bgr_ranged": (identity([1, 3, RANGE, RANGE]), {"layout": "NHWC:NCHW"}),
    "bgr_dynamic": (identity([1, 3, -1, -1]), {"layout": "NHWC:NCHW"}),
    "bgr_dynamic_batch": (identity([-1, 3, -1, -1]), {"layout": "NHWC:NCHW"}),
    "gray": (identity([1, 1, 8, 8]), {"layout": "NHWC:NCHW"}),
    "u8_nhwc": (identity([2, 8, 8, 3], ov.Type.u8), {"layout": "NHWC"}),
    "nchw_plain": (identity([1, 3, 8, 8]), {}),
    "nchw_named": (identity([1, 3, 8, 8]), {"layout": "NCHW"}),
    "preprocessed": (
        identity([1, 3, 4, 4]),
        {
            "layout": "NHWC:NCHW",
            "mean": [1.0, 2.0, 3.0],
            "scale": [2.0, 4.0, 8.0],
            "color_format": "RGB:BGR",
            "precision": "U8:FP32",
        },
    ),  # fmt: skip
    "scalar_mean": (identity([1, 3, 4, 4]), {"layout": "NHWC:NCHW", "mean": 127.5, "scale": 127.5}),
    "bgr_shown": (identity([1, 3, 8, 8]), {"layout": "NHWC:NCHW", "image_inputs": ["x"]}),
    "shown_wrongly": (identity([1, 3, 8, 8]), {"layout": "NCHW", "image_inputs": ["x"]}),
}


@pytest.fixture(scope="module")
def image_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("image_models")
    entries = []
    for name, (model, keys) in MODELS.items():
        save(model, root / name / "1")
        entries.append({"config": {"name": name, "base_path": str(root / name), **keys}})
    (root / "config.json").write_text(json.dumps({"model_config_list": entries}))
    gw = start_test_gateway(["--config_path", str(root / "config.json")], root / "gw.log")
    yield gw
    log = gw.log()
    assert gw.stop() == 0
    assert "Traceback" not in log, log[-3000:]


def picture(height: int, width: int, channels: int = 3, seed: int = 0, dtype=np.uint8) -> np.ndarray:
    """A smooth test picture, in OpenCV's BGR order, with distinct channels."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    planes = [(x * 7 + y * 3 + 40 * c + rng.integers(0, 5)) % 256 for c in range(channels)]
    image = np.stack(planes, -1).astype(dtype)
    return image if channels > 1 else image[:, :, 0]


def png(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", image)
    assert ok
    return data.tobytes()


def jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return data.tobytes()


def planes(bgr: np.ndarray) -> np.ndarray:
    """What the identity NCHW model answers for one decoded HxWxC image: its planes, as float32."""
    if bgr.ndim == 2:
        bgr = bgr[:, :, None]
    return bgr.transpose(2, 0, 1).astype(np.float32)


def resized(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """OVMS's order for an FP32 input: converted to float first, then resized (bilinear)."""
    return cv2.resize(image.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)


def grpc_images(gw, model: str, images: list[bytes], name: str = "x") -> np.ndarray:
    client = grpcclient.InferenceServerClient(gw.grpc_url)
    tensor = grpcclient.InferInput(name, [len(images)], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=object))
    return client.infer(model, [tensor], client_timeout=30).as_numpy("out")


def http_images(gw, model: str, images: list[bytes], name: str = "x") -> np.ndarray:
    client = httpclient.InferenceServerClient(gw.http_url)
    try:
        tensor = httpclient.InferInput(name, [len(images)], "BYTES")
        tensor.set_data_from_numpy(np.array(images, dtype=object), binary_data=True)
        return client.infer(model, [tensor]).as_numpy("out")
    finally:
        client.close()


SENDERS = {"grpc": grpc_images, "http": http_images}


@pytest.mark.parametrize("transport", SENDERS)
def test_a_png_at_the_model_size_comes_back_as_its_exact_bgr_planes(image_server, transport):
    image = picture(8, 8)
    out = SENDERS[transport](image_server, "bgr", [png(image)])
    assert out.shape == (1, 3, 8, 8)
    np.testing.assert_array_equal(out[0], planes(image))


@pytest.mark.parametrize("transport", SENDERS)
def test_a_png_of_another_size_is_resized_as_opencv_does(image_server, transport):
    image = picture(20, 13)
    out = SENDERS[transport](image_server, "bgr", [png(image)])
    np.testing.assert_array_equal(out[0], planes(resized(image, 8, 8)))


def test_decoded_images_and_their_cpu_time_are_counted_in_metrics(image_server):
    import urllib.request

    def scrape() -> dict[str, float]:
        with urllib.request.urlopen(f"http://{image_server.http_url}/metrics", timeout=10) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            for family in ("ovgw_images_decoded", "ovgw_image_decode_cpu_us"):
                if line.startswith(family + '{name="bgr_batch"'):
                    out[family] = float(line.rsplit(" ", 1)[1])
        return out

    before = scrape()
    grpc_images(image_server, "bgr_batch", [png(picture(8, 8, seed=s)) for s in range(3)])
    after = scrape()
    assert after["ovgw_images_decoded"] - before.get("ovgw_images_decoded", 0) == 3
    assert after["ovgw_image_decode_cpu_us"] > before.get("ovgw_image_decode_cpu_us", 0)


@pytest.mark.parametrize("transport", SENDERS)
def test_a_jpeg_decodes_within_a_decoders_tolerance(image_server, transport):
    image = picture(8, 8, seed=3)
    out = SENDERS[transport](image_server, "bgr", [jpeg(image)])
    error = np.abs(out[0] - planes(image))
    assert error.mean() < 4 and error.max() < 40, (error.mean(), error.max())


@pytest.mark.parametrize("transport", SENDERS)
def test_a_batch_of_images_each_resized(image_server, transport):
    images = [picture(8, 8, seed=1), picture(30, 9, seed=2), picture(5, 5, seed=3)]
    out = SENDERS[transport](image_server, "bgr_batch", [png(i) for i in images])
    assert out.shape == (3, 3, 8, 8)
    for got, image in zip(out, images, strict=True):
        np.testing.assert_array_equal(got, planes(resized(image, 8, 8)))


@pytest.mark.parametrize(
    "size, expected",
    [((10, 7), (10, 7)), ((2, 30), (4, 16)), ((20, 4), (16, 4))],
    ids=["inside", "clamped-low-high", "clamped-high"],
)
def test_a_ranged_dimension_keeps_the_size_inside_it_and_clamps_to_the_nearest_bound(
    image_server, size, expected
):
    image = picture(*size)
    out = grpc_images(image_server, "bgr_ranged", [png(image)])
    assert out.shape == (1, 3, *expected)
    np.testing.assert_array_equal(out[0], planes(resized(image, *expected)))


def test_a_dynamic_dimension_takes_the_images_own_size(image_server):
    image = picture(11, 6)
    out = grpc_images(image_server, "bgr_dynamic", [png(image)])
    np.testing.assert_array_equal(out[0], planes(image))


def test_a_grey_image_fills_a_one_channel_input(image_server):
    image = picture(8, 8, channels=1)
    out = http_images(image_server, "gray", [png(image)])
    np.testing.assert_array_equal(out[0], planes(image))


def test_pixels_are_converted_to_the_inputs_type_without_scaling(image_server):
    images = [picture(8, 8, seed=4), picture(8, 8, seed=5)]
    client = grpcclient.InferenceServerClient(image_server.grpc_url)
    tensor = grpcclient.InferInput("x", [2], "BYTES")
    tensor.set_data_from_numpy(np.array([png(i) for i in images], dtype=object))
    out = client.infer("u8_nhwc", [tensor]).as_numpy("out")
    assert out.dtype == np.uint8 and out.shape == (2, 8, 8, 3)
    np.testing.assert_array_equal(out, np.stack(images))
    image16 = (picture(8, 8, seed=6).astype(np.uint16) * 200) + 7  # a 16-bit PNG: converted as is, not scaled
    out = grpc_images(image_server, "bgr", [png(image16)])
    np.testing.assert_array_equal(out[0], planes(image16))


def test_raw_grpc_bytes_contents_and_raw_input_contents_with_length_prefixes(image_server):
    images = [png(picture(8, 8, seed=7)), png(picture(6, 9, seed=8))]
    infer = RawGrpc(image_server.grpc_url).infer
    typed = pb.ModelInferRequest(model_name="bgr_batch")
    typed.inputs.add(name="x", datatype="BYTES", shape=[2]).contents.bytes_contents.extend(images)
    raw = pb.ModelInferRequest(model_name="bgr_batch")
    raw.inputs.add(name="x", datatype="BYTES", shape=[2])
    raw.raw_input_contents.append(b"".join(struct.pack("<I", len(i)) + i for i in images))
    answers = [np.frombuffer(infer(r).raw_output_contents[0], np.float32) for r in (typed, raw)]
    np.testing.assert_array_equal(answers[0], answers[1])
    assert answers[0].size == 2 * 3 * 8 * 8


def test_rest_single_input_without_binary_data_size_is_one_unframed_image(image_server):
    import urllib.request

    image = picture(8, 8, seed=9)
    header = json.dumps({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1]}]}).encode()
    request = urllib.request.Request(
        f"http://{image_server.http_url}/v2/models/bgr/infer",
        data=header + png(image),
        headers={"Inference-Header-Content-Length": str(len(header))},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as r:
        doc = json.loads(r.read())
    np.testing.assert_array_equal(
        np.array(doc["outputs"][0]["data"], np.float32).reshape(3, 8, 8), planes(image)
    )


@pytest.mark.parametrize("mode", ["rest", "grpc"])
def test_the_kserve_sdk_sends_images(image_server, mode, tmp_path):
    image = picture(8, 8, seed=10)
    (tmp_path / "image.png").write_bytes(png(image))
    address = image_server.http_url if mode == "rest" else image_server.grpc_url
    result = subprocess.run(
        [sys.executable, "-m", "tests.support.kserve_sdk_client", f"{mode}-image", address,
         str(tmp_path / "image.png")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr[-4000:]}"
    np.testing.assert_array_equal(
        np.array(json.loads(result.stdout.splitlines()[-2]), np.float32).reshape(3, 8, 8), planes(image)
    )


# --- errors: INVALID_ARGUMENT / 400, naming the input and the image -----------------------------


def rgba(height=8, width=8) -> np.ndarray:
    return np.dstack([picture(height, width), np.full((height, width), 255, np.uint8)])


ERRORS = [
    ("bgr", [b"\x89PNG not really"], "image 0: cannot be decoded"),
    ("bgr_batch", [png(picture(8, 8)), b""], "image 1: is empty"),
    ("bgr", [png(rgba())], "image 0: has 4 channel(s); the model takes 3"),
    ("bgr", [png(picture(8, 8, channels=1))], "image 0: has 1 channel(s); the model takes 3"),
    ("bgr", [png(picture(8, 8)), png(picture(8, 8))], "2 image(s) do not fit the model's batch dimension N"),
    ("u8_nhwc", [png(picture(8, 8))], "1 image(s) do not fit the model's batch dimension N (expected 2)"),
    ("nchw_plain", [png(picture(8, 8))], "if it is NCHW, configure --layout NHWC:NCHW"),
    ("nchw_named", [png(picture(8, 8))], "layout [N,C,H,W]: encoded images need N...HWC; configure it"),
]  # fmt: skip


@pytest.mark.parametrize("transport", SENDERS)
@pytest.mark.parametrize("model, images, fragment", ERRORS, ids=[e[2][:30] for e in ERRORS])
def test_image_errors_are_client_errors_naming_the_input_and_image(
    image_server, transport, model, images, fragment
):
    with pytest.raises(InferenceServerException) as e:
        SENDERS[transport](image_server, model, images)
    text = str(e.value)
    assert fragment in text and "'x'" in text, text
    assert ("INVALID_ARGUMENT" in text) if transport == "grpc" else (e.value.status() in ("400", 400)), text


def test_images_of_different_sizes_are_refused_where_no_resize_applies(image_server):
    with pytest.raises(InferenceServerException, match="image 1: is 6x9, image 0 is 6x11"):
        grpc_images(image_server, "bgr_dynamic_batch", [png(picture(11, 6)), png(picture(9, 6))])
    same = [picture(9, 6, seed=1), picture(9, 6, seed=2)]
    out = grpc_images(image_server, "bgr_dynamic_batch", [png(i) for i in same])
    np.testing.assert_array_equal(out, np.stack([planes(i) for i in same]))


def test_an_image_batch_sent_with_a_rank_2_shape_is_refused(image_server):
    client = grpcclient.InferenceServerClient(image_server.grpc_url)
    tensor = grpcclient.InferInput("x", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[png(picture(8, 8))]], dtype=object))
    with pytest.raises(InferenceServerException, match=r"shape \[N\]"):
        client.infer("bgr", [tensor])


# --- preprocessing flags ------------------------------------------------------------------------


def test_mean_scale_color_and_precision_are_compiled_into_the_model(image_server):
    client = grpcclient.InferenceServerClient(image_server.grpc_url)
    meta = client.get_model_metadata("preprocessed")
    assert (meta.inputs[0].datatype, list(meta.inputs[0].shape)) == ("UINT8", [1, 4, 4, 3])
    rgb = picture(4, 4, seed=11)[:, :, ::-1].copy()  # what an RGB client holds
    tensor = grpcclient.InferInput("x", [1, 4, 4, 3], "UINT8")
    tensor.set_data_from_numpy(rgb[np.newaxis])
    out = client.infer("preprocessed", [tensor]).as_numpy("out")
    bgr = rgb[:, :, ::-1].astype(np.float32)
    expected = ((bgr - np.array([1.0, 2.0, 3.0])) / np.array([2.0, 4.0, 8.0])).transpose(2, 0, 1)
    np.testing.assert_allclose(out[0], expected, rtol=1e-6)
    config = client.get_model_config("preprocessed", as_json=True)["config"]
    assert config["input"][0]["data_type"] == "TYPE_UINT8"


def test_a_scalar_mean_and_scale_apply_to_every_channel_and_to_decoded_images(image_server):
    image = picture(4, 4, seed=12)
    out = grpc_images(image_server, "scalar_mean", [png(image)])
    np.testing.assert_allclose(out[0], (planes(image) - 127.5) / 127.5, rtol=1e-6)


@pytest.mark.parametrize("flag", ["--mean", "--scale", "--color_format", "--precision"])
def test_each_preprocessing_flag_without_a_layout_is_refused_at_startup(flag, tmp_path):
    save(identity([1, 3, 4, 4]), tmp_path / "m" / "1")
    value = {"--mean": "[1,2,3]", "--scale": "2", "--color_format": "RGB:BGR", "--precision": "U8:FP32"}[flag]
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "--model_name", "m", "--model_path", str(tmp_path / "m"),
         flag, value],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "need(s) a layout" in result.stderr and flag.lstrip("-") in result.stderr


# --- image_inputs: metadata shows the input as the encoded images clients send --------------------


def test_an_image_input_shown_as_bytes_in_metadata_and_config(image_server):
    client = grpcclient.InferenceServerClient(image_server.grpc_url)
    meta = client.get_model_metadata("bgr_shown")
    assert (meta.inputs[0].datatype, list(meta.inputs[0].shape)) == ("BYTES", [1])
    config = client.get_model_config("bgr_shown", as_json=True)["config"]
    assert config["input"][0]["data_type"] == "TYPE_STRING" and config["input"][0]["dims"] == ["1"]
    image = picture(8, 8, seed=13)
    np.testing.assert_array_equal(grpc_images(image_server, "bgr_shown", [png(image)])[0], planes(image))
    tensor = grpcclient.InferInput("x", [1, 8, 8, 3], "FP32")  # the tensor itself is still taken
    tensor.set_data_from_numpy(image[np.newaxis].astype(np.float32))
    np.testing.assert_array_equal(client.infer("bgr_shown", [tensor]).as_numpy("out")[0], planes(image))


def test_a_whole_body_with_header_length_0_is_one_image_for_an_input_shown_as_bytes(image_server):
    import urllib.request

    image = picture(8, 8, seed=14)
    request = urllib.request.Request(
        f"http://{image_server.http_url}/v2/models/bgr_shown/infer",
        data=png(image),
        headers={"Inference-Header-Content-Length": "0"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as r:
        length = int(r.headers["Inference-Header-Content-Length"])
        body = r.read()
    out = np.frombuffer(body[length:], np.float32).reshape(3, 8, 8)
    np.testing.assert_array_equal(out, planes(image))


def test_one_unframed_image_in_raw_contents_is_taken(image_server):
    image = picture(8, 8, seed=15)
    infer = RawGrpc(image_server.grpc_url).infer
    request = pb.ModelInferRequest(model_name="bgr")
    request.inputs.add(name="x", datatype="BYTES", shape=[1])
    request.raw_input_contents.append(jpeg(image))  # no 4-byte length before it
    out = np.frombuffer(infer(request).raw_output_contents[0], np.float32).reshape(3, 8, 8)
    assert np.abs(out - planes(image)).mean() < 4


def test_image_inputs_naming_an_input_that_takes_no_images_fails_that_model_only(image_server):
    client = grpcclient.InferenceServerClient(image_server.grpc_url)
    rows = {m.name: m for m in client.get_model_repository_index().models}
    assert rows["shown_wrongly"].state == "UNAVAILABLE"
    assert (
        "field 'image_inputs'" in rows["shown_wrongly"].reason and "N...HWC" in rows["shown_wrongly"].reason
    )
    assert rows["bgr_shown"].state == "READY"


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_perf_analyzer_sends_base64_images_from_input_data(perf_analyzer, image_server, protocol, tmp_path):  # noqa: F811
    import base64

    data = {
        "data": [
            {"x": {"b64": base64.b64encode(jpeg(picture(32, 24, seed=s))).decode(), "shape": [1]}}
            for s in range(3)
        ]
    }
    (tmp_path / "images.json").write_text(json.dumps(data))
    url = image_server.grpc_url if protocol == "grpc" else image_server.http_url
    output = run_pa(
        perf_analyzer,
        "-m",
        "bgr_shown",
        "-u",
        url,
        "-i",
        protocol,
        "--input-data",
        str(tmp_path / "images.json"),
    )
    assert "Throughput:" in output
    stats = grpcclient.InferenceServerClient(image_server.grpc_url).get_inference_statistics("bgr_shown")
    assert stats.model_stats[0].inference_stats.fail.count == 0


def test_one_decoder_thread_per_four_cores():
    from gateway.codecs.images import decoder_threads

    assert [decoder_threads(n) for n in (1, 2, 4, 7, 16)] == [1, 1, 1, 1, 4]
