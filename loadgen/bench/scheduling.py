"""The scheduler's benchmarks (part of `make bench`; alone: python -m loadgen.bench.scheduling).

1. Dynamic batching on the ResNet-50-shaped model, 16 concurrent batch-1 gRPC clients: throughput with the
   gateway's batcher on (max_batch_size 8) and off, against benchmark_app at batch 1 and batch 8; and the
   latency the batcher's delay adds when there is nothing to batch with (one client).
2. Two-model contention: a HIGH-priority copy of the model under a steady load, alone and while a
   LOW-priority copy saturates the CPU, at the default aging bound and at 5 s; the same again with both at the
   same priority, for contrast. LOW's answers per second beside HIGH and alone show what HIGH's tail costs it.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from gateway.testing import start_gateway
from loadgen.bench.runs import write_results
from loadgen.bench.throughput import (
    ROOT,
    BenchModel,
    benchmark_app,
    gateway_run,
    median_of,
    prepare_models,
    success_count,
)

BATCH = 8
DELAY_US = 2000
CLIENTS = 16
MODEL_TITLES = {"resnet50": "ResNet-50-shaped", "simple": "Triton's `simple`"}


def _serve(out_dir: Path, tag: str, entries: list[dict], extra: Sequence[str] = (), workers: int = 1):
    """A gateway on `entries`; `workers` > 1: with that many worker processes per transport."""
    config = out_dir / f"config-{tag}.json"
    config.write_text(json.dumps({"model_config_list": [{"config": e} for e in entries]}))
    if workers > 1:
        extra = [*extra, "--grpc_workers", str(workers), "--rest_workers", str(workers)]
    return start_gateway(["--config_path", str(config), *extra], out_dir / f"gateway-{tag}.log", timeout=300)


def _runs(gw, model: BenchModel, concurrency: int, window_ms: int, repetitions: int, raw: Path) -> dict:
    runs = [gateway_run(gw, model, "grpc", concurrency, window_ms, raw) for _ in range(repetitions)]
    return {
        "runs": runs,
        **{f"median_{k}": median_of(runs, k) for k in ("throughput", "p50_us", "p99_us")},
        "loadavg": os.getloadavg()[0],
    }


def batching_benchmark(
    model: BenchModel, out_dir: Path, window_ms: int, repetitions: int, seconds: int, workers: int = 1
):
    raw = out_dir / "raw"
    result = {
        "benchmark_app_batch1": benchmark_app(model, "throughput", seconds),
        "benchmark_app_batch8": benchmark_app(
            replace(model, benchmark_shape=model.benchmark_shape.replace("[1,", f"[{BATCH},")),
            "throughput",
            seconds,
        ),
    }
    base = {"name": model.name, "base_path": str(model.path.parent.parent)}
    for tag, entry in (
        ("off", base),
        ("on", {**base, "max_batch_size": BATCH, "max_queue_delay_microseconds": DELAY_US}),
    ):
        gw = _serve(out_dir, f"batching-{tag}", [entry], workers=workers)
        try:
            result[tag] = _runs(gw, model, CLIENTS, window_ms, repetitions, raw)
            result[f"{tag}_c1"] = _runs(gw, model, 1, window_ms, repetitions, raw)
        finally:
            gw.stop()
        print(f"batching {tag}: {result[tag]['median_throughput']:.1f}/s at c={CLIENTS}; "
              f"c=1 p99 {result[f'{tag}_c1']['median_p99_us']:.0f} us", flush=True)  # fmt: skip
    result["on_over_off"] = result["on"]["median_throughput"] / result["off"]["median_throughput"]
    result["delay_added_p99_us"] = result["on_c1"]["median_p99_us"] - result["off_c1"]["median_p99_us"]
    return result


def _background_load(gw, model: str, concurrency: int, seconds: float, out_dir: Path) -> subprocess.Popen:
    window = str(int(seconds * 1000))
    cmd = [sys.executable, "-m", "loadgen", "-m", model, "-u", gw.grpc_url, "-i", "grpc",
           "--concurrency-range", str(concurrency), "-p", window, "--warmup", "0"]  # fmt: skip
    log = open(out_dir / f"background-{model}-{time.time_ns()}.log", "wb")  # noqa: SIM115 - the child owns it
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)


def _beside(gw, busy: str, other: str, run: Callable[[], dict]) -> tuple[dict, float]:
    """run() (a loadgen run on model `busy`), and `other`'s answers per second while `busy` was answering:
    counted from `busy`'s first answer (not from the loader's start-up, while `busy` idles) to run()'s end."""
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(run=run()))
    before = success_count(gw.http_url, busy)
    thread.start()
    while thread.is_alive() and success_count(gw.http_url, busy) == before:
        time.sleep(0.01)
    other_start, started = success_count(gw.http_url, other), time.monotonic()
    thread.join()
    if "run" not in outcome:
        raise RuntimeError(f"the loadgen run on {busy!r} failed (its error is printed above)")
    return outcome["run"], (success_count(gw.http_url, other) - other_start) / (time.monotonic() - started)


