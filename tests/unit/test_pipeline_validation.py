"""Pipeline definitions: OVMS's schema (config/pipelines.py) and the graph checks (pipelines/graph.py), driven
with fake model metadata and a fake library instance. Each error must name the pipeline, the node and
the field."""

from __future__ import annotations

import copy
import logging

import pytest

from gateway.config.pipelines import parse_pipeline_config, parse_pipeline_entry
from gateway.core.errors import ConfigError
from gateway.core.records import TensorSpec
from gateway.pipelines.custom_node import LoadedLibrary
from gateway.pipelines.graph import ModelPorts, build_graph

MODELS = {
    # name -> versions -> (inputs, outputs)
    "a": {1: ((TensorSpec("x", "FP32", (1, 4)),), (TensorSpec("y", "FP32", (1, 4)),))},
    "rows": {1: ((TensorSpec("x", "FP32", (1, 4)),), (TensorSpec("rows", "FP32", (-1, 1, 4)),))},
    "two": {
        1: (
            (TensorSpec("p", "FP32", (1, 4)), TensorSpec("q", "FP32", (1, 4))),
            (TensorSpec("out", "FP32", (1, 4)),),
        )
    },
    "ints": {1: ((TensorSpec("x", "INT32", (1, 4)),), (TensorSpec("y", "INT32", (1, 4)),))},
    "wide": {1: ((TensorSpec("x", "FP32", (1, 8)),), (TensorSpec("y", "FP32", (1, 8)),))},
    "scalar": {1: ((TensorSpec("x", "FP32", (1, 4)),), (TensorSpec("s", "FP32", ()),))},
}


def lookup(name: str, version: int | None) -> ModelPorts:
    versions = MODELS.get(name)
    if versions is None:
        raise ConfigError(f"Model with requested name is not found: '{name}'")
    number = max(versions) if version is None else version
    if number not in versions:
        raise ConfigError(f"Model with requested version is not found: model '{name}' version {version}")
    inputs, outputs = versions[number]
    return ModelPorts(name, number, inputs, outputs)


class FakeInstance:
    library = "lib"
    inputs = (TensorSpec("image", "FP32", (1, 4)),)
    outputs = (TensorSpec("resized", "FP32", (1, 4)),)

    def execute(self, inputs):
        return {"resized": inputs["image"]}


LIBRARIES = {
    "lib": LoadedLibrary("lib", "/x.so", object()),  # type: ignore[arg-type]  # the fake maker ignores it
    "bad_lib": LoadedLibrary("bad_lib", "/missing.so", None, "cannot load '/missing.so'"),
}


def model_node(name, model, source=("request", "in"), **extra):
    node = {
        "name": name,
        "type": "DL model",
        "model_name": model,
        "inputs": [{"x": {"node_name": source[0], "data_item": source[1]}}],
        "outputs": [{"data_item": "y", "alias": "y"}],
    }
    node.update(extra)
    return node


def pipeline(nodes, outputs=None, **extra):
    entry = {
        "name": "p",
        "inputs": ["in"],
        "nodes": nodes,
        "outputs": outputs
        if outputs is not None
        else [{"out": {"node_name": nodes[-1]["name"], "data_item": "y"}}],
    }
    entry.update(extra)
    return entry


def build(entry, model_names: frozenset[str] = frozenset(MODELS)):
    """`model_names`: the served model names a pipeline's name must not clash with."""
    return build_graph(
        parse_pipeline_entry(entry),
        set(model_names),
        LIBRARIES,
        lookup,
        lambda node, library, params: FakeInstance(),
    )


def error_of(entry, **kw) -> str:
    with pytest.raises(ConfigError) as e:
        build(entry, **kw)
    return str(e.value)


def test_a_good_chain_builds_with_derived_metadata():
    graph = build(pipeline([model_node("n1", "a"), model_node("n2", "a", ("n1", "y"))]))
    assert graph.inputs == (TensorSpec("in", "FP32", (1, 4)),)
    assert graph.outputs == (TensorSpec("out", "FP32", (1, 4)),)
    assert list(graph.nodes) == ["n1", "n2"]


def test_demultiplexing_adds_and_gathering_removes_dimension_zero():
    graph = build(pipeline([model_node("n1", "a")], demultiply_count=3))
    assert graph.inputs[0].shape == (3, 1, 4) and graph.outputs[0].shape == (3, 1, 4)
    dynamic = build(pipeline([model_node("n1", "a")], demultiply_count=-1))
    assert dynamic.inputs[0].shape == (-1, 1, 4) and dynamic.outputs[0].shape == (-1, 1, 4)
    split = model_node("split", "rows", demultiply_count=-1)
    split["outputs"] = [{"data_item": "rows", "alias": "rows"}]
    gathered = build(pipeline([split, model_node("each", "a", ("split", "rows"))]))
    assert gathered.outputs[0].shape == (-1, 1, 4)  # gathered at the response


