"""gRPC transport: `inference.GRPCInferenceService` on grpc.aio. Translation only.

The handlers are registered under the wire name `inference.GRPCInferenceService`
with our own generated messages (proto package `ovgw.inference`): on the wire only
the method path and the field numbers count, and a distinct proto package lets
this module share a process with tritonclient (see protos/ovgw_grpc_service.proto).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, replace
from time import perf_counter_ns
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from grpc import aio

from gateway.codecs.tensor import (
    array_from_contents,
    array_from_raw,
    check_declared_shape,
    datatype_or_error,
    encoded_images_from_raw,
    raw_from_array,
)
from gateway.core.errors import GatewayError, InvalidArgument
from gateway.core.records import InferInput, InferRequest, InferResponse, Interface, Method, RequestedOutput
from gateway.dataplane.api import DecodeTarget, GatewayApi
from gateway.memory.budget import Charge, MemoryBudgetExceeded, decoded_bytes
from gateway.memory.shared_memory import (
    REGION,
    Placement,
    SystemSharedMemory,
    cuda_unsupported,
    output_placements,
    output_targets,
    write_outputs,
)
from gateway.proto import ovgw_grpc_service_pb2 as pb
from gateway.scheduling.scheduler import WhenFull
from gateway.security.restricted import ApiCategory, ApiGuard
from gateway.transports.grpc.wire import (
    INFER_RESPONSE,
    RAW_INPUT_CONTENTS,
    RAW_OUTPUT_CONTENTS,
    bytes_field,
    length_delimited,
    split_bytes_field,
)

log = logging.getLogger(__name__)

SERVICE_NAME = "inference.GRPCInferenceService"


def parameters_from_proto(params) -> dict:
    """InferParameter and ModelRepositoryParameter maps alike: both are a `parameter_choice` oneof."""
    out = {}
    for key, value in params.items():
        which = value.WhichOneof("parameter_choice")
        out[key] = getattr(value, which) if which else None
    return out


def parse_infer_request(message: bytes) -> InferMessage:
    """A ModelInferRequest off the wire: protobuf parses all but raw_input_contents, which stay views of
    the message's bytes (see grpc_wire)."""
    rest, raw = split_bytes_field(message, RAW_INPUT_CONTENTS)
    return InferMessage(pb.ModelInferRequest.FromString(rest), raw)


@dataclass(frozen=True, slots=True)
class InferMessage:
    message: pb.ModelInferRequest  # without raw_input_contents
    raw_input_contents: list[memoryview]
    charge: Charge | None = None  # the call's account with the memory budget


def decode_infer_request(
    parsed: InferMessage, served: DecodeTarget | None = None, memory: SystemSharedMemory | None = None
) -> InferRequest:
    """The request as a record; an input in shared memory (`memory`'s regions) is a view of its region."""
    msg, raw = parsed.message, parsed.raw_input_contents
    if served is not None:
        served.check_input_count(len(msg.inputs))
    parameters = [parameters_from_proto(tensor.parameters) for tensor in msg.inputs]
    # raw_input_contents holds the inputs that are not in shared memory, in order (Triton's rule)
    sent = sum(REGION not in p for p in parameters)
    if raw and len(raw) != sent:
        raise InvalidArgument(
            f"raw_input_contents has {len(raw)} entries; expected one per input not in shared memory ({sent})"
        )
    raw_entries = iter(raw)
    inputs = []
    for tensor, params in zip(msg.inputs, parameters, strict=True):
        name = tensor.name
        dt = datatype_or_error(name, tensor.datatype)
        shape = check_declared_shape(name, tensor.shape)
        has_typed = tensor.HasField("contents")
        placement = _placement(memory, f"input '{name}'", params)
        if placement is not None or raw:
            if has_typed:
                where = "shared memory" if placement is not None else "raw_input_contents"
                raise InvalidArgument(f"input '{name}': has both {where} and typed contents; send one")
            section = placement.view() if placement is not None else next(raw_entries)
            if dt.name == "BYTES" and served is not None and served.takes_images(name):
                data = encoded_images_from_raw(name, shape, section)
            else:
                data = array_from_raw(name, dt.name, shape, section)
        elif has_typed:
            if dt.contents_field is None:
                raise InvalidArgument(
                    f"input '{name}': datatype {dt.name} has no typed contents field; use raw_input_contents"
                )
            values = getattr(tensor.contents, dt.contents_field)
            if dt.name == "BYTES":  # a protobuf repeated field, not the list a JSON array decodes to
                values = list(values)
            data = array_from_contents(name, dt.name, shape, values)
        else:
            raise InvalidArgument(
                f"input '{name}': no data; send raw_input_contents or contents.{dt.contents_field}"
            )
        inputs.append(InferInput(name, dt.name, shape, data, params))
    outputs = [RequestedOutput(o.name, parameters_from_proto(o.parameters)) for o in msg.outputs] or None
    return InferRequest(
        model_name=msg.model_name,
        model_version=msg.model_version,
        id=msg.id,
        inputs=inputs,
        outputs=outputs,
        parameters=parameters_from_proto(msg.parameters),
    )


