"""TLS and mutual TLS on both transports, with certificates made at test time, against real clients:
tritonclient gRPC and HTTP, the kserve SDK and perf_analyzer. Plaintext clients, clients without a
certificate under mutual TLS and certificates from another CA are refused; a key that does not match is a
start-up error; rotated files take effect without a restart."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from gateway.testing import free_port
from tests.support.certs import CertificateAuthority
from tests.support.perf_analyzer import run_pa
from tests.support.servers import start_test_gateway

ROOT = Path(__file__).resolve().parents[2]


class Pki:
    def __init__(self, folder: Path):
        self.folder = folder
        self.ca = CertificateAuthority(folder, "ca")
        self.server = self.ca.issue("server", server=True)
        self.client = self.ca.issue("client", server=False)
        self.other_ca = CertificateAuthority(folder, "other-ca")
        self.intruder = self.other_ca.issue("intruder", server=False)

    def context(self, ca: Path | None = None, client=None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(ca or self.ca.cert_path))
        if client is not None:
            context.load_cert_chain(str(client.cert), str(client.key))
        return context


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def tls_args(pki: Pki, mutual: bool, cert=None, key=None) -> list[str]:
    args = ["--tls_cert_file", str(cert or pki.server.cert), "--tls_key_file", str(key or pki.server.key)]
    return args + (["--tls_client_ca_file", str(pki.ca.cert_path)] if mutual else [])


def single_model(model_repo: Path, name: str = "simple") -> list[str]:
    return ["--model_name", name, "--model_path", str(model_repo / name)]


@pytest.fixture(scope="module")
def tls_server(pki, model_repo, tmp_path_factory):
    gw = start_test_gateway(
        [*single_model(model_repo), *tls_args(pki, mutual=False), "--metrics_port", str(free_port())],
        tmp_path_factory.mktemp("tls") / "gw.log",
        ssl_context=pki.context(),
    )
    yield gw
    assert gw.stop() == 0


@pytest.fixture(scope="module")
def mtls_server(pki, model_repo, tmp_path_factory):
    gw = start_test_gateway(
        [*single_model(model_repo), *tls_args(pki, mutual=True)],
        tmp_path_factory.mktemp("mtls") / "gw.log",
        ssl_context=pki.context(client=pki.client),
    )
    yield gw
    assert gw.stop() == 0


def simple_inputs(module):
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    inputs = [module.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
    for i in inputs:
        i.set_data_from_numpy(a)
    return inputs, a


def grpc_infer(gw, **kwargs) -> None:
    client = grpcclient.InferenceServerClient(gw.grpc_url, ssl=True, **kwargs)
    inputs, a = simple_inputs(grpcclient)
    assert (client.infer("simple", inputs, client_timeout=30).as_numpy("OUTPUT0") == a + a).all()


def http_infer(gw, **ssl_options) -> None:
    client = httpclient.InferenceServerClient(gw.http_url, ssl=True, ssl_options=ssl_options)
    try:
        inputs, a = simple_inputs(httpclient)
        assert (client.infer("simple", inputs).as_numpy("OUTPUT0") == a + a).all()
    finally:
        client.close()


def assert_grpc_refused(gw, **kwargs) -> None:
    with pytest.raises(InferenceServerException) as e:
        grpc_infer(gw, **kwargs) if kwargs.pop("ssl", True) else plain_grpc(gw)
    assert "UNAVAILABLE" in str(e.value)


def plain_grpc(gw) -> None:
    client = grpcclient.InferenceServerClient(gw.grpc_url)
    inputs, _ = simple_inputs(grpcclient)
    client.infer("simple", inputs, client_timeout=10)


def https_status(gw, context: ssl.SSLContext, path: str = "/v2/health/ready", port: int | None = None) -> int:
    url = f"https://{gw.http_url if port is None else f'127.0.0.1:{port}'}{path}"
    with urllib.request.urlopen(url, timeout=10, context=context) as r:
        return r.status


def test_tls_serves_tritonclient_grpc_and_http(tls_server, pki):
    ca = str(pki.ca.cert_path)
    grpc_infer(tls_server, root_certificates=ca)
    http_infer(tls_server, ca_certs=ca)


def test_tls_refuses_plaintext_clients(tls_server):
    assert_grpc_refused(tls_server, ssl=False)
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(f"http://{tls_server.http_url}/v2/health/ready", timeout=10)


def test_a_client_that_does_not_trust_the_ca_refuses_the_server(tls_server, pki):
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        https_status(tls_server, pki.context(ca=pki.other_ca.cert_path))


def test_the_metrics_port_is_served_over_tls_too(tls_server, pki):
    log = tls_server.log()
    assert "/metrics (TLS)" in log
    port = int(log.split("metrics on ")[1].split("/metrics")[0].rsplit(":", 1)[1])
    assert https_status(tls_server, pki.context(), "/metrics", port) == 200


def test_mutual_tls_serves_clients_with_a_certificate_of_the_ca(mtls_server, pki):
    ca = str(pki.ca.cert_path)
    grpc_infer(
        mtls_server,
        root_certificates=ca,
        private_key=str(pki.client.key),
        certificate_chain=str(pki.client.cert),
    )
    http_infer(mtls_server, ca_certs=ca, certfile=str(pki.client.cert), keyfile=str(pki.client.key))


def test_mutual_tls_refuses_a_client_without_a_certificate(mtls_server, pki):
    assert_grpc_refused(mtls_server, root_certificates=str(pki.ca.cert_path))
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
        https_status(mtls_server, pki.context())


def test_mutual_tls_refuses_a_certificate_from_another_ca(mtls_server, pki):
    assert_grpc_refused(
        mtls_server,
        root_certificates=str(pki.ca.cert_path),
        private_key=str(pki.intruder.key),
        certificate_chain=str(pki.intruder.cert),
    )
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
        https_status(mtls_server, pki.context(client=pki.intruder))


@pytest.mark.parametrize("mode", ["rest-tls", "grpc-tls"])
def test_the_kserve_sdk_over_mutual_tls(mtls_server, pki, mode):
    address = mtls_server.http_url if mode == "rest-tls" else mtls_server.grpc_url
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.support.kserve_sdk_client",
            mode,
            address,
            str(pki.ca.cert_path),
            str(pki.client.cert),
            str(pki.client.key),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr[-4000:]}"


def test_perf_analyzer_over_mutual_tls(perf_analyzer, mtls_server, pki):  # noqa: F811
    ca, cert, key = str(pki.ca.cert_path), str(pki.client.cert), str(pki.client.key)
    output = run_pa(
        perf_analyzer, "-m", "simple", "-u", mtls_server.grpc_url, "-i", "grpc",
        "--ssl-grpc-use-ssl", "--ssl-grpc-root-certifications-file", ca,
        "--ssl-grpc-private-key-file", key, "--ssl-grpc-certificate-chain-file", cert,
    )  # fmt: skip
    assert "Throughput:" in output
    output = run_pa(
        perf_analyzer, "-m", "simple", "-u", f"https://{mtls_server.http_url}", "-i", "http",
        "--ssl-https-verify-peer", "1", "--ssl-https-verify-host", "2",
        "--ssl-https-ca-certificates-file", ca,
        "--ssl-https-client-certificate-file", cert, "--ssl-https-client-certificate-type", "PEM",
        "--ssl-https-private-key-file", key, "--ssl-https-private-key-type", "PEM",
    )  # fmt: skip
    assert "Throughput:" in output


def test_a_key_that_does_not_match_the_certificate_is_a_clear_startup_error(pki, model_repo, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "gateway", *single_model(model_repo),
         *tls_args(pki, mutual=False, key=pki.client.key)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert (
        f"--tls_key_file {pki.client.key} is not the key of --tls_cert_file {pki.server.cert}"
        in result.stderr
    )


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--tls_cert_file", "/nonexistent.crt", "--tls_key_file", "/nonexistent.key"], "cannot be read"),
        (["--tls_key_file", "/x.key"], "needs both --tls_cert_file and --tls_key_file"),
    ],
)
def test_missing_tls_files_are_startup_errors(model_repo, args, fragment):
    result = subprocess.run(
        [sys.executable, "-m", "gateway", *single_model(model_repo), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and fragment in result.stderr


def test_rotated_certificate_files_take_effect_without_a_restart(pki, model_repo, tmp_path):
    """The files are replaced by a certificate of another CA, and the client CA too; new connections get
    them after a poll, with no restart."""
    live = tmp_path / "live"
    live.mkdir()
    for name, source in (
        ("server.crt", pki.server.cert),
        ("server.key", pki.server.key),
        ("ca.crt", pki.ca.cert_path),
    ):
        shutil.copy(source, live / name)
    gw = start_test_gateway(
        [*single_model(model_repo), "--file_system_poll_wait_seconds", "0.2",
         "--tls_cert_file", str(live / "server.crt"), "--tls_key_file", str(live / "server.key"),
         "--tls_client_ca_file", str(live / "ca.crt")],
        tmp_path / "gw.log",
        ssl_context=pki.context(client=pki.client),
    )  # fmt: skip
    try:
        new_ca = CertificateAuthority(tmp_path, "new-ca")
        new_server = new_ca.issue("new-server", server=True)
        new_client = new_ca.issue("new-client", server=False)
        # A key first, its certificate a moment later: the half-done rotation is not taken.
        shutil.copy(new_server.key, live / "server.key")
        time.sleep(0.6)
        assert https_status(gw, pki.context(client=pki.client)) == 200
        shutil.copy(new_server.cert, live / "server.crt")
        shutil.copy(new_ca.cert_path, live / "ca.crt")
        deadline = time.monotonic() + 15
        new_context = pki.context(ca=new_ca.cert_path, client=new_client)
        while True:
            try:
                assert https_status(gw, new_context) == 200
                break
            except (urllib.error.URLError, ssl.SSLError, ConnectionError):
                assert time.monotonic() < deadline, gw.log()[-3000:]
                time.sleep(0.2)
        grpc_infer(
            gw,
            root_certificates=str(new_ca.cert_path),
            private_key=str(new_client.key),
            certificate_chain=str(new_client.cert),
        )
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
            https_status(gw, pki.context(client=pki.client))  # the old CA's certificate is no longer served
        assert "TLS certificate reloaded" in gw.log()
        assert "cannot be used yet" in gw.log()
    finally:
        assert gw.stop() == 0


def test_ovms_config_reload_re_reads_the_tls_files_with_polling_off(pki, model_repo, tmp_path):
    live = tmp_path / "live"
    live.mkdir()
    shutil.copy(pki.server.cert, live / "server.crt")
    shutil.copy(pki.server.key, live / "server.key")
    gw = start_test_gateway(
        [*single_model(model_repo), "--file_system_poll_wait_seconds", "0",
         "--tls_cert_file", str(live / "server.crt"), "--tls_key_file", str(live / "server.key")],
        tmp_path / "gw.log",
        ssl_context=pki.context(),
    )  # fmt: skip
    try:
        new_ca = CertificateAuthority(tmp_path, "reload-ca")
        new_server = new_ca.issue("reload-server", server=True)
        shutil.copy(new_server.key, live / "server.key")
        shutil.copy(new_server.cert, live / "server.crt")
        time.sleep(0.5)
        assert https_status(gw, pki.context()) == 200  # no poll: still the old certificate
        request = urllib.request.Request(f"https://{gw.http_url}/v1/config/reload", data=b"", method="POST")
        with urllib.request.urlopen(request, timeout=30, context=pki.context()) as r:
            assert r.status == 200
        assert https_status(gw, pki.context(ca=new_ca.cert_path)) == 200
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
            https_status(gw, pki.context())
    finally:
        assert gw.stop() == 0
