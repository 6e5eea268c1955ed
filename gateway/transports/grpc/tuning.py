"""grpc core settings that only take effect when made before grpc is first imported.

The listener: with grpc's `event_engine_listener` experiment off, server connections are read by grpc core's
iomgr endpoints, which the completion queue's poller drives itself: one thread woken fewer per message than
with the EventEngine listener (docs/design/grpc-listener.md). grpc reads GRPC_EXPERIMENTS once, when it is
imported, so this runs at the top of the package (`gateway/__init__.py`). A GRPC_EXPERIMENTS that names the
experiment is left as the user set it; other experiments named there are kept.
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
