"""RemoteStore over a fake object client: versions from one listing, downloads in parts into the model
cache, reuse while the objects are unchanged, and a failed version that says why while the others load."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from gateway.core.errors import ConfigError
from gateway.serving import remote_store
from gateway.serving.remote_store import RemoteStore


class FakeClient:
    """A bucket in memory; counts listings and ranged reads, and can fail the reads of one key."""

    def __init__(self, objects: dict[str, bytes]):
        self.objects = objects
        self.listings = 0
        self.reads: list[tuple[str, int, int]] = []
        self.failing_key = ""
        self._lock = threading.Lock()

    def list(self):
        self.listings += 1
        for key, data in sorted(self.objects.items()):
            yield key, len(data), f"etag-{hash(data)}"

    def read(self, key: str, start: int, end: int) -> bytes:
        with self._lock:
            self.reads.append((key, start, end))
        if key == self.failing_key:
            raise ConnectionError("connection reset by peer")
        return self.objects[key][start:end]

    def why(self, error: Exception) -> str:
        return f"because {error}"


@pytest.fixture
def small_parts(monkeypatch):
    monkeypatch.setattr(remote_store, "PART_BYTES", 1000)


def _store(client: FakeClient, cache: Path) -> RemoteStore:
    return RemoteStore("m", "s3://bucket/m", str(cache), client)


def test_versions_are_the_positive_integer_folders_of_one_listing(tmp_path):
    client = FakeClient({"1/model.xml": b"a", "2/model.xml": b"b", "0/model.xml": b"z", "x/model.xml": b"y",
                         "2/": b"", "README": b"r"})  # fmt: skip
    versions = _store(client, tmp_path).versions()
    assert sorted(versions) == [1, 2] and client.listings == 1
    assert versions[2] == (("model.xml", 1, f"etag-{hash(b'b')}"),)


def test_no_version_folders_is_an_error_naming_the_path(tmp_path):
    with pytest.raises(ConfigError, match=r"s3://bucket/m.*no version folders"):
        _store(FakeClient({"README": b"r"}), tmp_path).versions()


def test_a_listing_error_reads_as_the_client_explains_it(tmp_path):
    class Unreachable(FakeClient):
        def list(self):
            raise ConnectionRefusedError("refused")

    with pytest.raises(ConfigError, match="because refused"):
        _store(Unreachable({}), tmp_path).versions()


def test_large_objects_arrive_in_parts_and_sub_folders_are_kept(tmp_path, small_parts):
    weights = bytes(range(256)) * 20  # 5,120 bytes: 6 parts of 1,000
    client = FakeClient({"1/model.xml": b"<xml/>", "1/model.bin": weights, "1/extra/vocab.txt": b"v"})
    store = _store(client, tmp_path)
    store.versions()
    local = store.local_folders([1])[1]
    folder = local.model_file.parent
    assert local.model_file.name == "model.xml"
    assert (folder / "model.bin").read_bytes() == weights and (
        folder / "extra" / "vocab.txt"
    ).read_bytes() == b"v"
    assert sorted(r for r in client.reads if r[0] == "1/model.bin")[-1] == ("1/model.bin", 5000, 5120)
    assert len([r for r in client.reads if r[0] == "1/model.bin"]) == 6
    assert (
        local.download is not None and local.download.bytes == len(weights) + 7 and local.download.files == 3
    )
    assert client.listings == 1, "local_folders uses the listing versions() made"


def test_an_unchanged_version_is_not_downloaded_again(tmp_path):
    client = FakeClient({"1/model.xml": b"<xml/>"})
    store = _store(client, tmp_path)
    store.versions()
    first = store.local_folders([1])[1]
    reads = len(client.reads)
    again = _store(client, tmp_path)  # a restart: a new store over the same cache
    again.versions()
    second = again.local_folders([1])[1]
    assert second.model_file == first.model_file and len(client.reads) == reads
    assert second.download is not None and second.download.bytes == 0
    client.objects["1/model.xml"] = b"<xml version='2'/>"  # changed in the store: fetched anew
    again.versions()
    assert again.local_folders([1])[1].model_file != first.model_file


def test_a_failed_download_leaves_nothing_behind_and_the_other_versions_load(tmp_path, small_parts):
    client = FakeClient({"1/model.xml": b"<xml/>", "2/model.xml": b"<xml/>", "2/model.bin": b"w" * 4000})
    client.failing_key = "2/model.bin"
    store = _store(client, tmp_path)
    store.versions()
    local = store.local_folders([1, 2])
    assert local[1].model_file is not None and not local[1].error
    assert local[2].model_file is None
    assert "downloading version 2: because connection reset by peer" in local[2].error
    leftovers = [p.name for p in tmp_path.rglob("*") if p.name.startswith(".2-") or p.name.startswith("2-")]
    assert not leftovers, "no partial or complete folder for the failed version"


def test_a_version_without_a_model_file_says_so(tmp_path):
    client = FakeClient({"1/notes.txt": b"n"})
    store = _store(client, tmp_path)
    store.versions()
    assert "version folder 1 holds no model file" in store.local_folders([1])[1].error
