"""When a model that did not fully load is tried again.

A model is tried again at once when what it is made of changes (its settings, or its version files as
listed: names, sizes and times or ETags), since a fix or a finished copy deserves a prompt try. A model
that failed with the same files is tried again after a backoff that doubles from FIRST_RETRY_S up to
MAX_RETRY_S: a store that failed a download, or a device short of memory, gets time to recover, and the
log and the store are not hammered once per poll, as OVMS's retry of failed versions does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

FIRST_RETRY_S = 1.0
MAX_RETRY_S = 300.0


@dataclass(frozen=True, slots=True)
class _Failure:
    attempt: Hashable  # what was tried: the settings and the files' fingerprint
    failures: int  # in a row, with these same files
    next_try: float  # on the schedule's clock


class RetrySchedule:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._failed: dict[str, _Failure] = {}

    def failed(self, name: str, attempt: Hashable) -> float:
        """Record a failed (or partial) load of `attempt`; the seconds until it is due again."""
        previous = self._failed.get(name)
        failures = previous.failures + 1 if previous is not None and previous.attempt == attempt else 1
        delay = min(FIRST_RETRY_S * 2 ** (failures - 1), MAX_RETRY_S)
        self._failed[name] = _Failure(attempt, failures, self._clock() + delay)
        return delay

    def succeeded(self, name: str) -> None:
        self._failed.pop(name, None)

    def due(self, name: str, attempt: Hashable) -> bool:
        """Whether loading `attempt` now is worth it: never failed, changed since it failed, or its backoff
        has passed."""
        failure = self._failed.get(name)
        return failure is None or failure.attempt != attempt or self._clock() >= failure.next_try

    def any_due(self) -> bool:
        """Some failed model's backoff has passed (the reloader then applies the configuration)."""
        now = self._clock()
        return any(now >= failure.next_try for failure in self._failed.values())

    def forget(self, name: str) -> None:
        """The model left the configuration."""
        self._failed.pop(name, None)
