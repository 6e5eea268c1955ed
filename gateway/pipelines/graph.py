"""A pipeline definition checked against the models and libraries it uses: the graph the executor runs.

`build_graph` validates once, in OVMS's order (name clash, libraries, nodes and their references,
cycles, demultiplexer/gather order, then tensor metadata), and each failure is a ConfigError naming the
pipeline, the node and the field. What it returns can be trusted by the executor (pipeline.py): every
reference resolves, the graph is acyclic, every node's inputs come from one demultiplexing level, gathers
are in LIFO order, and connected tensors agree in datatype and shape as far as the metadata says.

Demultiplexing levels. A demultiplexer (a node, or the request, with `demultiply_count`) splits each of
its outputs on dimension 0, and the nodes after it run once per slice, on tensors without that dimension.
A node's *levels* are the demultiplexers in effect where it runs, outermost first; `gather_from_node`
stacks the branches of the innermost one back (adding dimension 0 to that node's inputs), and the
response gathers whatever is left, outermost first, each adding a leading dimension.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from gateway.codecs.images import ImageInput
from gateway.config.pipelines import (
    DYNAMIC_DEMULTIPLY,
    REQUEST_NODE,
    RESPONSE_NODE,
    NodeKind,
    NodeSettings,
    PipelineSettings,
    Source,
)
from gateway.core.errors import ConfigError
from gateway.core.records import TensorSpec
from gateway.pipelines.custom_node import LoadedLibrary
from gateway.pipelines.node_contract import NodeInstance

Shape = tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ModelPorts:
    """What validation needs of a model version: its inputs and outputs as clients see them."""

    name: str
    version: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    images: Mapping[str, ImageInput] = field(default_factory=dict)  # inputs that take encoded images


# (model name, version or None for the default) -> the model's ports; ConfigError saying why when the
# model or version is not served (or not ready).
ModelLookup = Callable[[str, int | None], ModelPorts]
# (node name, library name, node params) -> the node's own library instance (OVMS initializes the library
# once per node); ConfigError when it cannot be made.
InstanceMaker = Callable[[str, str, tuple[tuple[str, str], ...]], NodeInstance]


@dataclass(frozen=True, eq=False, slots=True)
class GraphNode:
    name: str
    kind: NodeKind
    inputs: tuple[tuple[str, Source], ...]  # the node's input name -> where it comes from
    input_specs: dict[str, TensorSpec]  # what the node takes per execution (model or library metadata)
    input_images: Mapping[str, ImageInput]  # MODEL: its inputs that take encoded images
    aliases: dict[str, str]  # alias (what other nodes reference) -> data item (the model's/library's output)
    output_specs: dict[str, TensorSpec]  # alias -> per-execution tensor, before any demultiplexing
    levels: tuple[str, ...]  # demultiplexers in effect where this node runs, outermost first
    model_name: str = ""
    model_version: int | None = None
    instance: NodeInstance | None = None  # CUSTOM
    demultiply_count: int | None = None
    gather_from: str | None = None

    @property
    def output_levels(self) -> tuple[str, ...]:
        return (*self.levels, self.name) if self.demultiply_count is not None else self.levels


@dataclass(eq=False, slots=True)
class PipelineGraph:
    name: str
    inputs: tuple[TensorSpec, ...]  # as clients send them (demultiplexing at the entry included)
    outputs: tuple[TensorSpec, ...]  # as clients receive them (every level the response gathers included)
    output_sources: tuple[tuple[str, Source], ...]
    nodes: dict[str, GraphNode]  # in an order where every node comes after its sources
    entry_demultiply: int | None  # the request's demultiply_count
    response_levels: tuple[str, ...]  # the levels the response gathers, outermost first
    # Pipeline inputs that take encoded images (BYTES [N]): how to decode them for the model they feed;
    # decoding gives [N, H, W, C], and with demultiplexing at the entry each image becomes one branch.
    images: dict[str, ImageInput] = field(default_factory=dict)
    longest_chain: int = 1  # the most nodes on one path from the request to the response


def _fmt(spec: TensorSpec) -> str:
    return f"{spec.datatype} [{','.join(str(d) for d in spec.shape)}]"


def _merge(a: Shape, b: Shape) -> Shape | None:
    """Two shapes that must describe one tensor: the more specific of each dimension, None if they
    disagree (-1 = dynamic agrees with anything)."""
    if len(a) != len(b):
        return None
    out = []
    for x, y in zip(a, b, strict=True):
        if x >= 0 and y >= 0 and x != y:
            return None
        out.append(x if x >= 0 else y)
    return tuple(out)


def build_graph(
    settings: PipelineSettings,
    model_names: set[str],
    libraries: Mapping[str, LoadedLibrary],
    lookup: ModelLookup,
    make_instance: InstanceMaker,
) -> PipelineGraph:
    """Validate a pipeline against the models and libraries it names, in OVMS's order (name clash,
    libraries, nodes, cycles, connections, demultiplexers and gathers, metadata), and build its graph."""
    where = f"pipeline '{settings.name}'"
    if settings.name in model_names:
        raise ConfigError(f"{where}: the name is already a model's; a pipeline needs a name of its own")
    _check_names(where, settings)
    _check_libraries(where, settings, libraries)
    by_name = {n.name: n for n in settings.nodes}
    _check_references(where, settings, by_name)
    order = _topological_order(where, settings, by_name)
    _check_connected(where, settings, by_name)
    graph_nodes = {name: _graph_node(where, by_name[name], lookup, make_instance) for name in order}

    counts = {n.name: n.demultiply_count for n in settings.nodes if n.demultiply_count is not None}
    if settings.demultiply_count is not None:
        counts[REQUEST_NODE] = settings.demultiply_count
    dynamic = [name for name, count in counts.items() if count == DYNAMIC_DEMULTIPLY]
    if dynamic and len(counts) > 1:
        raise ConfigError(
            f"{where}: demultiplexer '{dynamic[0]}' is dynamic (demultiply_count -1), and a pipeline with a "
            f"dynamic demultiplexer may have no other; demultiplexers: {', '.join(sorted(counts))}"
        )
    entry_levels = (REQUEST_NODE,) if settings.demultiply_count is not None else ()
    response_levels = _assign_levels(where, settings, graph_nodes, entry_levels)
    request_specs = _propagate_specs(where, settings, graph_nodes, counts)
    inputs = tuple(
        TensorSpec(
            name,
            request_specs[name].datatype,
            ((counts[REQUEST_NODE] if counts[REQUEST_NODE] > 0 else -1), *request_specs[name].shape)
            if settings.demultiply_count is not None
            else request_specs[name].shape,
        )
        for name in settings.inputs
    )
    outputs = []
    for output_name, source in settings.outputs:
        spec = _branch_spec(source, graph_nodes, request_specs)
        gathered = tuple(counts[level] if counts[level] > 0 else -1 for level in response_levels)
        outputs.append(TensorSpec(output_name, spec.datatype, (*gathered, *spec.shape)))
    return PipelineGraph(
        images=_image_inputs(settings, graph_nodes, inputs),
        name=settings.name,
        inputs=inputs,
        outputs=tuple(outputs),
        output_sources=settings.outputs,
        nodes=graph_nodes,
        entry_demultiply=settings.demultiply_count,
        response_levels=response_levels,
        longest_chain=_longest_chain(graph_nodes),
    )


def _longest_chain(nodes: dict[str, GraphNode]) -> int:
    """The most nodes on one path through the graph (`nodes` in an order where sources come first)."""
    chain: dict[str, int] = {}
    for node in nodes.values():
        chain[node.name] = 1 + max((chain.get(source.node, 0) for _, source in node.inputs), default=0)
    return max(chain.values(), default=0)


def _image_inputs(
    settings: PipelineSettings, nodes: Mapping[str, GraphNode], inputs: Sequence[TensorSpec]
) -> dict[str, ImageInput]:
    """The pipeline inputs that take encoded images, as OVMS's binary inputs: those that feed only model
    inputs taking images (of one shape), with no gather between. With demultiplexing at the entry, the
    model takes one image per branch: its batch dimension must be 1, and the request's N images are the
    branches."""
    out = {}
    for spec in inputs:
        consumers = [
            (node, input_name)
            for node in nodes.values()
            for input_name, source in node.inputs
            if source.node == REQUEST_NODE and source.item == spec.name
        ]
        ways = [node.input_images.get(name) for node, name in consumers]
        if not consumers or any(
            w is None or n.gather_from is not None for w, (n, _) in zip(ways, consumers, strict=True)
        ):
            continue
        image = ways[0]
        assert image is not None
        if any(w != image for w in ways):
            continue
        if settings.demultiply_count is not None:
            if image.batch != (1, 1):
                continue
            count = settings.demultiply_count
            image = replace(image, batch=(count, count) if count > 0 else (1, -1))
        out[spec.name] = image
    return out


def _repeated(names: Iterable[str]) -> str | None:
    """The first name that comes again, or None."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            return name
        seen.add(name)
    return None


