"""malloc tuning: a user's own malloc settings are left alone."""

from __future__ import annotations

from gateway.malloc_tuning import tune_malloc


def test_the_users_own_malloc_settings_win():
    assert tune_malloc({"MALLOC_ARENA_MAX": "2"}) is False
    assert tune_malloc({"MALLOC_TRIM_THRESHOLD_": "0"}) is False
