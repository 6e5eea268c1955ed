"""Raw gRPC calls with the gateway's generated messages: malformed requests no client library sends."""

from __future__ import annotations

import grpc
import numpy as np

from gateway.proto import ovgw_grpc_service_pb2 as pb

SERVICE = "/inference.GRPCInferenceService/"


class RawGrpc:
    def __init__(self, url: str):
        self.channel = grpc.insecure_channel(url)

    def call(self, method: str, request, response_type):
        stub = self.channel.unary_unary(
            SERVICE + method,
            request_serializer=type(request).SerializeToString,
            response_deserializer=response_type.FromString,
        )
        return stub(request, timeout=30)

    def infer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        return self.call("ModelInfer", request, pb.ModelInferResponse)


def simple_request(shape=(1, 16), datatype="INT32", names=("INPUT0", "INPUT1"), model="simple", version=""):
    req = pb.ModelInferRequest(model_name=model, model_version=version)
    for name in names:
        req.inputs.add(name=name, datatype=datatype, shape=shape)
        req.raw_input_contents.append(np.ones(shape, np.int32).tobytes())
    return req


def dummy_request(model="dummy", version="", raw=None, shape=(1, 10)):
    req = pb.ModelInferRequest(model_name=model, model_version=version)
    req.inputs.add(name="b", datatype="FP32", shape=shape)
    req.raw_input_contents.append(raw if raw is not None else np.ones(shape, np.float32).tobytes())
    return req