def _check_names(where: str, settings: PipelineSettings) -> None:
    seen: set[str] = set()
    for node in settings.nodes:
        if node.name in (REQUEST_NODE, RESPONSE_NODE):
            raise ConfigError(
                f"{where}: node name '{node.name}' is reserved (request and response are implicit)"
            )
        if node.name in seen:
            raise ConfigError(f"{where}: node name '{node.name}' is used by more than one node")
        seen.add(node.name)
        twice = _repeated(name for name, _ in node.inputs)
        if twice is not None:
            raise ConfigError(f"{where}: node '{node.name}': input '{twice}' is connected more than once")
        twice = _repeated(alias for _, alias in node.outputs)
        if twice is not None:
            raise ConfigError(f"{where}: node '{node.name}': outputs: alias '{twice}' is used twice")
        if not node.inputs:
            raise ConfigError(f"{where}: node '{node.name}' has no inputs")
    for field_name, names in (("inputs", settings.inputs), ("outputs", [n for n, _ in settings.outputs])):
        twice = _repeated(names)
        if twice is not None:
            raise ConfigError(f"{where}: field '{field_name}': '{twice}' is listed twice")
    if not settings.outputs:
        raise ConfigError(f"{where}: field 'outputs' is empty; the response needs at least one")
    if not settings.inputs:
        raise ConfigError(f"{where}: field 'inputs' is empty; the request needs at least one")


