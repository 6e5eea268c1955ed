"""ovgw: an OpenVINO inference gateway speaking the KServe v2 / Open Inference Protocol over gRPC and REST."""

# Before anything imports grpc: its settings are read once, at import (see transports/grpc/tuning.py).
from gateway.transports.grpc.tuning import prefer_iomgr_listener  # noqa: E402

prefer_iomgr_listener()

from gateway.config.settings import ModelSettings, ServerSettings  # noqa: E402
from gateway.core.version import __version__  # noqa: E402
from gateway.dataplane.gateway import Gateway  # noqa: E402

__all__ = ["Gateway", "ModelSettings", "ServerSettings", "__version__"]
