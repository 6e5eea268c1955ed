"""The Triton-style model configuration (the `model_configuration` extension), derived from a served version.

One dict serves both transports: REST returns it as JSON (numbers stay numbers,
as Triton's own HTTP endpoint writes them), gRPC parses it into ModelConfig.
Optional blocks are complete when present, because perf_analyzer's HTTP
client reads `model_transaction_policy.decoupled` and `response_cache.enable`
without checking for them.
"""

from __future__ import annotations

import os

from gateway.config.settings import VersionPolicy
from gateway.core.datatypes import BY_NAME
from gateway.core.records import TensorSpec
from gateway.pipelines.executor import Pipeline
from gateway.serving.model_version import ModelVersion

PLATFORM = "openvino"


def _instance_kind(device: str) -> str:
    head = device.split(":")[0].split(".")[0].upper()
    if head == "CPU":
        return "KIND_CPU"
    if head in ("GPU", "NVIDIA"):
        return "KIND_GPU"
    return "KIND_MODEL"  # AUTO, HETERO, MULTI, BATCH, NPU: the device decides


def _tensor(spec: TensorSpec, batched: bool) -> dict:
    """name, data_type and dims of a config input or output. Triton has no `dims: []`: a scalar is
    `dims: [1]` with `reshape: {shape: []}`, and clients send it as shape [1]."""
    entry: dict = {"name": spec.name, "data_type": BY_NAME[spec.datatype].config_name}
    dims = list(spec.shape[1:] if batched else spec.shape)
    if not spec.shape:
        entry["dims"] = [1]
        entry["reshape"] = {"shape": []}
    else:
        entry["dims"] = dims
    return entry


# The model's priority on its device, in Triton's ModelOptimizationPolicy terms.
_PRIORITY = {1: "PRIORITY_MAX", 2: "PRIORITY_DEFAULT"}


def _dynamic_batching(version: ModelVersion) -> dict:
    settings = version.settings
    scheduler = version.scheduler
    return {
        "preferred_batch_size": list(settings.preferred_batch_size),
        "max_queue_delay_microseconds": settings.max_queue_delay_microseconds,
        "preserve_ordering": False,
        "priority_levels": 0,  # any request level is honoured: 1 highest, 0 = after every explicit level
        "default_priority_level": 0,
        "default_queue_policy": {
            "timeout_action": "REJECT",
            "default_timeout_microseconds": 0,
            "allow_timeout_override": True,
            "max_queue_size": scheduler.max_queue_size if scheduler is not None else 0,
        },
        "priority_queue_policy": {},
    }


def model_config(version: ModelVersion, policy: VersionPolicy) -> dict:
    settings = version.settings
    batched = version.max_batch_size > 0
    parameters = {"target_device": {"string_value": settings.target_device}}
    for key, value in settings.plugin_config.items():
        parameters[key] = {"string_value": str(value)}
    config = {
        "name": version.name,
        "platform": PLATFORM,
        "backend": PLATFORM,
        "runtime": "",
        "version_policy": policy.to_dict(),
        "max_batch_size": version.max_batch_size,
        "input": [
            {
                **_tensor(s, batched),
                "format": "FORMAT_NONE",
                "is_shape_tensor": False,
                "allow_ragged_batch": False,
                "optional": False,
            }
            for s in (version.client_inputs or version.inputs)
        ],
        "output": [
            {**_tensor(s, batched), "label_filename": "", "is_shape_tensor": False} for s in version.outputs
        ],
        "instance_group": [
            {
                "name": f"{version.name}_0",
                "kind": _instance_kind(settings.target_device),
                "count": version.executor.nireq if version.executor else 0,
                "gpus": [],
            }
        ],
        "default_model_filename": os.path.basename(version.path),
        "optimization": {"priority": _PRIORITY.get(settings.priority, "PRIORITY_MIN")},
        "parameters": parameters,
        "model_transaction_policy": {"decoupled": False},
        "response_cache": {"enable": False},
    }
    if settings.max_batch_size:  # the gateway's dynamic batcher is on
        config["dynamic_batching"] = _dynamic_batching(version)
    return config


def pipeline_config(pipeline: Pipeline) -> dict:
    """A pipeline's configuration as Triton would show a model's: its inputs and outputs (no batch
    dimension of its own: max_batch_size 0, as OVMS's pipelines take the shapes their nodes define)."""
    return {
        "name": pipeline.name,
        "platform": PLATFORM,
        "backend": PLATFORM,
        "runtime": "",
        "version_policy": {"specific": {"versions": [pipeline.version]}},
        "max_batch_size": 0,
        "input": [
            {
                **_tensor(s, False),
                "format": "FORMAT_NONE",
                "is_shape_tensor": False,
                "allow_ragged_batch": False,
                "optional": False,
            }
            for s in pipeline.inputs
        ],
        "output": [
            {**_tensor(s, False), "label_filename": "", "is_shape_tensor": False} for s in pipeline.outputs
        ],
        "instance_group": [],
        "default_model_filename": "",
        "optimization": {"priority": "PRIORITY_DEFAULT"},
        "parameters": {},
        "model_transaction_policy": {"decoupled": False},
        "response_cache": {"enable": False},
    }
