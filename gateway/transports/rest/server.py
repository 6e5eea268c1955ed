"""REST transport: the Open Inference Protocol's HTTP/JSON API and the binary tensor extension, on aiohttp.

Translation only: requests become InferRequest, responses and GatewayError become
HTTP. Large tensors travel in the binary extension (`Inference-Header-Content-Length`)
and are decoded with np.frombuffer; JSON `data` is for small tensors.
"""

from __future__ import annotations

import json
import logging
import ssl
from dataclasses import dataclass
from time import perf_counter_ns
from typing import Any

import numpy as np
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.web_protocol import RequestPayloadError

from gateway.codecs.tensor import (
    array_from_contents,
    array_from_raw,
    check_declared_shape,
    datatype_or_error,
    element_count,
    encoded_images_from_raw,
    json_from_array,
    raw_from_array,
)
from gateway.config.settings import ConnectionLimits
from gateway.core.errors import GatewayError, InvalidArgument, NotFound
from gateway.core.jsondoc import parse_json
from gateway.core.records import InferInput, InferRequest, InferResponse, Interface, RequestedOutput
from gateway.dataplane.gateway import Gateway
from gateway.pipelines.executor import Servable
from gateway.security.restricted import ApiCategory, ApiGuard
from gateway.transports.rest import openapi
from gateway.transports.rest.body import BodyTooLarge, UnreadableBody, UnsupportedEncoding, read_body
from gateway.transports.rest.protocol import GatewayAppRunner

log = logging.getLogger(__name__)

HEADER_LENGTH = "Inference-Header-Content-Length"
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
        if isinstance(e, UnreadableBody | BodyTooLarge | UnsupportedEncoding):
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


# --- request decoding ----------------------------------------------------------------------------


def split_body(body: bytearray, header_length: str | None) -> tuple[bytearray | memoryview, memoryview]:
    """Split a request body into its JSON header and its binary section."""
    if header_length is None:
        return body, memoryview(b"")
    try:
        length = int(header_length)
    except ValueError:
        raise InvalidArgument(f"{HEADER_LENGTH} must be an integer; got '{header_length}'") from None
    if not 0 <= length <= len(body):
        raise InvalidArgument(f"{HEADER_LENGTH} is {length} but the body has only {len(body)} bytes")
    view = memoryview(body)
    return view[:length], view[length:]


def _object(value, what: str) -> dict:
    if not isinstance(value, dict):
        raise InvalidArgument(f"{what} must be a JSON object")
    return value