@pytest.mark.parametrize(
    "entry, expected",
    [
        (pipeline([model_node("request", "a")]), "node name 'request' is reserved"),
        (
            pipeline([model_node("n", "a"), model_node("n", "a")]),
            "node name 'n' is used by more than one node",
        ),
        (
            pipeline([model_node("n", "no_such")]),
            "node 'n': field 'model_name' = 'no_such': Model with requested name",
        ),
        (pipeline([model_node("n", "a", version=5)]), "node 'n': field 'version' = 5"),
        (
            pipeline([model_node("n", "a", ("ghost", "y"))]),
            "node 'n' input 'x': node_name 'ghost' is not a node",
        ),
        (pipeline([model_node("n", "a", ("request", "nope"))]), "data_item 'nope' is not a pipeline input"),
        (
            pipeline([model_node("n1", "a"), model_node("n2", "a", ("n1", "zzz"))]),
            "node 'n2' input 'x': data_item 'zzz' is not an output alias of node 'n1'",
        ),
        (
            pipeline([model_node("n", "a", outputs=[{"data_item": "nope", "alias": "y"}])]),
            "node 'n': outputs: data_item 'nope' is not an output of model 'a' version 1",
        ),
        (
            pipeline(
                [
                    model_node("n1", "a", ("n2", "y")),
                    model_node("n2", "a", ("n1", "y")),
                ]
            ),
            "the nodes form a cycle: n1 -> n2 -> n1",
        ),
        (
            pipeline([model_node("lonely", "a"), model_node("n", "a")]),
            "node 'lonely' is not connected to the response",
        ),
        (
            pipeline(
                [
                    model_node(
                        "n",
                        "two",
                        inputs=[{"p": {"node_name": "request", "data_item": "in"}}],
                        outputs=[{"data_item": "out", "alias": "y"}],
                    )
                ]
            ),
            "node 'n': input 'q' of model 'two' version 1 is connected to nothing",
        ),
        (
            pipeline(
                [
                    model_node(
                        "n",
                        "two",
                        inputs=[
                            {"p": {"node_name": "request", "data_item": "in"}},
                            {"p": {"node_name": "request", "data_item": "in"}},
                        ],
                        outputs=[{"data_item": "out", "alias": "y"}],
                    )
                ]
            ),
            "node 'n': input 'p' is connected more than once",
        ),
        (
            pipeline([model_node("n", "a", inputs=[{"zz": {"node_name": "request", "data_item": "in"}}])]),
            "node 'n': input 'zz' is not an input of model 'a' version 1",
        ),
        (
            pipeline([model_node("n1", "a"), model_node("n2", "ints", ("n1", "y"))]),
            "node 'n2' input 'x': precision mismatch: it takes INT32; node 'n1' data_item 'y' gives FP32",
        ),
        (
            pipeline([model_node("n1", "a"), model_node("n2", "wide", ("n1", "y"))]),
            "node 'n2' input 'x': shape mismatch: it takes FP32 [1,8]; node 'n1' data_item 'y' gives "
            "FP32 [1,4]",
        ),
        (
            pipeline([model_node("n1", "a"), model_node("n2", "a", ("n1", "y"), gather_from_node="n1")]),
            "field 'gather_from_node' = 'n1': that node does not demultiplex",
        ),
        (
            pipeline(
                [model_node("n1", "a", demultiply_count=-1), model_node("n2", "a", ("n1", "y"))],
                demultiply_count=-1,
            ),
            "is dynamic (demultiply_count -1), and a pipeline with a dynamic demultiplexer may have no other",
        ),
        (
            pipeline(
                [model_node("n1", "scalar", demultiply_count=2, outputs=[{"data_item": "s", "alias": "y"}])]
            ),
            "node 'n1': demultiplexes output 'y', a scalar: it has no dimension 0 to split",
        ),
        (
            pipeline([model_node("n1", "a", demultiply_count=3)]),
            "node 'n1': demultiply_count is 3 but output 'y' has dimension 0 of 1",
        ),
        (
            pipeline(
                [
                    {
                        "name": "c",
                        "type": "custom",
                        "library_name": "nope",
                        "inputs": [{"image": {"node_name": "request", "data_item": "in"}}],
                        "outputs": [{"data_item": "resized", "alias": "y"}],
                    }
                ]
            ),
            "node 'c': field 'library_name' = 'nope': no such library",
        ),
        (
            pipeline(
                [
                    {
                        "name": "c",
                        "type": "custom",
                        "library_name": "bad_lib",
                        "inputs": [{"image": {"node_name": "request", "data_item": "in"}}],
                        "outputs": [{"data_item": "resized", "alias": "y"}],
                    }
                ]
            ),
            "node 'c': library 'bad_lib' failed to load: cannot load '/missing.so'",
        ),
        (pipeline([model_node("n", "a")], outputs=[]), "field 'outputs' is empty"),
    ],
)
def test_each_invalid_definition_is_named(entry, expected):
    message = error_of(entry)
    assert message.startswith("pipeline 'p'"), message
    assert expected in message, message


def test_a_name_clash_with_a_model():
    message = error_of(pipeline([model_node("n", "a")]), model_names=frozenset({*MODELS, "p"}))
    assert "pipeline 'p': the name is already a model's" in message


