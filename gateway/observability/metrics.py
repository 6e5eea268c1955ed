"""Prometheus metrics: the one place that names them.

OVMS's families with OVMS's names, labels and buckets (so its Grafana dashboards and
its autoscaling recipe `ovms_current_requests / ovms_streams` work unchanged), and
Triton's `nv_inference_*` families. Counters keep their bare names (no `_total`),
as OVMS and Triton expose them. Request counters and histograms are recorded on the
request path; gauges and the Triton counters are read from the live model state and
its statistics when Prometheus scrapes, so they cost nothing per request.
"""

from __future__ import annotations

import enum
import math
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric

from gateway.core.errors import ConfigError
from gateway.core.records import Interface, Method
from gateway.observability.statistics import ExecutionTimes, VersionStats


@runtime_checkable
class AdaptiveExecution(Protocol):
    """What a load-adaptive executor reports (scheduling/adaptive.py): runs and lone-request figures by
    execution."""

    runs: Mapping[enum.Enum, int]

    @property
    def solo_s(self) -> Mapping[enum.Enum, float | None]: ...


class ServedVersion(Protocol):
    """What the metrics read of a served model version (serving/model_version.py) at scrape time."""

    name: str
    version: int
    streams: int
    in_flight: int
    load_seconds: float
    download: Any  # bytes and seconds fetched from object storage; None for a local folder
    stats: VersionStats
    executor: Any  # nireq and busy; an AdaptiveExecution where load-adaptive execution applies
    scheduler: Any  # queued


class RequestMemory(Protocol):
    """What the metrics read of the request memory budget (memory/budget.py)."""

    @property
    def held_bytes(self) -> int: ...

    @property
    def limit_bytes(self) -> int: ...

    @property
    def refusals(self) -> int: ...


class ServingState(Protocol):
    """What the metrics read of the serving layer (serving/manager.py) at scrape time."""

    @property
    def cache_loads(self) -> Mapping[tuple[str, str, str], int]: ...

    def versions(self) -> Iterable[ServedVersion]: ...


# OVMS's histogram buckets: floor(10 * 1.8^i) microseconds, 33 of them.
BUCKETS_US = tuple(math.floor(10 * 1.8**i) for i in range(33))

