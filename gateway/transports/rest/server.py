"""REST transport: the Open Inference Protocol's HTTP/JSON API and the binary tensor extension, on aiohttp.

Translation only: requests become InferRequest, responses and GatewayError become
HTTP. Large tensors travel in the binary extension (`Inference-Header-Content-Length`)
and are decoded with np.frombuffer; JSON `data` is for small tensors.
"""

from __future__ import annotations

import json
import logging
import ssl
from time import perf_counter_ns
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.web_protocol import RequestPayloadError

from gateway.config.settings import ConnectionLimits
from gateway.core.errors import GatewayError, InvalidArgument
from gateway.core.jsondoc import parse_json
from gateway.core.records import InferRequest, Interface
from gateway.dataplane.api import DecodeTarget, GatewayApi
from gateway.memory.budget import Charge, MemoryBudgetExceeded, decoded_bytes
from gateway.memory.shared_memory import cuda_unsupported, output_placements, output_targets, write_outputs
from gateway.security.restricted import ApiCategory, ApiGuard
from gateway.transports.rest import openapi
from gateway.transports.rest.body import BodyTooLarge, UnreadableBody, UnsupportedEncoding, read_body
from gateway.transports.rest.codec import (
    HEADER_LENGTH,
    STREAM_FROM_ARRAYS_BYTES,
    EncodedResponse,
    decode_infer_request,
    encode_infer_response,
    json_object,
    single_raw_input_request,
    split_body,
)
from gateway.transports.rest.protocol import GatewayAppRunner

log = logging.getLogger(__name__)

_JSON = "application/json"


def _json_response(body: dict | list, status: int = 200, headers: dict | None = None) -> web.Response:
    return web.Response(body=json.dumps(body).encode(), status=status, content_type=_JSON, headers=headers)


def error_response(error: GatewayError) -> web.Response:
    headers = {"Retry-After": "1"} if error.code.http_status == 503 else None
    return _json_response({"error": error.message}, error.code.http_status, headers)


@web.middleware
async def errors_middleware(request: web.Request, handler):
    try:
        return await handler(request)
    except GatewayError as e:
        response = error_response(e)
        if isinstance(e, UnreadableBody | BodyTooLarge | UnsupportedEncoding | MemoryBudgetExceeded):
            response.force_close()
        return response
    except (RequestPayloadError, BadHttpMessage) as e:  # e.g. a body that is not the gzip it claims
        response = _json_response({"error": f"cannot read the request body: {e}"}, 400)
        response.force_close()  # the rest of the body is unreadable: this connection cannot be reused
        return response
    except web.HTTPException as e:
        if e.status >= 400:
            reason = e.text if e.text and not e.text.startswith(f"{e.status}:") else e.reason
            kept = {k: v for k, v in e.headers.items() if k.lower() == "allow"}  # 405's list of methods
            return _json_response({"error": reason}, e.status, kept or None)
        raise
    except Exception as e:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return _json_response({"error": f"internal error: {type(e).__name__}: {e}"}, 500)


async def send_infer_response(request: web.Request, encoded: EncodedResponse) -> web.StreamResponse:
    """JSON alone, or the binary extension's layout (JSON header, then the outputs). A large output goes
    to the transport as a view of its array: no copy of its bytes between OpenVINO's output and the
    socket beyond the one the executor may make (see runtime/executor.py)."""
    if not encoded.binary:
        return web.Response(body=encoded.header, content_type=_JSON)
    headers = {HEADER_LENGTH: str(len(encoded.header))}
    size = encoded.binary_size
    if size < STREAM_FROM_ARRAYS_BYTES:
        body = b"".join([encoded.header, *encoded.binary])
        return web.Response(body=body, content_type="application/octet-stream", headers=headers)
    response = web.StreamResponse(headers=headers)
    response.content_type = "application/octet-stream"
    response.content_length = len(encoded.header) + size
    await response.prepare(request)
    await response.write(encoded.header)
    for part in encoded.binary:
        await response.write(part)
    await response.write_eof()
    return response


# --- routes --------------------------------------------------------------------------------------


