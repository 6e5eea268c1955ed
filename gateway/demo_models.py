"""Build the demo model repository with OpenVINO's Python API (no downloads).

    python -m gateway.demo_models DIR   # writes DIR/<model>/<version>/model.{xml,bin} and DIR/config.json

The same models serve the test suite: `simple` and `dummy` are the models Triton's
and OVMS's client examples call, `identity_<type>` covers every datatype, and
`versioned` has two versions that answer differently, and `scalars` takes and returns rank-0 tensors.
`dummy_twice` is a pipeline (an OVMS DAG) of two `dummy` nodes.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path

import numpy as np
import openvino as ov
from openvino import opset13 as ops

# Datatypes with an identity model; BF16 is in the table too but OpenVINO's CPU plugin
# computes it through FP32, so the identity is exact only for BF16 values.
IDENTITY_TYPES = {
    "BOOL": ov.Type.boolean,
    "UINT8": ov.Type.u8,
    "UINT16": ov.Type.u16,
    "UINT32": ov.Type.u32,
    "UINT64": ov.Type.u64,
    "INT8": ov.Type.i8,
    "INT16": ov.Type.i16,
    "INT32": ov.Type.i32,
    "INT64": ov.Type.i64,
    "FP16": ov.Type.f16,
    "FP32": ov.Type.f32,
    "FP64": ov.Type.f64,
    "BF16": ov.Type.bf16,
    "BYTES": ov.Type.string,
}


def _named(node, name: str):
    node.output(0).get_tensor().set_names({name})
    return node


def simple_model() -> ov.Model:
    """Triton's `simple`: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1 (INT32 [-1,16])."""
    a = _named(ops.parameter([-1, 16], ov.Type.i32, name="INPUT0"), "INPUT0")
    b = _named(ops.parameter([-1, 16], ov.Type.i32, name="INPUT1"), "INPUT1")
    total = _named(ops.add(a, b), "OUTPUT0")
    diff = _named(ops.subtract(a, b), "OUTPUT1")
    return ov.Model([total.output(0), diff.output(0)], [a, b], "simple")


def dummy_model() -> ov.Model:
    """OVMS's `dummy`: a = b + 1 (FP32 [-1,10])."""
    b = _named(ops.parameter([-1, 10], ov.Type.f32, name="b"), "b")
    a = _named(ops.add(b, ops.constant(np.ones((1, 10), np.float32))), "a")
    return ov.Model([a.output(0)], [b], "dummy")


def identity_model(element_type: ov.Type) -> ov.Model:
    """OUTPUT0 = INPUT0 for any [-1,-1] tensor; a reshape keeps input and output names apart."""
    x = _named(ops.parameter([-1, -1], element_type, name="INPUT0"), "INPUT0")
    y = _named(ops.reshape(x, ops.shape_of(x), False), "OUTPUT0")
    return ov.Model([y.output(0)], [x], "identity")


def scaled_model(factor: float) -> ov.Model:
    """y = x * factor (FP32 [-1,4]): versions of `versioned` use their version number as the factor."""
    x = _named(ops.parameter([-1, 4], ov.Type.f32, name="x"), "x")
    y = _named(ops.multiply(x, ops.constant(np.float32(factor))), "y")
    return ov.Model([y.output(0)], [x], "scaled")


def scalars_model() -> ov.Model:
    """Scalar (rank-0) inputs and outputs, as audio and text models take them: y = x * sr (FP32 [4]),
    total = sum(y) (FP32 []), tag_out = tag (BYTES []); sr is INT64 [] (a sample rate)."""
    x = _named(ops.parameter([4], ov.Type.f32, name="x"), "x")
    sr = _named(ops.parameter([], ov.Type.i64, name="sr"), "sr")
    tag = _named(ops.parameter([], ov.Type.string, name="tag"), "tag")
    y = _named(ops.multiply(x, ops.convert(sr, ov.Type.f32)), "y")
    total = _named(ops.reduce_sum(y, ops.constant(np.array([0], np.int64)), keep_dims=False), "total")
    tag_out = _named(ops.reshape(tag, ops.shape_of(tag), False), "tag_out")
    return ov.Model([y.output(0), total.output(0), tag_out.output(0)], [x, sr, tag], "scalars")


def save(model: ov.Model, folder: Path) -> Path:
    """Write model.xml and model.bin into `folder`. They are written aside and renamed into place, the .bin
    first: a reader that finds model.xml finds whole files, and two processes saving the same model at
    once (benchmarks on a fresh machine) cannot interleave their writes."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.xml"
    aside = folder / f".model-{os.getpid()}-{threading.get_ident()}.xml"
    ov.save_model(model, str(aside), compress_to_fp16=False)
    if aside.with_suffix(".bin").exists():
        os.replace(aside.with_suffix(".bin"), folder / "model.bin")
    os.replace(aside, path)
    return path


def build_repository(root: str | Path) -> Path:
    """Write every demo model and a config.json that serves them all; returns the config path."""
    root = Path(root)
    save(simple_model(), root / "simple" / "1")
    save(dummy_model(), root / "dummy" / "1")
    for name, element_type in IDENTITY_TYPES.items():
        save(identity_model(element_type), root / f"identity_{name.lower()}" / "1")
    for version in (1, 2):
        save(scaled_model(float(version)), root / "versioned" / str(version))
    save(scalars_model(), root / "scalars" / "1")
    entries = [
        {"config": {"name": "simple", "base_path": "simple"}},
        {"config": {"name": "dummy", "base_path": "dummy"}},
        *(
            {"config": {"name": f"identity_{n.lower()}", "base_path": f"identity_{n.lower()}"}}
            for n in IDENTITY_TYPES
        ),
        {"config": {"name": "versioned", "base_path": "versioned", "model_version_policy": {"all": {}}}},
        {"config": {"name": "scalars", "base_path": "scalars"}},
    ]
    config = root / "config.json"
    document = {"model_config_list": entries, "pipeline_config_list": [dummy_twice_pipeline()]}
    config.write_text(json.dumps(document, indent=2) + "\n")
    return config


def dummy_twice_pipeline() -> dict:
    """An OVMS pipeline of two `dummy` nodes: a = (b + 1) + 1, FP32 [-1,10], served as `dummy_twice`."""

    def dummy(name: str, source: tuple[str, str]) -> dict:
        return {
            "name": name,
            "type": "DL model",
            "model_name": "dummy",
            "inputs": [{"b": {"node_name": source[0], "data_item": source[1]}}],
            "outputs": [{"data_item": "a", "alias": "a"}],
        }

    return {
        "name": "dummy_twice",
        "inputs": ["b"],
        "nodes": [dummy("first", ("request", "b")), dummy("second", ("first", "a"))],
        "outputs": [{"a": {"node_name": "second", "data_item": "a"}}],
    }


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else "demo_models"
    print(f"demo model repository written; serve it with --config_path {build_repository(target)}")
