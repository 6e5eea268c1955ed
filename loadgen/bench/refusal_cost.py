"""What refusing a gRPC request costs the server, and the overload figures that cost allows.

A refusal is not free: grpc core and grpc.aio read the whole message and run a handler before any status can
go back. This module measures the server's CPU time per refused call (calls for a model the server does not
serve, carrying a given payload: the cheapest refusal, answered before any model is looked at) and, given
the CPU a served call costs (a), the most that any admission policy could reach on a saturated machine:

- admitted throughput X with `offered` calls per second: X * a + (offered - X) * r <= capacity * a (the CPU
  the server had at capacity), so X / capacity <= (a - offered / capacity * r) / (a - r);
- with closed-loop clients, admitted throughput >= 0.95 x capacity leaves 5 % of that CPU to refusals:
  at most 0.05 * capacity * a / r refusals per second, however many clients send them.

    python -m loadgen.bench.refusal_cost --url 127.0.0.1:8001 --pid PID --payload-bytes 602112
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import time
from dataclasses import asdict, dataclass

from loadgen.bench.throughput import process_cpu_s

_METHOD = "/inference.GRPCInferenceService/ModelInfer"
UNSERVED_MODEL = "no-such-model-refused"


@dataclass(frozen=True)
class RefusalCost:
    cpu_us_per_call: float  # the server process's CPU time per answered call, all its threads
    calls_per_second: float
    status_counts: dict[str, int]


def request_bytes(payload_bytes: int) -> bytes:
    """A ModelInferRequest for UNSERVED_MODEL with one UINT8 input of `payload_bytes` raw bytes."""
    from gateway.proto import ovgw_grpc_service_pb2 as pb

    request = pb.ModelInferRequest(model_name=UNSERVED_MODEL)
    request.inputs.add(name="input", datatype="UINT8", shape=[1, payload_bytes])
    request.raw_input_contents.append(bytes(payload_bytes))
    return request.SerializeToString()


def _client(url: str, body: bytes, in_flight: int, seconds: float, results) -> None:
    import grpc
    from grpc import aio

    async def run() -> dict[str, int]:
        counts: dict[str, int] = {}
        async with aio.insecure_channel(url) as channel:
            call = channel.unary_unary(_METHOD)  # bytes in, bytes out: the client spends nothing on protobuf
            stop = time.monotonic() + seconds

            async def loop() -> None:
                while time.monotonic() < stop:
                    try:
                        await call(body)
                        code = grpc.StatusCode.OK.name
                    except aio.AioRpcError as e:
                        code = e.code().name
                    counts[code] = counts.get(code, 0) + 1

            await asyncio.gather(*(loop() for _ in range(in_flight)))
        return counts

    results.put(asyncio.run(run()))


def measure(
    url: str, pid: int, payload_bytes: int, seconds: float = 4.0, processes: int = 2, in_flight: int = 4
) -> RefusalCost:
    """Calls for UNSERVED_MODEL from `processes` client processes, `in_flight` calls each, for `seconds`;
    the server's CPU time is read from /proc over the middle of the run (the clients' start and end left
    out)."""
    body = request_bytes(payload_bytes)
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    run_seconds = seconds + 2.0
    clients = [
        context.Process(target=_client, args=(url, body, in_flight, run_seconds, results))
        for _ in range(processes)
    ]
    for client in clients:
        client.start()
    time.sleep(1.0)  # the clients' interpreters up and their channels connected
    cpu0, t0 = process_cpu_s(pid), time.monotonic()
    time.sleep(seconds)
    cpu1, t1 = process_cpu_s(pid), time.monotonic()
    counts: dict[str, int] = {}
    for _ in clients:
        for code, n in results.get(timeout=run_seconds + 60).items():
            counts[code] = counts.get(code, 0) + n
    for client in clients:
        client.join()
    rate = sum(counts.values()) / run_seconds  # calls per second, over the whole run
    return RefusalCost((cpu1 - cpu0) / max(1e-9, rate * (t1 - t0)) * 1e6, rate, counts)


def admitted_ceiling(served_cpu_us: float, refusal_cpu_us: float, overload: float) -> float:
    """The admitted throughput / capacity that `overload` x capacity offered allows, when the server's CPU at
    capacity is all there is and every call beyond the admitted ones is refused (0 when even refusing them all
    takes more than that CPU)."""
    if overload <= 1:
        return 1.0
    ceiling = (served_cpu_us - overload * refusal_cpu_us) / (served_cpu_us - refusal_cpu_us)
    return min(1.0, max(0.0, ceiling))


def refusals_per_second_allowed(capacity: float, served_cpu_us: float, refusal_cpu_us: float) -> float:
    """Refusals per second that leave admitted throughput >= 0.95 x capacity on a saturated server."""
    return 0.05 * capacity * served_cpu_us / refusal_cpu_us


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m loadgen.bench.refusal_cost", description=__doc__)
    p.add_argument("--url", required=True, help="the server's gRPC address")
    p.add_argument("--pid", type=int, required=True, help="the server's process, for its CPU time")
    p.add_argument("--payload-bytes", type=int, default=128)
    p.add_argument("--seconds", type=float, default=4.0)
    args = p.parse_args()
    print(json.dumps(asdict(measure(args.url, args.pid, args.payload_bytes, args.seconds))))


if __name__ == "__main__":
    main()