# (tag, label in the table, LOW model's priority, --priority_aging_ms or None for the default)
CONTENTION_SETS = (
    ("priorities", "HIGH vs LOW", "LOW", None),
    ("priorities_aging_5s", "HIGH vs LOW", "LOW", 5000),
    ("same_priority", "both HIGH", "HIGH", None),
)
CONTENTION_TAGS = tuple(tag for tag, *_ in CONTENTION_SETS)
LOW_CLIENTS = 8


def contention_benchmark(
    model: BenchModel,
    out_dir: Path,
    window_ms: int,
    repetitions: int,
    high_load: int,
    workers: int = 1,
    sets: Sequence[str] = CONTENTION_TAGS,
):
    """HIGH at `high_load` clients alone and while LOW_CLIENTS closed-loop clients saturate LOW; LOW's
    answers per second counted from its statistics over each HIGH window, and LOW alone for its cost.
    `sets`: which of CONTENTION_SETS to run."""
    raw = out_dir / "raw"
    path = str(model.path.parent.parent)
    result: dict[str, Any] = {"high_concurrency": high_load, "low_concurrency": LOW_CLIENTS}
    for tag, _, low_priority, aging_ms in CONTENTION_SETS:
        if tag not in sets:
            continue
        gw = _serve(
            out_dir,
            f"contention-{tag}",
            [
                {"name": "high", "base_path": path, "priority": "HIGH"},
                {"name": "low", "base_path": path, "priority": low_priority},
            ],
            [] if aging_ms is None else ["--priority_aging_ms", str(aging_ms)],
            workers,
        )
        high, low = replace(model, name="high"), replace(model, name="low")
        try:
            alone = _runs(gw, high, high_load, window_ms, repetitions, raw)
            low_alone = _runs(gw, low, LOW_CLIENTS, window_ms, 1, raw)
            runs = []
            for _ in range(repetitions):
                # The LOW model saturates the CPU for longer than the HIGH window (its warm-up included).
                background = _background_load(gw, "low", LOW_CLIENTS, window_ms / 1000 + 4, out_dir)
                try:
                    time.sleep(1.0)
                    high_run = functools.partial(gateway_run, gw, high, "grpc", high_load, window_ms, raw)
                    run, low_rate = _beside(gw, "high", "low", high_run)
                    runs.append({**run, "low_throughput": low_rate})
                finally:
                    background.wait(timeout=window_ms / 1000 + 120)
            contended = {
                "runs": runs,
                **{f"median_{k}": median_of(runs, k) for k in ("throughput", "p50_us", "p99_us")},
                "low_throughput": median_of(runs, "low_throughput"),
            }
        finally:
            gw.stop()
        result[tag] = {
            "aging_ms": aging_ms,
            "alone": alone,
            "low_alone_throughput": low_alone["median_throughput"],
            "contended": contended,
            "p99_ratio": contended["median_p99_us"] / alone["median_p99_us"],
            "low_share": contended["low_throughput"] / low_alone["median_throughput"],
        }
        print(f"contention ({tag}): HIGH p99 alone {alone['median_p99_us']:.0f} us, with LOW saturating "
              f"{contended['median_p99_us']:.0f} us ({result[tag]['p99_ratio']:.2f} x); LOW beside it "
              f"{contended['low_throughput']:.1f}/s, alone {low_alone['median_throughput']:.1f}/s",
              flush=True)  # fmt: skip
    return result


