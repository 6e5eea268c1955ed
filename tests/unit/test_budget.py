"""The request memory budget: charges grow as bytes arrive, refusals past the bound, charges returned."""

from __future__ import annotations

import os

import pytest

from gateway.memory.budget import MemoryBudgetExceeded, RequestMemoryBudget
from gateway.memory.ledger import SharedLedger


def test_charges_share_the_bound_and_are_returned():
    budget = RequestMemoryBudget(100)
    with budget.charge() as first:
        first.grow(60)
        second = budget.charge()
        second.grow(40)
        assert budget.held_bytes == 100
        with pytest.raises(MemoryBudgetExceeded, match="already hold 100 of the 100 bytes"):
            second.grow(1, "the request body")
        assert budget.refusals == 1 and budget.held_bytes == 100
        second.release()
    assert budget.held_bytes == 0 and first.held == 0


def test_bytes_charged_ahead_can_be_given_back():
    budget = RequestMemoryBudget(100)
    charge = budget.charge()
    charge.grow(50)
    charge.give_back(30)
    assert budget.held_bytes == 20 == charge.held
    charge.give_back(1000)  # never below what the charge holds
    assert budget.held_bytes == 0


def test_no_bound_refuses_nothing():
    budget = RequestMemoryBudget(0)
    charge = budget.charge()
    charge.grow(1 << 50)
    assert budget.refusals == 0 and budget.held_bytes == 1 << 50


def test_a_reserve_keeps_room_for_small_requests_when_large_ones_fill_the_rest():
    budget = RequestMemoryBudget(80 << 20)  # reserve: an eighth, 10 MiB
    large = budget.charge()
    large.grow(70 << 20)
    with pytest.raises(MemoryBudgetExceeded):
        large.grow(1)  # past a small request's size, only the bound less the reserve
    small = budget.charge()
    small.grow(512 << 10)  # the reserve is for requests like this one
    assert budget.held_bytes == (70 << 20) + (512 << 10)


def test_decoded_tensors_count_only_what_is_not_a_view():
    import numpy as np

    from gateway.memory.budget import decoded_bytes

    body = bytearray(400)
    view = np.frombuffer(body, np.float32)  # a view of the body: charged with the body
    built = np.arange(25, dtype=np.float64)  # from JSON: new memory
    strings = np.array([b"abc", b"de"], dtype=object)
    assert decoded_bytes([view]) == 0
    assert decoded_bytes([built]) == 200
    assert decoded_bytes([strings]) == strings.nbytes + 5


def test_processes_sharing_a_ledger_are_bound_by_their_sum():
    owner_ledger = SharedLedger.create(3)
    worker_ledger = SharedLedger.attach(os.dup(owner_ledger.fd), 1, 3)  # as a worker opens it
    owner, worker = RequestMemoryBudget(1000, owner_ledger), RequestMemoryBudget(1000, worker_ledger)
    held = worker.charge()
    held.grow(700)
    assert owner.held_bytes == worker.held_bytes == 700
    with pytest.raises(MemoryBudgetExceeded, match="already hold 700 of the 1000"):
        owner.charge().grow(400)
    assert worker.refusals == owner.refusals == 1
    with owner.charge() as fits:
        fits.grow(300)
        assert worker.held_bytes == 1000
    held.release()
    assert owner.held_bytes == 0
    held.grow(500)
    owner_ledger.clear(1)  # the worker died: what it held is gone with it
    assert owner.held_bytes == 0
    worker_ledger.close()
    owner_ledger.close()
