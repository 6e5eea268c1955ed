"""Tensor codecs and request validation alone: every datatype, rank 0, empty tensors, byte order.

Pure functions and records, no server and no OpenVINO inference: milliseconds.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest

from gateway.codecs.tensor import (
    array_from_contents,
    array_from_raw,
    check_declared_shape,
    json_from_array,
    raw_from_array,
)
from gateway.config.settings import ModelSettings, VersionPolicy
from gateway.core.datatypes import BY_NAME
from gateway.core.errors import InvalidArgument
from gateway.core.records import InferInput, TensorSpec
from gateway.dataplane.model_config import model_config
from gateway.serving.model_version import UNBOUNDED_BATCH, ModelVersion, check_shape
from tests.support.datatype_samples import SAMPLES

FIXED = [name for name, dt in BY_NAME.items() if dt.itemsize]


def held(datatype: str, sample: np.ndarray) -> np.ndarray:
    """The array the gateway holds for a client's numpy array (BF16 as uint16 bit patterns)."""
    if datatype == "BF16":
        return sample.view(np.uint16)
    if datatype == "BYTES":
        return sample
    return sample.astype(BY_NAME[datatype].numpy)


@pytest.mark.parametrize("datatype", list(BY_NAME))
@pytest.mark.parametrize("shape", [(2, 3), (), (0, 3), (6,)], ids=["2x3", "rank0", "empty", "flat"])
def test_raw_round_trip_for_every_datatype_and_rank(datatype, shape):
    sample = held(datatype, SAMPLES[datatype]).reshape(-1)
    count = int(np.prod(shape))
    array = sample[:count].reshape(shape)
    raw = bytes(raw_from_array(datatype, array))
    decoded = array_from_raw("x", datatype, shape, raw)
    assert decoded.shape == shape and decoded.dtype == BY_NAME[datatype].numpy
    np.testing.assert_array_equal(decoded, array)


@pytest.mark.parametrize("datatype", FIXED)
def test_raw_bytes_are_little_endian_whatever_the_array_byte_order(datatype):
    dt = BY_NAME[datatype]
    value = np.array([1], dtype=dt.numpy)
    big = value.astype(dt.numpy.newbyteorder(">"))
    raw = bytes(raw_from_array(datatype, big))
    assert raw == value.astype(dt.numpy.newbyteorder("<")).tobytes()
    assert array_from_raw("x", datatype, (1,), raw)[0] == value[0]


def test_raw_int32_reads_the_protocol_byte_order():
    assert array_from_raw("x", "INT32", (), b"\x01\x02\x00\x00") == 0x0201
    assert array_from_raw("x", "FP16", (), struct.pack("<e", 1.5)) == np.float16(1.5)


@pytest.mark.parametrize("datatype", FIXED)
def test_raw_size_must_match_the_shape_exactly(datatype):
    itemsize = BY_NAME[datatype].itemsize
    with pytest.raises(InvalidArgument, match=f"expected {itemsize} for shape \\[\\]"):
        array_from_raw("x", datatype, (), b"\x00" * (itemsize + 1))
    with pytest.raises(InvalidArgument, match="expected 0"):
        array_from_raw("x", datatype, (0, 4), b"\x00")


def test_bytes_framing_errors_name_the_input_and_element():
    def framed(*items: bytes) -> bytes:
        return b"".join(struct.pack("<I", len(i)) + i for i in items)

    assert array_from_raw("s", "BYTES", (), framed(b"one")) == b"one"
    assert array_from_raw("s", "BYTES", (0,), b"").shape == (0,)
    with pytest.raises(InvalidArgument, match="input 's': BYTES content ends after 1 of 2"):
        array_from_raw("s", "BYTES", (2,), framed(b"abcd"))
    with pytest.raises(InvalidArgument, match=r"shape \[2\] declares 2 BYTES elements, but .* only 5 bytes"):
        array_from_raw("s", "BYTES", (2,), framed(b"a"))  # refused before anything is allocated
    with pytest.raises(InvalidArgument, match="element 0 declares 9 bytes but only 2 remain"):
        array_from_raw("s", "BYTES", (1,), struct.pack("<I", 9) + b"ab")
    with pytest.raises(InvalidArgument, match="3 bytes left over after 1 elements"):
        array_from_raw("s", "BYTES", (1,), framed(b"a") + b"xyz")


