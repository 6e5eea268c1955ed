"""Test-only models: ones that fail, on purpose, in the ways the error table covers."""

from __future__ import annotations

import functools
import json
import math
import time
from pathlib import Path

import numpy as np
import openvino as ov
from openvino import opset13 as ops

from gateway.demo_models import dummy_model, save, simple_model


def runtime_reshape_model() -> ov.Model:
    """OUT = reshape(DATA, SHAPE): compiles, but fails inside OpenVINO when SHAPE does not fit DATA."""
    data = ops.parameter([-1], ov.Type.f32, name="DATA")
    data.output(0).get_tensor().set_names({"DATA"})
    shape = ops.parameter([2], ov.Type.i64, name="SHAPE")
    shape.output(0).get_tensor().set_names({"SHAPE"})
    out = ops.reshape(data, shape, False)
    out.output(0).get_tensor().set_names({"OUT"})
    return ov.Model([out.output(0)], [data, shape], "runtime_reshape")


def build_mixed_repository(root: Path) -> Path:
    """A config where good and broken models sit side by side; returns the config path."""
    save(dummy_model(), root / "dummy" / "1")
    save(dummy_model(), root / "half_broken" / "1")
    broken = root / "half_broken" / "2"
    broken.mkdir(parents=True)
    (broken / "model.xml").write_text("<net>not a model</net>")
    (root / "empty_version" / "1").mkdir(parents=True)
    save(runtime_reshape_model(), root / "runtime_reshape" / "1")
    entries = [
        {"name": "dummy", "base_path": "dummy"},
        {"name": "missing_path", "base_path": "does/not/exist"},
        {"name": "bad_device", "base_path": "dummy", "target_device": "NPU.7"},
        {"name": "empty_version", "base_path": "empty_version"},
        {"name": "half_broken", "base_path": "half_broken", "model_version_policy": {"all": {}}},
        {"name": "unknown_key", "base_path": "dummy", "no_such_setting": 1},
        {"name": "wrong_type", "base_path": "dummy", "nireq": "four"},
        {"name": "runtime_reshape", "base_path": "runtime_reshape"},
    ]
    config = root / "config.json"
    config.write_text(json.dumps({"model_config_list": [{"config": e} for e in entries]}))
    return config


def busy_model(matmuls: int, shape: tuple[int, ...] = (-1, 4), width: int = 256) -> ov.Model:
    """Y = 2 * X exactly (so each client can check it got its own rows back), plus WORK, a per-row chain of
    `matmuls` width x width matrix products that makes each row cost a known amount of compute."""
    x = ops.parameter(list(shape), ov.Type.f32, name="X")
    x.output(0).get_tensor().set_names({"X"})
    y = ops.multiply(x, ops.constant(np.float32(2.0)))
    y.output(0).get_tensor().set_names({"Y"})
    rows = ops.reduce_mean(x, ops.constant(np.array([1], np.int64)), keep_dims=True)  # [b, 1]
    work = ops.unsqueeze(rows, ops.constant(np.array([2], np.int64)))  # [b, 1, 1]
    rng = np.random.default_rng(7)
    work = ops.add(work, ops.constant(rng.standard_normal((1, width, width)).astype(np.float32)))
    weight = ops.constant((rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32))
    for _ in range(matmuls):
        work = ops.tanh(ops.matmul(work, weight, False, False))
    work = ops.reduce_sum(work, ops.constant(np.array([1, 2], np.int64)), keep_dims=False)  # [b]
    work = ops.unsqueeze(work, ops.constant(np.array([1], np.int64)))  # [b, 1]
    work.output(0).get_tensor().set_names({"WORK"})
    return ov.Model([y.output(0), work.output(0)], [x], "busy")


def busy_model_taking(seconds_per_row: float, min_matmuls: int, width: int = 512) -> ov.Model:
    """busy_model with enough matmuls that a row takes about `seconds_per_row` on this machine (LATENCY
    hint, in process; a throughput stream takes longer), and never fewer than `min_matmuls`. Tests whose
    requests must still be running when the next one arrives need a duration, not a matmul count: this VM's
    speed moves by 3 x from one day to the next."""
    per_matmul = _seconds_per_matmul(width)
    return busy_model(max(min_matmuls, math.ceil(seconds_per_row / per_matmul)), width=width)


@functools.cache
def _seconds_per_matmul(width: int, matmuls: int = 20) -> float:
    model = busy_model(matmuls, width=width)
    compiled = ov.Core().compile_model(model, "CPU", {"PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    x = np.ones((1, 4), np.float32)
    request.infer({"X": x})  # the first inference pays for allocations
    runs = []
    for _ in range(5):
        started = time.perf_counter()
        request.infer({"X": x})
        runs.append(time.perf_counter() - started)
    return min(runs) / matmuls  # the quickest: what the machine can do, not what a neighbour took from it


def static_simple_model() -> ov.Model:
    """Triton's `simple` with a static batch of 1 ([1,16]): with max_batch_size it is reshaped once and
    partial batches are padded."""
    model = simple_model()
    model.reshape({"INPUT0": [1, 16], "INPUT1": [1, 16]})
    return model
