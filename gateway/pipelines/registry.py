"""The served pipelines and custom node libraries: built from config.json, rebuilt when it or a model
they use changes.

A pipeline is validated against the models as they serve now (pipelines/graph.py); one that fails is
kept, not ready, with its reason (model ready false; metadata and infer UNAVAILABLE), while the other
models and pipelines serve, as OVMS does. After any model change the pipelines are validated again, so a
pipeline whose model becomes ready (or goes away) follows it. Changing a definition is blue/green: the
new graph serves new requests, requests in flight finish on the graph they started with.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

from gateway.codecs.images import ImageInput
from gateway.config.pipelines import LibrarySettings, PipelineSettings
from gateway.core.errors import ConfigError, GatewayError, NotFound, Unavailable
from gateway.core.records import VersionStatus
from gateway.pipelines.custom_node import LoadedLibrary, load_library
from gateway.pipelines.executor import Pipeline
from gateway.pipelines.graph import ModelPorts, build_graph
from gateway.pipelines.node_contract import NodeInstance
from gateway.serving.manager import ModelManager
from gateway.serving.model_version import State

log = logging.getLogger(__name__)


class PipelineRegistry:
    def __init__(self, manager: ModelManager):
        self._manager = manager
        self._pipelines: dict[str, Pipeline] = {}
        self._errors: dict[str, str] = {}  # pipelines whose entry could not even be parsed
        self._libraries: dict[str, LoadedLibrary] = {}
        # (pipeline, node, library, its path and load, params) -> the node's library instance, kept
        # across rebuilds while the node's library and params are unchanged (initialized once per node).
        self._instances: dict[tuple, NodeInstance] = {}

    # --- configuration ---------------------------------------------------------------------------

    def apply(
        self,
        pipelines: Sequence[PipelineSettings],
        errors: dict[str, str],
        libraries: Sequence[LibrarySettings],
        library_errors: dict[str, str] | None = None,
    ) -> dict[str, str]:
        """Make the served pipelines and libraries match the configuration; returns what happened to
        each pipeline (for the reload report)."""
        report: dict[str, str] = {}
        loaded: dict[str, LoadedLibrary] = {}
        for library in libraries:
            known = self._libraries.get(library.name)
            if known is not None and known.base_path == library.base_path and known.library is not None:
                loaded[library.name] = known
            else:
                loaded[library.name] = load_library(library.name, library.base_path)
        for name, error in (library_errors or {}).items():
            loaded[name] = LoadedLibrary(name, "", None, error)
        self._libraries = loaded

        wanted = {p.name: p for p in pipelines}
        for name in list(self._pipelines):
            if name not in wanted:
                self._pipelines.pop(name).fail("removed from the configuration")
                report[name] = "removed"
        self._errors = dict(errors)
        for name, error in errors.items():
            log.error("pipeline %s not served: %s", name, error)
            self._pipelines.pop(name, None)
            report[name] = f"failed: {error}"
        for settings in pipelines:
            current = self._pipelines.get(settings.name)
            if current is None or current.settings != settings:
                self._pipelines[settings.name] = Pipeline(settings.name, settings, self._resolve)
                report[settings.name] = "loaded" if current is None else "reloaded"
        self.revalidate(report)
        return report

    def revalidate(self, report: dict[str, str] | None = None) -> None:
        """Build every pipeline's graph against the models as they serve now. Requests in flight keep
        the graph they started with (Pipeline.infer takes it once)."""
        used: dict[tuple, NodeInstance] = {}
        model_names = set(self._manager.served_names())
        for name, pipeline in self._pipelines.items():

            def make_instance(
                node: str, library: str, params: tuple, pipeline: Pipeline = pipeline
            ) -> NodeInstance:
                return self._instance(pipeline, node, library, params, used)

            try:
                graph = build_graph(
                    pipeline.settings, model_names, self._libraries, self._ports, make_instance
                )
            except ConfigError as e:
                reason = str(e).removeprefix(f"pipeline '{name}': ")  # messages say the name already
                if pipeline.reason != reason:
                    log.error("pipeline %s not ready: %s", name, reason)
                pipeline.fail(reason)
                if report is not None and name in report:
                    report[name] = f"failed: {reason}"
                continue
            was_ready = pipeline.ready
            pipeline.activate(graph)
            if not was_ready:
                log.info(
                    "pipeline %s ready: %d nodes; inputs %s; outputs %s",
                    name,
                    len(graph.nodes),
                    ", ".join(f"{s.name} {s.datatype} {list(s.shape)}" for s in graph.inputs),
                    ", ".join(f"{s.name} {s.datatype} {list(s.shape)}" for s in graph.outputs),
                )
        self._instances = used  # instances no node uses any more deinitialize once their requests end

    def _instance(
        self, pipeline: Pipeline, node: str, library_name: str, params: tuple, used: dict[tuple, NodeInstance]
    ) -> NodeInstance:
        loaded = self._libraries[library_name]
        assert loaded.library is not None  # build_graph checked
        key = (pipeline.name, node, library_name, loaded.base_path, id(loaded.library), params)
        instance = used.get(key) or self._instances.get(key)
        if instance is None:
            instance = loaded.library.instance(dict(params))
        used[key] = instance
        return instance

    def _ports(self, model: str, version: int | None) -> ModelPorts:
        try:
            served = self._manager.version(model, "" if version is None else str(version))
        except GatewayError as e:
            raise ConfigError(e.message) from None
        images = {
            spec.name: how
            for spec, how in zip(served.inputs, served.image_support, strict=True)
            if isinstance(how, ImageInput)
        }
        return ModelPorts(served.name, served.version, served.inputs, served.outputs, images)

    def _resolve(self, model: str, version: int | None):
        return self._manager.version(model, "" if version is None else str(version))

    # --- look-ups ---------------------------------------------------------------------------------

    def get(self, name: str) -> Pipeline | None:
        return self._pipelines.get(name)

    def knows(self, name: str) -> bool:
        return name in self._pipelines or name in self._errors

    def pipeline(self, name: str) -> Pipeline:
        """The ready pipeline a request names, or the protocol's error."""
        pipeline = self._pipelines.get(name)
        if pipeline is None:
            if name in self._errors:
                raise Unavailable(f"pipeline '{name}' is not loaded: {self._errors[name]}")
            raise NotFound(f"Model with requested name is not found: '{name}'")
        if not pipeline.ready:
            raise Unavailable(f"pipeline '{name}' is not ready: {pipeline.reason or pipeline.state.value}")
        return pipeline

    def __iter__(self) -> Iterator[Pipeline]:
        return iter(list(self._pipelines.values()))

    def index(self, ready_only: bool = False) -> list[VersionStatus]:
        rows = []
        for name, error in self._errors.items():
            if not ready_only:
                rows.append(VersionStatus(name, "", State.UNAVAILABLE.value, error))
        for pipeline in self._pipelines.values():
            if pipeline.ready or not ready_only:
                rows.append(
                    VersionStatus(pipeline.name, str(pipeline.version), pipeline.state.value, pipeline.reason)
                )
        return rows