class RestHandlers:
    def __init__(self, gateway: GatewayApi, max_body_bytes: int):
        self.gateway = gateway
        self.max_body_bytes = max_body_bytes

    async def live(self, request: web.Request) -> web.Response:
        return _json_response({"live": await self.gateway.live()})

    async def ready(self, request: web.Request) -> web.Response:
        ready = await self.gateway.ready()
        return _json_response({"ready": ready}, 200 if ready else 503)

    async def server_metadata(self, request: web.Request) -> web.Response:
        meta = await self.gateway.server_metadata()
        return _json_response(
            {"name": meta.name, "version": meta.version, "extensions": list(meta.extensions)}
        )

    async def model_metadata(self, request: web.Request) -> web.Response:
        model, version = request.match_info["model"], request.match_info.get("version", "")
        meta = await self.gateway.model_metadata(model, version, Interface.REST)

        def tensors(specs):
            return [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in specs]

        return _json_response(
            {
                "name": meta.name,
                "versions": list(meta.versions),
                "platform": meta.platform,
                "inputs": tensors(meta.inputs),
                "outputs": tensors(meta.outputs),
            }
        )

    async def model_ready(self, request: web.Request) -> web.Response:
        model, version = request.match_info["model"], request.match_info.get("version", "")
        if await self.gateway.model_ready(model, version, Interface.REST):
            return _json_response({"name": model, "ready": True})
        what = f"model '{model}'" + (f" version {version}" if version else "")
        return _json_response({"name": model, "ready": False, "error": f"{what} is not ready"}, 503)

    async def model_config(self, request: web.Request) -> web.Response:
        model, version = request.match_info["model"], request.match_info.get("version", "")
        return _json_response(await self.gateway.model_config(model, version))

    async def statistics(self, request: web.Request) -> web.Response:
        model, version = request.match_info.get("model", ""), request.match_info.get("version", "")
        return _json_response({"model_stats": await self.gateway.statistics(model, version)})

    async def repository_index(self, request: web.Request) -> web.Response:
        body = await _optional_json(request, self.max_body_bytes)
        ready = body.get("ready", False)
        if not isinstance(ready, bool):
            raise InvalidArgument("'ready' must be true or false")
        rows = await self.gateway.repository_index(ready_only=ready)
        return _json_response(
            [{"name": r.name, "version": r.version, "state": r.state, "reason": r.reason} for r in rows]
        )

    async def repository_load(self, request: web.Request) -> web.Response:
        body = await _optional_json(request, self.max_body_bytes)
        params = json_object(body.get("parameters", {}), "parameters")
        await self.gateway.load_model(request.match_info["model"], params)
        return _json_response({})

    async def repository_unload(self, request: web.Request) -> web.Response:
        await _optional_json(request, self.max_body_bytes)
        await self.gateway.unload_model(request.match_info["model"])
        return _json_response({})

    async def infer(self, request: web.Request) -> web.StreamResponse:
        received = perf_counter_ns()
        model, version = request.match_info["model"], request.match_info.get("version", "")
        # the body's bytes count against the memory budget until the response has been sent
        with self.gateway.memory_budget.charge() as charge:
            async with self.gateway.request(model, version, Interface.REST, received_ns=received) as call:
                decoded = await self._decode(request, call.servable, model, version, charge)
                charge.grow(decoded_bytes(i.data for i in decoded.inputs), "the decoded inputs")
                placements = output_placements(self.gateway.shared_memory, decoded.outputs)
                response = await call.infer(decoded, output_targets(placements))
                write_outputs(response.outputs, placements)
                # the request's binary_data_output is the default of every output
                encoded = encode_infer_response(
                    response, bool(decoded.parameters.get("binary_data_output", False)), placements
                )
            return await send_infer_response(request, encoded)

    async def _decode(
        self, request: web.Request, served: DecodeTarget, model: str, version: str, charge: Charge
    ) -> InferRequest:
        # Whatever the Content-Type (tritonclient sends none): the body is JSON, optionally + binary.
        body = await read_body(request, self.max_body_bytes, charge)
        header_length = request.headers.get(HEADER_LENGTH)
        if header_length is not None and header_length.strip() == "0" and body:
            if request.content_type == "application/json":
                # the two headers contradict each other: no JSON header, yet a JSON body
                raise InvalidArgument(
                    f"{HEADER_LENGTH}: 0 says the body is one raw input with no JSON header, but "
                    "Content-Type says application/json; send the raw input as application/octet-stream"
                )
            return single_raw_input_request(served, model, version, memoryview(body))
        if not body:
            raise InvalidArgument("the request body is empty; expected a JSON inference request")
        header, binary = split_body(body, header_length)
        return decode_infer_request(model, version, header, binary, served, self.gateway.shared_memory)

    # --- Triton's shared-memory extensions ---------------------------------------------------------

    async def shm_status(self, request: web.Request) -> web.Response:
        regions = await self.gateway.shared_memory_status(request.match_info.get("region", ""))
        return _json_response(
            [{"name": r.name, "key": r.key, "offset": r.offset, "byte_size": r.byte_size} for r in regions]
        )

    async def shm_register(self, request: web.Request) -> web.Response:
        memory = self.gateway.shared_memory
        memory.check_enabled()  # before the body is read
        body = await _optional_json(request, self.max_body_bytes)
        key, offset, byte_size = body.get("key"), body.get("offset", 0), body.get("byte_size")
        if not isinstance(key, str):
            raise InvalidArgument("'key' must be the shared memory object's key, a string")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (offset, byte_size)):
            raise InvalidArgument("'offset' and 'byte_size' must be integers (byte_size is required)")
        await self.gateway.register_shared_memory(
            request.match_info["region"], key, int(offset), int(byte_size or 0)
        )
        return _json_response({})

    async def shm_unregister(self, request: web.Request) -> web.Response:
        self.gateway.shared_memory.check_enabled()
        await _optional_json(request, self.max_body_bytes)
        await self.gateway.unregister_shared_memory(request.match_info.get("region", ""))
        return _json_response({})

    async def cuda_status(self, request: web.Request) -> web.Response:
        return _json_response([])  # no GPU regions, ever

    async def cuda_register(self, request: web.Request) -> web.Response:
        self.gateway.shared_memory.check_enabled()
        raise cuda_unsupported(request.match_info["region"])

    async def cuda_unregister(self, request: web.Request) -> web.Response:
        self.gateway.shared_memory.check_enabled()
        await _optional_json(request, self.max_body_bytes)
        return _json_response({})

    async def config_reload(self, request: web.Request) -> web.Response:
        report = await self.gateway.reload_config()
        return _json_response({"status": "reloaded", "models": report})

    async def openapi(self, request: web.Request) -> web.Response:
        return _json_response(openapi.document(await self.gateway.served_names()))

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            text=await self.gateway.render_metrics(),
            content_type="text/plain",
            charset="utf-8",
            headers={"X-Content-Type-Options": "nosniff"},
        )


