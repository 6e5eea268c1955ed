"""`gs://bucket/path` base paths over Google Cloud Storage's JSON API.

The JSON API is the one every GCS emulator serves (obstore's GCS backend speaks the XML API, which none
does), so one code path covers Google's service and the local servers users test against. Credentials as
OVMS reads them: the file GOOGLE_APPLICATION_CREDENTIALS names (any type Google's auth library reads:
service account, authorized user, workload identity federation), read-only scope; unset: anonymous
requests, so public buckets such as OVMS's demo models work. STORAGE_EMULATOR_HOST, the variable Google's
own client libraries read, points the client at an emulator (`host:port` means plain HTTP); OVMS has no such
override. https_proxy / http_proxy are honoured.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from typing import Any

READ_ONLY_SCOPE = "https://www.googleapis.com/auth/devstorage.read_only"
GOOGLE_ENDPOINT = "https://storage.googleapis.com"
TIMEOUT_S = 60.0  # per request: a listing page or one part of an object


class GcsClient:
    """An ObjectClient (remote_store.py) for one `gs://bucket/path`."""

    def __init__(self, url: str, environ: Mapping[str, str] = os.environ):
        bucket, _, prefix = url.split("://", 1)[1].strip("/").partition("/")
        if not bucket:
            raise ValueError("expected gs://bucket/path")
        self._bucket = bucket
        self._prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        emulator = environ.get("STORAGE_EMULATOR_HOST", "")
        if emulator and "://" not in emulator:
            emulator = f"http://{emulator}"
        self._endpoint = (emulator or GOOGLE_ENDPOINT).rstrip("/")
        self._credentials_file = environ.get("GOOGLE_APPLICATION_CREDENTIALS", "")
        self._credentials: Any = None  # google.auth credentials, made at the first request

    def list(self) -> Iterator[tuple[str, int, str]]:
        bucket = urllib.parse.quote(self._bucket, safe="")
        query = {"prefix": self._prefix, "maxResults": "1000",
                 "fields": "items(name,size,etag,md5Hash,generation),nextPageToken"}  # fmt: skip
        while True:
            url = f"{self._endpoint}/storage/v1/b/{bucket}/o?{urllib.parse.urlencode(query)}"
            with self._open(url) as response:
                page = json.load(response)
            for item in page.get("items", []):
                etag = item.get("md5Hash") or item.get("etag") or str(item.get("generation", ""))
                yield item["name"][len(self._prefix) :], int(item["size"]), etag
            token = page.get("nextPageToken")
            if not token:
                return
            query["pageToken"] = token

    def read(self, key: str, start: int, end: int) -> bytes:
        bucket = urllib.parse.quote(self._bucket, safe="")
        name = urllib.parse.quote(self._prefix + key, safe="")
        url = f"{self._endpoint}/storage/v1/b/{bucket}/o/{name}?alt=media"
        try:
            with self._open(url, {"Range": f"bytes={start}-{end - 1}"}) as response:
                return response.read()
        except urllib.error.HTTPError as e:
            if e.code == 404:  # removed since the listing: not a missing bucket
                raise FileNotFoundError(f"{key} is no longer in the store") from None
            raise

    def _open(self, url: str, headers: dict[str, str] | None = None):
        headers = dict(headers or {})
        if self._credentials_file:
            self._authorize(url, headers)
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)

    def _authorize(self, url: str, headers: dict[str, str]) -> None:
        """An OAuth bearer token from the credentials file, refreshed by Google's library when it expires."""
        import google.auth

        if self._credentials is None:
            self._credentials, _ = google.auth.load_credentials_from_file(
                self._credentials_file, scopes=[READ_ONLY_SCOPE]
            )
        self._credentials.before_request(_TokenRequest(), "GET", url, headers)

    def why(self, error: Exception) -> str:
        """A missing bucket, refused credentials, an unreadable credentials file and an unreachable endpoint
        each read differently, and the same cause the same each time."""
        auth_errors: tuple[type[Exception], ...] = ()
        try:
            import google.auth.exceptions as auth

            if isinstance(error, auth.DefaultCredentialsError):
                return f"GOOGLE_APPLICATION_CREDENTIALS = {self._credentials_file}: cannot be used ({error})"
            auth_errors = (auth.RefreshError,)
        except ImportError:
            pass
        if isinstance(error, auth_errors):
            return f"the credentials were refused ({_first_line(error)})"
        if isinstance(error, urllib.error.HTTPError):
            return _http_cause(error, anonymous=not self._credentials_file)
        if isinstance(error, (urllib.error.URLError, ConnectionError, TimeoutError)):
            reason = getattr(error, "reason", error)
            return f"the endpoint cannot be reached ({self._endpoint}: {reason})"
        return _first_line(error) or type(error).__name__


def _http_cause(error: urllib.error.HTTPError, anonymous: bool) -> str:
    message = ""
    try:
        message = json.loads(error.read() or b"{}").get("error", {}).get("message", "")
    except (ValueError, AttributeError, OSError):
        pass
    detail = f" ({message})" if message else ""
    if error.code == 404:
        # A listing of a prefix that holds nothing is an empty page: only a missing bucket is 404.
        return f"the bucket does not exist{detail}"
    if error.code == 401:
        return f"the credentials were refused{detail}"
    if error.code == 403:
        if anonymous:
            return f"the bucket is not public and no credentials were given{detail}"
        return f"access denied: the credentials may not list or read this path{detail}"
    return f"HTTP {error.code} {error.reason}{detail}"


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else ""


class _TokenRequest:
    """google.auth's transport interface over urllib, so that token refreshes need no HTTP library beyond
    the standard one."""

    def __call__(self, url, method="GET", body=None, headers=None, timeout=None, **kwargs):
        import google.auth.exceptions

        request = urllib.request.Request(url, data=body, headers=dict(headers or {}), method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout or TIMEOUT_S) as response:
                return _TokenResponse(response.status, dict(response.headers), response.read())
        except urllib.error.HTTPError as e:
            return _TokenResponse(e.code, dict(e.headers), e.read())
        except (urllib.error.URLError, OSError) as e:
            raise google.auth.exceptions.TransportError(f"{url}: {e}") from e


class _TokenResponse:
    def __init__(self, status: int, headers: dict, data: bytes):
        self.status, self.headers, self.data = status, headers, data
