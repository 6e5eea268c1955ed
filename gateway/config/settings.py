"""Server and model settings: the one source of truth, validated once at start-up.

Model entries use OVMS's config.json schema (`{"model_config_list": [{"config": {...}}]}`)
so an OVMS configuration works unchanged. Every error names the model, the field
and the value.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.config.pipelines import PipelineConfig, parse_pipeline_config
from gateway.core.errors import ConfigError
from gateway.security.restricted import ApiRestriction
from gateway.security.tls import TlsSettings

DEFAULT_GRPC_PORT = 8001  # Triton's defaults, so perf_analyzer and tritonclient examples need no flags
DEFAULT_REST_PORT = 8000
ONE_GIB = 1 << 30  # OVMS's message size limit for gRPC, and our default for REST bodies

PluginValue = str | int | float | bool


class VersionPolicyKind(enum.Enum):
    """OVMS's three version policies, by their config.json keys."""

    LATEST = "latest"  # the highest num_versions versions
    ALL = "all"
    SPECIFIC = "specific"  # the versions listed


@dataclass(frozen=True, slots=True)
class VersionPolicy:
    """OVMS model_version_policy: which version folders are served."""

    kind: VersionPolicyKind = VersionPolicyKind.LATEST
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def select(self, available: list[int]) -> list[int]:
        ordered = sorted(available)
        if self.kind is VersionPolicyKind.ALL:
            return ordered
        if self.kind is VersionPolicyKind.SPECIFIC:
            return [v for v in ordered if v in self.versions]
        return ordered[-self.num_versions :]

    def to_dict(self) -> dict:
        if self.kind is VersionPolicyKind.ALL:
            return {"all": {}}
        if self.kind is VersionPolicyKind.SPECIFIC:
            return {"specific": {"versions": list(self.versions)}}
        return {"latest": {"num_versions": self.num_versions}}


# A dimension: an int (-1 = dynamic) or an inclusive (low, high) range.
Dim = int | tuple[int, int]


@dataclass(frozen=True, slots=True)
class ModelSettings:
    name: str
    base_path: str
    target_device: str = "CPU"
    plugin_config: dict[str, PluginValue] = field(default_factory=dict)
    nireq: int = 0  # 0 = OpenVINO's OPTIMAL_NUMBER_OF_INFER_REQUESTS
    # shape / layout: None = as the model file says; a value for every input, or per input name.
    shape: tuple[Dim, ...] | dict[str, tuple[Dim, ...]] | None = None
    layout: str | dict[str, str] | None = None
    batch_size: int | None = None  # -1 = dynamic ("auto" in OVMS)
    version_policy: VersionPolicy = VersionPolicy()
    allow_cache: bool | None = None  # None = use the cache when one is configured
    # Server-side dynamic batching (Triton's meaning); max_batch_size 0 = off.
    max_batch_size: int = 0
    max_queue_delay_microseconds: int = 0
    preferred_batch_size: tuple[int, ...] = ()
    # Requests waiting for an infer request; None = a default from the model's parallelism, 0 = unbounded.
    max_queue_size: int | None = None
    # Dispatch order among models on one device, 1 = highest (HIGH 1, MEDIUM 2, LOW 3).
    priority: int = 2
    # OVMS 2026's preprocessing, compiled into the model (openvino_runtime): applied to every input with a
    # layout, in OVMS's order: colour, precision, mean, scale.
    preprocessing: Preprocessing | None = None
    # Inputs that metadata shows as BYTES [N] (encoded images) instead of their tensor (images.py).
    image_inputs: tuple[str, ...] = ()
    # How metadata and responses show rank-0 tensors: () as OVMS does, or (1,) as Triton serves them (its
    # `dims: [1]` + `reshape: {shape: []}`), which perf_analyzer needs: it refuses an empty input shape.
    scalar_shape: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Preprocessing:
    """--mean, --scale, --color_format TARGET:SOURCE, --precision TARGET:SOURCE (each needs --layout).
    TARGET is what clients send; SOURCE what the model is given (None: the model's own)."""

    mean: tuple[float, ...] | None = None  # one value, or one per channel
    scale: tuple[float, ...] | None = None
    color_format: tuple[str, str | None] | None = None  # e.g. ("RGB", "BGR")
    precision: tuple[str, str | None] | None = None  # e.g. ("UINT8", "FP32"), protocol datatype names


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """What one REST client may hold open (see rest_protocol)."""

    max_connections: int = 0  # 0 = unbounded
    header_timeout_s: float = 10.0  # from a request's first byte to the end of its head; 0 = none
    idle_timeout_s: float = 75.0  # between requests, and before the first one


