"""A model version's files turned into a serving version: compiled by OpenVINO (with the load-adaptive
executions where they apply), described to clients, and given a scheduler on its device's gate."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import openvino as ov

from gateway.config.settings import ModelSettings
from gateway.core.errors import ConfigError
from gateway.core.records import TensorSpec
from gateway.memory.budget import RequestMemoryBudget
from gateway.runtime.executor import InferExecutor, port_layouts, port_specs, read_model
from gateway.scheduling.adaptive import LoadAdaptiveExecutor
from gateway.scheduling.scheduler import (
    BatchingPolicy,
    DeviceGate,
    Executor,
    ModelScheduler,
    default_queue_size,
)
from gateway.serving.model_version import ModelVersion, apply_batching

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _CompiledVersion:
    """A version once OpenVINO compiled it: its ports as clients see them and the executor that runs it."""

    compiled: ov.CompiledModel
    inputs: tuple[TensorSpec, ...]
    bounds: tuple
    layouts: list[str]
    outputs: tuple[TensorSpec, ...]
    pad_to: int | None  # a static-batch model's batch size, to which partial batches are padded
    nireq: int
    streams: int
    executor: Executor


class VersionCompiler:
    """Loads versions for the manager; keeps what they share: OpenVINO's core, the device gates, the count of
    compiled-blob cache hits."""

    def __init__(
        self,
        *,
        core: ov.Core,
        cache_dir: str | None,
        adaptive_execution: bool,
        priority_aging_s: float,
        memory: RequestMemoryBudget | None = None,
    ):
        self.core = core
        self._memory = memory
        self._cache_dir = cache_dir
        self._adaptive_execution = adaptive_execution
        self._priority_aging_s = priority_aging_s
        # (name, version, "hit" | "miss") -> loads, over the process's life (reloads included)
        self.cache_loads: dict[tuple[str, str, str], int] = {}
        self._gates: dict[str, DeviceGate] = {}  # target_device -> the gate its models share

    def _compile_config(self, settings: ModelSettings) -> dict:
        config: dict = {k: v for k, v in settings.plugin_config.items()}
        cache_dir = self._cache_dir
        if cache_dir and settings.allow_cache is not False:
            config.setdefault("CACHE_DIR", cache_dir)
        hinted = "PERFORMANCE_HINT" in config or "NUM_STREAMS" in config
        if not hinted and self._supports(settings, "PERFORMANCE_HINT"):
            # A server sees concurrent requests: ask the device for parallel streams.
            config["PERFORMANCE_HINT"] = "THROUGHPUT"
        if "MODEL_PRIORITY" not in config and self._supports(settings, "MODEL_PRIORITY"):
            # Devices that arbitrate between compiled models themselves (AUTO, GPU) get the priority too.
            config["MODEL_PRIORITY"] = {1: "HIGH", 2: "MEDIUM"}.get(settings.priority, "LOW")
        return config

    def _supports(self, settings: ModelSettings, prop: str) -> bool:
        try:
            supported = self.core.get_property(settings.target_device.split(":")[0], "SUPPORTED_PROPERTIES")
        except Exception:
            return False
        return prop in supported

    def _gate(self, device: str) -> DeviceGate:
        gate = self._gates.get(device)
        if gate is None:
            gate = self._gates[device] = DeviceGate(device=device, aging_s=self._priority_aging_s)
        return gate

    async def load(self, version: ModelVersion) -> None:
        """Compile a version, describe it to clients, and give it a scheduler: LOADING -> READY, or FAILED
        with the reason (logged once)."""
        started = time.perf_counter()
        try:
            loaded = await self._compile_executions(version)
        except Exception as e:  # OpenVINO raises plain RuntimeErrors with useful text
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            version.fail(f"failed to load from {version.path}: {reason}")
            log.error("model %s version %d: %s", version.name, version.version, version.reason)
            return
        version.load_seconds = time.perf_counter() - started
        version.streams = loaded.streams
        how = self._count_cache_load(version, loaded.compiled)
        try:
            version.describe(loaded.inputs, loaded.bounds, loaded.outputs, loaded.layouts)
        except ConfigError as e:  # a setting that does not fit the compiled model (e.g. image_inputs)
            version.fail(str(e))
            log.error("model %s version %d: %s", version.name, version.version, version.reason)
            return
        scheduler = self._scheduler(version, loaded)
        version.activate(scheduler)
        log.info(
            "model %s version %d ready on %s in %.2f s (%s; %s; from %s)",
            version.name,
            version.version,
            version.settings.target_device,
            version.load_seconds,
            how,
            _describe_scheduling(loaded, scheduler),
            version.path,
        )

    async def _compile_executions(self, version: ModelVersion) -> _CompiledVersion:
        """The compiled model, its ports as clients see them, and what runs it: one execution, or the
        load-adaptive pair (docs/design/adaptive-execution.md)."""
        settings = version.settings
        compiled = await asyncio.to_thread(self._compile, version)
        inputs, bounds = port_specs(compiled.inputs, "input")
        layouts = port_layouts(compiled.inputs)
        outputs, _ = port_specs(compiled.outputs, "output")
        pad_to = None
        if settings.max_batch_size:
            inputs, bounds, outputs, pad_to = apply_batching(settings, inputs, bounds, outputs)
        nireq = settings.nireq or int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        label = f"{version.name}-{version.version}"
        input_types, output_types = [i.datatype for i in inputs], [o.datatype for o in outputs]
        batch_rows = bool(settings.max_batch_size)
        throughput = InferExecutor(compiled, nireq, input_types, output_types, label, batch_rows)
        streams = _streams(compiled, nireq)
        executor: Executor = throughput
        if streams > 1 and self._adaptive(settings):
            latency_compiled = await asyncio.to_thread(self._compile, version, "LATENCY")
            latency = InferExecutor(
                latency_compiled, 1, input_types, output_types, f"{label}-latency", batch_rows
            )

            async def compile_inline() -> InferExecutor:
                compiled = await asyncio.to_thread(self._compile, version, "LATENCY", one_thread=True)
                log.info(
                    "model %s version %d: lone requests run inline (a one-thread LATENCY-hint execution, "
                    "called from the event loop)",
                    version.name,
                    version.version,
                )
                return InferExecutor(compiled, 1, input_types, output_types, f"{label}-inline", batch_rows)

            executor = LoadAdaptiveExecutor(
                latency=latency, throughput=throughput, compile_inline=compile_inline
            )
        return _CompiledVersion(compiled, inputs, bounds, layouts, outputs, pad_to, nireq, streams, executor)

    def _count_cache_load(self, version: ModelVersion, compiled: ov.CompiledModel) -> str:
        """Whether the version came from the compiled-blob cache (counted for the metrics), in words."""
        cache_dir = self._compile_config(version.settings).get("CACHE_DIR")
        if not cache_dir:
            return "compiled, no cache"
        version.cache_result = "hit" if _loaded_from_cache(compiled) else "miss"
        key = (version.name, str(version.version), version.cache_result)
        self.cache_loads[key] = self.cache_loads.get(key, 0) + 1
        how = "imported from the cache" if version.cache_result == "hit" else "compiled and cached"
        return f"{how} in {cache_dir}"

    def _scheduler(self, version: ModelVersion, loaded: _CompiledVersion) -> ModelScheduler:
        settings = version.settings
        batching = None
        if settings.max_batch_size:
            batching = BatchingPolicy(
                settings.max_batch_size,
                settings.max_queue_delay_microseconds / 1e6,
                settings.preferred_batch_size,
                loaded.pad_to,
            )
        queue_size = settings.max_queue_size
        if queue_size is None:
            queue_size = default_queue_size(loaded.nireq, settings.max_batch_size)
        return ModelScheduler(
            executor=loaded.executor,
            label=f"model '{version.name}' version {version.version}",
            max_queue_size=queue_size,
            batching=batching,
            priority=settings.priority,
            streams=loaded.streams,
            gate=self._gate(settings.target_device),
            on_execution=version.record_execution,
            memory=self._memory,
        )

    def _adaptive(self, settings: ModelSettings) -> bool:
        """A latency execution beside the throughput one: on CPU, when the gateway chose the hint."""
        chosen = (
            "PERFORMANCE_HINT" not in settings.plugin_config and "NUM_STREAMS" not in settings.plugin_config
        )
        device = settings.target_device.split(":")[0].split(".")[0].upper()
        return self._adaptive_execution and chosen and device == "CPU"

    def _compile(
        self, version: ModelVersion, hint: str | None = None, one_thread: bool = False
    ) -> ov.CompiledModel:
        settings = version.settings
        config = self._compile_config(settings)
        if hint is not None:
            config["PERFORMANCE_HINT"] = hint
        if one_thread:  # the inline execution (adaptive.py): no worker threads to spin after each run
            config["INFERENCE_NUM_THREADS"] = 1
        if (
            settings.shape is None
            and settings.layout is None
            and settings.batch_size is None
            and not settings.max_batch_size
        ):
            # From the file, OpenVINO checks its blob cache before reading the model at all.
            return self.core.compile_model(version.path, settings.target_device, config)
        model = read_model(self.core, version.path, settings)
        return self.core.compile_model(model, settings.target_device, config)


def _describe_scheduling(loaded: _CompiledVersion, scheduler: ModelScheduler) -> str:
    """The start-up log's account of how a version runs: infer requests, streams, executions, batching."""
    adaptive = " + a LATENCY-hint execution for lone requests, where it pays"
    batching = scheduler.batching
    batched = "off"
    if batching is not None:
        batched = f"up to {batching.max_batch_size}" + (
            f" padded to {batching.pad_to}" if batching.pad_to else ""
        )
    return (
        f"nireq {loaded.nireq}, streams {loaded.streams}"
        f"{adaptive if isinstance(loaded.executor, LoadAdaptiveExecutor) else ''}; batching {batched}; "
        f"queue {scheduler.max_queue_size or 'unbounded'}; priority {scheduler.priority}"
    )


def _streams(compiled: ov.CompiledModel, nireq: int) -> int:
    """OpenVINO's execution streams (what ovms_streams reports); devices without the property run nireq."""
    try:
        return int(compiled.get_property("NUM_STREAMS"))
    except Exception:
        return nireq


def _loaded_from_cache(compiled: ov.CompiledModel) -> bool:
    try:
        return bool(compiled.get_property("LOADED_FROM_CACHE"))
    except Exception:  # a device without the property did not import a blob
        return False
