"""grpc.aio's own floor: a server that answers ModelInfer with a canned response and does nothing else.

`make bench` loads it like the gateway (same loader, same gRPC rows) and reports the gateway's server CPU
per request and throughput against this floor: what the gateway itself costs beyond the transport Python's
grpcio gives any server moving the same bytes. By default the answers are `simple`'s (Triton's example
model: INT32 [1,16] in and out); with --model_path, another model's: its metadata as the gateway reports it
(dynamic dimensions -1) and zero-filled outputs of the shapes OpenVINO's shape inference gives for --shape
(benchmark_app's `name[dims],...`), so a model with large outputs sends as many bytes per answer as the
gateway does. Everything is precomputed once; ModelStatistics answers the count of ModelInfer calls
answered (how the benchmark divides the process's CPU time), and is not advertised (the loader asks for no
statistics).

With --infer, the floor also runs the model: each call's inputs become OpenVINO tensors (np.frombuffer over
the message, one copy into the tensor), run with start_async on a pool of infer requests of the compiled
model (THROUGHPUT hint, OpenVINO's optimal number of requests, as the gateway compiles it by default), and
the answer is the canned header followed by the outputs' bytes, joined once from OpenVINO's memory. No
validation, scheduling, statistics or metrics: the least any Python grpcio server can spend to serve this
model, and so the ceiling, on this machine and with this loader, of how close to benchmark_app any such
server can come (`make bench` sets both beside benchmark_app).

    python -m loadgen.bench.grpc_floor --port P [--model_name M --model_path model.xml \
        --shape 'x[1,3,256,256]'
                                           [--infer]]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
from collections.abc import AsyncIterator

# The floor runs grpc as the gateway does (grpc_tuning's listener), which must be chosen before grpc is
# imported.
from gateway.transports.grpc.tuning import prefer_iomgr_listener

prefer_iomgr_listener()

import grpc  # noqa: E402
import numpy as np  # noqa: E402
from grpc import aio  # noqa: E402

from gateway.core.records import TensorSpec  # noqa: E402
from gateway.malloc_tuning import tune_malloc  # noqa: E402
from gateway.proto import ovgw_grpc_service_pb2 as pb  # noqa: E402
from gateway.transports.grpc import wire as grpc_wire  # noqa: E402

SERVICE = "inference.GRPCInferenceService"


def simple_answers() -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...], dict]:
    """`simple`'s metadata as the floor has always shown it (INT32 [1,16] each way) and its zero outputs."""
    inputs = tuple(TensorSpec(name, "INT32", (1, 16)) for name in ("INPUT0", "INPUT1"))
    outputs = tuple(TensorSpec(name, "INT32", (1, 16)) for name in ("OUTPUT0", "OUTPUT1"))
    return inputs, outputs, {spec.name: np.zeros((1, 16), np.int32) for spec in outputs}


def parse_shapes(spec: str) -> dict[str, list[int]]:
    """benchmark_app's -shape: `a[1,3,224,224],b[1,16]`."""
    return {
        name: [int(d) for d in dims.split(",")] for name, dims in re.findall(r"([^,\[\]]+)\[([\d,]+)\]", spec)
    }


def model_answers(path: str, shape: str) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...], dict]:
    """A model's inputs and outputs as the gateway's metadata shows them, and zero outputs for `shape`."""
    import openvino as ov

    from gateway.runtime.executor import port_specs

    model = ov.Core().read_model(path)
    inputs, _ = port_specs(model.inputs, "input")
    outputs, _ = port_specs(model.outputs, "output")
    shapes = parse_shapes(shape)
    model.reshape({port: ov.PartialShape(shapes[port.get_any_name()]) for port in model.inputs})
    answers = {
        spec.name: np.zeros(tuple(port.get_shape()), port.get_element_type().to_dtype())
        for spec, port in zip(outputs, model.outputs, strict=True)
    }
    return inputs, outputs, answers


def _canned(name: str, inputs, outputs, answers: dict[str, np.ndarray]) -> dict[str, bytes]:
    meta = pb.ModelMetadataResponse(name=name, versions=["1"], platform="floor")
    for spec in inputs:
        meta.inputs.add(name=spec.name, datatype=spec.datatype, shape=list(spec.shape))
    for spec in outputs:
        meta.outputs.add(name=spec.name, datatype=spec.datatype, shape=list(spec.shape))
    answer = pb.ModelInferResponse(model_name=name, model_version="1")
    for spec in outputs:
        array = answers[spec.name]
        answer.outputs.add(name=spec.name, datatype=spec.datatype, shape=list(array.shape))
        answer.raw_output_contents.append(array.tobytes())
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