def _placement(memory: SystemSharedMemory | None, what: str, params: dict) -> Placement | None:
    if memory is None:
        if REGION in params:
            raise InvalidArgument(f"{what}: shared memory is not available here")
        return None
    return memory.placement(what, params)


def encode_infer_response(
    response: InferResponse, final: bool = False, in_shared_memory: Collection[str] = ()
) -> list[bytes | memoryview]:
    """A serialized ModelInferResponse, as parts to join once: protobuf writes the small rest, and each
    output's raw_output_contents entry is a view of its array (copied only by the join). tritonclient
    reads outputs only from raw_output_contents: one entry per output, in order; an output written to
    shared memory has an empty entry. `final`: Triton's `triton_final_response` parameter, for stream
    clients that asked for it."""
    msg = pb.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version, id=response.id
    )
    for out in response.outputs:
        msg.outputs.add(name=out.name, datatype=out.datatype, shape=out.shape)
    if final:
        msg.parameters["triton_final_response"].bool_param = True
    contents = [
        b"" if out.name in in_shared_memory else raw_from_array(out.datatype, out.data)
        for out in response.outputs
    ]
    return [msg.SerializeToString(), *bytes_field(RAW_OUTPUT_CONTENTS, contents)]


def _tensor_metadata(target, specs) -> None:
    for s in specs:
        target.add(name=s.name, datatype=s.datatype, shape=s.shape)