async def _optional_json(request: web.Request, limit: int) -> dict:
    body = await read_body(request, limit)
    if not body:  # no body at all; whitespace alone is not JSON
        return {}
    return json_object(parse_json(body, "the request body"), "the request body")


def restriction_middleware(guard: ApiGuard, categories: dict):
    """Refuse a restricted category's call without its header (403) before its body is read."""

    @web.middleware
    async def check(request: web.Request, handler):
        category = categories.get(request.match_info.handler)
        if category is not None:
            guard.check(category, request.headers.get)
        return await handler(request)

    return check


def build_app(gateway: GatewayApi, max_body_bytes: int, guard: ApiGuard | None = None) -> web.Application:
    h = RestHandlers(gateway, max_body_bytes)
    routes: list[tuple[str, str, Any, ApiCategory]] = [
        ("GET", "/v2/health/live", h.live, ApiCategory.HEALTH),
        ("GET", "/v2/health/ready", h.ready, ApiCategory.HEALTH),
        ("GET", "/v2", h.server_metadata, ApiCategory.METADATA),
        ("GET", "/metrics", h.metrics, ApiCategory.METRICS),
        ("GET", "/openapi.json", h.openapi, ApiCategory.METADATA),
        ("POST", "/v1/config/reload", h.config_reload, ApiCategory.MODEL_REPOSITORY),  # OVMS's endpoint
        # Before /v2/models/{model}, which would otherwise take "stats" for a model name.
        ("GET", "/v2/models/stats", h.statistics, ApiCategory.STATISTICS),
    ]
    for base in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        routes += [
            ("GET", base, h.model_metadata, ApiCategory.METADATA),
            ("GET", base + "/ready", h.model_ready, ApiCategory.HEALTH),
            ("POST", base + "/infer", h.infer, ApiCategory.INFERENCE),
            ("GET", base + "/config", h.model_config, ApiCategory.MODEL_CONFIG),
            ("GET", base + "/stats", h.statistics, ApiCategory.STATISTICS),
        ]
    routes += [
        ("POST", "/v2/repository/index", h.repository_index, ApiCategory.MODEL_REPOSITORY),
        ("POST", "/v2/repository/models/{model}/load", h.repository_load, ApiCategory.MODEL_REPOSITORY),
        ("POST", "/v2/repository/models/{model}/unload", h.repository_unload, ApiCategory.MODEL_REPOSITORY),
    ]
    shm = ApiCategory.SHARED_MEMORY
    for kind, (status, register, unregister) in {
        "systemsharedmemory": (h.shm_status, h.shm_register, h.shm_unregister),
        "cudasharedmemory": (h.cuda_status, h.cuda_register, h.cuda_unregister),
    }.items():
        routes += [
            ("GET", f"/v2/{kind}/status", status, shm),
            ("GET", f"/v2/{kind}/region/{{region}}/status", status, shm),
            ("POST", f"/v2/{kind}/region/{{region}}/register", register, shm),
            ("POST", f"/v2/{kind}/unregister", unregister, shm),
            ("POST", f"/v2/{kind}/region/{{region}}/unregister", unregister, shm),
        ]
    return _app(routes, guard, max_body_bytes)


