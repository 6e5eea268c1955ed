"""Container health check: exit 0 when the gateway in this container answers ready.

    python -m gateway.healthcheck [--pid 1]

The image's HEALTHCHECK runs this. The REST port is whatever `docker run IMAGE ...` passed, so it is read
from the server's own command line (/proc/<pid>/cmdline): --rest_port, or Triton's default 8000 when no port
flag was given. A server with REST off is checked with gRPC ServerReady on --port.
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request

from gateway.config.settings import DEFAULT_GRPC_PORT, DEFAULT_REST_PORT


def server_ports(argv: list[str]) -> tuple[int, int]:
    """(gRPC, REST) ports from a gateway command line, as the CLI resolves them (0 = off)."""
    values: dict[str, str] = {}
    for i, arg in enumerate(argv):
        for flag in ("--port", "--rest_port"):
            if arg == flag and i + 1 < len(argv):
                values[flag] = argv[i + 1]
            elif arg.startswith(flag + "="):
                values[flag] = arg.split("=", 1)[1]
    if not values:
        return DEFAULT_GRPC_PORT, DEFAULT_REST_PORT
    return int(values.get("--port", 0)), int(values.get("--rest_port", 0))


def ready(grpc_port: int, rest_port: int, host: str = "127.0.0.1", timeout: float = 3.0) -> bool:
    if rest_port:
        try:
            with urllib.request.urlopen(f"http://{host}:{rest_port}/v2/health/ready", timeout=timeout) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False
    import grpc

    from gateway.proto import ovgw_grpc_service_pb2 as pb

    with grpc.insecure_channel(f"{host}:{grpc_port}") as channel:
        call = channel.unary_unary(
            "/inference.GRPCInferenceService/ServerReady",
            request_serializer=pb.ServerReadyRequest.SerializeToString,
            response_deserializer=pb.ServerReadyResponse.FromString,
        )
        try:
            return call(pb.ServerReadyRequest(), timeout=timeout).ready
        except grpc.RpcError:
            return False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gateway.healthcheck")
    p.add_argument("--pid", default="1", help="the gateway's process (the container's entrypoint: 1)")
    args = p.parse_args(argv)
    try:
        with open(f"/proc/{args.pid}/cmdline", "rb") as f:
            command = [part.decode() for part in f.read().split(b"\0") if part]
    except OSError as e:
        print(f"cannot read the gateway's command line: {e}", file=sys.stderr)
        return 1
    grpc_port, rest_port = server_ports(command)
    ok = ready(grpc_port, rest_port)
    print("ready" if ok else f"not ready (gRPC port {grpc_port}, REST port {rest_port})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
