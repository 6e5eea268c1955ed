"""The ceiling bench's arithmetic (loadgen/bench/ceiling.py): ratios taken within a round, medians of them."""

from __future__ import annotations

import pytest

from loadgen.bench.ceiling import CONTENDERS, rotated, round_ratios


def _round(bapp: tuple[float, float], gateway: tuple[float, float], floor: tuple[float, float]) -> dict:
    return {
        name: {"throughput": t, "cpu_us": c}
        for name, (t, c) in (("benchmark_app", bapp), ("gateway", gateway), ("floor_infer", floor))
    }


def test_each_ratio_is_taken_within_its_round_and_the_median_of_those_reported():
    # The machine runs twice as fast in the second round: per-round ratios stay put where a ratio of
    # medians across rounds would not.
    rounds = [
        _round((10.0, 100.0), (9.0, 110.0), (9.5, 105.0)),
        _round((20.0, 50.0), (18.0, 55.0), (19.0, 52.5)),
        _round((10.0, 100.0), (8.0, 125.0), (10.0, 100.0)),
    ]
    ratios = round_ratios(rounds)
    assert ratios["gateway_vs_benchmark_app"]["throughput"] == pytest.approx([0.9, 0.9, 0.8])
    assert ratios["gateway_vs_benchmark_app"]["median_throughput"] == pytest.approx(0.9)
    # CPU ratios as the targets write them: the reference's CPU per image over the server's
    assert ratios["gateway_vs_benchmark_app"]["cpu"] == pytest.approx([100 / 110, 50 / 55, 0.8])
    assert ratios["floor_infer_vs_benchmark_app"]["median_throughput"] == pytest.approx(0.95)
    assert ratios["gateway_vs_floor_infer"]["throughput"] == pytest.approx([9 / 9.5, 18 / 19, 0.8])
    assert ratios["gateway_vs_floor_infer"]["median_cpu"] == pytest.approx(105 / 110)


def test_every_contender_goes_first_in_turn():
    orders = [rotated(i) for i in range(len(CONTENDERS))]
    assert sorted(order[0] for order in orders) == sorted(CONTENDERS)
    assert all(sorted(order) == sorted(CONTENDERS) for order in orders)
