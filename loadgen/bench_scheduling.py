"""The scheduler's benchmarks (part of `make bench`; alone: python -m loadgen.bench_scheduling).

1. Dynamic batching on the ResNet-50-shaped model, 16 concurrent batch-1 gRPC clients: throughput with the
   gateway's batcher on (max_batch_size 8) and off, against benchmark_app at batch 1 and batch 8; and the
   latency the batcher's delay adds when there is nothing to batch with (one client).
2. Two-model contention: a HIGH-priority copy of the model under a steady load, alone and while a
   LOW-priority copy saturates the CPU; the same again with both at the same priority, for contrast.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from .bench import ROOT, BenchModel, benchmark_app, gateway_run, median_of, prepare_models, write_results
from .gateway_process import start_gateway

BATCH = 8
DELAY_US = 2000
CLIENTS = 16


def _serve(out_dir: Path, tag: str, entries: list[dict], extra: Sequence[str] = ()):
    config = out_dir / f"config-{tag}.json"
    config.write_text(json.dumps({"model_config_list": [{"config": e} for e in entries]}))
    return start_gateway(["--config_path", str(config), *extra], out_dir / f"gateway-{tag}.log", timeout=300)


def _runs(gw, model: BenchModel, concurrency: int, window_ms: int, repetitions: int, raw: Path) -> dict:
    runs = [gateway_run(gw, model, "grpc", concurrency, window_ms, raw) for _ in range(repetitions)]
    return {
        "runs": runs,
        **{f"median_{k}": median_of(runs, k) for k in ("throughput", "p50_us", "p99_us")},
        "loadavg": os.getloadavg()[0],
    }


def batching_benchmark(model: BenchModel, out_dir: Path, window_ms: int, repetitions: int, seconds: int):
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
        gw = _serve(out_dir, f"batching-{tag}", [entry])
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


def contention_benchmark(model: BenchModel, out_dir: Path, window_ms: int, repetitions: int, high_load: int):
    raw = out_dir / "raw"
    path = str(model.path.parent.parent)
    result: dict[str, Any] = {"high_concurrency": high_load}
    for tag, low_priority in (("priorities", "LOW"), ("same_priority", "HIGH")):
        gw = _serve(
            out_dir,
            f"contention-{tag}",
            [
                {"name": "high", "base_path": path, "priority": "HIGH"},
                {"name": "low", "base_path": path, "priority": low_priority},
            ],
        )
        high = replace(model, name="high")
        try:
            alone = _runs(gw, high, high_load, window_ms, repetitions, raw)
            runs = []
            for _ in range(repetitions):
                # The LOW model saturates the CPU for longer than the HIGH window (its warm-up included).
                background = _background_load(gw, "low", 8, window_ms / 1000 + 4, out_dir)
                try:
                    time.sleep(1.0)
                    runs.append(gateway_run(gw, high, "grpc", high_load, window_ms, raw))
                finally:
                    background.wait(timeout=window_ms / 1000 + 120)
            contended = {
                "runs": runs,
                **{f"median_{k}": median_of(runs, k) for k in ("throughput", "p99_us")},
            }
        finally:
            gw.stop()
        result[tag] = {
            "alone": alone,
            "contended": contended,
            "p99_ratio": contended["median_p99_us"] / alone["median_p99_us"],
        }
        print(f"contention ({tag}): HIGH p99 alone {alone['median_p99_us']:.0f} us, with LOW saturating "
              f"{contended['median_p99_us']:.0f} us ({result[tag]['p99_ratio']:.2f} x)",
              flush=True)  # fmt: skip
    return result


def run(out_dir: Path, window_ms: int, repetitions: int, seconds: int) -> dict:
    (out_dir / "raw").mkdir(parents=True, exist_ok=True)
    (model,) = prepare_models(["resnet50"])
    return {
        "batching": batching_benchmark(model, out_dir, window_ms, repetitions, seconds),
        "contention": contention_benchmark(model, out_dir, window_ms, repetitions, high_load=1),
    }


def markdown(results: dict) -> str:
    b, c = results["batching"], results["contention"]
    lines = [
        f"## Dynamic batching (ResNet-50-shaped, {CLIENTS} concurrent batch-1 gRPC clients)",
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
        f"## Two models on the CPU (HIGH at concurrency {c['high_concurrency']}, LOW at 8)",
        "",
        "| | HIGH p99 alone us | HIGH p99 with LOW saturating us | ratio |",
        "| --- | --- | --- | --- |",
    ]
    for tag, label in (("priorities", "HIGH vs LOW"), ("same_priority", "both HIGH (no ordering)")):
        r = c[tag]
        alone, contended = r["alone"]["median_p99_us"], r["contended"]["median_p99_us"]
        lines.append(f"| {label} | {alone:.0f} | {contended:.0f} | {r['p99_ratio']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadgen.bench_scheduling")
    p.add_argument("--repetitions", type=int, default=3)
    p.add_argument("--window-ms", type=int, default=3000)
    p.add_argument("--benchmark-seconds", type=int, default=10)
    p.add_argument("--output", default=str(ROOT / "bench-results"))
    args = p.parse_args(argv)
    out_dir = Path(args.output) / (time.strftime("%Y%m%d-%H%M%S") + "-scheduling")
    results = run(out_dir, args.window_ms, args.repetitions, args.benchmark_seconds)
    results["loadavg_end"] = os.getloadavg()
    table = markdown(results)
    write_results(out_dir, results, table)
    print(table)
    print(f"written to {out_dir}; medians of {args.repetitions}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
