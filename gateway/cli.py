"""Command line, with OVMS's flag names so that an OVMS command line works unchanged."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import resource
import sys
from pathlib import Path

from gateway.config.pipelines import PipelineConfig
from gateway.config.settings import (
    DEFAULT_GRPC_PORT,
    DEFAULT_REST_PORT,
    ONE_GIB,
    ConnectionLimits,
    ServerSettings,
    parse_model_entry,
    read_config_file,
)
from gateway.core.errors import ConfigError
from gateway.observability.metrics import select_families
from gateway.security.restricted import ApiGuard, parse_restriction
from gateway.security.tls import TlsCredentials, TlsSettings

MAX_WORKERS = 256  # worker processes per transport (gateway/workers)
LOG_LEVELS = {
    "TRACE": logging.DEBUG,
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARNING": logging.WARNING,
    "ERROR": logging.ERROR,
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ovgw",
        description="Serve OpenVINO models over the KServe v2 / Open Inference Protocol (gRPC and REST).",
    )
    g = p.add_argument_group("server")
    g.add_argument(
        "--port", type=int, help=f"gRPC port, 0 = off (default {DEFAULT_GRPC_PORT} when no port is given)"
    )
    g.add_argument(
        "--rest_port",
        type=int,
        help=f"REST port, 0 = off (default {DEFAULT_REST_PORT} when no port is given)",
    )
    g.add_argument("--grpc_bind_address", default="0.0.0.0")
    g.add_argument("--rest_bind_address", default="0.0.0.0")
    g.add_argument(
        "--grpc_max_message_bytes", type=int, default=ONE_GIB, help="gRPC send/receive limit (1 GiB)"
    )
    g.add_argument("--rest_max_body_bytes", type=int, default=ONE_GIB, help="REST request body limit (1 GiB)")
    g.add_argument(
        "--grpc_workers",
        type=int,
        default=1,
        help="processes that serve gRPC (decode, validate, encode): the one that runs the models, and "
        "N - 1 worker processes beside it on the same port (docs/configuration.md, Worker processes)",
    )
    g.add_argument(
        "--rest_workers",
        type=int,
        default=None,
        help="processes that serve REST, as --grpc_workers (default 1)",
    )
    g.add_argument("--cache_dir", help="OpenVINO compiled-blob cache folder")
    g.add_argument(
        "--model_cache_dir",
        help="where versions downloaded from object storage (s3://) are kept and reused across restarts "
        "(default: $TMPDIR/ovgw-model-cache)",
    )
    g.add_argument(
        "--shutdown_timeout",
        type=float,
        default=30.0,
        help="seconds to let in-flight requests finish on SIGTERM",
    )
    g.add_argument(
        "--metrics_enable",
        nargs="?",
        const="true",
        choices=["true", "false"],
        help="Prometheus metrics at /metrics on the REST port (on by default; OVMS's flag, accepted bare)",
    )
    g.add_argument("--metrics_list", help="comma-separated metric families to expose (default: all)")
    g.add_argument(
        "--max_request_memory",
        type=_byte_count,
        default=None,
        help="bytes all requests in flight may hold (bodies as read and inflated, gRPC messages), e.g. 2G; "
        "a request past it is refused with 503 / RESOURCE_EXHAUSTED (default: half the memory the process "
        "may use, its cgroup's limit included; 0 = no bound)",
    )
    g.add_argument(
        "--allow_client_shm",
        nargs="?",
        const="true",
        default="false",
        choices=["true", "false"],
        help="let clients register system shared memory (Triton's extension; off by default, as in Triton)",
    )
    g.add_argument("--metrics_port", type=int, default=0, help="also serve /metrics alone on this port")
    g.add_argument(
        "--file_system_poll_wait_seconds",
        type=float,
        default=None,
        help="seconds between checks for config and version-folder changes (0 = off; default 1)",
    )
    g.add_argument(
        "--object_store_poll_wait_seconds",
        type=float,
        default=None,
        help="seconds between listings of object-storage repositories (default: "
        "--file_system_poll_wait_seconds where given, else 15)",
    )
    g.add_argument(
        "--register_plugin",
        action="append",
        default=[],
        metavar="DEVICE=LIBRARY",
        help="an OpenVINO device plugin outside the openvino wheel, e.g. "
        "NVIDIA=/opt/ovgw/lib/nvidia/libopenvino_nvidia_gpu_plugin.so (repeatable)",
    )
    g.add_argument(
        "--priority_aging_ms",
        type=float,
        default=500.0,
        help="a lower-priority model held off by higher-priority ones on its device still gets one execution "
        "(alone on the device) per this period",
    )
    g.add_argument(
        "--adaptive_execution",
        choices=["true", "false"],
        default="true",
        help="on CPU, when no hint is configured: also compile a LATENCY-hint execution of each model and "
        "run a request on it when nothing else of the model is running (costs a second compiled model)",
    )
    n = p.add_argument_group("network: TLS, restricted APIs, limits")
    n.add_argument("--tls_cert_file", help="PEM certificate (chain): TLS on gRPC, REST and the metrics port")
    n.add_argument("--tls_key_file", help="PEM private key of --tls_cert_file")
    n.add_argument(
        "--tls_client_ca_file", help="PEM CA: clients must present a certificate it signed (mutual TLS)"
    )
    n.add_argument(
        "--restricted_api",
        action="append",
        default=[],
        metavar="CATEGORIES:HEADER=VALUE",
        help="answer the categories (health, metadata, inference, model-config, model-repository, "
        "statistics, metrics) only with this header; repeatable",
    )
    n.add_argument(
        "--rest_max_connections",
        type=int,
        default=-1,
        help="open REST connections at most; the longest idle one is closed to admit a new one "
        "(default: 4096 or half the open-file limit, 0 = unbounded)",
    )
    n.add_argument(
        "--rest_header_timeout_seconds",
        type=float,
        default=10.0,
        help="time to send a request's head once it started (408 after), 0 = none",
    )
    n.add_argument(
        "--rest_idle_timeout_seconds",
        type=float,
        default=75.0,
        help="an idle keep-alive REST connection is closed after this long",
    )
    n.add_argument(
        "--grpc_max_concurrent_streams",
        type=int,
        default=1024,
        help="per gRPC connection, 0 = grpc's default",
    )
    n.add_argument(
        "--grpc_max_connections", type=int, default=0, help="open gRPC connections at most, 0 = unbounded"
    )
    n.add_argument(
        "--grpc_max_concurrent_rpcs",
        type=int,
        default=0,
        help="RPCs in the gRPC server at once; grpc refuses the rest with RESOURCE_EXHAUSTED before any "
        "Python runs (0 = unbounded)",
    )
    g.add_argument("--log_format", choices=["text", "json"], default="text", help="json: one object per line")
    g.add_argument("--log_level", default="INFO", choices=list(LOG_LEVELS))
    g.add_argument("--log_path", help="write the log to this file instead of stderr")

    m = p.add_argument_group("models (single-model mode, exclusive with --config_path)")
    m.add_argument("--config_path", help="OVMS config.json (or a folder holding one)")
    m.add_argument(
        "--model_repository_path",
        help="folder the repository API loads models from by name (default: the config file's folder, "
        "or the parent of --model_path)",
    )
    m.add_argument("--model_name")
    m.add_argument(
        "--model_path", help="the model's base path: <path>/<version>/model files, or one model file"
    )
    m.add_argument(
        "--target_device", help="OpenVINO device string: CPU, GPU, GPU.1, NVIDIA, AUTO:GPU,CPU, ..."
    )
    m.add_argument("--plugin_config", help="JSON object of OpenVINO properties, e.g. '{\"NUM_STREAMS\": 2}'")
    m.add_argument("--nireq", type=int, help="infer requests in the pool (0 = OpenVINO's optimal number)")
    m.add_argument("--batch_size", help="positive integer, or auto")
    m.add_argument("--shape", help="e.g. (1,3,224,224), [1,-1], auto, or a JSON object per input")
    m.add_argument("--layout", help="e.g. NCHW, or NHWC:NCHW (target:source), or a JSON object per input")
    m.add_argument("--model_version_policy", help='e.g. {"latest": {"num_versions": 2}}')
    m.add_argument("--max_batch_size", help="server-side dynamic batching: the largest batch (0 = off)")
    m.add_argument(
        "--max_queue_delay_microseconds", help="how long the oldest request may wait for a batch to fill"
    )
    m.add_argument("--preferred_batch_size", help="comma-separated batch sizes sent as soon as formed")
    m.add_argument(
        "--max_queue_size",
        help="requests that may wait for an infer request (0 = unbounded; default: "
        "16 x the model's parallelism, at least 64)",
    )
    m.add_argument("--priority", help="HIGH, MEDIUM (default) or LOW, or a level (1 = highest)")
    m.add_argument(
        "--mean", help="subtracted from every input value: a number or [a,b,c] per channel (needs --layout)"
    )
    m.add_argument("--scale", help="then divides it: a number or [a,b,c] per channel (needs --layout)")
    m.add_argument(
        "--color_format",
        help="TARGET:SOURCE, e.g. RGB:BGR (clients send RGB, the model takes BGR): RGB, BGR, GRAY, NV12, "
        "NV12_2, I420, I420_3 (needs --layout)",
    )
    m.add_argument(
        "--image_inputs",
        help="comma-separated inputs that metadata shows as BYTES [N], the encoded images clients send "
        "(for clients that build requests from metadata, such as perf_analyzer)",
    )
    m.add_argument(
        "--scalar_shape",
        help="how metadata and responses show rank-0 tensors: [] (default, as OVMS) or [1] (as Triton, "
        "which perf_analyzer needs)",
    )
    m.add_argument(
        "--precision",
        help="TARGET:SOURCE, e.g. U8:FP32 (clients send uint8; converted to FP32 before mean and scale) "
        "(needs --layout)",
    )
    return p


OVMS_DEFAULT_CACHE = "/opt/cache"

_SINGLE_MODEL_FLAGS = (
    "target_device",
    "plugin_config",
    "nireq",
    "batch_size",
    "shape",
    "layout",
    "model_version_policy",
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
)


def _maybe_json(text: str | None):
    if text is None:
        return None
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            return json.loads(stripped)
        except json.JSONDecodeError:
            return text
    return text


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    if args.config_path and (args.model_name or args.model_path):
        raise ConfigError("--config_path cannot be combined with --model_name/--model_path (as in OVMS)")
    if args.config_path:
        extra = [f"--{f}" for f in _SINGLE_MODEL_FLAGS if getattr(args, f) is not None]
        if extra:
            raise ConfigError(
                f"{', '.join(extra)} apply to single-model mode; set them in {args.config_path}"
            )
        config = read_config_file(args.config_path)
        models, errors, pipelines = config.models, config.model_errors, config.pipelines
        metrics_enable, metrics_list = config.metrics_enable, config.metrics_list
    elif args.model_name or args.model_path:
        if not (args.model_name and args.model_path):
            raise ConfigError("single-model mode needs both --model_name and --model_path")
        entry = {"name": args.model_name, "base_path": args.model_path}
        for flag in _SINGLE_MODEL_FLAGS:
            value = getattr(args, flag)
            if value is not None:
                entry[flag] = _maybe_json(value) if flag in ("shape", "layout") else value
        models, errors, pipelines = [parse_model_entry(entry)], {}, PipelineConfig()
        metrics_enable, metrics_list = None, None
    else:
        raise ConfigError("give --model_name and --model_path, or --config_path")

    if args.port is None and args.rest_port is None:
        grpc_port, rest_port = DEFAULT_GRPC_PORT, DEFAULT_REST_PORT
    else:  # as in OVMS: a server whose port is not given is off
        grpc_port, rest_port = args.port or 0, args.rest_port or 0
    for flag, value in (("--port", grpc_port), ("--rest_port", rest_port)):
        if not 0 <= value <= 65535:
            raise ConfigError(f"{flag} = {value}: must be 0..65535")
    for flag, value in (("--grpc_workers", args.grpc_workers), ("--rest_workers", args.rest_workers)):
        if value is not None and not 1 <= value <= MAX_WORKERS:
            raise ConfigError(f"{flag} = {value}: must be 1..{MAX_WORKERS}")
    if not 0 <= args.metrics_port <= 65535 or (
        args.metrics_port and args.metrics_port in (grpc_port, rest_port)
    ):
        raise ConfigError(
            f"--metrics_port = {args.metrics_port}: must be 0..65535 and differ from the other ports"
        )
    if grpc_port and grpc_port == rest_port:
        raise ConfigError(f"--port and --rest_port are both {grpc_port}")
    if not grpc_port and not rest_port:
        raise ConfigError("both --port and --rest_port are 0: nothing would serve")
    if args.metrics_enable is not None:  # the command line wins over config.json
        metrics_enable = args.metrics_enable == "true"
    if args.metrics_list is not None:
        metrics_list = args.metrics_list.split(",")
    metrics_enable = True if metrics_enable is None else metrics_enable
    select_families(metrics_enable, metrics_list)  # unknown names: a start-up error
    cache_dir = args.cache_dir
    if cache_dir is None and os.path.isdir(OVMS_DEFAULT_CACHE) and os.access(OVMS_DEFAULT_CACHE, os.W_OK):
        cache_dir = OVMS_DEFAULT_CACHE  # as OVMS: a writable /opt/cache turns the cache on
    repository = args.model_repository_path
    if repository is None:
        if args.config_path:
            config_path = Path(args.config_path)
            repository = str((config_path if config_path.is_dir() else config_path.parent).resolve())
        elif "://" not in args.model_path:  # a bucket is no folder the repository API could load from
            repository = str(Path(args.model_path).resolve().parent)
    restricted = tuple(parse_restriction(text) for text in args.restricted_api)
    ApiGuard(restricted)  # a category restricted twice is a start-up error
    return ServerSettings(
        rest_limits=_rest_limits(args),
        grpc_max_concurrent_streams=_non_negative(
            args.grpc_max_concurrent_streams, "--grpc_max_concurrent_streams"
        ),
        grpc_max_connections=_non_negative(args.grpc_max_connections, "--grpc_max_connections"),
        grpc_max_concurrent_rpcs=_non_negative(args.grpc_max_concurrent_rpcs, "--grpc_max_concurrent_rpcs"),
        tls=_tls(args),
        restricted_apis=restricted,
        models=models,
        model_errors=errors,
        pipelines=pipelines,
        config_path=args.config_path,
        model_repository_path=repository,
        grpc_port=grpc_port,
        rest_port=rest_port,
        grpc_bind_address=args.grpc_bind_address,
        rest_bind_address=args.rest_bind_address,
        grpc_max_message_bytes=args.grpc_max_message_bytes,
        rest_max_body_bytes=args.rest_max_body_bytes,
        grpc_workers=args.grpc_workers,
        rest_workers=1 if args.rest_workers is None else args.rest_workers,
        cache_dir=cache_dir,
        model_cache_dir=args.model_cache_dir,
        log_level=args.log_level,
        log_path=args.log_path,
        log_format=args.log_format,
        metrics_enable=metrics_enable,
        allow_client_shm=args.allow_client_shm == "true",
        max_request_memory=args.max_request_memory,
        metrics_list=metrics_list,
        shutdown_timeout=args.shutdown_timeout,
        priority_aging_ms=args.priority_aging_ms,
        adaptive_execution=args.adaptive_execution == "true",
        extra_plugins=_plugins(args.register_plugin),
        metrics_port=args.metrics_port,
        **_poll_periods(args),
    )


def _poll_periods(args: argparse.Namespace) -> dict[str, float]:
    """OVMS's poll period for local folders (default 1 s); for object storage, the same when set,
    else 15 s (docs/models.md says what a listing costs)."""
    local = args.file_system_poll_wait_seconds
    remote = args.object_store_poll_wait_seconds
    if remote is None:
        remote = local if local is not None else 15.0
    local = 1.0 if local is None else local
    return {
        "file_system_poll_wait_seconds": _non_negative(local, "--file_system_poll_wait_seconds"),
        "object_store_poll_wait_seconds": _non_negative(remote, "--object_store_poll_wait_seconds"),
    }


_BYTE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _byte_count(text: str) -> int:
    """A byte count: 1073741824, 1024M, 2G, 2GiB (binary units; a trailing B or iB is allowed)."""
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = value[-1] if value and value[-1] in _BYTE_UNITS else ""
    number = value[: len(value) - len(unit)]
    if not number.isdigit():
        raise argparse.ArgumentTypeError(f"'{text}' is not a byte count (e.g. 2147483648, 2048M, 2G)")
    return int(number) * _BYTE_UNITS[unit]


def _non_negative(value, flag: str):
    if value < 0:
        raise ConfigError(f"{flag} = {value}: must be >= 0")
    return value


def _rest_limits(args: argparse.Namespace) -> ConnectionLimits:
    bound = args.rest_max_connections
    if bound < 0:  # the default: what the process can hold open with room for models and gRPC
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        bound = 4096 if soft == resource.RLIM_INFINITY else max(64, min(4096, soft // 2))
    return ConnectionLimits(
        max_connections=bound,
        header_timeout_s=_non_negative(args.rest_header_timeout_seconds, "--rest_header_timeout_seconds"),
        idle_timeout_s=_non_negative(args.rest_idle_timeout_seconds, "--rest_idle_timeout_seconds"),
    )


def _tls(args: argparse.Namespace) -> TlsSettings | None:
    if not (args.tls_cert_file or args.tls_key_file or args.tls_client_ca_file):
        return None
    if not (args.tls_cert_file and args.tls_key_file):
        raise ConfigError("TLS needs both --tls_cert_file and --tls_key_file")
    settings = TlsSettings(args.tls_cert_file, args.tls_key_file, args.tls_client_ca_file)
    TlsCredentials(settings)  # a file that does not load is a start-up error, naming the flag
    return settings


def _plugins(values: list[str]) -> dict[str, str]:
    plugins = {}
    for value in values:
        device, _, library = value.partition("=")
        if not device or not library:
            raise ConfigError(f"--register_plugin {value!r}: expected DEVICE=/path/to/libplugin.so")
        plugins[device] = library
    return plugins


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: str, path: str | None, log_format: str = "text") -> None:
    handler = logging.FileHandler(path) if path else logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("[%(asctime)s][%(levelname)s][%(name)s] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LOG_LEVELS[level])


def main(argv: list[str] | None = None, *, share_ports: bool = False) -> int:
    """`share_ports`: see serve()."""
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level, args.log_path, args.log_format)
    try:
        settings = settings_from_args(args)
    except ConfigError as e:
        logging.getLogger("ovgw").error("configuration error: %s", e)
        print(f"ovgw: configuration error: {e}", file=sys.stderr)
        return 2

    from gateway.malloc_tuning import tune_malloc
    from gateway.serve import serve

    tune_malloc()
    single = bool(args.model_name)
    try:
        import uvloop

        return uvloop.run(serve(settings, single_model=single, share_ports=share_ports))
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(serve(settings, single_model=single, share_ports=share_ports))


if __name__ == "__main__":
    sys.exit(main())
