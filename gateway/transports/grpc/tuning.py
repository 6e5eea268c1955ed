"""grpc core settings that only take effect when made before grpc is first imported.

The listener. Since grpcio 1.6x, grpc core accepts and reads server connections with its EventEngine: a
read ends on an EventEngine thread, which posts the call's event to the completion queue, whose poller
thread (grpc.aio's) wakes the asyncio loop. With the `event_engine_listener` experiment off, connections are
read by the older iomgr endpoints, which the completion queue's poller drives itself: one thread woken
fewer per message. Measured with perf_analyzer on `simple` (Triton's example model) over gRPC, two
gateways side by side, alternating, medians of 5 (README, "Load testing"): c=1 p50 863 -> 650 us and
server CPU per request 774 -> 586 us; the ResNet-50-shaped model (600 KB in) unchanged. Saturated, `simple`
read 0.83-1.01 x the throughput in later sets (c=16, c=64; CPU per request 1.02-1.05 x): the figure to
watch. Nothing a client sees changes: same HTTP/2 transport, same channel arguments (message limits,
max_concurrent_streams, the connection bound), TLS included.

grpc reads GRPC_EXPERIMENTS once, when it is imported, so this runs at the top of the package
(`gateway/__init__.py`). A GRPC_EXPERIMENTS that names the experiment (`event_engine_listener` to keep
the EventEngine listener) is left as the user set it; other experiments named there are kept. A grpcio
that no longer knows the experiment logs "Unknown experiment" once at start and runs its default (tested
on 1.85).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, MutableMapping

LISTENER_EXPERIMENT = "event_engine_listener"


def prefer_iomgr_listener(
    environ: MutableMapping[str, str] | None = None, modules: Mapping[str, object] | None = None
) -> bool:
    """Turn the EventEngine listener off for this process; False (nothing changed) when grpc is already
    imported (too late to matter) or the user's GRPC_EXPERIMENTS already decides it."""
    environ = os.environ if environ is None else environ
    if "grpc" in (sys.modules if modules is None else modules):
        return False
    current = environ.get("GRPC_EXPERIMENTS", "")
    named = {item.strip().lstrip("-") for item in current.split(",")}
    if LISTENER_EXPERIMENT in named:
        return False
    environ["GRPC_EXPERIMENTS"] = ",".join(filter(None, (current.strip(), "-" + LISTENER_EXPERIMENT)))
    return True
