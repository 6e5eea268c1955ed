"""make bench, overload and soak: how the gateway behaves past its capacity, and over time.

For `simple` and the ResNet-50-shaped model: capacity first (closed loop at a concurrency that saturates the
model, with the server's CPU per request), what a refusal costs the server (bench/refusal_cost.py) and the
ceilings those two costs put on any admission policy, then 512 closed-loop clients, then open loop at 10 x
the measured capacity; for each, the admitted requests' throughput and p99 against capacity, and how long a
refused request took to be answered (client side: an upper bound of the server's time). Then a soak at
capacity (`--soak-seconds`, default 600; 0 skips): RSS at its start and end, and errors. Loader
processes share the machine's cores (2 here): indicative only.

Targets: admitted p99 <= 2 x its value at capacity, refusals answered within 1 ms p99, admitted
throughput >= 0.95 x capacity; soak RSS growth < 5 %, no error.

    python -m loadgen.bench.overload [--window-ms 5000] [--soak-seconds 600] [--models simple,resnet50]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from gateway.demo_models import save, simple_model
from gateway.testing import GatewayProcess, start_gateway
from loadgen.bench import refusal_cost
from loadgen.bench.models import resnet50_shaped
from loadgen.bench.peer_process import start_grpc_floor
from loadgen.bench.runs import write_results
from loadgen.bench.throughput import CACHE, ROOT, process_cpu_s, success_count

# model -> the closed-loop concurrency taken as its capacity on 2 cores
CAPACITY_CONCURRENCY = {"simple": 64, "resnet50": 8}
# model -> the bytes one request carries (simple: two [1,16] INT32 inputs; resnet50: [1,3,224,224] FP32), sent
# with each refusal whose cost is measured
REQUEST_PAYLOAD_BYTES = {"simple": 2 * 16 * 4, "resnet50": 3 * 224 * 224 * 4}
CLOSED_LOOP_CLIENTS = 512
SOAK_WARMUP_MS = 30_000


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def load(gw: GatewayProcess, model: str, mode_args: list[str], window_ms: int, out: Path) -> dict:
    report = out / f"{model}-{time.time_ns()}.json"
    cmd = [sys.executable, "-m", "loadgen", "-m", model, "-u", gw.grpc_url, "-i", "grpc",
           "-p", str(window_ms), "--json", str(report), *mode_args]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=window_ms / 1000 * 3 + 300)
    if not report.exists():
        raise RuntimeError(f"loadgen failed: {result.stdout[-1500:]}{result.stderr[-1500:]}")
    (row,) = json.loads(report.read_text())
    return row


def ceilings(capacity: float, capacity_p99_us: float, served_cpu_us: float, refusal_cpu_us: float) -> dict:
    """What the measured costs allow any admission policy on this machine (see bench/refusal_cost.py): the
    admitted throughput at 10 x open loop, and for 512 closed-loop clients the refusals per second that keep
    admitted >= 0.95 x capacity, with the round trip each refused client's call must then last (the clients
    not holding an admitted request, at most 0.95 x capacity x 2 x the p99 at capacity of them, cycle
    through refusals at that rate)."""
    allowed = refusal_cost.refusals_per_second_allowed(capacity, served_cpu_us, refusal_cpu_us)
    holding_admitted = 0.95 * capacity * 2 * capacity_p99_us / 1e6
    refusing_clients = max(0.0, CLOSED_LOOP_CLIENTS - holding_admitted)
    return {
        "open_10x_admitted_ratio_at_most": refusal_cost.admitted_ceiling(served_cpu_us, refusal_cpu_us, 10),
        "closed_512_refusals_per_second_allowed": allowed,
        "closed_512_refused_round_trip_s_at_least": refusing_clients / allowed,
    }


def markdown(results: dict) -> str:
    lines = [
        "# Overload: capacity, what a refusal costs, and past capacity",
        "",
        "a: the server's CPU per served request at capacity; r: per refused call (grpc.aio's floor for the "
        "same call in brackets); the ceiling: the most any admission policy could admit at 10 x open loop "
        "with those costs.",
        "",
        "| model | capacity | p99 at capacity | a | r (floor) | ceiling at 10 x open loop "
        "| 512 clients: admitted, p99 x, refused | 10 x open loop: admitted, p99 x, refused |",
        "|" + " --- |" * 8,
    ]
    for name, entry in results["models"].items():
        cap, bound = entry["capacity"], entry["ceilings"]
        past = [
            f"{row['throughput_ratio']:.2f} x, {row['p99_ratio']:.1f} x, {row['errors']}"
            for row in (entry["closed_512"], entry["open_10x"])
        ]
        lines.append(
            f"| {name} | {cap['Inferences/Second']:,.0f}/s | {cap['p99 latency'] / 1000:,.1f} ms "
            f"| {cap['server_cpu_us_per_request']:,.0f} us | {entry['refusal']['cpu_us_per_call']:,.0f} us "
            f"({entry['grpc_floor_call']['cpu_us_per_call']:,.0f}) "
            f"| {bound['open_10x_admitted_ratio_at_most']:.2f} x | {past[0]} | {past[1]} |"
        )
    soak = results.get("soak")
    if soak:
        lines += [
            "",
            f"Soak: `simple` at c=64 for {soak['seconds']} s, {soak['throughput']:,.0f}/s, {soak['errors']} "
            f"errors, RSS {soak['rss_start_kib']:,} -> {soak['rss_end_kib']:,} KiB "
            f"({soak['rss_growth'] * 100:+.2f} %).",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadgen.bench.overload")
    p.add_argument("--window-ms", type=int, default=5000)
    p.add_argument("--soak-seconds", type=int, default=600)
    p.add_argument("--models", default="simple,resnet50")
    p.add_argument("--output", default=str(ROOT / "bench-results"))
    args = p.parse_args(argv)
    out = Path(args.output) / (time.strftime("%Y%m%d-%H%M%S") + "-overload")
    out.mkdir(parents=True)
    entries = []
    for name, build in (("simple", simple_model), ("resnet50", resnet50_shaped)):
        path = CACHE / "bench_models" / name / "1" / "model.xml"
        if not path.exists():
            save(build(), path.parent)
        entries.append({"config": {"name": name, "base_path": str(path.parent.parent)}})
    (out / "config.json").write_text(json.dumps({"model_config_list": entries}))
    results: dict = {"models": {}}
    gw = start_gateway(["--config_path", str(out / "config.json")], out / "gateway.log", timeout=300)
    floor = start_grpc_floor(out / "grpc-floor.log")
    try:
        for model in filter(None, args.models.split(",")):  # --models "" runs the soak alone
            c = CAPACITY_CONCURRENCY[model]
            cpu0, answered0 = process_cpu_s(gw.process.pid), success_count(gw.http_url, model)
            capacity = load(gw, model, ["--concurrency-range", str(c)], args.window_ms, out)
            cpu1, answered1 = process_cpu_s(gw.process.pid), success_count(gw.http_url, model)
            served_cpu_us = (cpu1 - cpu0) / max(1, answered1 - answered0) * 1e6
            refusal = refusal_cost.measure(gw.grpc_url, gw.process.pid, REQUEST_PAYLOAD_BYTES[model])
            # grpc.aio's own floor for a call carrying that payload: no server on grpcio refuses for less
            floor_call = refusal_cost.measure(floor.grpc_url, floor.process.pid, REQUEST_PAYLOAD_BYTES[model])
            closed = load(gw, model, ["--concurrency-range", str(CLOSED_LOOP_CLIENTS)], args.window_ms, out)
            rate = 10 * capacity["Inferences/Second"]
            opened = load(gw, model, ["--request-rate-range", f"{rate:.0f}"], args.window_ms, out)
            entry: dict[str, dict] = {
                "capacity": capacity,
                "refusal": asdict(refusal),
                "grpc_floor_call": asdict(floor_call),
                "ceilings": ceilings(
                    capacity["Inferences/Second"],
                    capacity["p99 latency"],
                    served_cpu_us,
                    refusal.cpu_us_per_call,
                ),
                "closed_512": closed,
                "open_10x": opened,
            }
            capacity["server_cpu_us_per_request"] = served_cpu_us
            for key in ("closed_512", "open_10x"):
                row = entry[key]
                row["throughput_ratio"] = row["Inferences/Second"] / capacity["Inferences/Second"]
                row["p99_ratio"] = row["p99 latency"] / max(1.0, capacity["p99 latency"])
            results["models"][model] = entry
            cap, cap_p99 = capacity["Inferences/Second"], capacity["p99 latency"]
            bound = entry["ceilings"]
            parts = [
                f"{model}: capacity {cap:.0f}/s p99 {cap_p99:.0f} us, "
                f"server CPU {served_cpu_us:.0f} us/request, "
                f"a refusal {refusal.cpu_us_per_call:.0f} us ({refusal.status_counts}; grpc.aio's floor "
                f"{floor_call.cpu_us_per_call:.0f} us); at most: admitted "
                f"{bound['open_10x_admitted_ratio_at_most']:.2f} x at 10 x open loop, "
                f"{bound['closed_512_refusals_per_second_allowed']:.0f} refusals/s with 512 clients "
                "(each refused call's round trip >= "
                f"{bound['closed_512_refused_round_trip_s_at_least']:.2f} s)"
            ]
            for key in ("closed_512", "open_10x"):
                row = entry[key]
                parts.append(
                    f"{key}: admitted {row['throughput_ratio']:.2f} x, p99 {row['p99_ratio']:.2f} x, "
                    f"{row['errors']} refused (p99 {row['error p99 latency']:.0f} us), "
                    f"{row['late sends']} late sends"
                )
            print("; ".join(parts), flush=True)
        if args.soak_seconds:
            # a warm-up first: RSS is measured once the allocator and the connections have settled, so that
            # growth means what the soak itself kept
            warmup_ms = min(SOAK_WARMUP_MS, args.soak_seconds * 50)  # 5 % of the soak, at most 30 s
            load(gw, "simple", ["--concurrency-range", "64"], max(500, warmup_ms), out)
            rss0 = rss_kib(gw.process.pid)
            soak = load(gw, "simple", ["--concurrency-range", "64"], args.soak_seconds * 1000, out)
            rss1 = rss_kib(gw.process.pid)
            results["soak"] = {"seconds": args.soak_seconds, "rss_start_kib": rss0, "rss_end_kib": rss1,
                               "rss_growth": rss1 / rss0 - 1, "errors": soak["errors"],
                               "throughput": soak["Inferences/Second"]}  # fmt: skip
            print(f"soak: {results['soak']}", flush=True)
    finally:
        gw.stop()
        floor.stop()
    write_results(out, results, markdown(results), bench="overload", args=args)
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