def _check_references(where: str, settings: PipelineSettings, by_name: Mapping[str, NodeSettings]) -> None:
    def check(at: str, source: Source) -> None:
        if source.node == REQUEST_NODE:
            if source.item not in settings.inputs:
                raise ConfigError(
                    f"{at}: data_item '{source.item}' is not a pipeline input; inputs: "
                    f"{', '.join(settings.inputs)}"
                )
            return
        producer = by_name.get(source.node)
        if producer is None:
            raise ConfigError(f"{at}: node_name '{source.node}' is not a node of the pipeline")
        if source.item not in {alias for _, alias in producer.outputs}:
            raise ConfigError(
                f"{at}: data_item '{source.item}' is not an output alias of node '{source.node}'; its "
                f"aliases: {', '.join(alias for _, alias in producer.outputs) or 'none'}"
            )

    for node in settings.nodes:
        for input_name, source in node.inputs:
            check(f"{where}: node '{node.name}' input '{input_name}'", source)
        if node.gather_from_node is not None:
            target = node.gather_from_node
            if target != REQUEST_NODE and target not in by_name:
                raise ConfigError(
                    f"{where}: node '{node.name}': field 'gather_from_node' = '{target}': no such node"
                )
            demultiplexes = (
                settings.demultiply_count is not None
                if target == REQUEST_NODE
                else by_name[target].demultiply_count is not None
            )
            if not demultiplexes:
                raise ConfigError(
                    f"{where}: node '{node.name}': field 'gather_from_node' = '{target}': that node does "
                    "not demultiplex (it has no demultiply_count)"
                )
    for output_name, source in settings.outputs:
        if source.node == RESPONSE_NODE:
            raise ConfigError(f"{where}: output '{output_name}': node_name 'response' cannot be a source")
        check(f"{where}: output '{output_name}'", source)


def _topological_order(
    where: str, settings: PipelineSettings, by_name: Mapping[str, NodeSettings]
) -> list[str]:
    """Nodes after their sources; a cycle is an error that names its nodes in order."""
    order: list[str] = []
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(name: str) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = path[path.index(name) :] + [name]
            raise ConfigError(f"{where}: the nodes form a cycle: {' -> '.join(reversed(cycle))}")
        state[name] = 1
        path.append(name)
        for _, source in by_name[name].inputs:
            if source.node != REQUEST_NODE:
                visit(source.node)
        path.pop()
        state[name] = 2
        order.append(name)

    for node in settings.nodes:
        visit(node.name)
    return order


def _check_connected(where: str, settings: PipelineSettings, by_name: Mapping[str, NodeSettings]) -> None:
    """Every node leads to the response; every pipeline input feeds some node."""
    used: set[str] = set()
    pending = [source.node for _, source in settings.outputs]
    while pending:
        name = pending.pop()
        if name in used or name == REQUEST_NODE:
            continue
        used.add(name)
        pending += [source.node for _, source in by_name[name].inputs]
    for node in settings.nodes:
        if node.name not in used:
            raise ConfigError(
                f"{where}: node '{node.name}' is not connected to the response: no pipeline output "
                "depends on it"
            )
    fed = {s.item for n in settings.nodes for _, s in n.inputs if s.node == REQUEST_NODE}
    fed |= {s.item for _, s in settings.outputs if s.node == REQUEST_NODE}
    for name in settings.inputs:
        if name not in fed:
            raise ConfigError(f"{where}: pipeline input '{name}' is connected to no node")