@pytest.mark.parametrize("datatype", list(BY_NAME))
def test_json_and_typed_contents_round_trip_for_every_datatype(datatype):
    array = held(datatype, SAMPLES[datatype])
    as_json = json_from_array(datatype, array)
    assert isinstance(as_json, list) and len(as_json) == array.size  # flat, row-major
    if datatype == "BYTES":
        as_json = [s.encode("latin-1") if "\x00" in s else s for s in as_json]
    decoded = array_from_contents("x", datatype, array.shape, as_json)
    np.testing.assert_array_equal(decoded, array)
    nested = array_from_contents(
        "x", datatype, array.shape, np.asarray(as_json, dtype=object).reshape(2, 3).tolist()
    )
    np.testing.assert_array_equal(nested, array)


@pytest.mark.parametrize("datatype", ["INT64", "FP32", "BOOL", "BYTES"])
def test_json_scalars_decode_from_a_bare_value_or_a_one_element_list(datatype):
    value = {"INT64": 5, "FP32": 0.5, "BOOL": True, "BYTES": "hi"}[datatype]
    for data in (value, [value]):
        decoded = array_from_contents("x", datatype, (), data)
        assert decoded.shape == ()
        assert decoded.item() == (value.encode() if datatype == "BYTES" else value)
    assert json_from_array(datatype, array_from_contents("x", datatype, (), value)) == [value]


def test_json_element_count_and_type_errors():
    with pytest.raises(InvalidArgument, match="data has 3 elements; expected 4 for shape \\[2, 2\\]"):
        array_from_contents("x", "FP32", (2, 2), [1, 2, 3])
    with pytest.raises(InvalidArgument, match="data has 0 elements; expected 1 for shape \\[\\]"):
        array_from_contents("x", "INT64", (), [])
    with pytest.raises(InvalidArgument, match="not a valid INT32 array"):
        array_from_contents("x", "INT32", (1,), ["seven"])
    with pytest.raises(InvalidArgument, match="BYTES element 1 is int"):
        array_from_contents("x", "BYTES", (2,), ["a", 3])


def test_empty_tensors_decode_to_empty_arrays():
    assert array_from_contents("x", "FP32", (0, 3), []).shape == (0, 3)
    assert array_from_contents("x", "BYTES", (2, 0), []).shape == (2, 0)
    assert json_from_array("FP32", np.zeros((0, 3), np.float32)) == []


# --- shape and batch validation -----------------------------------------------------------------


def version_of(inputs, bounds, max_batch_size: int = 0) -> ModelVersion:
    """A ModelVersion described by hand (no compiled model): what validation reads."""
    settings = ModelSettings("m", "/nowhere", max_batch_size=max_batch_size)
    version = ModelVersion("m", 1, settings, "/nowhere/1/model.xml")
    outputs = tuple(TensorSpec(f"out_{s.name}", s.datatype, s.shape) for s in inputs)
    version.describe(tuple(inputs), tuple(bounds), outputs)
    return version


def given(name: str, shape: tuple[int, ...], datatype: str = "INT32") -> InferInput:
    return InferInput(name, datatype, shape, np.zeros(shape, BY_NAME[datatype].numpy))


def test_check_shape_names_the_input_and_the_ranges():
    check_shape("x", ((1, 8), (16, 16)), (8, 16))
    with pytest.raises(InvalidArgument, match=r"Expected: \[1:8,16\]; Actual: \[9,16\]; input name: x"):
        check_shape("x", ((1, 8), (16, 16)), (9, 16))
    with pytest.raises(InvalidArgument, match=r"Expected: \[-1\]; Actual: \[1,1\]"):
        check_shape("x", ((0, -1),), (1, 1))
    with pytest.raises(InvalidArgument, match=r"Expected: \[\]; Actual: \[2\]"):
        check_shape("x", (), (2,))


def simple_version(max_batch_size: int = 0) -> ModelVersion:
    specs = [TensorSpec("INPUT0", "INT32", (-1, 16)), TensorSpec("INPUT1", "INT32", (-1, 16))]
    low = 1 if max_batch_size else 0
    high = max_batch_size or -1
    return version_of(specs, [((low, high), (16, 16))] * 2, max_batch_size)


