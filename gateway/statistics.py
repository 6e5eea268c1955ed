"""Per-version inference statistics in the shape of Triton's `statistics` extension.

The figures are measured where the time goes: `queue` from the request's arrival
at the executor until a worker thread starts on it, `compute_input` preparing
OpenVINO tensors, `compute_infer` inside OpenVINO, `compute_output` copying the
results out, and `success` / `fail` the whole time inside the gateway.
perf_analyzer reads these before and after each measurement window.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

DURATION_KEYS = (
    "success",
    "fail",
    "queue",
    "compute_input",
    "compute_infer",
    "compute_output",
    "cache_hit",
    "cache_miss",
)


@dataclass(slots=True)
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns

    def to_dict(self) -> dict:
        return {"count": self.count, "ns": self.ns}


@dataclass(slots=True)
class ExecutionTimes:
    """What one execution cost, as the executor measured it (nanoseconds)."""

    queue_ns: int
    input_ns: int
    infer_ns: int
    output_ns: int


@dataclass(slots=True)
class BatchStats:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass(slots=True)
class VersionStats:
    durations: dict[str, Duration] = field(default_factory=lambda: {k: Duration() for k in DURATION_KEYS})
    inference_count: int = 0  # batch elements inferred
    execution_count: int = 0  # OpenVINO executions
    last_inference_ms: int = 0
    by_batch_size: dict[int, BatchStats] = field(default_factory=dict)

    def record_execution(self, times: ExecutionTimes, batch_size: int, requests: int = 1) -> None:
        d = self.durations
        d["queue"].add(times.queue_ns, requests)
        d["compute_input"].add(times.input_ns, requests)
        d["compute_infer"].add(times.infer_ns, requests)
        d["compute_output"].add(times.output_ns, requests)
        self.inference_count += batch_size
        self.execution_count += 1
        self.last_inference_ms = time.time_ns() // 1_000_000
        b = self.by_batch_size.get(batch_size)
        if b is None:
            b = self.by_batch_size[batch_size] = BatchStats()
        b.compute_input.add(times.input_ns)
        b.compute_infer.add(times.infer_ns)
        b.compute_output.add(times.output_ns)

    def record_request(self, ok: bool, ns: int) -> None:
        self.durations["success" if ok else "fail"].add(ns)

    def to_dict(self, name: str, version: str) -> dict:
        """Triton's ModelStatistics as JSON (the REST form; gRPC parses the same dict)."""
        return {
            "name": name,
            "version": version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {k: v.to_dict() for k, v in self.durations.items()},
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": b.compute_input.to_dict(),
                    "compute_infer": b.compute_infer.to_dict(),
                    "compute_output": b.compute_output.to_dict(),
                }
                for size, b in sorted(self.by_batch_size.items())
            ],
            "memory_usage": [],
        }
