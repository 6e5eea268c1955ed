"""OVMS-compatible configuration: config.json entries, command-line flags, and start-up errors."""

from __future__ import annotations

import json

import pytest

from gateway.cli import build_parser, settings_from_args
from gateway.config.settings import VersionPolicy, VersionPolicyKind, parse_model_entry, read_config_file
from gateway.core.errors import ConfigError


def _settings(*argv):
    return settings_from_args(build_parser().parse_args(list(argv)))


def test_ports_default_to_triton_ports_when_none_is_given():
    s = _settings("--model_name", "m", "--model_path", "/tmp/m")
    assert (s.grpc_port, s.rest_port) == (8001, 8000)


def test_a_port_not_given_is_off_when_the_other_is_given():
    s = _settings("--model_name", "m", "--model_path", "/tmp/m", "--port", "9000")
    assert (s.grpc_port, s.rest_port) == (9000, 0)
    s = _settings("--model_name", "m", "--model_path", "/tmp/m", "--port", "0", "--rest_port", "8080")
    assert (s.grpc_port, s.rest_port) == (0, 8080)


def test_single_model_flags_become_one_model_entry():
    s = _settings(
        "--model_name", "resnet", "--model_path", "/models/resnet", "--target_device", "AUTO:GPU,CPU",
        "--plugin_config", '{"NUM_STREAMS": 2, "ENABLE_PROFILING": false}', "--nireq", "4",
        "--batch_size", "auto", "--shape", "(1,3,224,224)", "--layout", "NHWC:NCHW",
        "--model_version_policy", '{"latest": {"num_versions": 2}}',
    )  # fmt: skip
    (m,) = s.models
    assert m.name == "resnet" and m.target_device == "AUTO:GPU,CPU"
    assert m.plugin_config == {"NUM_STREAMS": 2, "ENABLE_PROFILING": False}
    assert m.nireq == 4 and m.batch_size == -1 and m.shape == (1, 3, 224, 224) and m.layout == "NHWC:NCHW"
    assert m.version_policy == VersionPolicy(VersionPolicyKind.LATEST, num_versions=2)


def test_mixing_single_model_and_config_is_an_error():
    with pytest.raises(ConfigError, match="config_path"):
        _settings("--config_path", "/tmp/c.json", "--model_name", "m", "--model_path", "/tmp/m")


@pytest.mark.parametrize(
    "entry, fragments",
    [
        ({"name": "m", "base_path": "/x", "nireq": -1}, ["'m'", "nireq", "-1"]),
        ({"name": "m", "base_path": "/x", "plugin_config": {"A": [1]}}, ["plugin_config.A", "[1]"]),
        ({"name": "m", "base_path": "/x", "shape": "1,3"}, ["shape", "1,3"]),
        ({"name": "m", "base_path": "/x", "batch_size": 0}, ["batch_size", "0"]),
        ({"name": "m", "base_path": "/x", "model_version_policy": {"newest": {}}}, ["model_version_policy"]),
        (
            {"name": "m", "base_path": "/x", "model_version_policy": {"specific": {"versions": [0]}}},
            ["versions"],
        ),
        ({"name": "m", "base_path": "/x", "bogus": 1}, ["bogus", "unknown key"]),
        ({"name": "m", "base_path": "/x", "stateful": True}, ["stateful"]),
        ({"name": "m"}, ["base_path"]),
        ({"base_path": "/x"}, ["name"]),
    ],
)
def test_bad_model_entries_name_model_field_and_value(entry, fragments):
    with pytest.raises(ConfigError) as err:
        parse_model_entry({"config": entry})
    for fragment in fragments:
        assert fragment in str(err.value)


