"""The REST API as an OpenAPI 3.1 document, served at GET /openapi.json.

It describes what the REST server serves: the Open Inference Protocol (KServe v2) with the binary tensor
extension, Triton's model configuration, statistics and repository extensions, OVMS's config reload and
/metrics, with every status a route can answer and the `{"error": ...}` body of each error. `make test`
runs schemathesis against a live gateway with this document: no 5xx, every response conforms to it.
tests/system/test_openapi.py also checks that every route the server registers is in it, so the two
cannot drift.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gateway.core.datatypes import BY_NAME
from gateway.core.version import __version__

_JSON = "application/json"


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {_JSON: {"schema": schema}}}


_ERRORS = {
    "400": "a malformed request: bad JSON, framing, tensor, parameter, or what the HTTP parser refuses",
    "403": "a restricted API (--restricted_api) called without its header",
    "404": "no such model or version",
    "408": "the request head did not arrive in time",
    "413": "the body (declared, received or inflated) is over the limit",
    "415": "a Content-Encoding the server does not undo",
    "503": "not ready, shutting down, or the model's queue is full",
    "501": "client shared memory is off (--allow_client_shm)",
}


def _responses(ok: dict, *extra: str, errors: Sequence[str] = ("400", "403", "408", "413", "415")) -> dict:
    out = {"200": ok}
    for code in (*errors, *extra):
        out[code] = _json(_ref("Error"), _ERRORS.get(code, "error"))
    return dict(sorted(out.items()))


def _model_params(models: Sequence[str], versioned: bool) -> list[dict]:
    model: dict[str, Any] = {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
    if models:
        model["examples"] = {name: {"value": name} for name in models}
    params = [model]
    if versioned:
        params.append(
            {
                "name": "version",
                "in": "path",
                "required": True,
                "description": "a version number; the latest ready version when empty",
                "schema": {"type": "string"},
                "example": "1",
            }
        )
    return params


def _schemas() -> dict:
    datatype = {"type": "string", "enum": list(BY_NAME)}
    shape = {"type": "array", "items": {"type": "integer"}}
    parameters = {"type": "object", "additionalProperties": True}
    tensor_metadata = {
        "type": "object",
        "required": ["name", "datatype", "shape"],
        "properties": {"name": {"type": "string"}, "datatype": datatype, "shape": shape},
    }
    return {
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
        "Live": {"type": "object", "required": ["live"], "properties": {"live": {"type": "boolean"}}},
        "Ready": {"type": "object", "required": ["ready"], "properties": {"ready": {"type": "boolean"}}},
        "ModelReady": {
            "type": "object",
            "required": ["name", "ready"],
            "properties": {
                "name": {"type": "string"},
                "ready": {"type": "boolean"},
                "error": {"type": "string"},
            },
        },
        "ServerMetadata": {
            "type": "object",
            "required": ["name", "version", "extensions"],
            "properties": {
                "name": {"type": "string"},
                "version": {"type": "string"},
                "extensions": {"type": "array", "items": {"type": "string"}},
            },
        },
        "TensorMetadata": tensor_metadata,
        "ModelMetadata": {
            "type": "object",
            "required": ["name", "versions", "platform", "inputs", "outputs"],
            "properties": {
                "name": {"type": "string"},
                "versions": {"type": "array", "items": {"type": "string"}},
                "platform": {"type": "string"},
                "inputs": {"type": "array", "items": _ref("TensorMetadata")},
                "outputs": {"type": "array", "items": _ref("TensorMetadata")},
            },
        },
        "Parameters": parameters,
        "RequestInput": {
            "type": "object",
            "required": ["name", "datatype", "shape"],
            "description": "`data` (row-major, flat or nested), or parameters.binary_data_size (binary)",
            "properties": {
                "name": {"type": "string"},
                "datatype": datatype,
                "shape": shape,
                "parameters": _ref("Parameters"),
                "data": {},
            },
        },
        "RequestOutput": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string"}, "parameters": _ref("Parameters")},
        },
        "InferenceRequest": {
            "type": "object",
            "required": ["inputs"],
            "properties": {
                "id": {"type": "string"},
                "parameters": _ref("Parameters"),
                "inputs": {"type": "array", "minItems": 1, "items": _ref("RequestInput")},
                "outputs": {"type": "array", "items": _ref("RequestOutput")},
            },
        },
        "ResponseOutput": {
            "type": "object",
            "required": ["name", "datatype", "shape"],
            "properties": {
                "name": {"type": "string"},
                "datatype": datatype,
                "shape": shape,
                "parameters": _ref("Parameters"),
                "data": {"type": "array"},
            },
        },
        "InferenceResponse": {
            "type": "object",
            "required": ["model_name", "outputs"],
            "properties": {
                "model_name": {"type": "string"},
                "model_version": {"type": "string"},
                "id": {"type": "string"},
                "parameters": _ref("Parameters"),
                "outputs": {"type": "array", "items": _ref("ResponseOutput")},
            },
        },
        "ModelConfig": {"type": "object", "description": "Triton's model configuration (model_config.proto)"},
        "Statistics": {
            "type": "object",
            "required": ["model_stats"],
            "properties": {"model_stats": {"type": "array", "items": {"type": "object"}}},
        },
        "RepositoryIndexRequest": {"type": "object", "properties": {"ready": {"type": "boolean"}}},
        "RepositoryIndex": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "version", "state", "reason"],
                "properties": {
                    "name": {"type": "string"},
                    "version": {"type": "string"},
                    "state": {"type": "string"},
                    "reason": {"type": "string"},
                },
            },
        },
        "RepositoryLoadRequest": {
            "type": "object",
            "properties": {
                "parameters": {
                    "type": "object",
                    "properties": {
                        "config": {"description": "an OVMS model config entry, as JSON text or object"}
                    },
                }
            },
        },
        "Empty": {"type": "object"},
        "ConfigReload": {
            "type": "object",
            "required": ["status", "models"],
            "properties": {"status": {"type": "string"}, "models": {"type": "object"}},
        },
    }


def _infer(models: Sequence[str], versioned: bool) -> dict:
    example = None
    if "dummy" in models:  # the demo repository's model: an example that answers 200
        example = {"inputs": [{"name": "b", "datatype": "FP32", "shape": [1, 10], "data": [0.0] * 10}]}
    json_body: dict[str, Any] = {"schema": _ref("InferenceRequest")}
    if example is not None:
        json_body["example"] = example
    ok = {
        "description": "the outputs: JSON, or with binary outputs the binary tensor extension's layout",
        "headers": {
            "Inference-Header-Content-Length": {
                "description": "with binary outputs: the length of the JSON header before them",
                "schema": {"type": "integer"},
            }
        },
        "content": {_JSON: {"schema": _ref("InferenceResponse")}, "application/octet-stream": {}},
    }
    return {
        "post": {
            "summary": "Run an inference",
            "operationId": "infer_versioned" if versioned else "infer",
            "parameters": [
                *_model_params(models, versioned),
                {
                    "name": "Inference-Header-Content-Length",
                    "in": "header",
                    "required": False,
                    "description": "binary tensor extension: the length of the JSON header; 0 = the "
                    "whole body is the one input of a one-input model",
                    "schema": {"type": "integer", "minimum": 0},
                },
            ],
            "requestBody": {
                "required": True,
                "content": {
                    _JSON: json_body,
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                },
            },
            "responses": _responses(ok, "404", "500", "503", "504"),
        }
    }


def _get(operation_id: str, summary: str, ok: dict, params: list[dict] | None = None, *extra: str) -> dict:
    return {
        "get": {
            "summary": summary,
            "operationId": operation_id,
            "parameters": params or [],
            "responses": _responses(ok, *extra),
        }
    }


def _post(operation_id: str, summary: str, body: dict | None, ok: dict, params=None, *extra: str) -> dict:
    operation: dict[str, Any] = {
        "summary": summary,
        "operationId": operation_id,
        "parameters": params or [],
        "responses": _responses(ok, *extra),
    }
    if body is not None:
        operation["requestBody"] = {"required": False, "content": {_JSON: {"schema": body}}}
    return {"post": operation}


def _shared_memory_paths() -> dict[str, dict]:
    """Triton's system shared-memory extension, and the CUDA one answered as a CPU-only Triton does."""
    region = [{"name": "region", "in": "path", "required": True, "schema": {"type": "string"}}]
    system_region = {
        "type": "object",
        "required": ["name", "key", "offset", "byte_size"],
        "properties": {
            "name": {"type": "string"},
            "key": {"type": "string"},
            "offset": {"type": "integer"},
            "byte_size": {"type": "integer"},
        },
    }
    register = {
        "type": "object",
        "required": ["key", "byte_size"],
        "properties": {
            "key": {"type": "string"},
            "byte_size": {"type": "integer"},
            "offset": {"type": "integer"},
        },
    }
    paths: dict[str, dict] = {}
    for kind, what, item in (
        ("systemsharedmemory", "system", system_region),
        ("cudasharedmemory", "CUDA", {"type": "object"}),
    ):
        listing = _json({"type": "array", "items": item}, f"the registered {what} shared-memory regions")
        paths[f"/v2/{kind}/status"] = _get(f"{kind}_status", f"Registered {what} regions", listing)
        paths[f"/v2/{kind}/region/{{region}}/status"] = _get(
            f"{kind}_region_status", f"One {what} region", listing, region, "404"
        )
        paths[f"/v2/{kind}/region/{{region}}/register"] = _post(
            f"{kind}_register", f"Register a {what} region", register if kind == "systemsharedmemory"
            else {"type": "object"}, _json(_ref("Empty"), "registered"), region, "501",
        )  # fmt: skip
        unregistered = _json(_ref("Empty"), "unregistered (an unknown name too)")
        paths[f"/v2/{kind}/unregister"] = _post(
            f"{kind}_unregister_all", f"Unregister every {what} region", None, unregistered, None, "501"
        )
        paths[f"/v2/{kind}/region/{{region}}/unregister"] = _post(
            f"{kind}_unregister", f"Unregister a {what} region", None, unregistered, region, "501"
        )
    return paths