def decode_infer_request(
    model: str,
    version: str,
    header: bytes | bytearray | memoryview,
    binary: memoryview,
    served: Servable | None = None,
) -> InferRequest:
    doc = _object(parse_json(header, "the request body"), "the request body")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidArgument("the request must have a non-empty 'inputs' list")
    if served is not None:
        served.check_input_count(len(raw_inputs))
    offset = 0
    inputs = []
    for position, item in enumerate(raw_inputs):
        item = _object(item, f"inputs[{position}]")
        name = item.get("name")
        if not isinstance(name, str):
            raise InvalidArgument(f"inputs[{position}]: 'name' must be a string")
        datatype = item.get("datatype")
        if not isinstance(datatype, str):
            raise InvalidArgument(f"input '{name}': 'datatype' must be a string")
        dt = datatype_or_error(name, datatype)
        shape_value = item.get("shape")
        if not isinstance(shape_value, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) for d in shape_value
        ):
            raise InvalidArgument(
                f"input '{name}': 'shape' must be a list of integers; got {json.dumps(shape_value)}"
            )
        shape = check_declared_shape(name, shape_value)
        params = _object(item.get("parameters", {}), f"input '{name}': parameters")
        if "shared_memory_region" in params:
            raise InvalidArgument(f"input '{name}': shared memory is not supported by this server")
        size = params.get("binary_data_size")
        if size is not None:
            if "data" in item:
                raise InvalidArgument(f"input '{name}': has both 'data' and binary_data_size; send one")
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise InvalidArgument(f"input '{name}': binary_data_size must be a non-negative integer")
            if offset + size > len(binary):
                raise InvalidArgument(
                    f"input '{name}': binary_data_size is {size} but only {len(binary) - offset} bytes "
                    "of binary data remain"
                )
            section = binary[offset : offset + size]
            if dt.name == "BYTES" and served is not None and served.takes_images(name):
                data = encoded_images_from_raw(name, shape, section)
            else:
                data = array_from_raw(name, dt.name, shape, section)
            offset += size
        elif "data" in item:
            data = array_from_contents(name, dt.name, shape, item["data"])
        elif offset < len(binary) and dt.name == "BYTES" and len(raw_inputs) == 1:
            # OVMS: the one input of a request may omit binary_data_size, and its binary section is then
            # one element, unframed (an encoded image, typically).
            data = np.empty(1, dtype=object)
            data[0] = bytes(binary[offset:])
            if shape != (1,):
                raise InvalidArgument(
                    f"input '{name}': a binary section without binary_data_size is one element; "
                    f"the shape must be [1], not {list(shape)}"
                )
            offset = len(binary)
        elif offset < len(binary) and dt.itemsize:
            # OVMS: a raw input may omit binary_data_size; its size follows from shape and datatype.
            size = element_count(shape) * dt.itemsize
            if offset + size > len(binary):
                raise InvalidArgument(
                    f"input '{name}': shape {list(shape)} of {dt.name} takes {size} bytes but only "
                    f"{len(binary) - offset} bytes of binary data remain"
                )
            data = array_from_raw(name, dt.name, shape, binary[offset : offset + size])
            offset += size
        else:
            raise InvalidArgument(f"input '{name}': no data; send 'data' or parameters.binary_data_size")
        inputs.append(InferInput(name, dt.name, shape, data, params))
    if offset != len(binary):
        raise InvalidArgument(f"the binary section has {len(binary) - offset} bytes that no input claims")

    request_params = _object(doc.get("parameters", {}), "parameters")
    outputs = None
    if "outputs" in doc:
        if not isinstance(doc["outputs"], list):
            raise InvalidArgument("'outputs' must be a list")
        outputs = []
        for position, item in enumerate(doc["outputs"]):
            item = _object(item, f"outputs[{position}]")
            if not isinstance(item.get("name"), str):
                raise InvalidArgument(f"outputs[{position}]: 'name' must be a string")
            out_params = _object(item.get("parameters", {}), f"output '{item['name']}': parameters")
            if "shared_memory_region" in out_params:
                raise InvalidArgument(
                    f"output '{item['name']}': shared memory is not supported by this server"
                )
            if out_params.get("classification"):
                raise InvalidArgument(
                    f"output '{item['name']}': the classification extension is not supported"
                )
            outputs.append(RequestedOutput(item["name"], out_params))
    request_id = doc.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidArgument("'id' must be a string")
    return InferRequest(model, inputs, version, request_id, outputs or None, request_params)


def single_raw_input_request(served: Servable, model: str, version: str, body: memoryview) -> InferRequest:
    """`Inference-Header-Content-Length: 0`: the whole body is the one input of a one-input model, and
    the outputs come back binary."""
    if len(served.inputs) != 1:
        raise InvalidArgument(
            f"a request with no JSON header needs a model with exactly one input; "
            f"'{model}' has {len(served.inputs)}"
        )
    spec = (served.client_inputs or served.inputs)[0]  # an image input shown as BYTES takes one image
    binary_output = {"binary_data_output": True}
    if spec.datatype == "BYTES":
        shape = tuple(1 if d < 0 else d for d in spec.shape)
        data = array_from_contents(spec.name, "BYTES", shape, [bytes(body)])
        return InferRequest(
            model, [InferInput(spec.name, "BYTES", shape, data)], version, parameters=binary_output
        )
    itemsize = datatype_or_error(spec.name, spec.datatype).itemsize
    dynamic = [i for i, d in enumerate(spec.shape) if d < 0]
    known = 1
    for d in spec.shape:
        known *= d if d >= 0 else 1
    dims = list(spec.shape)
    if len(dynamic) > 1:
        raise InvalidArgument(
            f"a request with no JSON header cannot infer the shape of input '{spec.name}' "
            f"{list(spec.shape)}: "
            "more than one dynamic dimension"
        )
    if dynamic:
        if known == 0 or len(body) % (known * itemsize):
            raise InvalidArgument(
                f"input '{spec.name}': {len(body)} bytes do not fit shape {list(spec.shape)} "
                f"of {spec.datatype}"
            )
        dims[dynamic[0]] = len(body) // (known * itemsize)
    data = array_from_raw(spec.name, spec.datatype, tuple(dims), body)
    return InferRequest(
        model, [InferInput(spec.name, spec.datatype, tuple(dims), data)], version, parameters=binary_output
    )