def test_ovms_config_file_with_all_supported_keys(tmp_path):
    config = {
        "model_config_list": [
            {
                "config": {
                    "name": "resnet",
                    "base_path": "models/resnet",
                    "target_device": "CPU",
                    "plugin_config": {"PERFORMANCE_HINT": "LATENCY"},
                    "nireq": 2,
                    "batch_size": "4",
                    "shape": {"input": "(1,3,224:448,224:448)"},
                    "layout": {"input": "NHWC:NCHW"},
                    "model_version_policy": {"specific": {"versions": [2, 1]}},
                    "allow_cache": False,
                    "stateful": False,
                }
            }
        ],
        "monitoring": {"metrics": {"enable": True}},
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    parsed = read_config_file(str(tmp_path))  # a folder holding config.json works too
    assert parsed.model_errors == {} and parsed.metrics_enable is True
    (m,) = parsed.models
    assert m.base_path == str(tmp_path / "models" / "resnet")  # relative to the config file, as in OVMS
    assert m.batch_size == 4 and m.shape == {"input": (1, 3, (224, 448), (224, 448))}
    assert m.version_policy.select([1, 2, 3]) == [1, 2] and m.allow_cache is False


def test_unparseable_config_file_is_fatal(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        read_config_file(str(tmp_path / "config.json"))
    (tmp_path / "config.json").write_text('{"model_config_list": [], "surprise": 1}')
    with pytest.raises(ConfigError, match="surprise"):
        read_config_file(str(tmp_path / "config.json"))
    twice = {"config": {"name": "m", "base_path": "/m"}}
    (tmp_path / "config.json").write_text(json.dumps({"model_config_list": [twice, twice]}))
    with pytest.raises(ConfigError, match="defined twice"):
        read_config_file(str(tmp_path / "config.json"))


def test_version_policies_select_versions():
    assert VersionPolicy().select([3, 1, 2]) == [3]
    assert VersionPolicy(VersionPolicyKind.LATEST, num_versions=2).select([3, 1, 2]) == [2, 3]
    assert VersionPolicy(VersionPolicyKind.ALL).select([3, 1, 2]) == [1, 2, 3]
    assert VersionPolicy(VersionPolicyKind.SPECIFIC, versions=(1, 5)).select([3, 1, 2]) == [1]


def test_object_storage_base_paths_are_not_taken_as_folders_beside_the_config(tmp_path):
    entry = {"name": "resnet", "base_path": "s3://models/resnet"}
    assert parse_model_entry(entry, config_dir=tmp_path).base_path == "s3://models/resnet"
    assert parse_model_entry({"name": "r", "base_path": "r"}, config_dir=tmp_path).base_path == str(
        tmp_path / "r"
    )


def test_model_path_in_a_bucket_has_no_local_repository_and_a_model_cache():
    args = build_parser().parse_args(
        [
            "--model_name",
            "resnet",
            "--model_path",
            "s3://models/resnet",
            "--model_cache_dir",
            "/var/cache/ovgw",
        ]
    )
    settings = settings_from_args(args)
    assert settings.models[0].base_path == "s3://models/resnet"
    assert settings.model_repository_path is None and settings.model_cache_dir == "/var/cache/ovgw"


@pytest.mark.parametrize(
    ("flags", "local", "remote"),
    [
        ([], 1.0, 15.0),  # OVMS's 1 s for folders; a bucket listed 4 times a minute
        (["--file_system_poll_wait_seconds", "0.2"], 0.2, 0.2),  # set: it applies to buckets too
        (["--file_system_poll_wait_seconds", "0"], 0.0, 0.0),
        (["--object_store_poll_wait_seconds", "60"], 1.0, 60.0),
        (["--file_system_poll_wait_seconds", "2", "--object_store_poll_wait_seconds", "30"], 2.0, 30.0),
    ],
)
def test_poll_periods_for_folders_and_object_storage(flags, local, remote):
    settings = _settings("--model_name", "m", "--model_path", "/m", *flags)
    assert settings.file_system_poll_wait_seconds == local
    assert settings.object_store_poll_wait_seconds == remote


def test_a_negative_poll_period_is_refused():
    with pytest.raises(ConfigError, match="--object_store_poll_wait_seconds = -1"):
        _settings("--model_name", "m", "--model_path", "/m", "--object_store_poll_wait_seconds", "-1")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1073741824", 1 << 30), ("512M", 512 << 20), ("2G", 2 << 30), ("2GiB", 2 << 30), ("0", 0)],
)
def test_max_request_memory_takes_byte_counts(text, expected):
    settings = _settings("--model_name", "m", "--model_path", "/m", "--max_request_memory", text)
    assert settings.max_request_memory == expected


def test_max_request_memory_defaults_to_none_meaning_half_the_memory():
    from gateway.memory.budget import default_budget_bytes, memory_limit_bytes

    assert _settings("--model_name", "m", "--model_path", "/m").max_request_memory is None
    assert 0 < default_budget_bytes() <= memory_limit_bytes()