class GrpcServicer:
    def __init__(self, gateway: GatewayApi, guard: ApiGuard | None = None):
        self.gateway = gateway
        self.guard = guard if guard is not None and guard.active else None

    def check_restriction(self, method: str, context) -> None:
        """PERMISSION_DENIED for a call of a restricted category without its metadata (see restricted)."""
        if self.guard is not None:
            metadata = dict(context.invocation_metadata() or ())
            self.guard.check(CATEGORIES[method], metadata.get)

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=await self.gateway.live())

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=await self.gateway.ready())

    async def ModelReady(self, request, context):
        ready = await self.gateway.model_ready(request.name, request.version, Interface.GRPC)
        return pb.ModelReadyResponse(ready=ready)

    async def ServerMetadata(self, request, context):
        meta = await self.gateway.server_metadata()
        return pb.ServerMetadataResponse(name=meta.name, version=meta.version, extensions=meta.extensions)

    async def ModelMetadata(self, request, context):
        meta = await self.gateway.model_metadata(request.name, request.version, Interface.GRPC)
        msg = pb.ModelMetadataResponse(name=meta.name, versions=meta.versions, platform=meta.platform)
        _tensor_metadata(msg.inputs, meta.inputs)
        _tensor_metadata(msg.outputs, meta.outputs)
        return msg

    async def ModelInfer(self, request: InferMessage, context) -> bytes:
        received = perf_counter_ns()
        remaining = context.time_remaining()  # the client's deadline, if it set one
        deadline = None if remaining is None else time.monotonic() + remaining
        msg = request.message
        async with self.gateway.request(
            msg.model_name, msg.model_version, Interface.GRPC, deadline=deadline, received_ns=received
        ) as call:
            memory = self.gateway.shared_memory
            decoded = decode_infer_request(request, call.servable, memory)
            if request.charge is not None:
                request.charge.grow(decoded_bytes(i.data for i in decoded.inputs), "the decoded inputs")
            placements = output_placements(memory, decoded.outputs)
            response = await call.infer(decoded, output_targets(placements))
            write_outputs(response.outputs, placements)
            # the one copy of each output byte
            return b"".join(encode_infer_response(response, in_shared_memory=placements))

    # --- Triton's shared-memory extensions ---------------------------------------------------------

    async def SystemSharedMemoryStatus(self, request, context):
        msg = pb.SystemSharedMemoryStatusResponse()
        for region in await self.gateway.shared_memory_status(request.name):
            msg.regions[region.name].CopyFrom(
                pb.SystemSharedMemoryStatusResponse.RegionStatus(
                    name=region.name, key=region.key, offset=region.offset, byte_size=region.byte_size
                )
            )
        return msg

    async def SystemSharedMemoryRegister(self, request, context):
        await self.gateway.register_shared_memory(
            request.name, request.key, request.offset, request.byte_size
        )
        return pb.SystemSharedMemoryRegisterResponse()

    async def SystemSharedMemoryUnregister(self, request, context):
        await self.gateway.unregister_shared_memory(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    async def CudaSharedMemoryStatus(self, request, context):
        return pb.CudaSharedMemoryStatusResponse()  # no GPU regions, ever

    async def CudaSharedMemoryRegister(self, request, context):
        self.gateway.shared_memory.check_enabled()
        raise cuda_unsupported(request.name)

    async def CudaSharedMemoryUnregister(self, request, context):
        self.gateway.shared_memory.check_enabled()
        return pb.CudaSharedMemoryUnregisterResponse()

    async def ModelConfig(self, request, context):
        config = await self.gateway.model_config(request.name, request.version)
        return json_format.ParseDict({"config": config}, pb.ModelConfigResponse())

    async def ModelStatistics(self, request, context):
        stats = await self.gateway.statistics(request.name, request.version)
        return json_format.ParseDict(
            {"model_stats": stats}, pb.ModelStatisticsResponse(), ignore_unknown_fields=True
        )

    async def RepositoryIndex(self, request, context):
        msg = pb.RepositoryIndexResponse()
        for row in await self.gateway.repository_index(ready_only=request.ready):
            msg.models.add(name=row.name, version=row.version, state=row.state, reason=row.reason)
        return msg

    async def RepositoryModelLoad(self, request, context):
        await self.gateway.load_model(request.model_name, parameters_from_proto(request.parameters))
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request, context):
        await self.gateway.unload_model(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    async def ModelStreamInfer(self, raw_requests, context):
        """Triton's bidirectional stream: each request answered on the stream as soon as it completes.

        A failed request gets a response with `error_message`; the stream goes on. Back-pressure is the
        stream's own: the next message is read only once the model the last one named can queue it, so
        a client that pipelines faster than the model runs is slowed down by HTTP/2 flow control instead
        of being refused (unary clients keep the bounded queue and its RESOURCE_EXHAUSTED).
        """
        try:
            self.check_restriction("ModelStreamInfer", context)
        except GatewayError as e:
            await context.abort(e.code.grpc_status, e.message)
        responses: asyncio.Queue = asyncio.Queue()
        in_flight: set[asyncio.Task] = set()

        async def answer(parsed: InferMessage | None, charge: Charge) -> None:
            request_id = ""
            try:
                if parsed is None:
                    self.gateway.count_unrouted(Interface.GRPC, Method.MODEL_INFER)
                    raise InvalidArgument("the request is not a valid ModelInferRequest message")
                msg = parsed.message
                request_id = msg.id
                async with self.gateway.request(
                    msg.model_name, msg.model_version, Interface.GRPC, when_full=WhenFull.WAIT
                ) as call:
                    memory = self.gateway.shared_memory
                    decoded = decode_infer_request(parsed, call.servable, memory)
                    charge.grow(decoded_bytes(i.data for i in decoded.inputs), "the decoded inputs")
                    placements = output_placements(memory, decoded.outputs)
                    response = await call.infer(decoded, output_targets(placements))
                    write_outputs(response.outputs, placements)
                    # Not decoupled: the one response is also the final one.
                    final = _parameter_is_true(msg.parameters, "triton_enable_empty_final_response")
                    encoded = encode_infer_response(response, final, in_shared_memory=placements)
                    answer_bytes = b"".join(length_delimited(INFER_RESPONSE, encoded))
                await responses.put(answer_bytes)
            except GatewayError as e:
                await responses.put(_stream_error(e.message, request_id))
            except Exception as e:
                log.exception("unexpected error in ModelStreamInfer")
                await responses.put(_stream_error(f"internal error: {type(e).__name__}: {e}", request_id))
            finally:
                charge.release()

        async def read_all() -> None:
            try:
                async for raw in raw_requests:
                    charge = self.gateway.memory_budget.charge()
                    try:
                        charge.grow(len(raw), "the request message")
                    except MemoryBudgetExceeded as e:
                        await responses.put(_stream_error(e.message, ""))
                        continue
                    try:
                        parsed: InferMessage | None = parse_infer_request(raw)
                    except DecodeError:
                        parsed = None
                    if parsed is not None:
                        try:
                            await self.gateway.wait_for_room(
                                parsed.message.model_name, parsed.message.model_version
                            )
                        except BaseException:
                            charge.release()
                            raise
                    task = asyncio.create_task(answer(parsed, charge))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                if in_flight:
                    await asyncio.gather(*in_flight)
            finally:
                await responses.put(None)

        reader = asyncio.create_task(read_all())
        try:
            while (item := await responses.get()) is not None:
                yield item
        finally:
            reader.cancel()
            for task in list(in_flight):
                task.cancel()


def _stream_error(message: str, request_id: str) -> bytes:
    return pb.ModelStreamInferResponse(
        error_message=message, infer_response=pb.ModelInferResponse(id=request_id)
    ).SerializeToString()


def _parameter_is_true(params, key: str) -> bool:
    return (
        key in params
        and params[key].WhichOneof("parameter_choice") == "bool_param"
        and params[key].bool_param
    )


@dataclass(frozen=True, slots=True)
class _Call:
    """How one unary method reads its request and writes its response."""

    parse: Callable[[bytes], Any]
    request_name: str  # for the message when the request does not parse
    serialize: Callable[[Any], bytes] | None  # None: the handler returns the serialized bytes itself
    charged: bool = False  # the message counts against the memory budget while the call runs


def _call(request_type, response_type) -> _Call:
    return _Call(request_type.FromString, request_type.DESCRIPTOR.name, response_type.SerializeToString)


_UNARY: dict[str, _Call] = {
    "ModelConfig": _call(pb.ModelConfigRequest, pb.ModelConfigResponse),
    "ModelStatistics": _call(pb.ModelStatisticsRequest, pb.ModelStatisticsResponse),
    "RepositoryIndex": _call(pb.RepositoryIndexRequest, pb.RepositoryIndexResponse),
    "RepositoryModelLoad": _call(pb.RepositoryModelLoadRequest, pb.RepositoryModelLoadResponse),
    "RepositoryModelUnload": _call(pb.RepositoryModelUnloadRequest, pb.RepositoryModelUnloadResponse),
    "ServerLive": _call(pb.ServerLiveRequest, pb.ServerLiveResponse),
    "ServerReady": _call(pb.ServerReadyRequest, pb.ServerReadyResponse),
    "ModelReady": _call(pb.ModelReadyRequest, pb.ModelReadyResponse),
    "ServerMetadata": _call(pb.ServerMetadataRequest, pb.ServerMetadataResponse),
    "ModelMetadata": _call(pb.ModelMetadataRequest, pb.ModelMetadataResponse),
    # The tensor bytes stay out of protobuf both ways (grpc_wire).
    "ModelInfer": _Call(parse_infer_request, "ModelInferRequest", None, charged=True),
    "SystemSharedMemoryStatus": _call(
        pb.SystemSharedMemoryStatusRequest, pb.SystemSharedMemoryStatusResponse
    ),
    "SystemSharedMemoryRegister": _call(
        pb.SystemSharedMemoryRegisterRequest, pb.SystemSharedMemoryRegisterResponse
    ),
    "SystemSharedMemoryUnregister": _call(
        pb.SystemSharedMemoryUnregisterRequest, pb.SystemSharedMemoryUnregisterResponse
    ),
    "CudaSharedMemoryStatus": _call(pb.CudaSharedMemoryStatusRequest, pb.CudaSharedMemoryStatusResponse),
    "CudaSharedMemoryRegister": _call(
        pb.CudaSharedMemoryRegisterRequest, pb.CudaSharedMemoryRegisterResponse
    ),
    "CudaSharedMemoryUnregister": _call(
        pb.CudaSharedMemoryUnregisterRequest, pb.CudaSharedMemoryUnregisterResponse
    ),
}


CATEGORIES: dict[str, ApiCategory] = {
    "ServerLive": ApiCategory.HEALTH,
    "ServerReady": ApiCategory.HEALTH,
    "ModelReady": ApiCategory.HEALTH,
    "ServerMetadata": ApiCategory.METADATA,
    "ModelMetadata": ApiCategory.METADATA,
    "ModelInfer": ApiCategory.INFERENCE,
    "ModelStreamInfer": ApiCategory.INFERENCE,
    "ModelConfig": ApiCategory.MODEL_CONFIG,
    "ModelStatistics": ApiCategory.STATISTICS,
    "RepositoryIndex": ApiCategory.MODEL_REPOSITORY,
    "RepositoryModelLoad": ApiCategory.MODEL_REPOSITORY,
    "RepositoryModelUnload": ApiCategory.MODEL_REPOSITORY,
    "SystemSharedMemoryStatus": ApiCategory.SHARED_MEMORY,
    "SystemSharedMemoryRegister": ApiCategory.SHARED_MEMORY,
    "SystemSharedMemoryUnregister": ApiCategory.SHARED_MEMORY,
    "CudaSharedMemoryStatus": ApiCategory.SHARED_MEMORY,
    "CudaSharedMemoryRegister": ApiCategory.SHARED_MEMORY,
    "CudaSharedMemoryUnregister": ApiCategory.SHARED_MEMORY,
}

# The calls whose requests OVMS's request metrics count.
_COUNTED = {method.value: method for method in Method}


def _guard(method: Callable[..., Awaitable], call: _Call, servicer: GrpcServicer):
    """Parse the request, and turn GatewayError into its status and anything else into INTERNAL.

    Parsing here rather than in grpc's deserializer lets a malformed message get
    INVALID_ARGUMENT with a message instead of grpc's bare UNKNOWN.
    """
    counted = _COUNTED.get(method.__name__)
    gateway = servicer.gateway
    name = method.__name__
    restricted = servicer.guard is not None  # decided once: no restriction costs nothing per call

    async def handler(raw: bytes, context: aio.ServicerContext):
        charge = gateway.memory_budget.charge() if call.charged else None
        try:
            if restricted:
                servicer.check_restriction(name, context)
            if charge is not None:  # grpc has received it: refuse it before anything else holds it
                charge.grow(len(raw), "the request message")
            try:
                request = call.parse(raw)
                if charge is not None:
                    request = replace(request, charge=charge)
            except DecodeError:
                if counted is not None:
                    gateway.count_unrouted(Interface.GRPC, counted)
                raise InvalidArgument(f"the request is not a valid {call.request_name} message") from None
            return await method(request, context)
        except GatewayError as e:
            await context.abort(e.code.grpc_status, e.message)
        except aio.AbortError:
            raise
        except Exception as e:
            log.exception("unexpected error in %s", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(e).__name__}: {e}")
        finally:
            if charge is not None:
                charge.release()

    return handler


def build_handlers(servicer: GrpcServicer) -> dict[str, grpc.RpcMethodHandler]:
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            _guard(getattr(servicer, name), call, servicer), response_serializer=call.serialize
        )
        for name, call in _UNARY.items()
    }
    # Stream responses are serialized by the stream itself (see ModelStreamInfer).
    handlers["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(servicer.ModelStreamInfer)
    return handlers


async def start_grpc_server(
    gateway: GatewayApi,
    host: str,
    port: int,
    max_message_bytes: int,
    *,
    max_concurrent_streams: int = 0,
    max_connections: int = 0,
    max_concurrent_rpcs: int = 0,
    credentials: grpc.ServerCredentials | None = None,
    guard: ApiGuard | None = None,
    reuse_port: bool = False,
) -> tuple[aio.Server, int]:
    """Start the gRPC server; returns it and the port it bound (useful when port is 0 in tests).
    `reuse_port`: share the port with the other worker processes (SO_REUSEPORT); otherwise a port in
    use is an error."""
    options: list[tuple[str, int]] = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.so_reuseport", int(reuse_port)),
    ]
    if max_concurrent_streams:
        options.append(("grpc.max_concurrent_streams", max_concurrent_streams))
    if max_connections:
        options.append(("grpc.max_allowed_incoming_connections", max_connections))
    server = aio.server(options=options, maximum_concurrent_rpcs=max_concurrent_rpcs or None)
    handlers = build_handlers(GrpcServicer(gateway, guard))
    if hasattr(server, "add_registered_method_handlers"):
        # Registered methods skip grpc's per-call generic look-up.
        server.add_registered_method_handlers(SERVICE_NAME, handlers)
    else:  # pragma: no cover - older grpcio
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if credentials is None:
        bound = server.add_insecure_port(address)
    else:
        bound = server.add_secure_port(address, credentials)
    if bound == 0:
        raise OSError(f"cannot bind the gRPC server to {address}")
    await server.start()
    return server, bound
