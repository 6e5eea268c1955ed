"""Triton's system shared-memory extension with tritonclient, as Triton's simple_grpc_shm_client.py and
simple_http_shm_client.py use it: register regions, infer with inputs and outputs in them, read the outputs
from the region, status, unregister; and every error a client can provoke, the flag off, the restricted
category, and the CUDA calls a CPU-only server answers."""

from __future__ import annotations

import base64
import json
import mmap
import os
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from tests.support.servers import start_test_gateway

SHM_ROOT = Path("/dev/shm")
pytestmark = pytest.mark.skipif(not SHM_ROOT.is_dir(), reason="no /dev/shm on this host")


@pytest.fixture(scope="module")
def gw(model_repo, tmp_path_factory):
    server = start_test_gateway(
        ["--config_path", str(model_repo / "config.json"), "--allow_client_shm",
         "--restricted_api", "model-repository:admin-key=s3cret"],
        tmp_path_factory.mktemp("shm") / "gw.log",
    )  # fmt: skip
    yield server
    server.stop()


@pytest.fixture
def key():
    """A fresh shared-memory key, removed after the test."""
    name = f"ovgw-test-{uuid.uuid4().hex[:12]}"
    yield f"/{name}"
    (SHM_ROOT / name).unlink(missing_ok=True)


def _client(kind: str, gw):
    return (
        grpcclient.InferenceServerClient(gw.grpc_url)
        if kind == "grpc"
        else httpclient.InferenceServerClient(gw.http_url)
    )


def _module(kind: str):
    return grpcclient if kind == "grpc" else httpclient


def _object(key: str, size: int) -> Path:
    path = SHM_ROOT / key[1:]
    with open(path, "wb") as f:
        f.truncate(size)
    return path


@pytest.mark.parametrize("kind", ["grpc", "http"])
def test_triton_shm_example_flow(gw, kind):
    client, module = _client(kind, gw), _module(kind)
    client.unregister_system_shared_memory()
    client.unregister_cuda_shared_memory()  # as Triton's examples and perf_analyzer do first
    suffix = uuid.uuid4().hex[:8]
    input0 = np.arange(16, dtype=np.int32).reshape(1, 16)
    input1 = np.ones((1, 16), dtype=np.int32)
    size = input0.nbytes
    out_handle = shm.create_shared_memory_region(
        f"output_data_{suffix}", f"/output_simple_{suffix}", size * 2
    )
    in_handle = shm.create_shared_memory_region(f"input_data_{suffix}", f"/input_simple_{suffix}", size * 2)
    try:
        client.register_system_shared_memory(f"output_data_{suffix}", f"/output_simple_{suffix}", size * 2)
        shm.set_shared_memory_region(in_handle, [input0])
        shm.set_shared_memory_region(in_handle, [input1], offset=size)
        client.register_system_shared_memory(f"input_data_{suffix}", f"/input_simple_{suffix}", size * 2)
        inputs = [
            module.InferInput("INPUT0", [1, 16], "INT32"),
            module.InferInput("INPUT1", [1, 16], "INT32"),
        ]
        inputs[0].set_shared_memory(f"input_data_{suffix}", size)
        inputs[1].set_shared_memory(f"input_data_{suffix}", size, offset=size)
        if kind == "grpc":
            outputs = [module.InferRequestedOutput("OUTPUT0"), module.InferRequestedOutput("OUTPUT1")]
        else:
            outputs = [module.InferRequestedOutput("OUTPUT0", binary_data=True),
                       module.InferRequestedOutput("OUTPUT1", binary_data=True)]  # fmt: skip
        outputs[0].set_shared_memory(f"output_data_{suffix}", size)
        outputs[1].set_shared_memory(f"output_data_{suffix}", size, offset=size)
        result = client.infer("simple", inputs, outputs=outputs)
        output0 = result.get_output("OUTPUT0")
        shape = output0.shape if kind == "grpc" else output0["shape"]
        datatype = output0.datatype if kind == "grpc" else output0["datatype"]
        assert list(shape) == [1, 16] and datatype == "INT32"
        sum_ = shm.get_contents_as_numpy(out_handle, np.int32, [1, 16])
        diff = shm.get_contents_as_numpy(out_handle, np.int32, [1, 16], offset=size)
        np.testing.assert_array_equal(sum_, input0 + input1)
        np.testing.assert_array_equal(diff, input0 - input1)
        status = client.get_system_shared_memory_status()
        names = set(status.regions) if kind == "grpc" else {r["name"] for r in status}
        assert {f"input_data_{suffix}", f"output_data_{suffix}"} <= names
        client.unregister_system_shared_memory(f"input_data_{suffix}")
        client.unregister_system_shared_memory(f"output_data_{suffix}")
        status = client.get_system_shared_memory_status()
        assert not (status.regions if kind == "grpc" else status)
    finally:
        shm.destroy_shared_memory_region(out_handle)
        shm.destroy_shared_memory_region(in_handle)