@dataclass(frozen=True, slots=True)
class ServerSettings:
    models: list[ModelSettings] = field(default_factory=list)
    # Models that could not even be parsed: served as failed (reported, never ready) beside the good ones.
    model_errors: dict[str, str] = field(default_factory=dict)
    # config.json's pipelines and custom node libraries
    pipelines: PipelineConfig = PipelineConfig()
    config_path: str | None = None
    # Where the model_repository extension loads models from by name.
    model_repository_path: str | None = None
    grpc_port: int = DEFAULT_GRPC_PORT
    rest_port: int = DEFAULT_REST_PORT
    grpc_bind_address: str = "0.0.0.0"
    rest_bind_address: str = "0.0.0.0"
    grpc_max_message_bytes: int = ONE_GIB
    rest_max_body_bytes: int = ONE_GIB
    # Worker processes that serve each transport (gateway/workers); 1 = the owner process serves it.
    grpc_workers: int = 1
    rest_workers: int = 1
    rest_limits: ConnectionLimits = ConnectionLimits()
    grpc_max_concurrent_streams: int = 1024  # per connection; 0 = grpc's default (unbounded)
    grpc_max_connections: int = 0  # 0 = unbounded
    grpc_max_concurrent_rpcs: int = 0  # RPCs in the server at once, all connections; 0 = unbounded
    tls: TlsSettings | None = None  # None = plaintext
    restricted_apis: tuple[ApiRestriction, ...] = ()
    cache_dir: str | None = None
    # Where versions downloaded from object storage are kept (None: TMPDIR/ovgw-model-cache).
    model_cache_dir: str | None = None
    # Triton's system shared memory for clients on the same host (register/unregister answer 501 while off).
    allow_client_shm: bool = False
    # The bytes all requests in flight may hold (memory/budget.py); None: half the memory the process may
    # use (cgroup limit, else the machine's); 0: no bound.
    max_request_memory: int | None = None
    log_level: str = "INFO"
    log_path: str | None = None
    log_format: str = "text"  # or "json"
    file_system_poll_wait_seconds: float = 1.0  # config and version-folder polling; 0 = off
    # Listing of object-storage repositories: Triton's own default repository poll, 4 listings a minute.
    object_store_poll_wait_seconds: float = 15.0
    metrics_port: int = 0  # 0 = /metrics only on the REST port
    # OpenVINO device plugins outside the wheel (e.g. the NVIDIA plugin): device name -> shared library.
    extra_plugins: dict[str, str] = field(default_factory=dict)
    shutdown_timeout: float = 30.0  # seconds to drain in-flight requests after SIGTERM
    # The longest a request of a lower-priority model waits behind higher-priority models on its device.
    priority_aging_ms: float = 500.0
    # On CPU, when the gateway picks the THROUGHPUT hint itself: a second, LATENCY-hint execution of each
    # model serves requests that find the model idle (see adaptive.py).
    adaptive_execution: bool = True
    metrics_enable: bool = True  # on by default, unlike OVMS
    metrics_list: list[str] | None = None  # None = every family


_MODEL_KEYS = {
    "name",
    "base_path",
    "target_device",
    "plugin_config",
    "nireq",
    "shape",
    "layout",
    "batch_size",
    "model_version_policy",
    "allow_cache",
    "max_batch_size",
    "max_queue_delay_microseconds",
    "preferred_batch_size",
    "max_queue_size",
    "priority",
    "mean",
    "scale",
    "color_format",
    "precision",
    "image_inputs",
    "scalar_shape",
}
PRIORITY_NAMES = {"HIGH": 1, "MEDIUM": 2, "LOW": 3}
# OVMS keys for stateful models: accepted at their defaults so OVMS configs load, refused when switched on.
_STATEFUL_DEFAULTS = {
    "stateful": False,
    "low_latency_transformation": False,
    "max_sequence_number": None,
    "idle_sequence_cleanup": None,
}
_TOP_LEVEL_KEYS = {
    "model_config_list",
    "monitoring",
    "pipeline_config_list",
    "mediapipe_config_list",
    "custom_node_library_config_list",
    "custom_loader_config_list",
}


