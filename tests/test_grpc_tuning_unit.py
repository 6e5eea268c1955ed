"""grpc_tuning: the listener experiment is turned off before grpc is imported; a user's choice wins."""

import os
import subprocess
import sys

from gateway.transports.grpc.tuning import LISTENER_EXPERIMENT, prefer_iomgr_listener

OFF = "-" + LISTENER_EXPERIMENT


def test_turns_the_listener_off_when_nothing_is_set():
    environ: dict[str, str] = {}
    assert prefer_iomgr_listener(environ, modules={})
    assert environ["GRPC_EXPERIMENTS"] == OFF


def test_keeps_the_users_other_experiments():
    environ = {"GRPC_EXPERIMENTS": "promise_based_server_call, -monitoring_experiment"}
    assert prefer_iomgr_listener(environ, modules={})
    assert environ["GRPC_EXPERIMENTS"] == f"promise_based_server_call, -monitoring_experiment,{OFF}"


def test_a_user_who_names_the_experiment_decides():
    for chosen in (LISTENER_EXPERIMENT, OFF, f"foo, {LISTENER_EXPERIMENT}"):
        environ = {"GRPC_EXPERIMENTS": chosen}
        assert not prefer_iomgr_listener(environ, modules={})
        assert environ["GRPC_EXPERIMENTS"] == chosen


def test_too_late_once_grpc_is_imported():
    environ: dict[str, str] = {}
    assert not prefer_iomgr_listener(environ, modules={"grpc": object()})
    assert environ == {}


def test_importing_the_package_sets_it_before_grpc_loads():
    # A fresh interpreter: the package's import is what first loads grpc, after the variable is set.
    env = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
    code = "import gateway, os, sys; assert 'grpc' in sys.modules; print(os.environ['GRPC_EXPERIMENTS'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == OFF
