"""The peer `make bench` measures the gateway against: KServe's ModelServer with a minimal OpenVINO model
class, written the way a user would write one (the kserve SDK's Model, OpenVINO's Python API, a pool of
infer requests so that concurrent requests run in parallel on the THROUGHPUT hint's streams).

    python -m loadgen.bench.kserve_peer --model_name NAME --model_path MODEL.xml --http_port P --grpc_port Q
"""

from __future__ import annotations

import argparse
import asyncio

import numpy as np
import openvino as ov
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer


class OpenVINOModel(Model):
    def __init__(self, name: str, path: str):
        super().__init__(name)
        self.path = path
        self.load()

    def load(self) -> bool:
        self.compiled = ov.Core().compile_model(self.path, "CPU", {"PERFORMANCE_HINT": "THROUGHPUT"})
        count = int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self.requests: asyncio.Queue = asyncio.Queue()
        for _ in range(count):
            self.requests.put_nowait(self.compiled.create_infer_request())
        self.output_names = [port.get_any_name() for port in self.compiled.outputs]
        self.ready = True
        return self.ready

    def get_input_types(self) -> list[dict]:
        return [_tensor_metadata(port) for port in self.compiled.inputs]

    def get_output_types(self) -> list[dict]:
        return [_tensor_metadata(port) for port in self.compiled.outputs]

    async def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        inputs = {i.name: i.as_numpy() for i in payload.inputs}
        request = await self.requests.get()
        try:
            result = await asyncio.to_thread(request.infer, inputs)
            arrays = [result[port].copy() for port in self.compiled.outputs]
        finally:
            self.requests.put_nowait(request)
        outputs = []
        for name, array in zip(self.output_names, arrays, strict=True):
            out = InferOutput(name=name, shape=list(array.shape), datatype=_datatype(array))
            out.set_data_from_numpy(array, binary_data=True)
            outputs.append(out)
        return InferResponse(model_name=self.name, infer_outputs=outputs, response_id=payload.id or "")


def _tensor_metadata(port) -> dict:
    shape = [d.get_length() if d.is_static else -1 for d in port.get_partial_shape()]
    datatype = _datatype(np.empty(0, port.get_element_type().to_dtype()))
    return {"name": port.get_any_name(), "datatype": datatype, "shape": shape}


def _datatype(array) -> str:
    return {"float32": "FP32", "int32": "INT32", "int64": "INT64", "float16": "FP16"}[str(array.dtype)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model_name", required=True)
    parser.add_argument("--model_path", required=True)
    parser.add_argument("--http_port", type=int, required=True)
    parser.add_argument("--grpc_port", type=int, required=True)
    args = parser.parse_args()
    server = ModelServer(
        http_port=args.http_port, grpc_port=args.grpc_port, enable_latency_logging=False, workers=1
    )
    server.start([OpenVINOModel(args.model_name, args.model_path)])


if __name__ == "__main__":
    main()