def test_inputs_from_different_levels_and_lifo_gathers():
    split = model_node("split", "rows", demultiply_count=2)
    split["outputs"] = [{"data_item": "rows", "alias": "rows"}]
    mixed = pipeline(
        [
            split,
            model_node("first", "a"),
            model_node(
                "n",
                "two",
                inputs=[
                    {"p": {"node_name": "split", "data_item": "rows"}},
                    {"q": {"node_name": "first", "data_item": "y"}},
                ],
                outputs=[{"data_item": "out", "alias": "y"}],
            ),
        ]
    )
    assert "inputs come from different demultiplexing levels" in error_of(mixed)

    inner = model_node("inner", "rows", ("split", "rows"), demultiply_count=2)
    inner["outputs"] = [{"data_item": "rows", "alias": "rows"}]
    lifo = pipeline([split, inner, model_node("n", "a", ("inner", "rows"), gather_from_node="split")])
    message = error_of(lifo)
    assert (
        "node 'n': field 'gather_from_node' = 'split': gathers must undo demultiplexers in LIFO order"
        in message
    )


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda e: e.update(extra=1), "pipeline 'p': unknown key 'extra'"),
        (lambda e: e["nodes"][0].update(colour="red"), "node 'n': unknown key 'colour'"),
        (lambda e: e["nodes"][0].update(type="model"), "node 'n': field 'type' = \"model\""),
        (lambda e: e["nodes"][0].update(demultiply_count=10001), "field 'demultiply_count' = 10001"),
        (lambda e: e["nodes"][0].update(demultiply_count=-2), "field 'demultiply_count' = -2"),
        (lambda e: e["nodes"][0].update(library_name="lib"), "field 'library_name' belongs to custom nodes"),
        (lambda e: e["nodes"][0].pop("inputs"), "node 'n': field 'inputs' is required"),
        (lambda e: e["nodes"][0]["inputs"][0].update(y={}), 'expected one {"<name>"'),
        (lambda e: e["nodes"][0]["outputs"][0].update(extra="x"), "outputs[0]: unknown key 'extra'"),
        (lambda e: e.pop("outputs"), "pipeline 'p': field 'outputs' is required"),
    ],
)
def test_schema_errors(change, expected):
    entry = pipeline([model_node("n", "a")])
    change(entry)
    with pytest.raises(ConfigError) as e:
        parse_pipeline_entry(entry)
    assert expected in str(e.value)


def test_custom_node_params_are_strings():
    entry = pipeline(
        [
            {
                "name": "c",
                "type": "custom",
                "library_name": "lib",
                "params": {"size": 3},
                "inputs": [{"image": {"node_name": "request", "data_item": "in"}}],
                "outputs": [{"data_item": "resized", "alias": "y"}],
            }
        ]
    )
    with pytest.raises(ConfigError) as e:
        parse_pipeline_entry(entry)
    assert "node 'c': field 'params'" in str(e.value) and "string values" in str(e.value)
    entry["nodes"][0]["params"] = {"size": "3"}
    graph = build(entry)
    assert graph.nodes["c"].instance is not None


def test_demultiply_count_zero_reads_as_dynamic_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        settings = parse_pipeline_entry(pipeline([model_node("n", "a", demultiply_count=0)]))
    assert settings.nodes[0].demultiply_count == -1
    assert "deprecated" in caplog.text


def test_a_config_keeps_good_pipelines_beside_bad_ones():
    good = pipeline([model_node("n", "a")])
    bad = copy.deepcopy(good)
    bad["name"] = "bad"
    bad["nodes"][0]["type"] = "oops"
    config = parse_pipeline_config(
        {
            "pipeline_config_list": [good, bad],
            "custom_node_library_config_list": [{"name": "l", "base_path": "x.so"}],
        },
        "config.json",
    )
    assert [p.name for p in config.pipelines] == ["p"]
    assert "bad" in config.pipeline_errors and "field 'type'" in config.pipeline_errors["bad"]
    assert config.libraries[0].name == "l"
    with pytest.raises(ConfigError) as e:
        parse_pipeline_config({"pipeline_config_list": [good, good]}, "config.json")
    assert "'p' is defined twice" in str(e.value)


def test_each_custom_node_gets_its_own_library_instance():
    def custom(name, source):
        return {
            "name": name,
            "type": "custom",
            "library_name": "lib",
            "params": {"same": "params"},
            "inputs": [{"image": {"node_name": source[0], "data_item": source[1]}}],
            "outputs": [{"data_item": "resized", "alias": "y"}],
        }

    made = []

    def maker(node, library, params):
        made.append((node, library, params))
        return FakeInstance()

    entry = pipeline([custom("one", ("request", "in")), custom("two", ("one", "y"))])
    graph = build_graph(parse_pipeline_entry(entry), set(), LIBRARIES, lookup, maker)
    assert made == [("one", "lib", (("same", "params"),)), ("two", "lib", (("same", "params"),))]
    assert graph.nodes["one"].instance is not graph.nodes["two"].instance