def _fail(model: str, key: str, value: Any, why: str) -> ConfigError:
    return ConfigError(f"model '{model}': field '{key}' = {json.dumps(value, default=str)}: {why}")


def parse_model_entry(entry: Any, config_dir: Path | None = None) -> ModelSettings:
    """One `{"config": {...}}` entry (or the bare config object) -> ModelSettings."""
    if isinstance(entry, dict) and set(entry) == {"config"}:
        entry = entry["config"]
    if not isinstance(entry, dict):
        raise ConfigError(f"model entry {json.dumps(entry, default=str)}: expected a JSON object")
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"model entry: field 'name' = {json.dumps(name)}: a non-empty string is required")
    if "/" in name or name in (".", ".."):
        raise _fail(name, "name", name, "must not contain '/' or be '.' or '..'")
    for key in entry:
        if key not in _MODEL_KEYS and key not in _STATEFUL_DEFAULTS:
            raise _fail(name, key, entry[key], f"unknown key; allowed keys: {', '.join(sorted(_MODEL_KEYS))}")
    for key, default in _STATEFUL_DEFAULTS.items():
        if key in entry and entry[key] not in (default, False, 0):
            raise _fail(name, key, entry[key], "stateful models are not supported by this gateway")

    base_path = entry.get("base_path")
    if not isinstance(base_path, str) or not base_path:
        raise _fail(name, "base_path", base_path, "a non-empty string path is required")
    if config_dir is not None and not Path(base_path).is_absolute() and "://" not in base_path:
        base_path = str((config_dir / base_path).resolve())

    device = entry.get("target_device", "CPU")
    if not isinstance(device, str) or not device.strip():
        raise _fail(
            name, "target_device", device, "a device string such as CPU, GPU, AUTO:GPU,CPU is required"
        )

    plugin_config = parse_plugin_config(name, entry.get("plugin_config", {}))

    nireq = entry.get("nireq", 0)
    if isinstance(nireq, bool) or not isinstance(nireq, int) or nireq < 0:
        raise _fail(
            name, "nireq", nireq, "a non-negative integer is required (0 = OpenVINO's optimal number)"
        )

    return ModelSettings(
        name=name,
        base_path=base_path,
        target_device=device.strip(),
        plugin_config=plugin_config,
        nireq=nireq,
        shape=parse_shape_setting(name, entry.get("shape")),
        layout=parse_layout_setting(name, entry.get("layout")),
        batch_size=parse_batch_size(name, entry.get("batch_size")),
        version_policy=parse_version_policy(name, entry.get("model_version_policy")),
        allow_cache=_optional_bool(name, "allow_cache", entry.get("allow_cache")),
        preprocessing=parse_preprocessing(name, entry),
        image_inputs=parse_names(name, "image_inputs", entry.get("image_inputs")),
        scalar_shape=parse_scalar_shape(name, entry.get("scalar_shape")),
        **parse_scheduling(name, entry),
    )


def parse_scalar_shape(model: str, value: Any) -> tuple[int, ...]:
    """`[]` (the default, OVMS's) or `[1]` (Triton's); from the command line also the text of either."""
    if isinstance(value, str):
        value = {"[]": [], "[1]": [1]}.get(value.replace(" ", ""), value)
    if value is None or value == []:
        return ()
    if value == [1]:
        return (1,)
    raise _fail(model, "scalar_shape", value, "[] or [1] is required")


def parse_names(model: str, key: str, value: Any) -> tuple[str, ...]:
    """A list of input names (or, from the command line, a comma-separated string)."""
    if value in (None, ""):
        return ()
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _fail(model, key, value, "a list of input names is required")
    return tuple(value)


COLOR_FORMATS = ("RGB", "BGR", "GRAY", "NV12", "NV12_2", "I420", "I420_3")
# OVMS spells precisions as OpenVINO does (U8, FP32); the protocol's names (UINT8) are accepted too.
_PRECISIONS = {
    "U8": "UINT8", "I8": "INT8", "U16": "UINT16", "I16": "INT16", "U32": "UINT32", "I32": "INT32",
    "U64": "UINT64", "I64": "INT64", "FP16": "FP16", "FP32": "FP32", "FP64": "FP64", "BF16": "BF16",
    "F16": "FP16", "F32": "FP32", "F64": "FP64",
}  # fmt: skip


