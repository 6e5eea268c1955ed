"""ovgw: an OpenVINO inference gateway speaking the KServe v2 / Open Inference Protocol over gRPC and REST."""

__version__ = "0.1.0"

from .gateway import Gateway  # noqa: E402
from .settings import ModelSettings, ServerSettings  # noqa: E402

__all__ = ["Gateway", "ModelSettings", "ServerSettings", "__version__"]
