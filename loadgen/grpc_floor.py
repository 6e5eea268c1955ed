"""grpc.aio's own floor: a server that answers ModelInfer with a canned response and does nothing else.

`make bench` loads it like the gateway (same loader, same gRPC rows of `simple`) and reports the gateway's
server CPU per request above this floor: what the gateway itself costs beyond the transport Python's
grpcio gives any server. The answers are `simple`'s (Triton's example model: INT32 [1,16] in and out),
precomputed once; ModelStatistics answers the count of ModelInfer calls answered (how the benchmark
divides the process's CPU time), and is not advertised (the loader asks for no statistics).

    python -m loadgen.grpc_floor --port P
"""

from __future__ import annotations

import argparse
import asyncio

# The floor runs grpc as the gateway does (grpc_tuning's listener), which must be chosen before grpc is
# imported.
from gateway.grpc_tuning import prefer_iomgr_listener

prefer_iomgr_listener()

import grpc  # noqa: E402
import numpy as np  # noqa: E402
from grpc import aio  # noqa: E402

from gateway.proto import ovgw_grpc_service_pb2 as pb  # noqa: E402

SERVICE = "inference.GRPCInferenceService"


def _canned() -> dict[str, bytes]:
    meta = pb.ModelMetadataResponse(name="simple", versions=["1"], platform="floor")
    for name in ("INPUT0", "INPUT1"):
        meta.inputs.add(name=name, datatype="INT32", shape=[1, 16])
    answer = pb.ModelInferResponse(model_name="simple", model_version="1")
    for name in ("OUTPUT0", "OUTPUT1"):
        answer.outputs.add(name=name, datatype="INT32", shape=[1, 16])
        answer.raw_output_contents.append(np.zeros((1, 16), np.int32).tobytes())
    # No extensions: the loader then asks for no model config and no statistics.
    server = pb.ServerMetadataResponse(name="grpc-floor", version="0")
    return {
        "ModelInfer": answer.SerializeToString(),
        "ModelMetadata": meta.SerializeToString(),
        "ServerMetadata": server.SerializeToString(),
        "ServerLive": pb.ServerLiveResponse(live=True).SerializeToString(),
        "ServerReady": pb.ServerReadyResponse(ready=True).SerializeToString(),
        "ModelReady": pb.ModelReadyResponse(ready=True).SerializeToString(),
    }


class _Answered:
    count = 0


def _handler(response: bytes, counted: bool = False):
    async def answer(request: bytes, context) -> bytes:
        if counted:
            _Answered.count += 1
        return response

    return grpc.unary_unary_rpc_method_handler(answer)  # bytes in, bytes out: no (de)serialisation


async def _statistics(request: bytes, context) -> bytes:
    stats = pb.ModelStatisticsResponse()
    entry = stats.model_stats.add(name="simple", version="1")
    entry.inference_stats.success.count = _Answered.count
    return stats.SerializeToString()


async def serve(port: int) -> None:
    server = aio.server()
    handlers = {name: _handler(body) for name, body in _canned().items()}
    handlers["ModelInfer"] = _handler(_canned()["ModelInfer"], counted=True)
    handlers["ModelStatistics"] = grpc.unary_unary_rpc_method_handler(_statistics)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    port = parser.parse_args().port
    try:
        import uvloop  # the gateway's own event loop, for a like-for-like floor
    except ImportError:
        asyncio.run(serve(port))
    else:
        uvloop.run(serve(port))


if __name__ == "__main__":
    main()
