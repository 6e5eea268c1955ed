"""Limits on what a client controls, module by module: JSON nesting, restricted-API rules, TLS files."""

from __future__ import annotations

import json

import pytest

from gateway.core.errors import ConfigError, InvalidArgument, PermissionDenied
from gateway.core.jsondoc import MAX_JSON_DEPTH, nesting_depth_exceeds, parse_json
from gateway.security.restricted import ApiCategory, ApiGuard, parse_restriction


def nested(depth: int, inner: str = "1") -> bytes:
    return ("[" * depth + inner + "]" * depth).encode()


@pytest.mark.parametrize("depth", [1, MAX_JSON_DEPTH - 1, MAX_JSON_DEPTH])
def test_json_up_to_the_depth_limit_parses(depth):
    assert parse_json(nested(depth), "body") is not None


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 1000, 100_000])
def test_json_nested_past_the_limit_is_a_client_error_naming_the_limit(depth):
    with pytest.raises(InvalidArgument, match=f"deeper than {MAX_JSON_DEPTH} levels"):
        parse_json(nested(depth), "the request body")


def test_depth_counts_objects_and_arrays_anywhere_in_the_document():
    deep = {"inputs": [], "parameters": {"x": json.loads(nested(MAX_JSON_DEPTH))}}
    with pytest.raises(InvalidArgument, match="deeper"):
        parse_json(json.dumps(deep), "body")


def test_brackets_inside_strings_do_not_nest():
    text = json.dumps({"s": "[" * 5000 + '\\"{' * 100, "t": ["]]]", "[[["]}).encode()
    assert not nesting_depth_exceeds(text)
    assert parse_json(text, "body")["t"] == ["]]]", "[[["]


def test_many_brackets_side_by_side_are_not_depth():
    rows = [[i, i + 1] for i in range(10_000)]  # a nested `data` array: 10,001 brackets, depth 2
    assert parse_json(json.dumps(rows), "body") == rows


def test_invalid_json_names_what_was_parsed():
    with pytest.raises(InvalidArgument, match="parameter 'config' is not valid JSON"):
        parse_json("{nope", "parameter 'config'")


def test_a_restriction_parses_categories_header_and_value():
    r = parse_restriction("model-repository, statistics:Admin-Key=s3cr:et=")
    assert r.categories == {ApiCategory.MODEL_REPOSITORY, ApiCategory.STATISTICS}
    assert r.header == "admin-key" and r.value == "s3cr:et="


@pytest.mark.parametrize(
    "text", ["model-repository", "model-repository:admin-key", ":k=v", "model-repo:k=v", "health:=v"]
)
def test_a_malformed_restriction_is_a_configuration_error(text):
    with pytest.raises(ConfigError, match="--restricted_api"):
        parse_restriction(text)


def test_a_category_restricted_twice_is_a_configuration_error():
    with pytest.raises(ConfigError, match="more than once"):
        ApiGuard([parse_restriction("health:a=1"), parse_restriction("health,metadata:b=2")])


def test_the_guard_lets_through_only_the_exact_value_and_names_the_header():
    guard = ApiGuard([parse_restriction("inference:x-key=right")])
    guard.check(ApiCategory.INFERENCE, {"x-key": "right"}.get)
    guard.check(ApiCategory.HEALTH, {}.get)  # not restricted
    for headers in ({}, {"x-key": "wrong"}, {"x-key": "righ"}, {"x-key": "right "}):
        with pytest.raises(PermissionDenied, match="'x-key'"):
            guard.check(ApiCategory.INFERENCE, headers.get)
