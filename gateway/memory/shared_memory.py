"""Triton's system shared-memory extension: clients on the same host register regions of their POSIX
shared-memory objects by name, and name them in requests instead of sending the tensors.

A region is mapped once, at registration, read-write. An input in a region becomes a numpy view of the
mapping (no copy before OpenVINO); an output requested in a region is written into it. A view keeps its
mapping alive, so unregistering a region that requests are using answers at once and the memory is unmapped
when the last of them lets go.

Any caller can name any key the server's user can open, so the feature is off unless `--allow_client_shm`
is given; keys are opened as `shm_open` opens them (one leading '/', no other '/', not following links),
only regular files, and the object's size is checked again before each use: a client that shrinks its
object gets an error, not a server killed by SIGBUS.
"""

from __future__ import annotations

import errno
import mmap
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gateway.codecs.tensor import raw_from_array
from gateway.core.errors import AlreadyExists, InvalidArgument, NotFound, Unimplemented
from gateway.core.records import InferOutput, RequestedOutput

SHM_ROOT = Path("/dev/shm")  # where Linux's shm_open keeps its objects
MAX_KEY_BYTES = 255  # NAME_MAX
DISABLED = "Client shared memory is disabled. Start the server with '--allow_client_shm=true' to enable."
# The per-tensor parameters that place a tensor in a region.
REGION, BYTE_SIZE, OFFSET = "shared_memory_region", "shared_memory_byte_size", "shared_memory_offset"


@dataclass(frozen=True, slots=True)
class RegionStatus:
    name: str
    key: str
    offset: int
    byte_size: int


@dataclass(frozen=True, slots=True)
class _Region:
    status: RegionStatus
    mapping: mmap.mmap  # the object from 0 to offset + byte_size


@dataclass(frozen=True, slots=True)
class Placement:
    """Where one tensor lies: bytes [offset, offset + byte_size) of a region, checked against its bounds. It
    holds the region's mapping, so a region unregistered meanwhile stays usable by this request."""

    what: str  # the tensor, for errors
    region: _Region
    offset: int  # from the start of the region
    byte_size: int

    def view(self) -> memoryview:
        """The bytes, after checking that the object still holds them (a shrunk object would SIGBUS)."""
        status = self.region.status
        start = status.offset + self.offset
        try:
            object_size = self.region.mapping.size()  # fstat: the object as it is now
        except (OSError, ValueError):
            object_size = 0
        if object_size < start + self.byte_size:
            raise InvalidArgument(
                f"{self.what}: shared memory region '{status.name}' (key '{status.key}') now holds "
                f"{object_size} bytes; the tensor needs bytes {start} to {start + self.byte_size}"
            )
        return memoryview(self.region.mapping)[start : start + self.byte_size]


