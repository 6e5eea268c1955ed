"""OVMS pipeline definitions (`pipeline_config_list`) and custom node libraries
(`custom_node_library_config_list`) from config.json, parsed to OVMS's schema.

Only the shape of each entry is checked here (keys, types, ranges), as OVMS's JSON schema does: every
object refuses unknown keys, `params` values are strings, `demultiply_count` is -1..10000 (0 is read
as -1, dynamic, with a warning, as OVMS reads it). What needs the models and libraries (references,
cycles, shapes) is checked when the pipeline is built (pipelines/graph.py). Every error names the
pipeline, the node and the field.
"""

from __future__ import annotations

import enum
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from gateway.core.errors import ConfigError

log = logging.getLogger(__name__)
T = TypeVar("T")

# The two nodes every pipeline has: `request` gives the pipeline's inputs, `response` takes its outputs.
REQUEST_NODE = "request"
RESPONSE_NODE = "response"
DYNAMIC_DEMULTIPLY = -1
MAX_DEMULTIPLY = 10000


class NodeKind(enum.Enum):
    MODEL = "DL model"
    CUSTOM = "custom"


@dataclass(frozen=True, slots=True)
class Source:
    """Where a node input (or a pipeline output) comes from: a data item of another node (an output's
    alias; for `request`, a pipeline input name)."""

    node: str
    item: str


@dataclass(frozen=True, slots=True)
class NodeSettings:
    name: str
    kind: NodeKind
    inputs: tuple[tuple[str, Source], ...]  # (the node's input name, its source), in config order
    outputs: tuple[tuple[str, str], ...]  # (data_item: the model's or library's output name, alias)
    model_name: str = ""  # MODEL
    version: int | None = None  # MODEL: None = the model's default version when the request runs
    library_name: str = ""  # CUSTOM
    params: tuple[tuple[str, str], ...] = ()  # CUSTOM: handed to every library call
    demultiply_count: int | None = None  # None = no demultiplexing; -1 = dynamic
    gather_from_node: str | None = None


@dataclass(frozen=True, slots=True)
class PipelineSettings:
    name: str
    inputs: tuple[str, ...]
    nodes: tuple[NodeSettings, ...]
    outputs: tuple[tuple[str, Source], ...]  # (the pipeline's output name, its source)
    demultiply_count: int | None = None  # demultiplex at the entry (the request node)


@dataclass(frozen=True, slots=True)
class LibrarySettings:
    """A custom node library: a shared library with OVMS's C ABI, or a Python file/module."""

    name: str
    base_path: str


def _json(value: Any) -> str:
    return json.dumps(value, default=str)


def _object(where: str, value: Any, required: tuple[str, ...], allowed: tuple[str, ...]) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {_json(value)}")
    for key in value:
        if key not in allowed:
            raise ConfigError(f"{where}: unknown key '{key}'; allowed keys: {', '.join(allowed)}")
    for key in required:
        if key not in value:
            raise ConfigError(f"{where}: field '{key}' is required")
    return value