def _check_libraries(where: str, settings: PipelineSettings, libraries: Mapping[str, LoadedLibrary]) -> None:
    for node in settings.nodes:
        if node.kind is not NodeKind.CUSTOM:
            continue
        library = libraries.get(node.library_name)
        if library is None:
            raise ConfigError(
                f"{where}: node '{node.name}': field 'library_name' = '{node.library_name}': no such "
                f"library in custom_node_library_config_list"
                + (f" (defined: {', '.join(sorted(libraries))})" if libraries else "")
            )
        if library.library is None:
            raise ConfigError(
                f"{where}: node '{node.name}': library '{node.library_name}' failed to load: {library.error}"
            )


def _graph_node(
    where: str, node: NodeSettings, lookup: ModelLookup, make_instance: InstanceMaker
) -> GraphNode:
    """A node checked against what its model or library takes and produces; its levels come later."""
    at = f"{where}: node '{node.name}'"
    instance = None
    images: Mapping[str, ImageInput] = {}
    if node.kind is NodeKind.MODEL:
        try:
            ports = lookup(node.model_name, node.version)
        except ConfigError as e:
            field_name = "model_name" if node.version is None else "version"
            value = node.model_name if node.version is None else node.version
            raise ConfigError(f"{at}: field '{field_name}' = {value!r}: {e}") from None
        input_specs = {s.name: s for s in ports.inputs}
        produced = {s.name: s for s in ports.outputs}
        owner = f"model '{node.model_name}' version {ports.version}"
        images = ports.images
    else:
        try:
            instance = make_instance(node.name, node.library_name, node.params)
        except ConfigError as e:
            raise ConfigError(f"{at}: {e}") from None
        input_specs = {s.name: s for s in instance.inputs}
        produced = {s.name: s for s in instance.outputs}
        owner = f"library '{node.library_name}'"
    connected = [input_name for input_name, _ in node.inputs]
    for input_name in connected:
        if input_name not in input_specs:
            raise ConfigError(
                f"{at}: input '{input_name}' is not an input of {owner}; its inputs: {', '.join(input_specs)}"
            )
    for input_name in input_specs:
        if input_name not in connected:
            raise ConfigError(f"{at}: input '{input_name}' of {owner} is connected to nothing")
    aliases = {}
    for data_item, alias in node.outputs:
        if data_item not in produced:
            raise ConfigError(
                f"{at}: outputs: data_item '{data_item}' is not an output of {owner}; its outputs: "
                f"{', '.join(produced)}"
            )
        aliases[alias] = data_item
    return GraphNode(
        name=node.name,
        kind=node.kind,
        inputs=node.inputs,
        input_specs=input_specs,
        input_images=images,
        aliases=aliases,
        output_specs={alias: produced[item] for alias, item in aliases.items()},
        levels=(),
        model_name=node.model_name,
        model_version=node.version,
        instance=instance,
        demultiply_count=node.demultiply_count,
        gather_from=node.gather_from_node,
    )


def _source_levels(source: Source, nodes: Mapping[str, GraphNode], entry: tuple[str, ...]) -> tuple[str, ...]:
    return entry if source.node == REQUEST_NODE else nodes[source.node].output_levels


def _assign_levels(
    where: str, settings: PipelineSettings, nodes: dict[str, GraphNode], entry: tuple[str, ...]
) -> tuple[str, ...]:
    """Each node's levels (nodes are in topological order); returns the levels the response gathers."""

    def common(at: str, sources: Sequence[tuple[str, Source]]) -> tuple[str, ...]:
        levels = {name: _source_levels(source, nodes, entry) for name, source in sources}
        distinct = set(levels.values())
        if len(distinct) > 1:
            detail = "; ".join(f"'{n}' after [{', '.join(lv) or 'none'}]" for n, lv in levels.items())
            raise ConfigError(
                f"{at}: inputs come from different demultiplexing levels ({detail}); gather with "
                "gather_from_node first"
            )
        return distinct.pop()

    for node in nodes.values():
        at = f"{where}: node '{node.name}'"
        levels = common(at, node.inputs)
        if node.gather_from is not None:
            if not levels or levels[-1] != node.gather_from:
                if node.gather_from in levels:
                    raise ConfigError(
                        f"{at}: field 'gather_from_node' = '{node.gather_from}': gathers must undo "
                        f"demultiplexers in LIFO order; the innermost at its inputs is '{levels[-1]}'"
                    )
                raise ConfigError(
                    f"{at}: field 'gather_from_node' = '{node.gather_from}': its inputs are not "
                    f"demultiplexed by '{node.gather_from}' (levels: {', '.join(levels) or 'none'})"
                )
            levels = levels[:-1]
        nodes[node.name] = replace(node, levels=levels)
    return common(f"{where}: outputs", settings.outputs)