def test_inputs_of_a_batched_model_must_share_dimension_0():
    version = simple_version()  # [-1,16] everywhere: Triton's max_batch_size > 0 without batching on
    assert version.max_batch_size == UNBOUNDED_BATCH
    arrays, rows = version.order_inputs([given("INPUT1", (3, 16)), given("INPUT0", (3, 16))])
    assert rows == 3 and [a.shape for a in arrays] == [(3, 16), (3, 16)]
    with pytest.raises(InvalidArgument) as caught:
        version.order_inputs([given("INPUT0", (2, 16)), given("INPUT1", (1, 16))])
    assert (
        "INPUT0 has 2, INPUT1 has 1" in caught.value.message and "Invalid batch size" in caught.value.message
    )
    with pytest.raises(
        InvalidArgument, match=r"Expected: at least 1; Actual: 0 \(dimension 0 of INPUT0, INPUT1\)"
    ):
        version.order_inputs([given("INPUT0", (0, 16)), given("INPUT1", (0, 16))])


def test_dynamic_batching_bounds_the_batch_size():
    version = simple_version(max_batch_size=8)
    assert version.order_inputs([given("INPUT0", (8, 16)), given("INPUT1", (8, 16))])[1] == 8
    with pytest.raises(InvalidArgument, match="INPUT0 has 2, INPUT1 has 1"):
        version.order_inputs([given("INPUT0", (2, 16)), given("INPUT1", (1, 16))])
    with pytest.raises(InvalidArgument, match=r"Expected: \[1:8,16\]; Actual: \[9,16\]"):
        version.order_inputs([given("INPUT0", (9, 16)), given("INPUT1", (9, 16))])


def test_a_model_without_a_batch_dimension_takes_any_dimension_0():
    specs = [TensorSpec("DATA", "FP32", (-1,)), TensorSpec("SHAPE", "INT64", (2,))]
    version = version_of(specs, [((0, -1),), ((2, 2),)])
    assert version.max_batch_size == 0
    _, rows = version.order_inputs([given("DATA", (6,), "FP32"), given("SHAPE", (2,), "INT64")])
    assert rows == 1


def test_a_scalar_input_takes_shape_empty_or_triton_s_one():
    version = version_of([TensorSpec("x", "FP32", (-1,)), TensorSpec("sr", "INT64", ())], [((0, -1),), ()])
    for shape in ((), (1,)):
        arrays, _ = version.order_inputs([given("x", (3,), "FP32"), given("sr", shape, "INT64")])
        assert arrays[1].shape == ()  # what OpenVINO's port wants
    with pytest.raises(InvalidArgument, match=r"Expected: \[\]; Actual: \[2\]; input name: sr"):
        version.order_inputs([given("x", (3,), "FP32"), given("sr", (2,), "INT64")])


def test_inputs_are_checked_for_names_datatypes_and_count():
    version = simple_version()
    with pytest.raises(InvalidArgument, match="unexpected input 'IN'"):
        version.order_inputs([given("IN", (1, 16))])
    with pytest.raises(InvalidArgument, match="Expected: INT32; Actual: FP32; input name: INPUT0"):
        version.order_inputs([given("INPUT0", (1, 16), "FP32"), given("INPUT1", (1, 16))])
    with pytest.raises(InvalidArgument, match="missing input\\(s\\): INPUT1"):
        version.order_inputs([given("INPUT0", (1, 16))])
    with pytest.raises(InvalidArgument, match="given more than once"):
        version.order_inputs([given("INPUT0", (1, 16)), given("INPUT0", (1, 16))])


def test_model_config_reports_a_scalar_as_triton_does():
    version = version_of([TensorSpec("x", "FP32", (-1,)), TensorSpec("sr", "INT64", ())], [((0, -1),), ()])
    config = model_config(version, VersionPolicy())
    by_name = {i["name"]: i for i in config["input"]}
    assert by_name["sr"]["dims"] == [1] and by_name["sr"]["reshape"] == {"shape": []}
    assert by_name["x"]["dims"] == [-1] and "reshape" not in by_name["x"]
    assert {o["name"]: o["dims"] for o in config["output"]}["out_sr"] == [1]
    assert config["max_batch_size"] == 0


@pytest.mark.parametrize("shape", [(354909235730650, 6227020801, 0, 88411), (2**63,), (2**62, 4)])
def test_a_shape_no_tensor_can_have_is_refused_even_when_empty(shape):
    """Found by the fuzz tests: an empty shape whose other dimensions overflow int64 reached numpy."""
    with pytest.raises(InvalidArgument, match="too large for any tensor"):
        check_declared_shape("x", shape)
    for datatype in ("FP64", "BYTES"):
        assert array_from_raw("x", datatype, check_declared_shape("x", (2**59, 0)), b"").shape == (2**59, 0)
