"""Pipelines for the tests: OVMS's super-resolution flow at test size, built here with OpenVINO's API and
gcc, and the config.json that serves it.

    images [N,1,3,16,16] -> demultiplexed into N branches -> resize (custom node: "resized" [1,3,8,8]
    and the "original" passed on) -> super_resolution (inputs "small" and "large") -> gathered into
    [N,1,3,16,16]

`super_resolution`: enhanced = large + mean(small over H and W), a two-input model whose answer numpy
can check exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import openvino as ov
from openvino import opset13 as ops

from gateway.demo_models import _named, save, scaled_model
from loadgen.custom_nodes import NODES, build_c_library

LOW, HIGH = 8, 16  # the resize node's target size, and the images' size


def super_resolution_model(batch: int = 1) -> ov.Model:
    small = _named(ops.parameter([batch, 3, LOW, LOW], ov.Type.f32, name="small"), "small")
    large = _named(ops.parameter([batch, 3, HIGH, HIGH], ov.Type.f32, name="large"), "large")
    mean = ops.reduce_mean(small, ops.constant(np.array([2, 3], np.int64)), keep_dims=True)
    enhanced = _named(ops.add(large, mean), "enhanced")
    return ov.Model([enhanced.output(0)], [small, large], "super_resolution")


def sum_model() -> ov.Model:
    """total = sum of x over dimension 0, keeping it: [N,1,4] -> [1,4] (a node after a gather)."""
    x = _named(ops.parameter([-1, 1, 4], ov.Type.f32, name="x"), "x")
    total = _named(ops.reduce_sum(x, ops.constant(np.array([0], np.int64)), keep_dims=False), "total")
    return ov.Model([total.output(0)], [x], "sum")


def rows_model() -> ov.Model:
    """rows = 3 x, one row per slice: [N,4] -> [N,1,4] (a node that demultiplexes)."""
    x = _named(ops.parameter([-1, 4], ov.Type.f32, name="x"), "x")
    tripled = ops.multiply(x, ops.constant(np.float32(3.0)))
    rows = _named(ops.unsqueeze(tripled, ops.constant(np.array([1], np.int64))), "rows")
    return ov.Model([rows.output(0)], [x], "rows")


def bgr_model() -> ov.Model:
    """planes = x (+ 0), FP32 [1,3,8,8]: served with layout NHWC:NCHW, so it takes encoded images."""
    x = _named(ops.parameter([1, 3, 8, 8], ov.Type.f32, name="x"), "x")
    planes = _named(ops.add(x, ops.constant(np.float32(0))), "planes")
    return ov.Model([planes.output(0)], [x], "bgr")


def expected_super_resolution(images: np.ndarray) -> np.ndarray:
    """What the pipeline answers for images [N,1,3,16,16]: the resize node takes every other pixel."""
    small = images[:, :, :, :: HIGH // LOW, :: HIGH // LOW]
    return images + small.mean(axis=(3, 4), keepdims=True)


def resize_node(name: str, library: str, source: dict, **extra) -> dict:
    return {
        "name": name,
        "type": "custom",
        "library_name": library,
        "params": {"target_height": str(LOW), "target_width": str(LOW), **extra.pop("params", {})},
        "inputs": [{"image": source}],
        "outputs": [
            {"data_item": "resized", "alias": "resized"},
            {"data_item": "original", "alias": "original"},
        ],
        **extra,
    }


def sr_node(name: str, resize: str, model: str = "super_resolution", **extra) -> dict:
    return {
        "name": name,
        "type": "DL model",
        "model_name": model,
        "inputs": [
            {"small": {"node_name": resize, "data_item": "resized"}},
            {"large": {"node_name": resize, "data_item": "original"}},
        ],
        "outputs": [{"data_item": "enhanced", "alias": "enhanced"}],
        **extra,
    }


def super_resolution_pipeline(name: str, library: str, demultiply_count: int, model: str) -> dict:
    return {
        "name": name,
        "inputs": ["images"],
        "demultiply_count": demultiply_count,
        "nodes": [
            resize_node("resize", library, {"node_name": "request", "data_item": "images"}),
            sr_node("enhance", "resize", model),
        ],
        "outputs": [{"enhanced": {"node_name": "enhance", "data_item": "enhanced"}}],
    }


def build_pipeline_repository(root: Path) -> Path:
    """Models, the C library and config.json; returns the config path."""
    save(super_resolution_model(), root / "super_resolution" / "1")
    save(super_resolution_model(-1), root / "super_resolution_batched" / "1")
    save(scaled_model(2.0), root / "double" / "1")
    save(scaled_model(20.0), root / "double" / "2")  # a second version: pinned nodes must not use it
    save(scaled_model(3.0), root / "triple" / "1")
    save(sum_model(), root / "sum" / "1")
    save(rows_model(), root / "rows" / "1")
    save(bgr_model(), root / "bgr" / "1")
    library = build_c_library(root)
    models = [
        {"config": {"name": "super_resolution", "base_path": "super_resolution"}},
        {
            "config": {
                "name": "super_resolution_batched",
                "base_path": "super_resolution_batched",
                "max_batch_size": 16,
                "max_queue_delay_microseconds": 2000,
            }
        },
        {"config": {"name": "double", "base_path": "double", "model_version_policy": {"all": {}}}},
        {"config": {"name": "triple", "base_path": "triple"}},
        {"config": {"name": "sum", "base_path": "sum"}},
        {"config": {"name": "rows", "base_path": "rows"}},
        {"config": {"name": "bgr", "base_path": "bgr", "layout": "NHWC:NCHW"}},
    ]
    pipelines = [
        super_resolution_pipeline("sr_dynamic", "resize_c", -1, "super_resolution"),
        super_resolution_pipeline("sr_fixed", "resize_c", 4, "super_resolution"),
        super_resolution_pipeline("sr_python", "resize_py", -1, "super_resolution"),
        super_resolution_pipeline("sr_batched", "resize_c", -1, "super_resolution_batched"),
        {
            "name": "sr_failing",
            "inputs": ["images"],
            "demultiply_count": -1,
            "nodes": [
                resize_node(
                    "resize",
                    "resize_c",
                    {"node_name": "request", "data_item": "images"},
                    params={"fail_below": "0"},
                ),
                sr_node("enhance", "resize"),
            ],
            "outputs": [{"enhanced": {"node_name": "enhance", "data_item": "enhanced"}}],
        },
        {
            "name": "sr_python_failing",
            "inputs": ["images"],
            "demultiply_count": -1,
            "nodes": [
                resize_node(
                    "resize",
                    "resize_py",
                    {"node_name": "request", "data_item": "images"},
                    params={"fail_below": "0"},
                ),
                sr_node("enhance", "resize"),
            ],
            "outputs": [{"enhanced": {"node_name": "enhance", "data_item": "enhanced"}}],
        },
        {
            # a model-only chain: aliases, a pinned version, and an intermediate result as an output
            "name": "chain",
            "inputs": ["x"],
            "nodes": [
                {
                    "name": "first",
                    "type": "DL model",
                    "model_name": "double",
                    "version": 1,
                    "inputs": [{"x": {"node_name": "request", "data_item": "x"}}],
                    "outputs": [{"data_item": "y", "alias": "doubled"}],
                },
                {
                    "name": "second",
                    "type": "DL model",
                    "model_name": "triple",
                    "inputs": [{"x": {"node_name": "first", "data_item": "doubled"}}],
                    "outputs": [{"data_item": "y", "alias": "tripled"}],
                },
            ],
            "outputs": [
                {"result": {"node_name": "second", "data_item": "tripled"}},
                {"intermediate": {"node_name": "first", "data_item": "doubled"}},
            ],
        },
        {
            # demultiplex at a node, gather before the next: x [N,4] -> rows [N,1,4] -> double per row
            # [1,4] -> gathered [N,1,4] -> sum -> [1,4]
            "name": "gather",
            "inputs": ["x"],
            "nodes": [
                {
                    "name": "split",
                    "type": "DL model",
                    "model_name": "rows",
                    "demultiply_count": -1,
                    "inputs": [{"x": {"node_name": "request", "data_item": "x"}}],
                    "outputs": [{"data_item": "rows", "alias": "rows"}],
                },
                {
                    "name": "each",
                    "type": "DL model",
                    "model_name": "double",
                    "version": 1,
                    "inputs": [{"x": {"node_name": "split", "data_item": "rows"}}],
                    "outputs": [{"data_item": "y", "alias": "doubled"}],
                },
                {
                    "name": "total",
                    "type": "DL model",
                    "model_name": "sum",
                    "gather_from_node": "split",
                    "inputs": [{"x": {"node_name": "each", "data_item": "doubled"}}],
                    "outputs": [{"data_item": "total", "alias": "total"}],
                },
            ],
            "outputs": [{"total": {"node_name": "total", "data_item": "total"}}],
        },
        *(
            {
                # encoded images into a pipeline (OVMS's binary inputs): one image, or one per branch
                "name": name,
                "inputs": ["image"],
                **extra,
                "nodes": [
                    {
                        "name": "decode",
                        "type": "DL model",
                        "model_name": "bgr",
                        "inputs": [{"x": {"node_name": "request", "data_item": "image"}}],
                        "outputs": [{"data_item": "planes", "alias": "planes"}],
                    }
                ],
                "outputs": [{"planes": {"node_name": "decode", "data_item": "planes"}}],
            }
            for name, extra in (("images_single", {}), ("images_demux", {"demultiply_count": -1}))
        ),
        {
            # broken on purpose: its model does not exist; everything else must serve
            "name": "broken",
            "inputs": ["x"],
            "nodes": [
                {
                    "name": "missing",
                    "type": "DL model",
                    "model_name": "no_such_model",
                    "inputs": [{"x": {"node_name": "request", "data_item": "x"}}],
                    "outputs": [{"data_item": "y", "alias": "y"}],
                }
            ],
            "outputs": [{"y": {"node_name": "missing", "data_item": "y"}}],
        },
    ]
    config = {
        "model_config_list": models,
        "custom_node_library_config_list": [
            {"name": "resize_c", "base_path": str(library)},
            {"name": "resize_py", "base_path": str(NODES / "resize_node.py")},
        ],
        "pipeline_config_list": pipelines,
    }
    path = root / "config.json"
    path.write_text(json.dumps(config, indent=2))
    return path
