"""When a model that did not fully load is tried again: at once for new files, else after a doubling
backoff, on a manual clock."""

from __future__ import annotations

from gateway.serving.retry import FIRST_RETRY_S, MAX_RETRY_S, RetrySchedule


class ManualClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_model_never_failed_is_due():
    schedule = RetrySchedule(ManualClock())
    assert schedule.due("m", ("files", 1)) and not schedule.any_due()


def test_the_same_files_wait_a_doubling_backoff_up_to_the_cap():
    clock = ManualClock()
    schedule = RetrySchedule(clock)
    delays = [schedule.failed("m", "files-a") for _ in range(12)]
    assert delays[:4] == [FIRST_RETRY_S, 2 * FIRST_RETRY_S, 4 * FIRST_RETRY_S, 8 * FIRST_RETRY_S]
    assert delays[-1] == MAX_RETRY_S
    assert not schedule.due("m", "files-a") and not schedule.any_due()
    clock.now = MAX_RETRY_S
    assert schedule.due("m", "files-a") and schedule.any_due()


def test_new_files_are_due_at_once_and_start_the_backoff_again():
    clock = ManualClock()
    schedule = RetrySchedule(clock)
    for _ in range(5):
        schedule.failed("m", "files-a")
    assert schedule.due("m", "files-b")
    assert schedule.failed("m", "files-b") == FIRST_RETRY_S


def test_success_and_removal_forget_the_failures():
    clock = ManualClock()
    schedule = RetrySchedule(clock)
    schedule.failed("a", "x")
    schedule.failed("b", "x")
    schedule.succeeded("a")
    schedule.forget("b")
    clock.now = 1e6
    assert not schedule.any_due()
    assert schedule.failed("a", "x") == FIRST_RETRY_S