def _post(gw, path: str, body: dict | None = None, headers: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else b""
    request = urllib.request.Request(
        f"http://{gw.http_url}{path}", data=data, method="POST", headers=headers or {}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _infer(gw, inputs: list[dict], outputs: list[dict] | None = None) -> tuple[int, dict]:
    body: dict = {"inputs": inputs}
    if outputs is not None:
        body["outputs"] = outputs
    return _post(gw, "/v2/models/simple/infer", body)


def _shm_input(name: str, region: str, byte_size: int, offset: int = 0) -> dict:
    return {"name": name, "datatype": "INT32", "shape": [1, 16],
            "parameters": {"shared_memory_region": region, "shared_memory_byte_size": byte_size,
                           "shared_memory_offset": offset}}  # fmt: skip


def _json_input(name: str) -> dict:
    return {"name": name, "datatype": "INT32", "shape": [1, 16], "data": list(range(16))}


@pytest.fixture
def region(gw, key):
    """A registered region of 128 bytes named after its key, unregistered after the test."""
    _object(key, 128)
    name = key[1:]
    assert (
        _post(gw, f"/v2/systemsharedmemory/region/{name}/register", {"key": key, "byte_size": 128})[0] == 200
    )
    yield name
    _post(gw, f"/v2/systemsharedmemory/region/{name}/unregister")


def test_errors_name_what_was_wrong(gw, region):
    code, body = _infer(gw, [_shm_input("INPUT0", "nowhere", 64), _json_input("INPUT1")])
    assert code == 404 and "Unable to find system shared memory region: 'nowhere'" in body["error"]
    code, body = _infer(gw, [_shm_input("INPUT0", region, 64, offset=96), _json_input("INPUT1")])
    assert (
        code == 400 and "input 'INPUT0'" in body["error"] and "outside shared memory region" in body["error"]
    )
    code, body = _infer(gw, [_shm_input("INPUT0", region, 32), _json_input("INPUT1")])
    assert code == 400 and "INPUT0" in body["error"] and "32" in body["error"] and "64" in body["error"]
    too_small = [
        {"name": "OUTPUT0", "parameters": {"shared_memory_region": region, "shared_memory_byte_size": 16}}
    ]
    code, body = _infer(gw, [_json_input("INPUT0"), _json_input("INPUT1")], too_small)
    assert code == 400 and "output 'OUTPUT0'" in body["error"] and "64 bytes do not fit" in body["error"]
    both = _shm_input("INPUT0", region, 64)
    both["data"] = list(range(16))
    code, body = _infer(gw, [both, _json_input("INPUT1")])
    assert code == 400 and "has both shared_memory_region and data" in body["error"]
    no_size = {
        "name": "INPUT0",
        "datatype": "INT32",
        "shape": [1, 16],
        "parameters": {"shared_memory_region": region},
    }
    code, body = _infer(gw, [no_size, _json_input("INPUT1")])
    assert code == 400 and "shared_memory_byte_size" in body["error"]


def test_registration_errors(gw, region, key, tmp_path):
    code, body = _post(gw, f"/v2/systemsharedmemory/region/{region}/register", {"key": key, "byte_size": 64})
    assert code == 400 and "already in manager" in body["error"]
    client = grpcclient.InferenceServerClient(gw.grpc_url)
    with pytest.raises(InferenceServerException) as caught:
        client.register_system_shared_memory(region, key, 64)
    assert caught.value.status() == "StatusCode.ALREADY_EXISTS"
    code, body = _post(gw, "/v2/systemsharedmemory/region/big/register", {"key": key, "byte_size": 4096})
    assert code == 400 and "holds 128 bytes" in body["error"]
    code, body = _post(gw, "/v2/systemsharedmemory/region/empty/register", {"key": key, "byte_size": 0})
    assert code == 400 and "byte_size must be greater than 0" in body["error"]
    code, body = _post(
        gw, "/v2/systemsharedmemory/region/gone/register", {"key": "/ovgw-no-such-key", "byte_size": 8}
    )
    assert code == 400 and "Unable to open shared memory region" in body["error"]


@pytest.mark.parametrize("bad_key", ["/../etc/passwd", "/a/b", "no-slash", "/", "/.", "/..", "/" + "k" * 300])
def test_keys_are_taken_as_shm_open_takes_them(gw, bad_key):
    code, body = _post(gw, "/v2/systemsharedmemory/region/bad/register", {"key": bad_key, "byte_size": 8})
    assert code == 400 and "as shm_open takes it" in body["error"], body


def test_symbolic_links_and_non_files_are_refused(gw, key, tmp_path):
    target = tmp_path / "secret"
    target.write_bytes(b"x" * 64)
    link = SHM_ROOT / key[1:]
    link.symlink_to(target)
    code, body = _post(gw, "/v2/systemsharedmemory/region/link/register", {"key": key, "byte_size": 8})
    assert code == 400 and "symbolic link" in body["error"]
    link.unlink()
    link.mkdir()
    try:
        code, body = _post(gw, "/v2/systemsharedmemory/region/dir/register", {"key": key, "byte_size": 8})
        assert code == 400, body
    finally:
        link.rmdir()


def test_a_region_shrunk_after_registration_is_an_error_not_a_crash(gw, region, key):
    os.truncate(SHM_ROOT / key[1:], 16)
    code, body = _infer(gw, [_shm_input("INPUT0", region, 64), _json_input("INPUT1")])
    assert code == 400 and "now holds 16 bytes" in body["error"]
    assert httpclient.InferenceServerClient(gw.http_url).is_server_live()


def test_unregistering_a_region_in_use_is_ok(gw, key):
    """The request holds the mapping: unregistering answers at once, the request completes."""
    path = _object(key, 128)
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 128) as m:
        m[:64] = np.arange(16, dtype=np.int32).tobytes()
    name = key[1:]
    assert (
        _post(gw, f"/v2/systemsharedmemory/region/{name}/register", {"key": key, "byte_size": 128})[0] == 200
    )
    code, body = _infer(gw, [_shm_input("INPUT0", name, 64), _json_input("INPUT1")])
    assert code == 200 and body["outputs"][0]["data"] == [2 * i for i in range(16)]
    assert _post(gw, f"/v2/systemsharedmemory/region/{name}/unregister")[0] == 200
    code, body = _infer(gw, [_shm_input("INPUT0", name, 64), _json_input("INPUT1")])
    assert code == 404


def test_cuda_calls_are_answered_as_a_cpu_only_triton_answers_them(gw):
    client = grpcclient.InferenceServerClient(gw.grpc_url)
    assert not client.get_cuda_shared_memory_status().regions
    client.unregister_cuda_shared_memory()
    with pytest.raises(InferenceServerException, match="GPUs not supported"):
        client.register_cuda_shared_memory("gpu", base64.b64encode(b"handle"), 0, 64)
    http = httpclient.InferenceServerClient(gw.http_url)
    assert http.get_cuda_shared_memory_status() == []
    cuda = {"raw_handle": {"b64": ""}, "device_id": 0, "byte_size": 64}
    code, body = _post(gw, "/v2/cudasharedmemory/region/gpu/register", cuda)
    assert code == 400 and "GPUs not supported" in body["error"]


def test_metadata_lists_the_extensions(gw):
    extensions = httpclient.InferenceServerClient(gw.http_url).get_server_metadata()["extensions"]
    assert {"system_shared_memory", "cuda_shared_memory"} <= set(extensions)


def test_off_by_default_with_triton_s_message(model_repo, tmp_path, key):
    _object(key, 64)
    server = start_test_gateway(["--config_path", str(model_repo / "config.json")], tmp_path / "gw.log")
    try:
        code, body = _post(server, "/v2/systemsharedmemory/region/r/register", {"key": key, "byte_size": 64})
        assert code == 501 and "Start the server with '--allow_client_shm=true'" in body["error"]
        client = grpcclient.InferenceServerClient(server.grpc_url)
        with pytest.raises(InferenceServerException) as caught:
            client.register_system_shared_memory("r", key, 64)
        assert caught.value.status() == "StatusCode.UNIMPLEMENTED"
        assert not client.get_system_shared_memory_status().regions  # status still answers
    finally:
        server.stop()


def test_the_shared_memory_category_can_be_restricted(model_repo, tmp_path, key):
    _object(key, 64)
    server = start_test_gateway(
        ["--config_path", str(model_repo / "config.json"), "--allow_client_shm",
         "--restricted_api", "shared-memory:shm-key=s3cret"],
        tmp_path / "gw.log",
    )  # fmt: skip
    try:
        code, _ = _post(server, "/v2/systemsharedmemory/region/r/register", {"key": key, "byte_size": 64})
        assert code == 403
        code, _ = _post(server, "/v2/systemsharedmemory/region/r/register", {"key": key, "byte_size": 64},
                        {"shm-key": "s3cret"})  # fmt: skip
        assert code == 200
        client = grpcclient.InferenceServerClient(server.grpc_url)
        with pytest.raises(InferenceServerException) as caught:
            client.get_system_shared_memory_status()
        assert caught.value.status() == "StatusCode.PERMISSION_DENIED"
        status = client.get_system_shared_memory_status(headers={"shm-key": "s3cret"})
        assert set(status.regions) == {"r"}
    finally:
        server.stop()


def test_pipelines_and_statistics_work_the_same_from_shared_memory(gw, key):
    """dummy_twice (a pipeline of two dummy nodes: b + 2) with its input and output in one region; the
    statistics count the request whatever memory its tensors came from."""
    path = _object(key, 80)
    b = np.arange(10, dtype=np.float32).reshape(1, 10)
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 80) as m:
        m[:40] = b.tobytes()
    name = key[1:]
    client = grpcclient.InferenceServerClient(gw.grpc_url)
    client.register_system_shared_memory(name, key, 80)
    try:
        before = client.get_inference_statistics("dummy_twice").model_stats[0].inference_stats.success.count
        x = grpcclient.InferInput("b", [1, 10], "FP32")
        x.set_shared_memory(name, 40)
        out = grpcclient.InferRequestedOutput("a")
        out.set_shared_memory(name, 40, offset=40)
        result = client.infer("dummy_twice", [x], outputs=[out])
        assert list(result.get_output("a").shape) == [1, 10]
        with open(path, "rb") as f:
            np.testing.assert_array_equal(np.frombuffer(f.read()[40:80], np.float32).reshape(1, 10), b + 2)
        after = client.get_inference_statistics("dummy_twice").model_stats[0].inference_stats.success.count
        assert after - before == 1
    finally:
        client.unregister_system_shared_memory(name)