# --- response encoding ---------------------------------------------------------------------------


# Binary outputs at least this large are written to the socket from the arrays' own memory; smaller ones
# are joined into one body, as a copy of a few KB costs less than a write call per output.
STREAM_FROM_ARRAYS_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class EncodedResponse:
    header: bytes  # the JSON document
    binary: list[bytes | memoryview]  # the binary outputs in order: views of the output arrays

    @property
    def binary_size(self) -> int:
        return sum(len(part) for part in self.binary)


def encode_infer_response(response: InferResponse, binary_default: bool) -> EncodedResponse:
    outputs = []
    parts: list[bytes | memoryview] = []
    for out in response.outputs:
        entry: dict = {"name": out.name, "datatype": out.datatype, "shape": list(out.shape)}
        if out.parameters.get("binary_data", binary_default):
            raw = raw_from_array(out.datatype, out.data)
            # Triton's C++ client rejects an output `parameters` object without binary_data_size.
            entry["parameters"] = {"binary_data_size": len(raw)}
            parts.append(raw)
        else:
            entry["data"] = json_from_array(out.datatype, out.data)
        outputs.append(entry)
    doc: dict = {"model_name": response.model_name, "model_version": response.model_version}
    if response.id:
        doc["id"] = response.id
    if response.parameters:
        doc["parameters"] = response.parameters
    doc["outputs"] = outputs
    return EncodedResponse(json.dumps(doc, separators=(",", ":")).encode(), parts)