def _app(routes, guard: ApiGuard | None, max_body_bytes: int) -> web.Application:
    middlewares = [errors_middleware]
    if guard is not None and guard.active:
        middlewares.append(restriction_middleware(guard, {handler: c for _, _, handler, c in routes}))
    app = web.Application(client_max_size=max_body_bytes, middlewares=middlewares)
    for method, path, handler, _ in routes:
        app.router.add_route(method, path, handler)
    return app


async def start_metrics_server(
    gateway: GatewayApi,
    host: str,
    port: int,
    limits: ConnectionLimits,
    tls: ssl.SSLContext | None = None,
    guard: ApiGuard | None = None,
) -> tuple[web.AppRunner, int]:
    """`--metrics_port`: /metrics alone, on a port of its own (for a scraper that must not reach the API)."""
    app = _app([("GET", "/metrics", RestHandlers(gateway, 0).metrics, ApiCategory.METRICS)], guard, 0)
    return await _start(app, host, port, limits, tls)


async def start_rest_server(
    gateway: GatewayApi,
    host: str,
    port: int,
    max_body_bytes: int,
    limits: ConnectionLimits,
    tls: ssl.SSLContext | None = None,
    guard: ApiGuard | None = None,
    reuse_port: bool = False,
) -> tuple[web.AppRunner, int]:
    """`reuse_port`: share the port with the other worker processes (SO_REUSEPORT)."""
    return await _start(build_app(gateway, max_body_bytes, guard), host, port, limits, tls, reuse_port)


async def _start(
    app: web.Application,
    host: str,
    port: int,
    limits: ConnectionLimits,
    tls: ssl.SSLContext | None,
    reuse_port: bool = False,
) -> tuple[web.AppRunner, int]:
    runner = GatewayAppRunner(
        app,
        limits=limits,
        access_log=None,
        handle_signals=False,
        handler_cancellation=True,  # a client that disconnects has its queued request dropped
        auto_decompress=False,  # rest_body undoes Content-Encoding within the size limit
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True, reuse_port=reuse_port or None, ssl_context=tls)
    await site.start()
    bound = runner.addresses[0][1] if port == 0 else port
    return runner, bound