class SystemSharedMemory:
    """The registered regions of one server, by name."""

    def __init__(self, *, enabled: bool, root: Path = SHM_ROOT):
        self.enabled = enabled
        self._root = root
        self._regions: dict[str, _Region] = {}

    def status(self, name: str = "") -> list[RegionStatus]:
        """Every region, or the one named (NOT_FOUND when there is none)."""
        if not name:
            return [region.status for region in self._regions.values()]
        return [self._region(name).status]

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        self.check_enabled()
        if not name:
            raise InvalidArgument("a shared memory region needs a name")
        if name in self._regions:
            raise AlreadyExists(f"shared memory region '{name}' already in manager")
        if byte_size <= 0:
            raise InvalidArgument(f"shared memory region '{name}': byte_size must be greater than 0")
        if offset < 0:
            raise InvalidArgument(f"shared memory region '{name}': offset must not be negative")
        self._regions[name] = _Region(
            RegionStatus(name, key, offset, byte_size), self._map(name, key, offset + byte_size)
        )

    def unregister(self, name: str = "") -> None:
        """One region, or every region for an empty name; an unknown name is not an error (Triton's)."""
        self.check_enabled()
        if name:
            self._regions.pop(name, None)
        else:
            self._regions.clear()

    def placement(self, what: str, parameters: dict) -> Placement | None:
        """Where a tensor's parameters place it, or None for a tensor not in shared memory; `what` names
        the tensor in errors."""
        if REGION not in parameters:
            if BYTE_SIZE in parameters or OFFSET in parameters:
                raise InvalidArgument(f"{what}: {BYTE_SIZE} and {OFFSET} need {REGION}")
            return None
        name = parameters[REGION]
        if not isinstance(name, str) or not name:
            raise InvalidArgument(f"{what}: {REGION} must be a region name")
        byte_size = parameters.get(BYTE_SIZE)
        if isinstance(byte_size, bool) or not isinstance(byte_size, int) or byte_size < 0:
            raise InvalidArgument(f"{what}: {REGION} needs {BYTE_SIZE}, a non-negative integer")
        offset = parameters.get(OFFSET, 0)
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise InvalidArgument(f"{what}: {OFFSET} must be a non-negative integer")
        region = self._region(name)
        if offset + byte_size > region.status.byte_size:
            raise InvalidArgument(
                f"{what}: {OFFSET} {offset} + {BYTE_SIZE} {byte_size} is outside shared memory region "
                f"'{name}' of {region.status.byte_size} bytes"
            )
        return Placement(what, region, offset, byte_size)

    def _region(self, name: str) -> _Region:
        region = self._regions.get(name)
        if region is None:
            raise NotFound(f"Unable to find system shared memory region: '{name}'")
        return region

    def check_enabled(self) -> None:
        """UNIMPLEMENTED, with Triton's message, while clients may not register regions."""
        if not self.enabled:
            raise Unimplemented(DISABLED)

    def _map(self, name: str, key: str, length: int) -> mmap.mmap:
        """The object `key` names, mapped read-write from 0 to `length`, opened as shm_open opens it."""
        what = f"shared memory region '{name}': key '{key}'"
        raw = key.encode(errors="surrogateescape")
        base = key[1:]
        if not key.startswith("/") or "/" in base or base in ("", ".", "..") or len(raw) > MAX_KEY_BYTES:
            raise InvalidArgument(
                f"{what}: a key is '/' and a name of at most {MAX_KEY_BYTES - 1} bytes with no other '/' "
                "(as shm_open takes it)"
            )
        try:
            fd = os.open(self._root / base, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            reason = "it is a symbolic link" if e.errno == errno.ELOOP else e.strerror
            raise InvalidArgument(f"Unable to open shared memory region: {what}: {reason}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise InvalidArgument(f"{what}: not a shared memory object")
            if info.st_size < length:
                raise InvalidArgument(
                    f"{what}: the object holds {info.st_size} bytes; offset + byte_size is {length}"
                )
            return mmap.mmap(fd, length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)  # the mapping keeps its own reference to the object


def cuda_unsupported(name: str) -> InvalidArgument:
    """What a CPU-only Triton answers a CUDA shared-memory registration."""
    return InvalidArgument(f"failed to register CUDA shared memory region '{name}': GPUs not supported")


def output_placements(
    memory: SystemSharedMemory, requested: Sequence[RequestedOutput] | None
) -> dict[str, Placement]:
    """Output name -> where the request wants it written, for the outputs it places in shared memory:
    resolved before the run, so that an unknown region fails the request before any work."""
    placements = {}
    for output in requested or ():
        placement = memory.placement(f"output '{output.name}'", output.parameters)
        if placement is not None:
            placements[output.name] = placement
    return placements


def output_targets(placements: Mapping[str, Placement]) -> dict[str, memoryview]:
    """Output name -> its region's bytes, for OpenVINO to write the output into where it can."""
    return {name: placement.view() for name, placement in placements.items()}


def write_outputs(outputs: Sequence[InferOutput], placements: Mapping[str, Placement]) -> None:
    """Each placed output in its region: already there when OpenVINO wrote it in place, else copied in
    (the output's one copy: it is not sent)."""
    for output in outputs:
        placement = placements.get(output.name)
        if placement is None:
            continue
        region = np.frombuffer(placement.view(), np.uint8)
        data = output.data
        if isinstance(data, np.ndarray) and data.size and _starts_at(data, region):
            continue  # written in place
        raw = raw_from_array(output.datatype, output.data)
        size = memoryview(raw).nbytes
        if size > placement.byte_size:
            status = placement.region.status
            raise InvalidArgument(
                f"output '{output.name}': {size} bytes do not fit shared memory region '{status.name}' "
                f"({BYTE_SIZE} {placement.byte_size} at {OFFSET} {placement.offset})"
            )
        region[:size] = np.frombuffer(raw, np.uint8)


def _starts_at(array: np.ndarray, region: np.ndarray) -> bool:
    return bool(array.__array_interface__["data"][0] == region.__array_interface__["data"][0])
