"""The CPU image, really built (make image: podman on a debootstrap base) and really run: its exported
filesystem under chroot on loopback, answering a tritonclient request. Containers cannot run on these
machines (podman's runtime is refused setrlimit), so the image's own filesystem, user and entrypoint are
used without one."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from gateway.demo_models import dummy_model, save
from gateway.testing import free_ports

ROOT = Path(__file__).resolve().parents[2]
IMAGE_DIR = ROOT / ".cache" / "image"
# On a fresh machine the first test also installs podman, debootstraps a base and builds the image (pip
# downloads the wheels inside the build): well past the suite's default 300 s per test.
pytestmark = pytest.mark.timeout(2400)


@pytest.fixture(scope="module")
def exported_image() -> Path:
    if os.geteuid() != 0:
        pytest.skip("building and chroot-running the image needs root (podman with vfs, chroot, mount)")
    tools = subprocess.run(
        ["make", "--no-print-directory", "image-tools"], cwd=ROOT, capture_output=True, text=True
    )
    if tools.returncode != 0 or not (shutil.which("podman") and shutil.which("debootstrap")):
        pytest.skip(f"podman and debootstrap could not be installed: {(tools.stdout + tools.stderr)[-500:]}")
    build = subprocess.run(
        ["make", "--no-print-directory", "image"], cwd=ROOT, capture_output=True, text=True, timeout=2400
    )
    assert build.returncode == 0, f"make image failed:\n{build.stdout[-3000:]}\n{build.stderr[-3000:]}"
    return IMAGE_DIR / "exported"


def _in_image(root: Path, command: str, user: str = "5000:5000") -> list[str]:
    """Run `command` in the image's filesystem: a private mount namespace with /proc, /sys and /dev,
    chrooted, as the image's user, with the image's PATH."""
    mounts = (
        f"mount -t proc proc {root}/proc && mount --rbind /sys {root}/sys && mount --rbind /dev {root}/dev"
    )
    env = "/usr/bin/env -i PATH=/opt/ovgw/bin:/usr/bin:/bin HOME=/tmp"
    inner = f"exec chroot --userspec={user} {root} {env} {command}"
    return ["unshare", "--mount", "--fork", "sh", "-c", f"{mounts} && {inner}"]


def test_image_metadata_is_as_documented(exported_image):
    (inspect,) = json.loads((IMAGE_DIR / "inspect.json").read_text())
    assert inspect["Config"]["User"] == "5000:5000"
    assert inspect["Config"]["Entrypoint"] == ["ovgw"]
    assert "gateway.healthcheck" in " ".join(inspect["Healthcheck"]["Test"])
    assert not (exported_image / "src").exists(), "the builder stage's sources stay out of the final image"
    # The OpenVINO release in the image is the one deploy/docker/constraints.txt pins.
    (pin,) = re.findall(r"^openvino==(\S+)$", (ROOT / "deploy/docker/constraints.txt").read_text(), re.M)
    installed = [
        p.name for p in (exported_image / "opt/ovgw/lib").glob("python3*/site-packages/openvino-*.dist-info")
    ]
    assert installed == [f"openvino-{pin}.dist-info"], installed


def test_image_serves_a_model_under_chroot(exported_image, tmp_path):
    models = exported_image / "models" / "dummy"
    shutil.rmtree(models, ignore_errors=True)
    save(dummy_model(), models / "1")
    grpc_port, rest_port = free_ports(2)
    # The OVMS-style command line, after the image's entrypoint (ovgw).
    command = (f"ovgw --model_name dummy --model_path /models/dummy --port {grpc_port} "
               f"--rest_port {rest_port} --grpc_bind_address 127.0.0.1 "
               "--rest_bind_address 127.0.0.1")  # fmt: skip
    log = open(tmp_path / "gw.log", "wb")  # noqa: SIM115 - the process owns it
    server = subprocess.Popen(_in_image(exported_image, command), stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert server.poll() is None, (tmp_path / "gw.log").read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{rest_port}/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.3)
        else:
            pytest.fail(
                "the gateway in the image did not become ready:\n" + (tmp_path / "gw.log").read_text()
            )
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        b = grpcclient.InferInput("b", [1, 10], "FP32")
        b.set_data_from_numpy(np.arange(10, dtype=np.float32).reshape(1, 10))
        result = client.infer("dummy", [b])
        np.testing.assert_array_equal(
            result.as_numpy("a"), np.arange(10, dtype=np.float32).reshape(1, 10) + 1
        )
        # The image's HEALTHCHECK command, pointed at the server (PID 1 in a container).
        gateway_pid = _gateway_pid(server.pid)
        health = subprocess.run(
            _in_image(exported_image, f"python3 -m gateway.healthcheck --pid {gateway_pid}"),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert health.returncode == 0 and "ready" in health.stdout, health.stdout + health.stderr
    finally:
        pid = _gateway_pid(server.pid)
        if pid:
            os.kill(pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    assert server.returncode == 0, (tmp_path / "gw.log").read_text()[-2000:]


def _gateway_pid(unshare_pid: int) -> int | None:
    """unshare --fork runs the command as its child."""
    for task in Path(f"/proc/{unshare_pid}/task").glob("*"):
        children = (task / "children").read_text().split()
        if children:
            return int(children[0])
    return None