async def send_infer_response(request: web.Request, encoded: EncodedResponse) -> web.StreamResponse:
    """JSON alone, or the binary extension's layout (JSON header, then the outputs). A large output goes
    to the transport as a view of its array: no copy of its bytes between OpenVINO's output and the
    socket beyond the one the executor may make (see openvino_runtime)."""
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
    def __init__(self, gateway: Gateway, max_body_bytes: int):
        self.gateway = gateway
        self.max_body_bytes = max_body_bytes

    async def live(self, request: web.Request) -> web.Response:
        return _json_response({"live": self.gateway.live()})

    async def ready(self, request: web.Request) -> web.Response:
        ready = self.gateway.ready()
        return _json_response({"ready": ready}, 200 if ready else 503)

    async def server_metadata(self, request: web.Request) -> web.Response:
        meta = self.gateway.server_metadata()
        return _json_response(
            {"name": meta.name, "version": meta.version, "extensions": list(meta.extensions)}
        )

    async def model_metadata(self, request: web.Request) -> web.Response:
        model, version = request.match_info["model"], request.match_info.get("version", "")
        meta = self.gateway.model_metadata(model, version, Interface.REST)

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
        if self.gateway.model_ready(model, version, Interface.REST):
            return _json_response({"name": model, "ready": True})
        what = f"model '{model}'" + (f" version {version}" if version else "")
        return _json_response({"name": model, "ready": False, "error": f"{what} is not ready"}, 503)

    async def model_config(self, request: web.Request) -> web.Response:
        model, version = request.match_info["model"], request.match_info.get("version", "")
        return _json_response(self.gateway.model_config(model, version))

    async def statistics(self, request: web.Request) -> web.Response:
        model, version = request.match_info.get("model", ""), request.match_info.get("version", "")
        return _json_response({"model_stats": self.gateway.statistics(model, version)})

    async def repository_index(self, request: web.Request) -> web.Response:
        body = await _optional_json(request, self.max_body_bytes)
        ready = body.get("ready", False)
        if not isinstance(ready, bool):
            raise InvalidArgument("'ready' must be true or false")
        rows = self.gateway.repository_index(ready_only=ready)
        return _json_response(
            [{"name": r.name, "version": r.version, "state": r.state, "reason": r.reason} for r in rows]
        )

    async def repository_load(self, request: web.Request) -> web.Response:
        body = await _optional_json(request, self.max_body_bytes)
        params = _object(body.get("parameters", {}), "parameters")
        await self.gateway.load_model(request.match_info["model"], params)
        return _json_response({})

    async def repository_unload(self, request: web.Request) -> web.Response:
        await _optional_json(request, self.max_body_bytes)
        await self.gateway.unload_model(request.match_info["model"])
        return _json_response({})

    async def infer(self, request: web.Request) -> web.StreamResponse:
        received = perf_counter_ns()
        model, version = request.match_info["model"], request.match_info.get("version", "")
        binary_output = False  # the request's binary_data_output: the default of every output

        async def decode(served: Servable) -> InferRequest:
            nonlocal binary_output
            # Whatever the Content-Type (tritonclient sends none): the body is JSON, optionally + binary.
            body = await read_body(request, self.max_body_bytes)
            header_length = request.headers.get(HEADER_LENGTH)
            if header_length is not None and header_length.strip() == "0" and body:
                if request.content_type == "application/json":
                    # the two headers contradict each other: no JSON header, yet a JSON body
                    raise InvalidArgument(
                        f"{HEADER_LENGTH}: 0 says the body is one raw input with no JSON header, but "
                        "Content-Type says application/json; send the raw input as application/octet-stream"
                    )
                decoded = single_raw_input_request(served, model, version, memoryview(body))
            else:
                if not body:
                    raise InvalidArgument("the request body is empty; expected a JSON inference request")
                header, binary = split_body(body, header_length)
                decoded = decode_infer_request(model, version, header, binary, served)
            binary_output = bool(decoded.parameters.get("binary_data_output", False))
            return decoded

        response = await self.gateway.decode_and_infer(
            model, version, decode, Interface.REST, received_ns=received
        )
        return await send_infer_response(request, encode_infer_response(response, binary_output))

    async def config_reload(self, request: web.Request) -> web.Response:
        report = await self.gateway.reload_config()
        return _json_response({"status": "reloaded", "models": report})

    async def openapi(self, request: web.Request) -> web.Response:
        models = sorted(
            {v.name for v in self.gateway.manager.versions()} | {p.name for p in self.gateway.pipelines}
        )
        return _json_response(openapi.document(models))

    async def metrics(self, request: web.Request) -> web.Response:
        if not self.gateway.metrics.enabled:
            raise NotFound("metrics are disabled (--metrics_enable false)")
        return web.Response(
            text=self.gateway.render_metrics(),
            content_type="text/plain",
            charset="utf-8",
            headers={"X-Content-Type-Options": "nosniff"},
        )


async def _optional_json(request: web.Request, limit: int) -> dict:
    body = await read_body(request, limit)
    if not body:  # no body at all; whitespace alone is not JSON
        return {}
    return _object(parse_json(body, "the request body"), "the request body")


def restriction_middleware(guard: ApiGuard, categories: dict):
    """Refuse a restricted category's call without its header (403) before its body is read."""

    @web.middleware
    async def check(request: web.Request, handler):
        category = categories.get(request.match_info.handler)
        if category is not None:
            guard.check(category, request.headers.get)
        return await handler(request)

    return check


def build_app(gateway: Gateway, max_body_bytes: int, guard: ApiGuard | None = None) -> web.Application:
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
    gateway: Gateway,
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
    gateway: Gateway,
    host: str,
    port: int,
    max_body_bytes: int,
    limits: ConnectionLimits,
    tls: ssl.SSLContext | None = None,
    guard: ApiGuard | None = None,
) -> tuple[web.AppRunner, int]:
    return await _start(build_app(gateway, max_body_bytes, guard), host, port, limits, tls)


async def _start(
    app: web.Application, host: str, port: int, limits: ConnectionLimits, tls: ssl.SSLContext | None
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
    site = web.TCPSite(runner, host, port, reuse_address=True, ssl_context=tls)
    await site.start()
    bound = runner.addresses[0][1] if port == 0 else port
    return runner, bound
