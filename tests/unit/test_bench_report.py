"""docs/performance.md's generator: which runs it takes, and the record each run carries."""

from __future__ import annotations

import argparse
import json

import pytest

from loadgen.bench import report, runs


def _write_run(folder, name: str, bench: str, date: str) -> None:
    run = folder / name
    run.mkdir()
    record = {"bench": bench, "date": date, "command": f"python -m loadgen.bench.{bench}", "options": {},
              "cpu": "test CPU", "cores": 2, "openvino": "x"}  # fmt: skip
    (run / runs.RESULTS_FILE).write_text(json.dumps({"run": record, "tag": name}))


def test_the_newest_run_of_each_benchmark_is_taken(tmp_path, capsys):
    _write_run(tmp_path, "a", "throughput", "2026-12-01 10:00:00 UTC")
    _write_run(tmp_path, "b", "throughput", "2026-12-02 10:00:00 UTC")
    _write_run(tmp_path, "c", "overload", "2026-11-30 10:00:00 UTC")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / runs.RESULTS_FILE).write_text(json.dumps({"models": {}}))  # no run record
    taken = {r["run"]["bench"]: r["tag"] for r in report.latest_runs(tmp_path)}
    assert taken == {"throughput": "b", "overload": "c"}
    assert "no run record" in capsys.readouterr().err


def test_a_run_without_its_record_is_refused_by_name(tmp_path):
    (tmp_path / runs.RESULTS_FILE).write_text(json.dumps({"models": {}}))
    with pytest.raises(ValueError, match="run it again"):
        report.load_run(tmp_path)


def test_the_record_names_the_command_that_reproduces_the_run():
    args = argparse.Namespace(models="simple,resnet50", repetitions=3, output="/tmp/x", peer=None)
    record = runs.run_record("throughput", args)
    assert record["command"] == "python -m loadgen.bench.throughput --models simple,resnet50 --repetitions 3"
    assert record["cores"] >= 1 and record["cpu"] and record["date"]
    assert record["options"]["repetitions"] == 3
