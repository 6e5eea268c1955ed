"""grpc_tuning: the listener experiment is turned off before grpc is imported; a user's choice wins."""

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