def parse_preprocessing(model: str, entry: dict) -> Preprocessing | None:
    """The preprocessing keys of a model entry; each needs a layout, as in OVMS, to know where C is."""
    keys = [k for k in ("color_format", "precision", "mean", "scale") if entry.get(k) not in (None, "")]
    if not keys:
        return None
    if entry.get("layout") in (None, ""):
        raise ConfigError(
            f"model '{model}': {', '.join(keys)} need(s) a layout: set --layout (or \"layout\" in "
            "config.json), e.g. NHWC:NCHW, so that the channel dimension is known"
        )
    return Preprocessing(
        mean=_per_channel(model, "mean", entry.get("mean")),
        scale=_per_channel(model, "scale", entry.get("scale")),
        color_format=_pair(model, "color_format", entry.get("color_format"), COLOR_FORMATS),
        precision=_precision_pair(model, entry.get("precision")),
    )


def _per_channel(model: str, key: str, value: Any) -> tuple[float, ...] | None:
    if value in (None, ""):
        return None
    if isinstance(value, str):
        text = value.strip()
        try:
            value = json.loads(text) if text.startswith("[") else float(text)
        except ValueError:
            raise _fail(
                model, key, value, "expected a number or a list of numbers, e.g. 127.5 or [1,2,3]"
            ) from None
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        raise _fail(model, key, value, "expected a number or a list of numbers, e.g. 127.5 or [1,2,3]")
    if key == "scale" and any(v == 0 for v in values):
        raise _fail(model, key, value, "a scale of 0 would divide by zero")
    return tuple(float(v) for v in values)


def _pair(model: str, key: str, value: Any, allowed: tuple[str, ...]) -> tuple[str, str | None] | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise _fail(model, key, value, "expected TARGET or TARGET:SOURCE")
    target, _, source = (part.strip().upper() for part in value.partition(":"))
    for part in (target, source) if source else (target,):
        if part not in allowed:
            raise _fail(model, key, value, f"'{part}' is not one of {', '.join(allowed)}")
    return target, source or None


def _precision_pair(model: str, value: Any) -> tuple[str, str | None] | None:
    allowed = tuple(sorted(set(_PRECISIONS) | set(_PRECISIONS.values())))
    pair = _pair(model, "precision", value, allowed)
    if pair is None:
        return None
    target, source = pair
    return _PRECISIONS.get(target, target), (_PRECISIONS.get(source, source) if source else None)


def _non_negative_int(model: str, key: str, value: Any) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _fail(model, key, value, "a non-negative integer is required")
    return value


def parse_scheduling(model: str, entry: dict) -> dict[str, Any]:
    """The batching, queue and priority keys of a model entry (strings are accepted: the CLI gives them)."""
    out: dict[str, Any] = {}
    max_batch = _non_negative_int(model, "max_batch_size", entry.get("max_batch_size", 0))
    delay = _non_negative_int(
        model, "max_queue_delay_microseconds", entry.get("max_queue_delay_microseconds", 0)
    )
    preferred = entry.get("preferred_batch_size", ())
    if isinstance(preferred, str):
        preferred = [p for p in preferred.replace("[", "").replace("]", "").split(",") if p.strip()]
    if isinstance(preferred, int) and not isinstance(preferred, bool):
        preferred = [preferred]
    if not isinstance(preferred, list | tuple):
        raise _fail(model, "preferred_batch_size", preferred, "a list of batch sizes is required")
    sizes = tuple(sorted({_non_negative_int(model, "preferred_batch_size", p) for p in preferred}))
    if (delay or sizes) and not max_batch:
        raise _fail(
            model,
            "max_queue_delay_microseconds" if delay else "preferred_batch_size",
            delay or list(sizes),
            "dynamic batching needs max_batch_size > 0",
        )
    if any(size < 1 or size > max_batch for size in sizes):
        raise _fail(
            model, "preferred_batch_size", list(sizes), f"sizes must be 1..max_batch_size ({max_batch})"
        )
    out.update(max_batch_size=max_batch, max_queue_delay_microseconds=delay, preferred_batch_size=sizes)
    if entry.get("max_queue_size") is not None:
        out["max_queue_size"] = _non_negative_int(model, "max_queue_size", entry["max_queue_size"])
    priority = entry.get("priority", 2)
    if isinstance(priority, str):
        text = priority.strip().upper()
        priority = PRIORITY_NAMES.get(text, int(text) if text.isdigit() else None)
    if isinstance(priority, bool) or not isinstance(priority, int) or priority < 1:
        raise _fail(
            model, "priority", entry.get("priority"), "HIGH, MEDIUM, LOW or a level >= 1 (1 = highest)"
        )
    out["priority"] = priority
    return out