def _string(where: str, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: field '{key}' = {_json(value)}: a non-empty string is required")
    return value


def _list(where: str, key: str, value: Any) -> list:
    if not isinstance(value, list):
        raise ConfigError(f"{where}: field '{key}' = {_json(value)}: a list is required")
    return value


def _demultiply_count(where: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not -1 <= value <= MAX_DEMULTIPLY:
        raise ConfigError(
            f"{where}: field 'demultiply_count' = {_json(value)}: an integer from -1 (dynamic) to "
            f"{MAX_DEMULTIPLY} is required"
        )
    if value == 0:
        log.warning("%s: demultiply_count 0 is deprecated; read as -1 (dynamic)", where)
        return DYNAMIC_DEMULTIPLY
    return value


def _sources(where: str, key: str, value: Any) -> tuple[tuple[str, Source], ...]:
    """`[{"<name>": {"node_name": ..., "data_item": ...}}, ...]`: each entry exactly one name."""
    out = []
    for position, entry in enumerate(_list(where, key, value)):
        at = f"{where}: {key}[{position}]"
        if not isinstance(entry, dict) or len(entry) != 1:
            raise ConfigError(
                f'{at} = {_json(entry)}: expected one {{"<name>": {{"node_name": ..., "data_item": ...}}}}'
            )
        ((name, source),) = entry.items()
        if not name:
            raise ConfigError(f"{at}: the name must be a non-empty string")
        source = _object(f"{at} '{name}'", source, ("node_name", "data_item"), ("node_name", "data_item"))
        out.append(
            (
                name,
                Source(
                    _string(f"{at} '{name}'", "node_name", source["node_name"]),
                    _string(f"{at} '{name}'", "data_item", source["data_item"]),
                ),
            )
        )
    return tuple(out)


_NODE_KEYS = (
    "name",
    "type",
    "model_name",
    "version",
    "library_name",
    "params",
    "inputs",
    "outputs",
    "demultiply_count",
    "gather_from_node",
)


def parse_node(pipeline: str, position: int, entry: Any) -> NodeSettings:
    where = f"pipeline '{pipeline}': nodes[{position}]"
    if isinstance(entry, dict) and isinstance(entry.get("name"), str):
        where = f"pipeline '{pipeline}': node '{entry['name']}'"
    entry = _object(where, entry, ("name", "type", "inputs", "outputs"), _NODE_KEYS)
    name = _string(where, "name", entry["name"])
    try:
        kind = NodeKind(entry["type"])
    except ValueError:
        raise ConfigError(
            f'{where}: field \'type\' = {_json(entry["type"])}: expected "DL model" or "custom"'
        ) from None
    if kind is NodeKind.MODEL:
        if "library_name" in entry or "params" in entry:
            field_name = "library_name" if "library_name" in entry else "params"
            raise ConfigError(f"{where}: field '{field_name}' belongs to custom nodes, not \"DL model\"")
        model_name = _string(where, "model_name", entry.get("model_name"))
        version = entry.get("version")
        if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
            raise ConfigError(f"{where}: field 'version' = {_json(version)}: a positive integer is required")
        library_name = ""
        params: tuple[tuple[str, str], ...] = ()
    else:
        if "model_name" in entry or "version" in entry:
            field_name = "model_name" if "model_name" in entry else "version"
            raise ConfigError(f"{where}: field '{field_name}' belongs to \"DL model\" nodes, not custom")
        library_name = _string(where, "library_name", entry.get("library_name"))
        raw_params = entry.get("params", {})
        if not isinstance(raw_params, dict) or not all(isinstance(v, str) for v in raw_params.values()):
            raise ConfigError(
                f"{where}: field 'params' = {_json(raw_params)}: an object of string values is required"
            )
        params = tuple(raw_params.items())
        model_name, version = "", None
    outputs = []
    for index, output in enumerate(_list(where, "outputs", entry["outputs"])):
        at = f"{where}: outputs[{index}]"
        output = _object(at, output, ("data_item", "alias"), ("data_item", "alias"))
        outputs.append((_string(at, "data_item", output["data_item"]), _string(at, "alias", output["alias"])))
    gather = entry.get("gather_from_node")
    return NodeSettings(
        name=name,
        kind=kind,
        inputs=_sources(where, "inputs", entry["inputs"]),
        outputs=tuple(outputs),
        model_name=model_name,
        version=version,
        library_name=library_name,
        params=params,
        demultiply_count=_demultiply_count(where, entry.get("demultiply_count")),
        gather_from_node=None if gather is None else _string(where, "gather_from_node", gather),
    )


def parse_pipeline_entry(entry: Any) -> PipelineSettings:
    where = "pipeline_config_list entry"
    if isinstance(entry, dict) and isinstance(entry.get("name"), str):
        where = f"pipeline '{entry['name']}'"
    entry = _object(
        where,
        entry,
        ("name", "nodes", "inputs", "outputs"),
        ("name", "nodes", "inputs", "outputs", "demultiply_count"),
    )
    name = _string(where, "name", entry["name"])
    if "/" in name or name in (".", ".."):
        raise ConfigError(f"{where}: field 'name' = {_json(name)}: must not contain '/' or be '.' or '..'")
    inputs = _list(where, "inputs", entry["inputs"])
    if not all(isinstance(i, str) and i for i in inputs):
        raise ConfigError(f"{where}: field 'inputs' = {_json(inputs)}: a list of input names is required")
    nodes = tuple(parse_node(name, i, n) for i, n in enumerate(_list(where, "nodes", entry["nodes"])))
    return PipelineSettings(
        name=name,
        inputs=tuple(inputs),
        nodes=nodes,
        outputs=_sources(where, "outputs", entry["outputs"]),
        demultiply_count=_demultiply_count(where, entry.get("demultiply_count")),
    )


def parse_library_entry(entry: Any, config_dir: Path | None = None) -> LibrarySettings:
    where = "custom_node_library_config_list entry"
    if isinstance(entry, dict) and isinstance(entry.get("name"), str):
        where = f"custom node library '{entry['name']}'"
    entry = _object(where, entry, ("name", "base_path"), ("name", "base_path"))
    name = _string(where, "name", entry["name"])
    base_path = _string(where, "base_path", entry["base_path"])
    if config_dir is not None and not Path(base_path).is_absolute():
        base_path = str((config_dir / base_path).resolve())
    return LibrarySettings(name, base_path)


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    """config.json's pipelines and libraries. An entry that does not parse is kept as an error under
    its name (reported, never ready), so that the others still serve, as with models."""

    pipelines: tuple[PipelineSettings, ...] = ()
    pipeline_errors: dict[str, str] = field(default_factory=dict)
    libraries: tuple[LibrarySettings, ...] = ()
    library_errors: dict[str, str] = field(default_factory=dict)


def _entry_name(entry: Any, fallback: str) -> str:
    name = entry.get("name") if isinstance(entry, dict) else None
    return name if isinstance(name, str) and name else fallback


def _entries(doc: dict, where: str, key: str, parse: Callable[[Any], T]) -> tuple[list[T], dict[str, str]]:
    """The parsed entries of one list, and the errors of those that did not parse, by name. Two
    entries with one name make the file unusable (ConfigError), as for models."""
    entries = doc.get(key, [])
    if not isinstance(entries, list):
        raise ConfigError(f"{where}: '{key}' must be a list")
    good: list[T] = []
    bad: dict[str, str] = {}
    names: set[str] = set()
    for index, entry in enumerate(entries):
        name = _entry_name(entry, f"{key}[{index}]")
        if name in names:
            raise ConfigError(f"{where}: '{name}' is defined twice in {key}")
        names.add(name)
        try:
            good.append(parse(entry))
        except ConfigError as e:
            bad[name] = str(e)
    return good, bad


def parse_pipeline_config(doc: dict, where: str, config_dir: Path | None = None) -> PipelineConfig:
    """`pipeline_config_list` and `custom_node_library_config_list` of a config.json document."""
    libraries, library_errors = _entries(
        doc, where, "custom_node_library_config_list", lambda e: parse_library_entry(e, config_dir)
    )
    pipelines, pipeline_errors = _entries(doc, where, "pipeline_config_list", parse_pipeline_entry)
    return PipelineConfig(tuple(pipelines), pipeline_errors, tuple(libraries), library_errors)
