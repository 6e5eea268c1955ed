"""The least a Python grpcio server can spend to serve a model to perf_analyzer `--shared-memory=system`.

A grpc.aio server (the gateway's event loop and listener) that answers what perf_analyzer asks and nothing
else: ServerMetadata, ModelMetadata and a minimal ModelConfig (max_batch_size 0: perf_analyzer takes whole
shapes from `--shape`), ModelStatistics (the count answered), system shared-memory register and unregister
(the object mapped read-write, as the gateway maps it), CUDA unregister; and ModelInfer with its inputs read
as views of their regions and its outputs copied from OpenVINO's tensors into theirs: no validation,
scheduling, statistics or metrics. The shared-memory bench runs it beside the gateway: its throughput over
benchmark_app's is how close any such server comes on this machine with this client.

    python -m loadgen.bench.shm_floor --port P --model_name M --model_path model.xml --shape 'x[1,3,256,256]'
"""

from __future__ import annotations

import argparse
import mmap
import os

from gateway.transports.grpc.tuning import prefer_iomgr_listener

prefer_iomgr_listener()  # before grpc is imported, as the gateway does

import grpc  # noqa: E402
import numpy as np  # noqa: E402

from gateway.malloc_tuning import tune_malloc  # noqa: E402
from gateway.proto import ovgw_grpc_service_pb2 as pb  # noqa: E402
from loadgen.bench.grpc_floor import (  # noqa: E402
    InferPool,
    _Answered,
    _canned,
    _handler,
    _statistics,
    model_answers,
    run_server,
)

SHM_ROOT = "/dev/shm"


class SharedMemoryFloor:
    def __init__(self, model_path: str, name: str, datatypes: dict[str, str]):
        self._pool = InferPool(model_path)
        self._name = name
        self._datatypes = datatypes  # output name -> its protocol datatype
        self._regions: dict[str, tuple[mmap.mmap, int]] = {}  # name -> (mapping, offset)

    def _view(self, params) -> memoryview:
        mapping, base = self._regions[params["shared_memory_region"].string_param]
        start = base + (params["shared_memory_offset"].int64_param if "shared_memory_offset" in params else 0)
        return memoryview(mapping)[start : start + params["shared_memory_byte_size"].int64_param]

    async def register(self, message: bytes, context) -> bytes:
        request = pb.SystemSharedMemoryRegisterRequest.FromString(message)
        fd = os.open(os.path.join(SHM_ROOT, request.key.lstrip("/")), os.O_RDWR | os.O_NOFOLLOW)
        try:
            mapping = mmap.mmap(fd, request.offset + request.byte_size)
        finally:
            os.close(fd)
        self._regions[request.name] = (mapping, request.offset)
        return b""

    async def unregister(self, message: bytes, context) -> bytes:
        name = pb.SystemSharedMemoryUnregisterRequest.FromString(message).name
        if name:
            self._regions.pop(name, None)
        else:
            self._regions.clear()
        return b""

    async def infer(self, message: bytes, context) -> bytes:
        msg = pb.ModelInferRequest.FromString(message)
        pool = self._pool
        feeds = {}
        for tensor in msg.inputs:
            index = pool.inputs[tensor.name]
            array = np.frombuffer(self._view(tensor.parameters), pool.dtypes[index]).reshape(
                tuple(tensor.shape)
            )
            feeds[index] = pool.tensor(array, shared_memory=True)
        async with pool.run(feeds) as request:
            answer = pb.ModelInferResponse(model_name=self._name, model_version="1")
            for output in msg.outputs:
                data = request.get_output_tensor(pool.outputs[output.name]).data
                target = np.frombuffer(self._view(output.parameters), np.uint8, count=data.nbytes)
                target[:] = data.reshape(-1).view(np.uint8)  # the one copy, into the client's region
                answer.outputs.add(
                    name=output.name, datatype=self._datatypes[output.name], shape=list(data.shape)
                )
                answer.raw_output_contents.append(b"")
            _Answered.count += 1
            return answer.SerializeToString()


async def serve(port: int, name: str, model_path: str, shape: str) -> None:
    inputs, outputs, answers = model_answers(model_path, shape)
    canned = _canned(name, inputs, outputs, answers)
    config = pb.ModelConfigResponse()
    config.config.name, config.config.platform, config.config.max_batch_size = name, "openvino", 0
    server_meta = pb.ServerMetadataResponse(
        name="shm-floor", version="0", extensions=["system_shared_memory"]
    )
    floor = SharedMemoryFloor(model_path, name, {spec.name: spec.datatype for spec in outputs})
    handlers = {method: _handler(body) for method, body in canned.items() if method != "ModelInfer"}
    handlers["ServerMetadata"] = _handler(server_meta.SerializeToString())
    handlers["ModelConfig"] = _handler(config.SerializeToString())
    handlers["ModelStatistics"] = grpc.unary_unary_rpc_method_handler(_statistics(name))
    handlers["ModelInfer"] = grpc.unary_unary_rpc_method_handler(floor.infer)
    handlers["SystemSharedMemoryRegister"] = grpc.unary_unary_rpc_method_handler(floor.register)
    handlers["SystemSharedMemoryUnregister"] = grpc.unary_unary_rpc_method_handler(floor.unregister)
    handlers["CudaSharedMemoryUnregister"] = _handler(b"")
    await run_server(port, handlers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model_name", required=True)
    parser.add_argument("--model_path", required=True)
    parser.add_argument("--shape", required=True, help="benchmark_app's -shape for the answers' outputs")
    args = parser.parse_args()
    tune_malloc()
    import uvloop

    uvloop.run(serve(args.port, args.model_name, args.model_path, args.shape))


if __name__ == "__main__":
    main()