class InferPool:
    """A model compiled as the gateway compiles it by default (THROUGHPUT hint) and OpenVINO's optimal
    number of infer requests, each run with start_async and awaited on the event loop: what the floors
    that run the model share."""

    def __init__(self, model_path: str):
        import openvino as ov

        core = ov.Core()
        compiled = core.compile_model(core.read_model(model_path), "CPU", {"PERFORMANCE_HINT": "THROUGHPUT"})
        self.tensor = ov.Tensor
        self.inputs = {port.get_any_name(): i for i, port in enumerate(compiled.inputs)}
        self.outputs = {port.get_any_name(): i for i, port in enumerate(compiled.outputs)}
        self.dtypes = [np.dtype(port.get_element_type().to_dtype()) for port in compiled.inputs]
        self._loop = asyncio.get_running_loop()
        self._idle: asyncio.Queue = asyncio.Queue()
        self._done: dict[int, asyncio.Future] = {}
        for _ in range(int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))):
            request = compiled.create_infer_request()
            request.set_callback(self._completed, id(request))
            self._idle.put_nowait(request)

    def _completed(self, key: int) -> None:  # on an OpenVINO thread
        self._loop.call_soon_threadsafe(self._done[key].set_result, None)

    @contextlib.asynccontextmanager
    async def run(self, feeds: dict) -> AsyncIterator:
        """An idle infer request, run on `feeds`: its outputs are readable inside the block."""
        request = await self._idle.get()
        try:
            self._done[id(request)] = self._loop.create_future()
            request.start_async(feeds)
            await self._done[id(request)]
            yield request
        finally:
            self._idle.put_nowait(request)


class InferringFloor:
    """--infer: ModelInfer runs the model (see the module's docstring). The answer's header is canned for
    the bench's shape; the outputs' bytes are the inference's."""

    def __init__(self, model_path: str, header: bytes):
        self._pool = InferPool(model_path)
        self._header = header

    async def answer(self, message: bytes, context) -> bytes:
        rest, raws = grpc_wire.split_bytes_field(message, grpc_wire.RAW_INPUT_CONTENTS)
        tensors = pb.ModelInferRequest.FromString(rest).inputs
        pool = self._pool
        feeds = {}
        for tensor, raw in zip(tensors, raws, strict=True):
            index = pool.inputs[tensor.name]
            array = np.frombuffer(raw, pool.dtypes[index]).reshape(tuple(tensor.shape))
            feeds[index] = pool.tensor(array)  # read-only message bytes: OpenVINO copies them once
        async with pool.run(feeds) as request:
            outputs = [request.get_output_tensor(i).data.data.cast("B") for i in range(len(pool.outputs))]
            _Answered.count += 1
            return b"".join([self._header, *grpc_wire.bytes_field(grpc_wire.RAW_OUTPUT_CONTENTS, outputs)])


def _statistics(name: str):
    async def answer(request: bytes, context) -> bytes:
        stats = pb.ModelStatisticsResponse()
        entry = stats.model_stats.add(name=name, version="1")
        entry.inference_stats.success.count = _Answered.count
        return stats.SerializeToString()

    return answer


async def run_server(port: int, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
    """Serve `handlers` under the inference service's wire name on loopback until cancelled."""
    # the gateway's message limit (1 GiB), not grpc's default 4 MB: large models' answers are larger
    limit = 1 << 30
    server = aio.server(
        options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)]
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


async def serve(port: int, name: str, canned: dict[str, bytes], infer_model: str | None = None) -> None:
    handlers = {method: _handler(body) for method, body in canned.items()}
    if infer_model is None:
        handlers["ModelInfer"] = _handler(canned["ModelInfer"], counted=True)
    else:
        header = pb.ModelInferResponse.FromString(canned["ModelInfer"])
        del header.raw_output_contents[:]
        floor = InferringFloor(infer_model, header.SerializeToString())
        handlers["ModelInfer"] = grpc.unary_unary_rpc_method_handler(floor.answer)
    handlers["ModelStatistics"] = grpc.unary_unary_rpc_method_handler(_statistics(name))
    await run_server(port, handlers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model_name", default="simple")
    parser.add_argument("--model_path", help="an OpenVINO-readable model; default: `simple`'s answers")
    parser.add_argument("--shape", default="", help="benchmark_app's -shape for the answers' outputs")
    parser.add_argument("--infer", action="store_true", help="run the model (needs --model_path)")
    args = parser.parse_args()
    if args.infer and not args.model_path:
        parser.error("--infer needs --model_path")
    # As the gateway does: the floor with inference allocates and frees every tensor and answer, and with
    # glibc's defaults each would fault fresh pages in (gateway/malloc_tuning.py).
    tune_malloc()
    answers = model_answers(args.model_path, args.shape) if args.model_path else simple_answers()
    canned = _canned(args.model_name, *answers)
    served = serve(args.port, args.model_name, canned, args.model_path if args.infer else None)
    try:
        import uvloop  # the gateway's own event loop, for a like-for-like floor
    except ImportError:
        asyncio.run(served)
    else:
        uvloop.run(served)


if __name__ == "__main__":
    main()
