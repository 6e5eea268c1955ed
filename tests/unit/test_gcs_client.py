"""The GCS JSON-API client's URLs, paging and error causes, with its HTTP calls answered by a fake."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.parse

import pytest

from gateway.serving.gcs_client import GcsClient


class FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _client(pages: list[dict], environ: dict | None = None) -> tuple[GcsClient, list[str]]:
    client = GcsClient("gs://bucket/models/resnet/", environ or {})
    asked: list[str] = []

    def fake_open(url: str, headers=None):
        asked.append(url)
        return FakeResponse(json.dumps(pages[len(asked) - 1]).encode())

    client._open = fake_open  # type: ignore[method-assign]
    return client, asked


def test_a_listing_follows_every_page_and_strips_the_prefix():
    pages = [
        {
            "items": [{"name": "models/resnet/1/model.xml", "size": "10", "md5Hash": "h1"}],
            "nextPageToken": "t",
        },
        {"items": [{"name": "models/resnet/1/model.bin", "size": "20", "etag": "e2"}]},
    ]
    client, asked = _client(pages)
    assert list(client.list()) == [("1/model.xml", 10, "h1"), ("1/model.bin", 20, "e2")]
    first, second = (urllib.parse.urlsplit(url) for url in asked)
    assert first.netloc == "storage.googleapis.com" and first.path == "/storage/v1/b/bucket/o"
    assert urllib.parse.parse_qs(first.query)["prefix"] == ["models/resnet/"]
    assert urllib.parse.parse_qs(second.query)["pageToken"] == ["t"]


@pytest.mark.parametrize(
    ("emulator", "endpoint"),
    [("127.0.0.1:4443", "http://127.0.0.1:4443"), ("https://gcs.example:8443/", "https://gcs.example:8443")],
)
def test_storage_emulator_host_points_the_client_elsewhere(emulator, endpoint):
    client, asked = _client([{}], {"STORAGE_EMULATOR_HOST": emulator})
    list(client.list())
    assert asked[0].startswith(f"{endpoint}/storage/v1/b/bucket/o?")


def _http_error(code: int, message: str = "") -> urllib.error.HTTPError:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    return urllib.error.HTTPError("http://x", code, "reason", {}, io.BytesIO(body))  # type: ignore[arg-type]


def test_causes_are_told_apart():
    anonymous = GcsClient("gs://bucket/m", {})
    signed = GcsClient("gs://bucket/m", {"GOOGLE_APPLICATION_CREDENTIALS": "/k.json"})
    assert anonymous.why(_http_error(404, "The specified bucket does not exist.")).startswith(
        "the bucket does not exist"
    )
    assert anonymous.why(_http_error(403)).startswith(
        "the bucket is not public and no credentials were given"
    )
    assert signed.why(_http_error(403)).startswith("access denied")
    assert signed.why(_http_error(401)).startswith("the credentials were refused")
    unreachable = anonymous.why(urllib.error.URLError(ConnectionRefusedError(111, "Connection refused")))
    assert unreachable.startswith("the endpoint cannot be reached (https://storage.googleapis.com")


def test_refused_and_unreadable_credentials_read_differently():
    import google.auth.exceptions as auth

    client = GcsClient("gs://bucket/m", {"GOOGLE_APPLICATION_CREDENTIALS": "/k.json"})
    assert client.why(auth.RefreshError("invalid_grant: Invalid JWT Signature.")).startswith(
        "the credentials were refused (invalid_grant"
    )
    assert client.why(auth.DefaultCredentialsError("File /k.json was not found.")).startswith(
        "GOOGLE_APPLICATION_CREDENTIALS = /k.json: cannot be used"
    )


def test_a_url_without_a_bucket_is_refused():
    with pytest.raises(ValueError, match="expected gs://bucket/path"):
        GcsClient("gs://", {})
