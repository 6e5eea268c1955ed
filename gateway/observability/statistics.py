"""Per-version inference statistics in the shape of Triton's `statistics` extension.

The figures are measured where the time goes: `queue` from the request's arrival
in its model's queue until the scheduler dispatches it, `compute_input` preparing
OpenVINO tensors, `compute_infer` inside OpenVINO, `compute_output` copying the
results out, and `success` / `fail` the whole time inside the gateway.
perf_analyzer reads these before and after each measurement window.
"""

from __future__ import annotations

import enum
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


class Outcome(enum.Enum):
    """How a request ended. Triton's failure reasons: FAILED is OTHER (an invalid request), BACKEND_FAILED
    is BACKEND, REJECTED and TIMED_OUT are REJECTED, CANCELLED is CANCELED."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"  # refused as invalid, wherever: framing, JSON, decoding, validation
    BACKEND_FAILED = "backend_failed"  # OpenVINO failed to run it
    REJECTED = "rejected"  # the queue was full
    TIMED_OUT = "timed_out"  # its deadline passed while it was queued
    CANCELLED = "cancelled"  # its client went away

    @property
    def succeeded(self) -> bool:
        return self is Outcome.SUCCEEDED


@dataclass(slots=True)
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns

    def to_dict(self) -> dict:
        return {"count": self.count, "ns": self.ns}


@dataclass(frozen=True, slots=True)
class ExecutionTimes:
    """What one execution cost, as the executor measured it (nanoseconds)."""

    input_ns: int  # preparing OpenVINO tensors (stacking a batch included)
    infer_ns: int
    output_ns: int
    # An inline inference's CPU time on the calling thread (the event loop's own cost of it, without the
    # time other processes held the core); None where the inference ran on OpenVINO's threads.
    infer_cpu_ns: int | None = None


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
    # Not failures: counted apart, as the scheduler refused or dropped them before any inference.
    rejected_count: int = 0  # the queue was full
    timed_out_count: int = 0  # the deadline (gRPC deadline or `timeout` parameter) expired in the queue
    cancelled_count: int = 0  # the client went away while the request waited
    backend_fail_count: int = 0  # failures of OpenVINO itself (the rest of `fail` were invalid requests)
    images_decoded: int = 0  # encoded images decoded for this version (images.py)
    image_decode_cpu_ns: int = 0  # the decoder threads' CPU time for them

    def record_execution(self, times: ExecutionTimes, batch_size: int, queue_ns: list[int]) -> None:
        """One OpenVINO execution of `batch_size` rows for len(queue_ns) requests. As in Triton, each
        request of a batch is charged the whole execution's compute times."""
        d = self.durations
        requests = len(queue_ns)
        d["queue"].add(sum(queue_ns), requests)
        d["compute_input"].add(times.input_ns * requests, requests)
        d["compute_infer"].add(times.infer_ns * requests, requests)
        d["compute_output"].add(times.output_ns * requests, requests)
        self.inference_count += batch_size
        self.execution_count += 1
        self.last_inference_ms = time.time_ns() // 1_000_000
        b = self.by_batch_size.get(batch_size)
        if b is None:
            b = self.by_batch_size[batch_size] = BatchStats()
        b.compute_input.add(times.input_ns)
        b.compute_infer.add(times.infer_ns)
        b.compute_output.add(times.output_ns)

    def record_outcome(self, outcome: Outcome, ns: int) -> None:
        """How one request ended, and its time inside the gateway."""
        if outcome is Outcome.SUCCEEDED:
            self.durations["success"].add(ns)
        elif outcome in (Outcome.FAILED, Outcome.BACKEND_FAILED):
            self.durations["fail"].add(ns)
            if outcome is Outcome.BACKEND_FAILED:
                self.backend_fail_count += 1
        elif outcome is Outcome.REJECTED:
            self.rejected_count += 1
        elif outcome is Outcome.TIMED_OUT:
            self.timed_out_count += 1
        else:
            self.cancelled_count += 1

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
            # The gateway's own, beyond Triton's message (gRPC leaves them out): requests refused or
            # dropped by the scheduler, which `fail` does not count.
            "rejected_count": self.rejected_count,
            "timed_out_count": self.timed_out_count,
            "cancelled_count": self.cancelled_count,
        }
