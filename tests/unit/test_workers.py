"""The worker processes' pieces, in one process: the channel over a real socket pair, the wire tuples, and
the GatewayClient against a fake owner."""

from __future__ import annotations

import asyncio
import socket

import numpy as np
import pytest

from gateway.core.errors import InvalidArgument, NotFound, Unavailable
from gateway.core.records import (
    InferInput,
    InferOutput,
    InferRequest,
    InferResponse,
    Interface,
    RequestedOutput,
    TensorSpec,
)
from gateway.dataplane.servable_view import ServableView
from gateway.memory.budget import RequestMemoryBudget
from gateway.observability.statistics import Outcome
from gateway.workers.channel import Channel
from gateway.workers.client import GatewayClient
from gateway.workers.wire import pack_request, pack_response, unpack_request, unpack_response


async def _pair(owner_handler, owner_calls, worker_handler=None, worker_calls=()):
    """Two channels on a socket pair: (the worker's end, the owner's end, lost causes)."""
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    lost: list[str] = []
    _, owner = await loop.create_unix_connection(
        lambda: Channel(handler=owner_handler, exposed=owner_calls, on_lost=lambda e: lost.append("owner"),
                        peer="worker"),
        sock=a,
    )  # fmt: skip
    _, worker = await loop.create_unix_connection(
        lambda: Channel(handler=worker_handler, exposed=worker_calls, on_lost=lambda e: lost.append("worker"),
                        peer="owner"),
        sock=b,
    )  # fmt: skip
    return worker, owner, lost


class Echo:
    def __init__(self):
        self.started = asyncio.Event()
        self.cancelled = False
        self.notes: list[tuple] = []

    def add(self, a, b):
        return a + b

    async def slow(self):
        self.started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.cancelled = True
            raise

    def refuse(self, name):
        raise NotFound(f"model '{name}' is not served")

    def broken(self):
        raise KeyError("a defect")

    def note(self, *args):
        self.notes.append(args)


async def test_calls_answer_values_and_raise_the_other_ends_gateway_errors():
    echo = Echo()
    worker, owner, _ = await _pair(echo, ("add", "refuse", "broken", "note"))
    assert await worker.call("add", 2, 3) == 5
    results = await asyncio.gather(*(worker.call("add", i, i) for i in range(50)))  # one writev each way
    assert results == [2 * i for i in range(50)]
    with pytest.raises(NotFound, match="model 'x' is not served"):
        await worker.call("refuse", "x")
    with pytest.raises(Exception, match="internal error: KeyError") as defect:
        await worker.call("broken")
    assert defect.value.code.name == "INTERNAL"
    with pytest.raises(Exception, match="'add_more' is not a call the worker may make"):
        await worker.call("add_more", 1)
    worker.notify("note", 1, "two")
    await worker.call("add", 0, 0)  # in order: the note has arrived
    assert echo.notes == [(1, "two")]
    worker.close()
    owner.close()


async def test_a_cancelled_call_cancels_what_it_started_on_the_other_end():
    echo = Echo()
    worker, owner, _ = await _pair(echo, ("slow",))
    call = asyncio.ensure_future(worker.call("slow"))
    await asyncio.wait_for(echo.started.wait(), 5)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    for _ in range(50):
        if echo.cancelled:
            break
        await asyncio.sleep(0.01)
    assert echo.cancelled
    worker.close()
    owner.close()


async def test_when_the_other_end_goes_its_pending_calls_fail_unavailable():
    echo = Echo()
    worker, owner, lost = await _pair(echo, ("slow",))
    call = asyncio.ensure_future(worker.call("slow"))
    await asyncio.wait_for(echo.started.wait(), 5)
    owner.close()
    with pytest.raises(Unavailable, match="the owner process is gone"):
        await asyncio.wait_for(call, 5)
    assert "worker" in lost and worker.closed
    with pytest.raises(Unavailable):
        await worker.call("slow")


