"""make bench, the ceiling: benchmark_app, the gateway and the gRPC floor with inference, round by round.

`loadgen.bench.throughput` runs benchmark_app once per model and the gateway's rows minutes later; on a VM
whose speed moves by 15 % within minutes, their ratio then measures the VM as much as the gateway. Here the
three take turns, one window each per round (the order rotating, so none always runs first): OpenVINO's
benchmark_app (THROUGHPUT hint), the gateway over gRPC, and grpc_floor's floor with inference (bytes in,
OpenVINO's start_async, bytes out, nothing else: the most any Python grpcio server can do with the model
here). Every ratio is taken within one round, and the medians of those are reported:

- floor with inference / benchmark_app: what serving over grpcio with the loader on the same cores leaves of
  OpenVINO's own throughput (and CPU per image), whoever the server is;
- gateway / benchmark_app: how close the gateway comes to OpenVINO's own limit;
- gateway / floor with inference: what the gateway itself costs.

    python -m loadgen.bench.ceiling [--models resnet50,ppocr_det] [--concurrency 8] [--rounds 6]
                                    [--window-ms 6000]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from gateway.testing import GatewayProcess, start_gateway
from loadgen.bench.peer_process import start_grpc_floor
from loadgen.bench.runs import write_results
from loadgen.bench.throughput import (
    ROOT,
    BenchModel,
    benchmark_app,
    gateway_run,
    prepare_models,
)

CONTENDERS = ("benchmark_app", "gateway", "floor_infer")


def round_ratios(rounds: list[dict[str, dict]]) -> dict[str, dict[str, Any]]:
    """Per-round throughput and CPU ratios of each pair, and their medians. CPU ratios are written as the
    targets are: the reference's CPU per image over the other's (below 1: the other spends more)."""
    pairs = {
        "floor_infer_vs_benchmark_app": ("floor_infer", "benchmark_app"),
        "gateway_vs_benchmark_app": ("gateway", "benchmark_app"),
        "gateway_vs_floor_infer": ("gateway", "floor_infer"),
    }
    out: dict[str, dict[str, Any]] = {}
    for name, (mine, reference) in pairs.items():
        throughput = [r[mine]["throughput"] / r[reference]["throughput"] for r in rounds]
        cpu = [r[reference]["cpu_us"] / r[mine]["cpu_us"] for r in rounds]
        out[name] = {
            "throughput": throughput,
            "cpu": cpu,
            "median_throughput": statistics.median(throughput),
            "median_cpu": statistics.median(cpu),
        }
    return out


def rotated(round_index: int) -> tuple[str, ...]:
    shift = round_index % len(CONTENDERS)
    return CONTENDERS[shift:] + CONTENDERS[:shift]


def _window(contender: str, model: BenchModel, servers: dict[str, GatewayProcess], args, raw: Path) -> dict:
    """One window of `contender`: its throughput, its CPU per image (the server process's, or
    benchmark_app's own) and the loader's CPU share."""
    if contender == "benchmark_app":
        result = benchmark_app(model, "throughput", max(1, args.window_ms // 1000))
        return {"throughput": result["fps"], "cpu_us": result["cpu_us_per_image"], "loader_cpu_pct": 0}
    row = gateway_run(servers[contender], model, "grpc", args.concurrency, args.window_ms, raw)
    return {
        "throughput": row["throughput"],
        "cpu_us": row["server_cpu_us_per_request"],
        "loader_cpu_pct": row["loader_cpu_pct"],
    }


def ceiling(model: BenchModel, args, out_dir: Path) -> dict:
    raw = out_dir / "raw"
    model_dir = str(model.path.parent.parent)
    gateway = start_gateway(
        ["--model_name", model.name, "--model_path", model_dir],
        out_dir / f"gateway-{model.name}.log",
        timeout=300,
    )
    servers: dict[str, GatewayProcess] = {"gateway": gateway}
    try:
        servers["floor_infer"] = start_grpc_floor(
            out_dir / f"floor-infer-{model.name}.log",
            timeout=300,
            model=(model.name, model.path, model.benchmark_shape),
            infer=True,
        )
        for name in ("gateway", "floor_infer"):  # first inferences and connections, outside the rounds
            gateway_run(servers[name], model, "grpc", args.concurrency, 2000, raw)
        rounds: list[dict[str, dict]] = []
        for i in range(args.rounds):
            windows = {c: _window(c, model, servers, args, raw) for c in rotated(i)}
            rounds.append(windows)
            said = (f"{c} {w['throughput']:.1f}/s {w['cpu_us']:.0f} us CPU" for c, w in windows.items())
            print(f"{model.name} round {i}: " + ", ".join(said), flush=True)
    finally:
        for server in servers.values():
            server.stop()
    return {"concurrency": args.concurrency, "rounds": rounds, "ratios": round_ratios(rounds)}


def markdown(results: dict, args) -> str:
    lines = [
        f"# The ceiling: benchmark_app, the gateway and the gRPC floor with inference, {args.rounds} rounds "
        f"of {args.window_ms} ms in turn, gRPC, concurrency {args.concurrency}",
        "",
        "Medians of the per-round ratios (their range in brackets). CPU ratio: the reference's CPU per image "
        "over the server's (1: no CPU added).",
        "",
        "| model | floor with inference / benchmark_app | CPU ratio | gateway / benchmark_app | CPU ratio "
        "| gateway / floor with inference | CPU ratio |",
        "|" + " --- |" * 7,
    ]
    for name, entry in results["models"].items():
        cells = [name]
        for pair in ("floor_infer_vs_benchmark_app", "gateway_vs_benchmark_app", "gateway_vs_floor_infer"):
            ratio = entry["ratios"][pair]
            for key in ("throughput", "cpu"):
                values = ratio[key]
                cells.append(f"{ratio[f'median_{key}']:.2f} ({min(values):.2f}-{max(values):.2f})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadgen.bench.ceiling")
    p.add_argument("--models", default="resnet50,ppocr_det")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--window-ms", type=int, default=6000)
    p.add_argument("--output", default=str(ROOT / "bench-results"))
    args = p.parse_args(argv)
    out_dir = Path(args.output) / (time.strftime("%Y%m%d-%H%M%S") + "-ceiling")
    (out_dir / "raw").mkdir(parents=True)
    results: dict[str, Any] = {"models": {}}
    for model in prepare_models(args.models.split(",")):
        results["models"][model.name] = ceiling(model, args, out_dir)
    table = markdown(results, args)
    write_results(out_dir, results, table, bench="ceiling", args=args)
    print(table)
    print(f"written to {out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