def _branch_spec(
    source: Source, nodes: Mapping[str, GraphNode], request: Mapping[str, TensorSpec]
) -> TensorSpec:
    """The tensor a consumer at the source's output levels receives: a demultiplexer's output per
    branch (dimension 0 removed)."""
    if source.node == REQUEST_NODE:
        return request[source.item]
    producer = nodes[source.node]
    spec = producer.output_specs[source.item]
    if producer.demultiply_count is not None:
        return TensorSpec(spec.name, spec.datatype, spec.shape[1:])
    return spec


def _propagate_specs(
    where: str, settings: PipelineSettings, nodes: Mapping[str, GraphNode], counts: Mapping[str, int]
) -> dict[str, TensorSpec]:
    """Check every connection's datatype and shape; returns each pipeline input's spec per branch of the
    entry demultiplexer (without its dimension), derived from the nodes it feeds."""
    for node in nodes.values():
        if node.demultiply_count is not None:
            for alias, spec in node.output_specs.items():
                _check_splittable(f"{where}: node '{node.name}'", alias, spec, node.demultiply_count)
    request: dict[str, TensorSpec] = {}

    def want(at: str, source: Source, expected: TensorSpec) -> None:
        """`expected`: what the consumer takes from `source` per branch."""
        if source.node == REQUEST_NODE:
            known = request.get(source.item)
            if known is None:
                request[source.item] = TensorSpec(source.item, expected.datatype, expected.shape)
                return
            merged = _merge(known.shape, expected.shape)
            if known.datatype != expected.datatype or merged is None:
                raise ConfigError(
                    f"{at}: takes pipeline input '{source.item}' as {_fmt(expected)}, another node as "
                    f"{_fmt(known)}"
                )
            request[source.item] = TensorSpec(source.item, known.datatype, merged)
            return
        given = _branch_spec(source, nodes, request)
        if given.datatype != expected.datatype:
            raise ConfigError(
                f"{at}: precision mismatch: it takes {expected.datatype}; node '{source.node}' "
                f"data_item '{source.item}' gives {given.datatype}"
            )
        if _merge(given.shape, expected.shape) is None:
            raise ConfigError(
                f"{at}: shape mismatch: it takes {_fmt(expected)}; node '{source.node}' data_item "
                f"'{source.item}' gives {_fmt(given)}"
                + (" per branch (demultiplexing removes dimension 0)" if source.node in counts else "")
            )

    for node in nodes.values():
        for input_name, source in node.inputs:
            at = f"{where}: node '{node.name}' input '{input_name}'"
            expected = node.input_specs[input_name]
            if node.gather_from is not None:
                count = counts[node.gather_from]
                if not expected.shape:
                    raise ConfigError(
                        f"{at}: gathers from '{node.gather_from}' but takes a scalar; gathering adds "
                        "dimension 0"
                    )
                if count > 0 and expected.shape[0] not in (-1, count):
                    raise ConfigError(
                        f"{at}: gathers {count} branches of '{node.gather_from}' but takes dimension 0 of "
                        f"{expected.shape[0]}"
                    )
                expected = TensorSpec(expected.name, expected.datatype, expected.shape[1:])
            want(at, source, expected)
    for output_name, source in settings.outputs:
        if source.node == REQUEST_NODE and source.item not in request:
            raise ConfigError(
                f"{where}: output '{output_name}' passes pipeline input '{source.item}' through, but no "
                "node takes it, so nothing says what it is"
            )
    return request


def _check_splittable(at: str, alias: str, spec: TensorSpec, count: int) -> None:
    if not spec.shape:
        raise ConfigError(f"{at}: demultiplexes output '{alias}', a scalar: it has no dimension 0 to split")
    if count > 0 and spec.shape[0] not in (-1, count):
        raise ConfigError(
            f"{at}: demultiply_count is {count} but output '{alias}' has dimension 0 of {spec.shape[0]} "
            f"({_fmt(spec)})"
        )
