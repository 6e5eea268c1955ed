"""ovgw: an OpenVINO inference gateway speaking the KServe v2 / Open Inference Protocol over gRPC and REST."""

__version__ = "0.1.0"

# Before anything imports grpc: its settings are read once, at import (see grpc_tuning).
from gateway.transports.grpc.tuning import prefer_iomgr_listener  # noqa: E402

prefer_iomgr_listener()

from gateway.config.settings import ModelSettings, ServerSettings  # noqa: E402
from gateway.dataplane.gateway import Gateway  # noqa: E402

__all__ = ["Gateway", "ModelSettings", "ServerSettings", "__version__"]
