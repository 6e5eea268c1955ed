"""Custom node libraries on their own: the C ABI (a library built here with gcc) and Python classes."""

from __future__ import annotations

import ctypes
import gc

import numpy as np
import pytest

from gateway.core.errors import ConfigError
from gateway.core.records import TensorSpec
from gateway.pipelines.custom_node import load_library
from gateway.pipelines.node_contract import CustomNodeError
from loadgen.custom_nodes import NODES, build_c_library

PARAMS = {"target_height": "2", "target_width": "3"}


@pytest.fixture(scope="module")
def c_library(tmp_path_factory):
    try:
        path = build_c_library(tmp_path_factory.mktemp("lib"))
    except RuntimeError as e:
        pytest.skip(str(e))
    loaded = load_library("resize_c", str(path))
    assert loaded.library is not None, loaded.error
    # the same .so, opened again, shares the counters the library keeps
    counters = ctypes.CDLL(str(path))
    return loaded.library, counters


def test_metadata_from_the_info_calls(c_library):
    library, _ = c_library
    instance = library.instance(PARAMS)
    assert instance.inputs == (TensorSpec("image", "FP32", (1, 3, -1, -1)),)  # the ABI's 0: dynamic
    assert instance.outputs == (
        TensorSpec("resized", "FP32", (1, 3, 2, 3)),
        TensorSpec("original", "FP32", (1, 3, -1, -1)),
    )


def test_execute_outputs_view_the_library_buffers_until_released(c_library):
    library, counters = c_library
    instance = library.instance(PARAMS)
    image = np.arange(3 * 4 * 6, dtype=np.float32).reshape(1, 3, 4, 6)
    released = counters.released_count()
    outputs = instance.execute({"image": image})
    np.testing.assert_array_equal(outputs["resized"], image[:, :, ::2, ::2])
    np.testing.assert_array_equal(outputs["original"], image)
    assert outputs["original"].flags.writeable  # the server's until released: OpenVINO may share it
    # the dims arrays and the outputs array went back at once; the two data buffers wait for the arrays
    assert counters.released_count() - released == 3
    del outputs
    gc.collect()
    assert counters.released_count() - released == 5


def test_initialize_and_deinitialize_pair_up(c_library):
    library, counters = c_library
    live = counters.live_count()
    instance = library.instance(PARAMS)
    assert counters.live_count() == live + 1
    outputs = instance.execute({"image": np.ones((1, 3, 2, 2), np.float32)})
    del instance
    gc.collect()
    assert counters.live_count() == live + 1  # a buffer it gave out is still in use
    del outputs
    gc.collect()
    assert counters.live_count() == live


def test_a_failing_initialize_is_a_config_error(c_library):
    library, _ = c_library
    with pytest.raises(ConfigError) as e:
        library.instance({"target_height": "0", "target_width": "3"})
    assert "initialize returned 1" in str(e.value)


@pytest.mark.parametrize(
    "broken, expected",
    [
        ("bytes", "output 'resized' has 68 bytes; dims [1, 3, 2, 3] of FP32 take 72"),
        ("name", "returned output 'surprise', which its outputs info does not declare"),
        ("precision", "has precision 42"),
    ],
)
def test_contract_violations_are_errors_and_buffers_still_go_back(c_library, broken, expected):
    library, counters = c_library
    instance = library.instance({**PARAMS, "break_contract": broken})
    released = counters.released_count()
    with pytest.raises(CustomNodeError) as e:
        instance.execute({"image": np.ones((1, 3, 2, 2), np.float32)})
    assert expected in str(e.value)
    gc.collect()
    assert counters.released_count() - released == 5  # 2 data buffers, 2 dims arrays, the outputs array


def test_a_nonzero_execute_status(c_library):
    library, _ = c_library
    instance = library.instance({**PARAMS, "fail_below": "0"})
    with pytest.raises(CustomNodeError) as e:
        instance.execute({"image": -np.ones((1, 3, 2, 2), np.float32)})
    assert "execute returned 3" in str(e.value)


def test_libraries_that_cannot_load(tmp_path):
    assert "cannot load" in load_library("x", str(tmp_path / "missing.so")).error
    not_a_node = tmp_path / "plain.py"
    not_a_node.write_text("x = 1\n")
    assert "has no class 'CustomNode'" in load_library("x", str(not_a_node)).error
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    assert (
        "cannot import" in load_library("x", str(broken)).error
        and "boom" in load_library("x", str(broken)).error
    )


def test_python_node():
    loaded = load_library("resize_py", str(NODES / "resize_node.py"))
    assert loaded.library is not None, loaded.error
    instance = loaded.library.instance(PARAMS)
    assert instance.outputs[0] == TensorSpec("resized", "FP32", (1, 3, 2, 3))
    image = np.arange(3 * 4 * 6, dtype=np.float32).reshape(1, 3, 4, 6)
    outputs = instance.execute({"image": image})
    np.testing.assert_array_equal(outputs["resized"], image[:, :, ::2, ::2])
    failing = loaded.library.instance({**PARAMS, "fail_below": "0"})
    with pytest.raises(CustomNodeError) as e:
        failing.execute({"image": -(image + 1)})
    assert "execute raised ValueError" in str(e.value)


def test_python_node_outputs_are_checked(tmp_path):
    source = tmp_path / "liar.py"
    source.write_text(
        "import numpy as np\n"
        "class Liar:\n"
        "    def initialize(self, params): self.mode = params['mode']\n"
        "    def inputs_info(self): return {'x': ('FP32', (-1,))}\n"
        "    def outputs_info(self): return {'y': ('FP32', (2,))}\n"
        "    def execute(self, inputs):\n"
        "        if self.mode == 'shape': return {'y': np.zeros(3, np.float32)}\n"
        "        if self.mode == 'dtype': return {'y': np.zeros(2, np.int32)}\n"
        "        if self.mode == 'missing': return {}\n"
        "        if self.mode == 'write': inputs['x'][0] = 1\n"
        "        return [1]\n"
    )
    loaded = load_library("liar", f"{source}:Liar")
    assert loaded.library is not None, loaded.error
    for mode, expected in [
        ("shape", "has shape [3]; its outputs info says [2]"),
        ("dtype", "is INT32; its outputs info says FP32"),
        ("missing", "returned no output 'y'"),
        ("write", "read-only"),
        ("list", "not a dict of numpy arrays"),
    ]:
        with pytest.raises(CustomNodeError) as e:
            loaded.library.instance({"mode": mode}).execute({"x": np.zeros(2, np.float32)})
        assert expected in str(e.value), (mode, str(e.value))


def test_python_node_by_module_name(tmp_path, monkeypatch):
    package = tmp_path / "my_nodes"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "scale.py").write_text(
        "class Scale:\n"
        "    def initialize(self, params): self.factor = float(params['factor'])\n"
        "    def inputs_info(self): return {'x': ('float32', (-1, 4))}\n"
        "    def outputs_info(self): return {'y': ('FP32', (-1, 4))}\n"
        "    def execute(self, inputs): return {'y': inputs['x'] * self.factor}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    loaded = load_library("scale", "my_nodes.scale:Scale")
    assert loaded.library is not None, loaded.error
    instance = loaded.library.instance({"factor": "2.5"})
    assert instance.inputs == (TensorSpec("x", "FP32", (-1, 4)),)  # a numpy dtype name is accepted
    np.testing.assert_array_equal(
        instance.execute({"x": np.ones((2, 4), np.float32)})["y"], np.full((2, 4), 2.5)
    )