def test_requests_and_responses_cross_as_tuples_with_their_tensors_intact():
    bf16 = np.array([[0x3F80, 0x4000]], np.uint16)
    request = InferRequest(
        "m",
        [
            InferInput("a", "FP32", (2, 3), np.arange(6, dtype=np.float32).reshape(2, 3), {"binary": True}),
            InferInput("s", "BYTES", (2,), np.array([b"x", b"\x00yz"], dtype=object)),
            InferInput("b", "BF16", (1, 2), bf16),
            InferInput("scalar", "INT64", (), np.array(7, np.int64)),
            InferInput("t", "INT32", (2, 2), np.arange(4, dtype=np.int32).reshape(2, 2).T),  # not contiguous
        ],
        "2",
        "id-1",
        [RequestedOutput("o", {"binary_data": False})],
        {"priority": 1},
    )
    back = unpack_request(pickle_round_trip(pack_request(request)))
    assert (back.model_name, back.model_version, back.id) == ("m", "2", "id-1")
    assert back.parameters == {"priority": 1}
    assert back.outputs == request.outputs
    for sent, got in zip(request.inputs, back.inputs, strict=True):
        assert (got.name, got.datatype, got.shape, got.parameters) == (sent.name, sent.datatype, sent.shape,
                                                                        sent.parameters)  # fmt: skip
        assert got.data.dtype == sent.data.dtype and np.array_equal(got.data, sent.data)
    assert unpack_request(pickle_round_trip(pack_request(InferRequest("m", [])))).outputs is None
    response = InferResponse("m", "1", [InferOutput("o", "FP16", (1, 2), np.ones((1, 2), np.float16))], "x")
    got = unpack_response(pickle_round_trip(pack_response(response)))
    assert (got.model_name, got.model_version, got.id) == ("m", "1", "x")
    assert got.outputs[0].data.dtype == np.float16 and got.outputs[0].shape == (1, 2)


def pickle_round_trip(value):
    import pickle

    return pickle.loads(pickle.dumps(value, protocol=5))


class FakeOwner:
    """The owner's calls a GatewayClient makes during an inference, recorded."""

    def __init__(self):
        self.routes = 0
        self.accounted: list[tuple] = []
        self.infer_error: Exception | None = None

    def route(self, name, version, interface):
        self.routes += 1
        if name == "nope":
            raise NotFound(f"model '{name}' is not served")
        return ServableView(name, 3, (TensorSpec("x", "FP32", (-1, 2)),), (), frozenset())

    async def infer_admitted(self, request, deadline, when_full):
        if self.infer_error is not None:
            raise self.infer_error
        unpacked = unpack_request(request)
        out = InferOutput("y", "FP32", (1, 2), unpacked.inputs[0].data * 2)
        return pack_response(InferResponse(unpacked.model_name, "3", [out]))

    def account(self, *args):
        self.accounted.append(args)


async def _client() -> tuple[GatewayClient, FakeOwner]:
    owner = FakeOwner()
    worker, _, _ = await _pair(owner, ("route", "infer_admitted", "account"))
    return GatewayClient(worker, memory_budget=RequestMemoryBudget(0), allow_client_shm=False), owner


async def _settle_accounting(owner: FakeOwner, count: int) -> None:
    for _ in range(100):
        if len(owner.accounted) >= count:
            return
        await asyncio.sleep(0.01)


async def test_an_inference_is_accounted_once_by_the_owner_however_it_ends():
    client, owner = await _client()
    x = np.ones((1, 2), np.float32)
    async with client.request("m", "", Interface.GRPC) as call:
        assert call.servable.inputs[0].name == "x"
        response = await call.infer(InferRequest("m", [InferInput("x", "FP32", (1, 2), x)]))
    assert np.array_equal(response.outputs[0].data, 2 * x)
    with pytest.raises(InvalidArgument):  # a failure while the worker decodes
        async with client.request("m", "", Interface.REST):
            raise InvalidArgument("input 'x': bad")
    owner.infer_error = Unavailable("model 'm' is not ready")
    with pytest.raises(Unavailable):  # a failure in the owner, raised here
        async with client.request("m", "", Interface.GRPC) as call:
            await call.infer(InferRequest("m", [InferInput("x", "FP32", (1, 2), x)]))
    await _settle_accounting(owner, 3)
    outcomes = [args[:4] for args in owner.accounted]
    assert outcomes == [
        ("m", "3", "gRPC", Outcome.SUCCEEDED.value),
        ("m", "3", "REST", Outcome.FAILED.value),
        ("m", "3", "gRPC", Outcome.FAILED.value),
    ]
    assert owner.routes == 1  # the route was asked once, then remembered


async def test_a_name_that_routes_nowhere_is_refused_before_the_block_and_counted_by_the_owner_only():
    client, owner = await _client()
    with pytest.raises(NotFound):
        async with client.request("nope", "", Interface.GRPC):
            pytest.fail("the block must not run")
    await asyncio.sleep(0.05)
    assert owner.accounted == []  # the owner counted it when it refused the route


async def test_a_draining_worker_refuses_new_requests_unavailable_and_counts_them():
    client, owner = await _client()
    client.stop_accepting()
    with pytest.raises(Unavailable, match="shutting down"):
        async with client.request("m", "", Interface.REST):
            pass
    await _settle_accounting(owner, 1)
    assert [a[3] for a in owner.accounted] == [Outcome.FAILED.value]
