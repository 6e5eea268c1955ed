"""A benchmark run's record: where it ran, when, and with which command, written beside its results so that
docs/performance.md can be regenerated from the JSON alone (loadgen.bench.report)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import time
from pathlib import Path
from typing import Any

RESULTS_FILE = "results.json"


def cpu_name() -> str:
    """The CPU's model name as the kernel reports it ('unknown' where /proc/cpuinfo has none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run_record(bench: str, args: argparse.Namespace, module: str | None = None) -> dict[str, Any]:
    """What a reader of the results needs to know about the run: the bench, the command that reproduces it
    (`module`: the bench's module where its name is not the bench's), the machine (CPU model, cores) and
    the date."""
    try:
        import openvino

        openvino_version = openvino.get_version()
    except Exception:  # the record is still worth having without it
        openvino_version = "unknown"
    options = {k: v for k, v in vars(args).items() if isinstance(v, str | int | float | bool | type(None))}
    return {
        "bench": bench,
        "command": shlex.join(["python", "-m", f"loadgen.bench.{module or bench}", *_argv(options)]),
        "options": options,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "openvino": openvino_version,
    }


def _argv(options: dict[str, Any]) -> list[str]:
    argv = []
    for key, value in options.items():
        if key in ("output", "out") or value is None:
            continue
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv


def write_results(
    out_dir: Path,
    results: dict,
    table: str,
    *,
    bench: str,
    args: argparse.Namespace,
    module: str | None = None,
) -> None:
    """A bench's results: all of them as JSON with the run's record, the table as Markdown."""
    results["run"] = run_record(bench, args, module)
    (out_dir / RESULTS_FILE).write_text(json.dumps(results, indent=2))
    (out_dir / "results.md").write_text(table)