def _optional_bool(model: str, key: str, value: Any) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise _fail(model, key, value, "true or false is required")


def parse_plugin_config(model: str, value: Any) -> dict[str, PluginValue]:
    if isinstance(value, str):  # the CLI passes JSON text
        try:
            value = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError as e:
            raise _fail(model, "plugin_config", value, f"not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise _fail(model, "plugin_config", value, "a JSON object of OpenVINO properties is required")
    for key, item in value.items():
        if not isinstance(item, str | int | float | bool):
            raise _fail(model, f"plugin_config.{key}", item, "values must be numbers, strings or booleans")
    return dict(value)


_DIM_RE = re.compile(r"^\s*(-?\d+)\s*(?::\s*(-?\d+)\s*)?$")


def _parse_dims(model: str, key: str, text: Any) -> tuple[Dim, ...]:
    if isinstance(text, list):
        items = text
    elif isinstance(text, str):
        stripped = text.strip()
        if not (stripped[:1] in "([" and stripped[-1:] in ")]"):
            raise _fail(model, key, text, "expected a shape like (1,3,224,224), [1,-1,16] or (1:8,3,224,224)")
        inner = stripped[1:-1].strip()
        items = [s for s in inner.split(",")] if inner else []
    else:
        raise _fail(model, key, text, "expected a shape string or a list of dimensions")
    dims: list[Dim] = []
    for item in items:
        if isinstance(item, bool):
            raise _fail(model, key, text, f"dimension {item!r} is not an integer")
        if isinstance(item, int):
            dims.append(item)
            continue
        m = _DIM_RE.match(str(item))
        if not m:
            raise _fail(model, key, text, f"dimension {item!r} is not an integer or a range low:high")
        low = int(m.group(1))
        dims.append(low if m.group(2) is None else (low, int(m.group(2))))
    for d in dims:
        if isinstance(d, int) and d < -1 or isinstance(d, tuple) and not (0 <= d[0] <= d[1]):
            raise _fail(model, key, text, f"dimension {d} is invalid")
    return tuple(dims)


def parse_shape_setting(model: str, value: Any):
    if value is None or value == "auto":
        # OVMS's "auto" reshapes to each request; dynamic dimensions already accept any size here.
        return None
    if isinstance(value, dict):
        return {k: _parse_dims(model, f"shape.{k}", v) for k, v in value.items()}
    return _parse_dims(model, "shape", value)


_LAYOUT_RE = re.compile(r"^[A-Za-z?.\[\],]+(:[A-Za-z?.\[\],]+)?$")


def parse_layout_setting(model: str, value: Any):
    if value is None:
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(v, str) or not _LAYOUT_RE.match(v):
                raise _fail(
                    model, f"layout.{k}", v, "expected a layout like NCHW or NHWC:NCHW (target:source)"
                )
        return dict(value)
    if not isinstance(value, str) or not _LAYOUT_RE.match(value):
        raise _fail(model, "layout", value, "expected a layout like NCHW or NHWC:NCHW (target:source)")
    return value


def parse_batch_size(model: str, value: Any) -> int | None:
    if value is None or value == "":
        return None
    if value == "auto":
        return -1
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _fail(model, "batch_size", value, 'a positive integer or "auto" is required')
    return value


def parse_version_policy(model: str, value: Any) -> VersionPolicy:
    if value is None:
        return VersionPolicy()
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise _fail(model, "model_version_policy", value, f"not valid JSON: {e}") from None
    if not isinstance(value, dict) or len(value) != 1:
        raise _fail(
            model,
            "model_version_policy",
            value,
            'expected one of {"latest": {"num_versions": N}}, {"all": {}}, {"specific": {"versions": [...]}}',
        )
    kind, body = next(iter(value.items()))
    if not isinstance(body, dict):
        raise _fail(model, f"model_version_policy.{kind}", body, "a JSON object is required")
    if kind == "all" and not body:
        return VersionPolicy(VersionPolicyKind.ALL)
    if kind == "latest" and set(body) <= {"num_versions"}:
        n = body.get("num_versions", 1)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise _fail(
                model, "model_version_policy.latest.num_versions", n, "a positive integer is required"
            )
        return VersionPolicy(VersionPolicyKind.LATEST, num_versions=n)
    if kind == "specific" and set(body) == {"versions"}:
        versions = body["versions"]
        if (
            not isinstance(versions, list)
            or not versions
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in versions)
        ):
            raise _fail(
                model,
                "model_version_policy.specific.versions",
                versions,
                "a list of positive integers is required",
            )
        return VersionPolicy(VersionPolicyKind.SPECIFIC, versions=tuple(sorted(set(versions))))
    raise _fail(
        model,
        "model_version_policy",
        value,
        'expected one of {"latest": {"num_versions": N}}, {"all": {}}, {"specific": {"versions": [...]}}',
    )


