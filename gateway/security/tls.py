"""TLS for both transports: the server's certificate and key, and a client CA for mutual TLS.

The files are read at start-up (a missing file, a key that does not match the certificate or a CA file
that is not one is a ConfigError naming the flag) and again whenever one of them changes on disk, checked
every `file_system_poll_wait_seconds` like the model configuration: rotation needs no restart. Connections
already open keep the certificate they shook hands with; new ones get the new one. A rotation whose files
do not load (a key copied in before its certificate) keeps the previous credentials and logs why, and the
next poll tries again.

REST (and the metrics port) listen with one SSLContext whose `sni_callback` hands each handshake the
current context, so that a rotation replaces the CA as well as the certificate. gRPC uses grpc's dynamic
server credentials, whose fetcher grpc calls at each new connection.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from dataclasses import dataclass

import grpc

from gateway.core.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """--tls_cert_file, --tls_key_file, --tls_client_ca_file."""

    cert_file: str
    key_file: str
    client_ca_file: str | None = None  # set: clients must present a certificate signed by this CA


@dataclass(frozen=True, slots=True)
class _Loaded:
    """One generation of the credentials: the files' bytes and what was built from them."""

    fingerprint: tuple
    context: ssl.SSLContext
    grpc_config: object  # grpc.ssl_server_certificate_configuration


def _fingerprint(settings: TlsSettings) -> tuple:
    paths = [settings.cert_file, settings.key_file]
    if settings.client_ca_file:
        paths.append(settings.client_ca_file)
    out: list[tuple[str, int | None, int | None]] = []
    for path in paths:
        try:
            st = os.stat(path)
            out.append((path, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((path, None, None))
    return tuple(out)


def _read(path: str, flag: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(f"{flag} {path}: cannot be read: {e.strerror or e}") from None


def _load(settings: TlsSettings) -> _Loaded:
    fingerprint = _fingerprint(settings)
    cert = _read(settings.cert_file, "--tls_cert_file")
    key = _read(settings.key_file, "--tls_key_file")
    ca = _read(settings.client_ca_file, "--tls_client_ca_file") if settings.client_ca_file else None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(settings.cert_file, settings.key_file)
    except ssl.SSLError as e:
        if "KEY_VALUES_MISMATCH" in str(e):
            raise ConfigError(
                f"--tls_key_file {settings.key_file} is not the key of --tls_cert_file {settings.cert_file}"
            ) from None
        raise ConfigError(
            f"--tls_cert_file {settings.cert_file} / --tls_key_file {settings.key_file}: not a PEM "
            f"certificate and its private key: {e.reason or e}"
        ) from None
    if ca is not None:
        try:
            context.load_verify_locations(cadata=ca.decode("ascii", errors="replace"))
        except (ssl.SSLError, ValueError) as e:
            raise ConfigError(
                f"--tls_client_ca_file {settings.client_ca_file}: not a PEM CA certificate: {e}"
            ) from None
        context.verify_mode = ssl.CERT_REQUIRED
    grpc_config = grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)
    return _Loaded(fingerprint, context, grpc_config)


class TlsCredentials:
    """The current credentials of both transports (see the module's docstring)."""

    def __init__(self, settings: TlsSettings):
        self.settings = settings
        self._current = _load(settings)  # ConfigError at start-up: the server does not start
        self._fetched_by_grpc = self._current
        self._failed: tuple | None = None  # the fingerprint of files that did not load (logged once)
        self._listening: ssl.SSLContext | None = None

    @property
    def mutual(self) -> bool:
        return self.settings.client_ca_file is not None

    def server_context(self) -> ssl.SSLContext:
        """The context REST listens with: every handshake switches to the current generation's context."""
        if self._listening is None:
            listening = (
                self._current.context
            )  # the first generation's; later ones are handed over per handshake

            def use_current(ssl_object, server_name, context) -> None:
                ssl_object.context = self._current.context

            listening.sni_callback = use_current
            self._listening = listening
        return self._listening

    def grpc_credentials(self) -> grpc.ServerCredentials:
        def fetch():
            if self._fetched_by_grpc is self._current:
                return None  # unchanged
            self._fetched_by_grpc = self._current
            return self._current.grpc_config

        return grpc.dynamic_ssl_server_credentials(
            self._current.grpc_config, fetch, require_client_authentication=self.mutual
        )

    def refresh(self) -> bool:
        """Re-read the files if they changed; True when new credentials took effect."""
        fingerprint = _fingerprint(self.settings)
        if fingerprint in (self._current.fingerprint, self._failed):
            return False
        try:
            loaded = _load(self.settings)
        except ConfigError as e:
            self._failed = fingerprint
            log.error("TLS files changed but cannot be used yet; keeping the previous ones: %s", e)
            return False
        self._current = loaded
        log.info("TLS certificate reloaded from %s", self.settings.cert_file)
        return True

    async def watch(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            self.refresh()