# family -> (type, help, on by default in OVMS)
OVMS_FAMILIES = {
    "ovms_requests_success": ("counter", "Number of successful requests to a model or a DAG.", True),
    "ovms_requests_fail": ("counter", "Number of failed requests to a model or a DAG.", True),
    "ovms_request_time_us": ("histogram", "Processing time of requests to a model or a DAG.", True),
    "ovms_inference_time_us": ("histogram", "Inference execution time in the OpenVINO backend.", True),
    "ovms_wait_for_infer_req_time_us": ("histogram", "Request waiting time in the scheduling queue.", True),
    "ovms_streams": ("gauge", "Number of OpenVINO execution streams.", True),
    "ovms_current_requests": ("gauge", "Number of inference requests currently in process.", True),
    "ovms_infer_req_queue_size": ("gauge", "Inference request queue size (nireq).", False),
    "ovms_infer_req_active": (
        "gauge",
        "Number of currently consumed inference requests from the pool.",
        False,
    ),
}
TRITON_FAMILIES = {
    "nv_inference_request_success": ("counter", "Number of successful inference requests, all batch sizes"),
    "nv_inference_request_failure": ("counter", "Number of failed inference requests, all batch sizes"),
    "nv_inference_count": ("counter", "Number of inferences performed (does not include cached requests)"),
    "nv_inference_exec_count": ("counter", "Number of model executions performed"),
    "nv_inference_pending_request_count": (
        "gauge",
        "Instantaneous number of pending requests awaiting execution",
    ),
    "nv_inference_request_duration_us": ("counter", "Cumulative inference request duration in microseconds"),
    "nv_inference_queue_duration_us": ("counter", "Cumulative inference queuing duration in microseconds"),
    "nv_inference_compute_input_duration_us": (
        "counter",
        "Cumulative compute input duration in microseconds",
    ),
    "nv_inference_compute_infer_duration_us": (
        "counter",
        "Cumulative compute inference duration in microseconds",
    ),
    "nv_inference_compute_output_duration_us": (
        "counter",
        "Cumulative compute output duration in microseconds",
    ),
}
# The gateway's own families.
GATEWAY_FAMILIES = {
    "ovgw_model_load_seconds": (
        "gauge",
        "Time to read and compile (or import from the cache) a model version.",
    ),
    "ovgw_model_cache_loads": (
        "counter",
        "Model version loads with a compiled-blob cache, by result (hit, miss).",
    ),
    "ovgw_request_memory_bytes": ("gauge", "Bytes that requests in flight hold (bodies, messages)."),
    "ovgw_request_memory_limit_bytes": ("gauge", "The bound on those bytes (--max_request_memory; 0: none)."),
    "ovgw_request_memory_refusals": (
        "counter",
        "Requests refused because they would have taken the bytes requests hold past the bound.",
    ),
    "ovgw_model_download_bytes": (
        "gauge",
        "Bytes a model version's load fetched from object storage (0: the model cache had them).",
    ),
    "ovgw_model_download_seconds": (
        "gauge",
        "Time a model version's load spent fetching it from object storage.",
    ),
    "ovgw_batch_size": ("histogram", "Batch size of each OpenVINO execution."),
    "ovgw_requests_rejected": ("counter", "Requests refused because the model's queue was full."),
    "ovgw_requests_timed_out": (
        "counter",
        "Requests dropped from the queue when their deadline (gRPC deadline or timeout parameter) expired.",
    ),
    "ovgw_requests_cancelled": ("counter", "Requests dropped because their client went away while queued."),
    "ovgw_executions": (
        "counter",
        "OpenVINO executions of a model version by execution (latency, throughput, and inline: on the event "
        "loop, for a tiny model), where the gateway runs several (--adaptive_execution).",
    ),
    "ovgw_lone_inference_seconds": (
        "gauge",
        "Inference time of requests that found their model idle and ran alone (the quickest of the last 8), "
        "by execution (latency, throughput, inline): what the gateway picks a lone request's execution from.",
    ),
    "ovgw_images_decoded": ("counter", "Encoded images (JPEG, PNG ...) decoded for a model version."),
    "ovgw_image_decode_cpu_us": (
        "counter",
        "CPU time the decoder threads spent decoding, converting and resizing those images, in microseconds.",
    ),
    "ovgw_requests_unrouted": (
        "counter",
        "Failed requests that named no served model or version (unknown name or version, no ready version, "
        "an unparseable gRPC message): OVMS counts these nowhere.",
    ),
}
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
ALL_FAMILIES = (*OVMS_FAMILIES, *TRITON_FAMILIES, *GATEWAY_FAMILIES)


def select_families(enabled: bool, metrics_list: Iterable[str] | None) -> frozenset[str]:
    """The families to expose: all of them unless metrics_list names some (an unknown name is an error)."""
    if not enabled:
        return frozenset()
    if metrics_list is None:
        return frozenset(ALL_FAMILIES)
    names = [n.strip() for n in metrics_list if n.strip()]
    unknown = [n for n in names if n not in ALL_FAMILIES]
    if unknown:
        raise ConfigError(
            f"metrics_list: unknown metric(s) {', '.join(unknown)}; known: {', '.join(ALL_FAMILIES)}"
        )
    return frozenset(names)


class _Histogram:
    __slots__ = ("counts", "sum", "count")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS_US) + 1)  # the last slot is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value_us: float) -> None:
        self.counts[bisect_left(BUCKETS_US, value_us)] += 1
        self.sum += value_us
        self.count += 1

    def buckets(self) -> list[tuple[str, int]]:
        out, running = [], 0
        for bound, n in zip((*BUCKETS_US, "+Inf"), self.counts, strict=True):
            running += n
            out.append((str(bound), running))
        return out