@dataclass(slots=True)
class ConfigFile:
    models: list[ModelSettings]
    model_errors: dict[str, str]
    metrics_enable: bool | None = None  # monitoring.metrics.enable; None = not set
    metrics_list: list[str] | None = None
    pipelines: PipelineConfig = PipelineConfig()


def _monitoring(doc: dict, where: str) -> tuple[bool | None, list[str] | None]:
    monitoring = doc.get("monitoring", {})
    metrics = monitoring.get("metrics", {}) if isinstance(monitoring, dict) else None
    if not isinstance(metrics, dict) or set(metrics) - {"enable", "metrics_list"}:
        raise ConfigError(
            f'{where}: \'monitoring\' must be {{"metrics": {{"enable": bool, "metrics_list": [...]}}}}'
        )
    enable, names = metrics.get("enable"), metrics.get("metrics_list")
    if enable is not None and not isinstance(enable, bool):
        raise ConfigError(
            f"{where}: monitoring.metrics.enable = {json.dumps(enable)}: true or false is required"
        )
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
        raise ConfigError(
            f"{where}: monitoring.metrics.metrics_list = {json.dumps(names)}: a list of names is required"
        )
    return enable, names


def read_config_file(path: str) -> ConfigFile:
    """Parse an OVMS config.json (or a folder holding one).

    A file that cannot be read or parsed, or has unknown top-level keys, is a
    ConfigError. A bad model entry is returned in the error dict, so that the
    other models still serve.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"config_path '{path}': cannot read: {e.strerror}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"config_path '{p}': not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"config_path '{p}': the top level must be a JSON object")
    for key in doc:
        if key not in _TOP_LEVEL_KEYS:
            raise ConfigError(
                f"config_path '{p}': unknown key '{key}'; allowed keys: {', '.join(sorted(_TOP_LEVEL_KEYS))}"
            )
    if doc.get("mediapipe_config_list"):
        raise ConfigError(
            f"config_path '{p}': 'mediapipe_config_list' is not supported by this gateway (MediaPipe graphs)"
        )
    graphs = parse_pipeline_config(doc, f"config_path '{p}'", p.parent.resolve())
    metrics_enable, metrics_list = _monitoring(doc, f"config_path '{p}'")
    entries = doc.get("model_config_list", [])
    if not isinstance(entries, list):
        raise ConfigError(f"config_path '{p}': 'model_config_list' must be a list")
    models: list[ModelSettings] = []
    errors: dict[str, str] = {}
    for index, entry in enumerate(entries):
        try:
            settings = parse_model_entry(entry, p.parent.resolve())
        except ConfigError as e:
            raw = entry.get("config", entry) if isinstance(entry, dict) else None
            name = raw.get("name") if isinstance(raw, dict) else None
            errors[name if isinstance(name, str) and name else f"model_config_list[{index}]"] = str(e)
            continue
        if settings.name in {m.name for m in models}:
            # Which of the two would serve is ambiguous: refuse the file, as for any other unusable config.
            raise ConfigError(
                f"config_path '{p}': model '{settings.name}' is defined twice in model_config_list"
            )
        models.append(settings)
    return ConfigFile(models, errors, metrics_enable, metrics_list, graphs)
