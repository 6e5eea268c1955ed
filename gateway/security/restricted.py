"""Restricted APIs, Triton's way: a category of calls answers only a request that carries a given header.

`--restricted_api model-repository,model-config:admin-key=secret` lets a repository or model-config call
through only with the HTTP header (or gRPC metadata) `admin-key: secret`; anything else gets
PERMISSION_DENIED / 403 naming the header. Header names are case-insensitive (gRPC metadata keys are
lower-case on the wire). Values are compared in constant time. No restriction by default.
"""

from __future__ import annotations

import enum
import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gateway.core.errors import ConfigError, PermissionDenied


class ApiCategory(enum.Enum):
    HEALTH = "health"  # server live / ready, model ready
    METADATA = "metadata"  # server and model metadata
    INFERENCE = "inference"  # ModelInfer, ModelStreamInfer
    MODEL_CONFIG = "model-config"  # Triton's model configuration
    MODEL_REPOSITORY = "model-repository"  # index, load, unload, and OVMS's POST /v1/config/reload
    STATISTICS = "statistics"
    METRICS = "metrics"  # Prometheus /metrics (REST and the metrics port)
    SHARED_MEMORY = "shared-memory"  # Triton's system and CUDA shared-memory status, register, unregister


@dataclass(frozen=True, slots=True)
class ApiRestriction:
    categories: frozenset[ApiCategory]
    header: str  # lower-case
    value: str


def parse_restriction(text: str) -> ApiRestriction:
    """`CATEGORY[,CATEGORY...]:HEADER=VALUE`, the form of Triton's --http-restricted-api."""
    categories_text, sep, key_value = text.partition(":")
    header, sep2, value = key_value.partition("=")
    if not sep or not sep2 or not categories_text.strip() or not header.strip() or not value:
        raise ConfigError(
            f"--restricted_api {text!r}: expected CATEGORIES:HEADER=VALUE, "
            "e.g. model-repository:admin-key=secret"
        )
    known = {c.value: c for c in ApiCategory}
    categories = set()
    for name in categories_text.split(","):
        name = name.strip()
        if name not in known:
            raise ConfigError(
                f"--restricted_api {text!r}: unknown category '{name}'; expected one of {', '.join(known)}"
            )
        categories.add(known[name])
    return ApiRestriction(frozenset(categories), header.strip().lower(), value)


class ApiGuard:
    """Which header each category needs; check() raises PermissionDenied for a call without it."""

    def __init__(self, restrictions: Sequence[ApiRestriction] = ()):
        self._by_category: dict[ApiCategory, ApiRestriction] = {}
        for restriction in restrictions:
            for category in restriction.categories:
                if category in self._by_category:
                    raise ConfigError(
                        f"--restricted_api: category '{category.value}' is restricted more than once"
                    )
                self._by_category[category] = restriction
        self.active = bool(self._by_category)

    def describe(self) -> list[str]:
        """One line per category, for the start-up log (the header's name, never its value)."""
        return [
            f"{c.value} (header '{r.header}')"
            for c, r in sorted(self._by_category.items(), key=lambda i: i[0].value)
        ]

    def check(self, category: ApiCategory, header_value: Callable[[str], str | None]) -> None:
        """`header_value(name)`: the request's value of a (lower-case) header name, None when absent."""
        restriction = self._by_category.get(category)
        if restriction is None:
            return
        given = header_value(restriction.header)
        if given is None or not hmac.compare_digest(given.encode(), restriction.value.encode()):
            raise PermissionDenied(
                f"this API ({category.value}) is restricted; expecting header '{restriction.header}' "
                "with the configured value"
            )
