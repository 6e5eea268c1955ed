"""The OpenVINO executor alone, on a real compiled model: tensors in, outputs out, both ways of starting."""

from __future__ import annotations

import sys

import numpy as np
import openvino as ov
import pytest

from gateway.demo_models import scalars_model, simple_model
from gateway.runtime import executor as openvino_runtime


async def _run_simple(executor: openvino_runtime.InferExecutor) -> list[np.ndarray]:
    a = np.arange(32, dtype=np.int32).reshape(2, 16)
    b = np.frombuffer(np.ones((2, 16), np.int32).tobytes(), np.int32).reshape(2, 16)  # read-only, as decoded
    slot = executor.take()
    try:
        outputs, times = await executor.execute(slot, [[a, b]])
    finally:
        executor.give_back(slot)
    assert times.infer_ns > 0
    np.testing.assert_array_equal(outputs[0], a + 1)
    np.testing.assert_array_equal(outputs[1], a - 1)
    return outputs


def _executor(model: ov.Model, inputs: list[str], outputs: list[str]) -> openvino_runtime.InferExecutor:
    compiled = ov.Core().compile_model(model, "CPU")
    return openvino_runtime.InferExecutor(compiled, 2, inputs, outputs, "test")


async def test_the_private_fast_start_is_present_on_the_tested_openvino():
    # If a release drops it, this fails and says so; the public fallback below keeps serving meanwhile.
    assert openvino_runtime._private_start_async() is not None, ov.__version__
    await _run_simple(_executor(simple_model(), ["INT32", "INT32"], ["INT32", "INT32"]))


async def test_without_the_private_symbol_the_public_api_runs_the_same_tensors(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino._pyopenvino", None)  # import of it now fails
    assert openvino_runtime._private_start_async() is None
    monkeypatch.setattr(openvino_runtime, "_START_ASYNC", None)
    await _run_simple(_executor(simple_model(), ["INT32", "INT32"], ["INT32", "INT32"]))


@pytest.mark.parametrize("fast", [True, False], ids=["private", "public"])
async def test_rank_0_inputs_reach_openvino_as_scalars(monkeypatch, fast):
    if not fast:
        monkeypatch.setattr(openvino_runtime, "_START_ASYNC", None)
    executor = _executor(scalars_model(), ["FP32", "INT64", "BYTES"], ["FP32", "FP32", "BYTES"])
    x = np.arange(4, dtype=np.float32)
    sr = np.frombuffer(np.int64(3).tobytes(), np.int64).reshape(())  # read-only 0-d, as decoded
    tag = np.array(b"t", dtype=object).reshape(())
    slot = executor.take()
    outputs, _ = await executor.execute(slot, [[x, sr, tag]])
    executor.give_back(slot)
    np.testing.assert_array_equal(outputs[0], x * 3)
    assert outputs[1].shape == () and outputs[1] == 18.0
    assert outputs[2].shape == () and outputs[2].item() == b"t"


def _doubling_model(shape: list[int]) -> ov.Model:
    from openvino import opset13 as ops

    x = ops.parameter(shape, ov.Type.f32, name="x")
    x.output(0).get_tensor().set_names({"x"})
    y = ops.multiply(x, ops.constant(np.float32(2.0)))
    y.output(0).get_tensor().set_names({"y"})
    return ov.Model([y.output(0)], [x], "doubling")


@pytest.mark.parametrize(
    "shape, batch_rows, rows, bound",
    [
        ([1, 256, 256], False, 1, True),  # static, 256 KB: OpenVINO writes into our array
        ([-1, 128, 128], True, 3, True),  # batched, 64 KB a row: allocated for the run's rows
        ([-1, 128, 128], False, 2, False),  # dimension 0 not known to be the batch: copied out
        ([1, 16], False, 1, False),  # small: copied out
    ],
    ids=["static", "batched", "unknown-rows", "small"],
)
async def test_large_outputs_are_written_into_fresh_arrays_and_never_reused(
    monkeypatch, shape, batch_rows, rows, bound
):
    copies = []
    real_read = openvino_runtime._read_output
    monkeypatch.setattr(
        openvino_runtime, "_read_output", lambda t, d, into=None: copies.append(d) or real_read(t, d, into)
    )
    compiled = ov.Core().compile_model(_doubling_model(shape), "CPU")
    executor = openvino_runtime.InferExecutor(compiled, 1, ["FP32"], ["FP32"], "test", batch_rows=batch_rows)
    dims = [rows if d == -1 else d for d in shape]
    kept = []
    for value in (1.0, 2.0, 3.0):  # the same infer request each time
        slot = executor.take()
        outputs, _ = await executor.execute(slot, [[np.full(dims, value, np.float32)]])
        executor.give_back(slot)
        kept.append((value, outputs[0]))
    for value, output in kept:  # an earlier answer is not overwritten by a later run
        assert output.shape == tuple(dims)
        np.testing.assert_array_equal(output, np.full(dims, 2 * value, np.float32))
    assert len(copies) == (0 if bound else 3)


@pytest.mark.parametrize(
    "shape, batch_rows",
    [
        ([1, 16], False),  # static, even small: OpenVINO writes into the client's memory
        ([-1, 16], True),  # [rows, ...] with batching on
        ([-1, 16], False),  # known only after the run: copied once, into the client's memory
    ],
    ids=["static", "batched", "dynamic"],
)
async def test_an_output_wanted_in_client_memory_arrives_there(shape, batch_rows):
    compiled = ov.Core().compile_model(_doubling_model(shape), "CPU")
    executor = openvino_runtime.InferExecutor(compiled, 1, ["FP32"], ["FP32"], "test", batch_rows=batch_rows)
    region = bytearray(16 * 4 + 8)
    slot = executor.take()
    x = np.arange(16, dtype=np.float32).reshape(1, 16)
    outputs, _ = await executor.execute(slot, [[x]], None, {0: memoryview(region)[8:]})
    executor.give_back(slot)
    np.testing.assert_array_equal(np.frombuffer(region, np.float32, offset=8).reshape(1, 16), x * 2)
    assert np.shares_memory(outputs[0], np.frombuffer(region, np.uint8))
    np.testing.assert_array_equal(outputs[0], x * 2)


async def test_client_memory_too_small_for_an_output_leaves_it_to_the_caller():
    compiled = ov.Core().compile_model(_doubling_model([1, 16]), "CPU")
    executor = openvino_runtime.InferExecutor(compiled, 1, ["FP32"], ["FP32"], "test")
    region = bytearray(8)
    slot = executor.take()
    outputs, _ = await executor.execute(slot, [[np.ones((1, 16), np.float32)]], None, {0: memoryview(region)})
    executor.give_back(slot)
    assert outputs[0].shape == (1, 16) and not np.shares_memory(outputs[0], np.frombuffer(region, np.uint8))