def document(models: Sequence[str] = ()) -> dict:
    """The OpenAPI document; `models` (the names served now) become examples of the model parameter."""
    paths: dict[str, dict] = {
        "/v2/health/live": _get("server_live", "Liveness", _json(_ref("Live"), "live")),
        "/v2/health/ready": _get("server_ready", "Readiness", _json(_ref("Ready"), "ready"), None, "503"),
        "/v2": _get("server_metadata", "Server metadata", _json(_ref("ServerMetadata"), "metadata")),
        "/v2/models/stats": _get(
            "statistics_all", "Statistics of every model", _json(_ref("Statistics"), "statistics")
        ),
        "/metrics": _get(
            "metrics",
            "Prometheus metrics",
            {
                "description": "Prometheus text format",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            },
            None,
            "404",
        ),
        "/openapi.json": _get("openapi", "This document", _json({"type": "object"}, "OpenAPI 3.1")),
        "/v1/config/reload": _post(
            "config_reload",
            "OVMS's config reload: apply config.json (or the version folders) now",
            None,
            _json(_ref("ConfigReload"), "reloaded"),
            None,
            "500",
        ),
        "/v2/repository/index": _post(
            "repository_index",
            "Models in the repository and their states",
            _ref("RepositoryIndexRequest"),
            _json(_ref("RepositoryIndex"), "index"),
        ),
        "/v2/repository/models/{model}/load": _post(
            "repository_load",
            "Load or reload a model",
            _ref("RepositoryLoadRequest"),
            _json(_ref("Empty"), "loaded"),
            _model_params(models, False),
            "404",
            "409",
            "412",
            "500",
            "503",
        ),
        "/v2/repository/models/{model}/unload": _post(
            "repository_unload",
            "Unload a model",
            {"type": "object"},
            _json(_ref("Empty"), "unloaded"),
            _model_params(models, False),
            "404",
            "412",  # a pipeline's name: pipelines come and go with config.json
            "503",
        ),
    }
    for versioned, base in ((False, "/v2/models/{model}"), (True, "/v2/models/{model}/versions/{version}")):
        suffix = "_versioned" if versioned else ""
        params = _model_params(models, versioned)
        paths[base] = _get(
            "model_metadata" + suffix,
            "Model metadata",
            _json(_ref("ModelMetadata"), "metadata"),
            params,
            "404",
            "503",
        )
        paths[base + "/ready"] = _get(
            "model_ready" + suffix,
            "Model readiness",
            _json(_ref("ModelReady"), "ready"),
            params,
            "404",
            "503",
        )
        paths[base + "/ready"]["get"]["responses"]["503"] = _json(_ref("ModelReady"), "not ready")
        paths[base + "/infer"] = _infer(models, versioned)
        paths[base + "/config"] = _get(
            "model_config" + suffix,
            "Triton model configuration",
            _json(_ref("ModelConfig"), "config"),
            params,
            "404",
            "503",
        )
        paths[base + "/stats"] = _get(
            "statistics" + suffix, "Model statistics", _json(_ref("Statistics"), "statistics"), params, "404"
        )
    paths["/v2/health/ready"]["get"]["responses"]["503"] = _json(_ref("Ready"), "not ready")
    paths.update(_shared_memory_paths())
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ovgw: Open Inference Protocol (KServe v2) REST API with Triton's and OVMS's extensions",
            "version": __version__,
        },
        "paths": dict(sorted(paths.items())),
        "components": {"schemas": _schemas()},
    }
