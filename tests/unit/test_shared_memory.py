"""The shared-memory registry over a folder standing for /dev/shm: keys taken as shm_open takes them,
bounds, a shrunk object, views in place, outputs written into regions."""

from __future__ import annotations

import os

import numpy as np
import pytest

from gateway.core.errors import AlreadyExists, InvalidArgument, NotFound, Unimplemented
from gateway.core.records import InferOutput, RequestedOutput
from gateway.memory.shared_memory import SystemSharedMemory, output_placements, write_outputs


@pytest.fixture
def memory(tmp_path):
    (tmp_path / "region").write_bytes(bytes(range(256)))
    return SystemSharedMemory(enabled=True, root=tmp_path)


def _params(region: str, byte_size: int, offset: int = 0) -> dict:
    return {
        "shared_memory_region": region,
        "shared_memory_byte_size": byte_size,
        "shared_memory_offset": offset,
    }


def test_register_status_and_unregister(memory):
    memory.register("r", "/region", 16, 64)
    [status] = memory.status()
    assert (status.name, status.key, status.offset, status.byte_size) == ("r", "/region", 16, 64)
    assert memory.status("r") == [status]
    with pytest.raises(AlreadyExists, match="'r' already in manager"):
        memory.register("r", "/region", 0, 8)
    memory.unregister("unknown")  # not an error
    memory.unregister()
    assert memory.status() == []
    with pytest.raises(NotFound, match="Unable to find system shared memory region: 'r'"):
        memory.status("r")


def test_a_view_is_the_region_in_place(memory, tmp_path):
    memory.register("r", "/region", 16, 64)
    view = memory.placement("input 'x'", _params("r", 8, offset=4)).view()
    assert bytes(view) == bytes(range(20, 28))
    view[0] = 255  # written through to the object
    assert (tmp_path / "region").read_bytes()[20] == 255


def test_bounds_and_parameters(memory):
    memory.register("r", "/region", 16, 64)
    with pytest.raises(InvalidArgument, match="outside shared memory region 'r' of 64 bytes"):
        memory.placement("input 'x'", _params("r", 8, offset=60))
    with pytest.raises(InvalidArgument, match="needs shared_memory_byte_size"):
        memory.placement("input 'x'", {"shared_memory_region": "r"})
    with pytest.raises(InvalidArgument, match="need shared_memory_region"):
        memory.placement("input 'x'", {"shared_memory_byte_size": 8})
    assert memory.placement("input 'x'", {"binary_data_size": 8}) is None


def test_a_shrunk_object_is_an_error_before_any_access(memory, tmp_path):
    memory.register("r", "/region", 0, 128)
    placement = memory.placement("input 'x'", _params("r", 128))
    os.truncate(tmp_path / "region", 64)
    with pytest.raises(InvalidArgument, match="now holds 64 bytes"):
        placement.view()


@pytest.mark.parametrize("key", ["region", "/a/b", "/..", "/.", "/", "/" + "k" * 255])
def test_keys_are_taken_as_shm_open_takes_them(memory, key):
    with pytest.raises(InvalidArgument, match="as shm_open takes it"):
        memory.register("r", key, 0, 8)


def test_links_folders_and_missing_objects_are_refused(memory, tmp_path):
    (tmp_path / "link").symlink_to(tmp_path / "region")
    (tmp_path / "folder").mkdir()
    with pytest.raises(InvalidArgument, match="symbolic link"):
        memory.register("a", "/link", 0, 8)
    with pytest.raises(InvalidArgument):
        memory.register("b", "/folder", 0, 8)
    with pytest.raises(InvalidArgument, match="Unable to open"):
        memory.register("c", "/missing", 0, 8)
    with pytest.raises(InvalidArgument, match="holds 256 bytes"):
        memory.register("d", "/region", 200, 100)
    with pytest.raises(InvalidArgument, match="greater than 0"):
        memory.register("e", "/region", 0, 0)


def test_off_refuses_registration_but_answers_status(tmp_path):
    memory = SystemSharedMemory(enabled=False, root=tmp_path)
    with pytest.raises(Unimplemented, match="--allow_client_shm=true"):
        memory.register("r", "/region", 0, 8)
    with pytest.raises(Unimplemented):
        memory.unregister()
    assert memory.status() == []


def test_outputs_are_written_into_their_regions(memory, tmp_path):
    memory.register("r", "/region", 0, 64)
    requested = [RequestedOutput("y", _params("r", 16, offset=8)), RequestedOutput("z", {})]
    placements = output_placements(memory, requested)
    assert set(placements) == {"y"}
    y = np.array([1.5, 2.5, 3.5, 4.5], np.float32)
    write_outputs([InferOutput("y", "FP32", (4,), y), InferOutput("z", "FP32", (4,), y)], placements)
    np.testing.assert_array_equal(np.frombuffer((tmp_path / "region").read_bytes()[8:24], np.float32), y)
    big = np.zeros(8, np.float32)
    with pytest.raises(InvalidArgument, match="output 'y': 32 bytes do not fit shared memory region 'r'"):
        write_outputs([InferOutput("y", "FP32", (8,), big)], placements)