def run(
    out_dir: Path,
    window_ms: int,
    repetitions: int,
    seconds: int,
    model_name: str = "resnet50",
    workers: int = 1,
    contention_sets: Sequence[str] = CONTENTION_TAGS,
) -> dict:
    (out_dir / "raw").mkdir(parents=True, exist_ok=True)
    (model,) = prepare_models([model_name])
    return {
        "model": model_name,
        "workers": workers,
        "batching": batching_benchmark(model, out_dir, window_ms, repetitions, seconds, workers),
        "contention": contention_benchmark(
            model, out_dir, window_ms, repetitions, 1, workers, contention_sets
        ),
    }


def markdown(results: dict) -> str:
    b, c = results["batching"], results["contention"]
    title = MODEL_TITLES[results.get("model", "resnet50")]
    if results.get("workers", 1) > 1:
        title += f", {results['workers']} worker processes per transport"
    lines = [
        f"## Dynamic batching ({title}, {CLIENTS} concurrent batch-1 gRPC clients)",
        "",
        "| | images/s | p50 us | p99 us |",
        "| --- | --- | --- | --- |",
        f"| benchmark_app batch 1 (throughput hint) | {b['benchmark_app_batch1']['fps']:.1f} | | |",
        f"| benchmark_app batch {BATCH} (throughput hint) | {b['benchmark_app_batch8']['fps']:.1f} | | |",
    ]
    for tag, label in (
        ("off", "gateway, batching off"),
        ("on", f"gateway, max_batch_size {BATCH}, delay {DELAY_US} us"),
    ):
        r = b[tag]
        cells = [
            label,
            f"{r['median_throughput']:.1f}",
            f"{r['median_p50_us']:.0f}",
            f"{r['median_p99_us']:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Batching on / off: {b['on_over_off']:.2f} x. p99 at one client: "
        f"off {b['off_c1']['median_p99_us']:.0f} us, on {b['on_c1']['median_p99_us']:.0f} us "
        f"(the delay adds {b['delay_added_p99_us']:.0f} us).",
        "",
        f"## Two models on the CPU (HIGH at concurrency {c['high_concurrency']}, "
        f"LOW at {c['low_concurrency']})",
        "",
        "| | aging ms | HIGH p50 / p99 alone us | HIGH p50 / p99 with LOW saturating us | p99 ratio "
        "| LOW answers/s beside HIGH / alone |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for tag, label, _, _ in CONTENTION_SETS:
        if tag not in c:
            continue
        r = c[tag]
        alone, contended = r["alone"], r["contended"]
        cells = [
            label,
            "500 (default)" if r["aging_ms"] is None else str(r["aging_ms"]),
            f"{alone['median_p50_us']:.0f} / {alone['median_p99_us']:.0f}",
            f"{contended['median_p50_us']:.0f} / {contended['median_p99_us']:.0f}",
            f"{r['p99_ratio']:.2f}",
            f"{contended['low_throughput']:.1f} / {r['low_alone_throughput']:.1f} ({r['low_share']:.2f})",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadgen.bench.scheduling")
    p.add_argument("--repetitions", type=int, default=3)
    p.add_argument("--window-ms", type=int, default=3000)
    p.add_argument("--benchmark-seconds", type=int, default=10)
    # The smoke test runs the harness on Triton's tiny `simple` model; the figures are ResNet's.
    p.add_argument("--model", choices=sorted(MODEL_TITLES), default="resnet50")
    p.add_argument("--workers", type=int, default=1, help="worker processes per transport (1: none)")
    p.add_argument(
        "--contention-sets",
        default=",".join(CONTENTION_TAGS),
        help=f"which two-model runs ({', '.join(CONTENTION_TAGS)})",
    )
    p.add_argument("--output", default=str(ROOT / "bench-results"))
    args = p.parse_args(argv)
    bench = "scheduling" if args.workers <= 1 else "scheduling_workers"
    out_dir = Path(args.output) / (time.strftime("%Y%m%d-%H%M%S") + f"-{bench}")
    sets = args.contention_sets.split(",")
    if unknown := set(sets) - set(CONTENTION_TAGS):
        p.error(f"unknown --contention-sets {', '.join(sorted(unknown))}")
    results = run(
        out_dir, args.window_ms, args.repetitions, args.benchmark_seconds, args.model, args.workers, sets
    )
    results["loadavg_end"] = os.getloadavg()
    table = markdown(results)
    write_results(out_dir, results, table, bench=bench, args=args, module="scheduling")
    print(table)
    print(f"written to {out_dir}; medians of {args.repetitions}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