class Metrics:
    """Recorders for the request path, and a Prometheus collector over them and the live model state
    (the manager, handed in at scrape time)."""

    def __init__(self, families: frozenset[str], memory: RequestMemory | None = None):
        self.families = families
        self._memory = memory
        # (family, interface, method, name, version or None for no version label) -> requests
        self._requests: dict[tuple[str, Interface, Method, str, str | None], int] = {}
        self._unrouted: dict[tuple[Interface, Method], int] = {}
        self._histograms: dict[tuple, _Histogram] = {}

    @property
    def enabled(self) -> bool:
        return bool(self.families)

    # --- recording (request path) ----------------------------------------------------------------

    def request(self, ok: bool, interface: Interface, method: Method, name: str, version: str | None) -> None:
        key = ("ovms_requests_success" if ok else "ovms_requests_fail", interface, method, name, version)
        self._requests[key] = self._requests.get(key, 0) + 1

    def unrouted(self, interface: Interface, method: Method) -> None:
        self._unrouted[(interface, method)] = self._unrouted.get((interface, method), 0) + 1

    def request_time(self, interface: Interface, name: str, version: str, microseconds: float) -> None:
        self._observe(("ovms_request_time_us", interface.value, name, version), microseconds)

    def execution(self, name: str, version: str, times: ExecutionTimes, queue_ns: list[int]) -> None:
        """One OpenVINO execution (inference time) of a batch of requests (each with its queue time)."""
        self._observe(("ovms_inference_time_us", name, version), times.infer_ns / 1000)
        for ns in queue_ns:
            self._observe(("ovms_wait_for_infer_req_time_us", name, version), ns / 1000)

    def _observe(self, key: tuple, value_us: float) -> None:
        histogram = self._histograms.get(key)
        if histogram is None:
            histogram = self._histograms[key] = _Histogram()
        histogram.observe(value_us)

    # --- collection (scrape time) ---------------------------------------------------------------

    def render(self, manager: ServingState) -> str:
        """Prometheus text format, 0.0.4. Written here rather than by prometheus_client's generate_latest,
        which renames counter families to `<name>_total` in HELP/TYPE: OVMS and Triton expose bare names."""
        lines = []
        for metric in self.collect(manager):
            lines.append(f"# HELP {metric.name} {metric.documentation}")
            lines.append(f"# TYPE {metric.name} {metric.type}")
            for sample in metric.samples:
                labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sample.labels.items())
                value = sample.value
                text = repr(float(value)) if isinstance(value, float) else str(value)
                lines.append(f"{sample.name}{{{labels}}} {text}" if labels else f"{sample.name} {text}")
        return "\n".join(lines) + "\n"

    def collect(self, manager: ServingState):
        wanted = self.families
        for family in ("ovms_requests_success", "ovms_requests_fail"):
            if family in wanted:
                metric = Metric(family, OVMS_FAMILIES[family][1], "counter")
                rows = sorted(self._requests.items(), key=lambda kv: str(kv[0]))
                for (f, interface, method, name, version), value in rows:
                    if f == family:
                        labels = {"api": "KServe", "interface": interface.value, "method": method.value,
                                  "name": name}  # fmt: skip
                        if version is not None:  # OVMS's ModelReady has no version label
                            labels["version"] = version
                        metric.add_sample(family, labels, value)
                yield metric
        if "ovgw_requests_unrouted" in wanted:
            family = "ovgw_requests_unrouted"
            metric = Metric(family, GATEWAY_FAMILIES[family][1], "counter")
            for (interface, method), value in sorted(self._unrouted.items(), key=lambda kv: str(kv[0])):
                metric.add_sample(family, {"interface": interface.value, "method": method.value}, value)
            yield metric
        yield from self._collect_histograms(wanted)
        yield from self._collect_live(wanted, manager)
        yield from self._collect_memory(wanted)

    def _collect_memory(self, wanted):
        if self._memory is None:
            return
        values = {
            "ovgw_request_memory_bytes": self._memory.held_bytes,
            "ovgw_request_memory_limit_bytes": self._memory.limit_bytes,
            "ovgw_request_memory_refusals": self._memory.refusals,
        }
        for family, value in values.items():
            if family in wanted:
                metric = Metric(family, GATEWAY_FAMILIES[family][1], GATEWAY_FAMILIES[family][0])
                metric.add_sample(family, {}, value)
                yield metric

    def _collect_histograms(self, wanted):
        label_names = {
            "ovms_request_time_us": ["interface", "name", "version"],
            "ovms_inference_time_us": ["name", "version"],
            "ovms_wait_for_infer_req_time_us": ["name", "version"],
        }
        for family, labels in label_names.items():
            if family not in wanted:
                continue
            metric = HistogramMetricFamily(family, OVMS_FAMILIES[family][1], labels=labels)
            for key, h in sorted(self._histograms.items()):
                if key[0] == family:
                    metric.add_metric(list(key[1:]), h.buckets(), h.sum)
            yield metric

    def _collect_live(self, wanted, manager: ServingState):
        metric: Metric
        versions = list(manager.versions())
        gauges = {
            "ovms_streams": lambda v: v.streams,
            "ovms_current_requests": lambda v: v.in_flight,
            "ovms_infer_req_queue_size": lambda v: v.executor.nireq if v.executor else 0,
            "ovms_infer_req_active": lambda v: v.executor.busy if v.executor else 0,
        }
        for family, value in gauges.items():
            if family in wanted:
                metric = GaugeMetricFamily(family, OVMS_FAMILIES[family][1], labels=["name", "version"])
                for v in versions:
                    metric.add_metric([v.name, str(v.version)], value(v))
                yield metric
        if "nv_inference_pending_request_count" in wanted:
            metric = GaugeMetricFamily(
                "nv_inference_pending_request_count",
                TRITON_FAMILIES["nv_inference_pending_request_count"][1],
                labels=["model", "version"],
            )
            for v in versions:  # Triton's meaning: queued, not yet executing
                metric.add_metric([v.name, str(v.version)], v.scheduler.queued if v.scheduler else 0)
            yield metric
        counters = {
            "nv_inference_request_success": lambda s: s.durations["success"].count,
            "nv_inference_count": lambda s: s.inference_count,
            "nv_inference_exec_count": lambda s: s.execution_count,
            "nv_inference_request_duration_us": lambda s: (
                (s.durations["success"].ns + s.durations["fail"].ns) // 1000
            ),
            "nv_inference_queue_duration_us": lambda s: s.durations["queue"].ns // 1000,
            "nv_inference_compute_input_duration_us": lambda s: s.durations["compute_input"].ns // 1000,
            "nv_inference_compute_infer_duration_us": lambda s: s.durations["compute_infer"].ns // 1000,
            "nv_inference_compute_output_duration_us": lambda s: s.durations["compute_output"].ns // 1000,
        }
        for family, value in counters.items():
            if family in wanted:
                metric = Metric(family, TRITON_FAMILIES[family][1], "counter")
                for v in versions:
                    metric.add_sample(family, {"model": v.name, "version": str(v.version)}, value(v.stats))
                yield metric
        if "ovgw_model_load_seconds" in wanted:
            family = "ovgw_model_load_seconds"
            metric = GaugeMetricFamily(family, GATEWAY_FAMILIES[family][1], labels=["name", "version"])
            for v in versions:
                if v.load_seconds:
                    metric.add_metric([v.name, str(v.version)], v.load_seconds)
            yield metric
        for family, field in (
            ("ovgw_model_download_bytes", "bytes"),
            ("ovgw_model_download_seconds", "seconds"),
        ):
            if family in wanted:
                metric = GaugeMetricFamily(family, GATEWAY_FAMILIES[family][1], labels=["name", "version"])
                for v in versions:
                    if v.download is not None:  # from object storage
                        metric.add_metric([v.name, str(v.version)], getattr(v.download, field))
                yield metric
        if "ovgw_model_cache_loads" in wanted:
            family = "ovgw_model_cache_loads"
            metric = Metric(family, GATEWAY_FAMILIES[family][1], "counter")
            for (name, version, result), count in sorted(manager.cache_loads.items()):
                metric.add_sample(family, {"name": name, "version": version, "result": result}, count)
            yield metric
        if "ovgw_batch_size" in wanted:
            family = "ovgw_batch_size"
            metric = HistogramMetricFamily(family, GATEWAY_FAMILIES[family][1], labels=["name", "version"])
            for v in versions:
                sizes = {size: b.compute_infer.count for size, b in v.stats.by_batch_size.items()}
                buckets = [
                    (str(bound), sum(n for s, n in sizes.items() if s <= bound)) for bound in BATCH_BUCKETS
                ]
                buckets.append(("+Inf", sum(sizes.values())))
                metric.add_metric([v.name, str(v.version)], buckets, sum(s * n for s, n in sizes.items()))
            yield metric
        if "nv_inference_request_failure" in wanted:
            family = "nv_inference_request_failure"
            metric = Metric(family, TRITON_FAMILIES[family][1], "counter")
            for v in versions:
                s = v.stats
                # Triton's reasons: REJECTED (queue full or timed out in it), CANCELED (the client left),
                # BACKEND (the inference itself failed), OTHER (the request was invalid).
                for reason, count in (
                    ("REJECTED", s.rejected_count + s.timed_out_count),
                    ("CANCELED", s.cancelled_count),
                    ("BACKEND", s.backend_fail_count),
                    ("OTHER", s.durations["fail"].count - s.backend_fail_count),
                ):
                    labels = {"model": v.name, "version": str(v.version), "reason": reason}
                    metric.add_sample(family, labels, count)
            yield metric
        if "ovgw_executions" in wanted:
            family = "ovgw_executions"
            metric = Metric(family, GATEWAY_FAMILIES[family][1], "counter")
            for v in versions:
                if isinstance(v.executor, AdaptiveExecution):
                    for execution, runs in v.executor.runs.items():
                        labels = {"name": v.name, "version": str(v.version), "execution": execution.value}
                        metric.add_sample(family, labels, runs)
            yield metric
        if "ovgw_lone_inference_seconds" in wanted:
            family = "ovgw_lone_inference_seconds"
            gauge = GaugeMetricFamily(
                family, GATEWAY_FAMILIES[family][1], labels=["name", "version", "execution"]
            )
            for v in versions:
                if isinstance(v.executor, AdaptiveExecution):
                    for execution, seconds in v.executor.solo_s.items():
                        if seconds is not None:
                            gauge.add_metric([v.name, str(v.version), execution.value], seconds)
            yield gauge
        for family, value in (
            ("ovgw_images_decoded", lambda s: s.images_decoded),
            ("ovgw_image_decode_cpu_us", lambda s: s.image_decode_cpu_ns // 1000),
        ):
            if family in wanted:
                metric = Metric(family, GATEWAY_FAMILIES[family][1], "counter")
                for v in versions:
                    metric.add_sample(family, {"name": v.name, "version": str(v.version)}, value(v.stats))
                yield metric
        for family, attribute in (
            ("ovgw_requests_rejected", "rejected_count"),
            ("ovgw_requests_timed_out", "timed_out_count"),
            ("ovgw_requests_cancelled", "cancelled_count"),
        ):
            if family in wanted:
                metric = Metric(family, GATEWAY_FAMILIES[family][1], "counter")
                for v in versions:
                    labels = {"name": v.name, "version": str(v.version)}
                    metric.add_sample(family, labels, getattr(v.stats, attribute))
                yield metric


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
