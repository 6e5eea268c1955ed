"""make bench, shared memory: perf_analyzer against the gateway with its tensors in system shared memory
(`--shared-memory=system`) and over the socket (`none`), each as a ratio to OpenVINO's benchmark_app in the
same repetition, with the server's CPU time per request.

Per model (segmentation-shaped: 0.8 MB in, 5.5 MB out per image; ResNet-50-shaped: 0.6 MB in, 4 KB out),
each repetition takes turns: benchmark_app (throughput hint) on the same model file, then perf_analyzer
over gRPC with `--shared-memory=none`, then with `--shared-memory=system`, at one concurrency. Ratios are
each repetition's, reported as medians.

Target: the segmentation model >= 0.9 x benchmark_app's throughput with shared memory, and the server's
CPU per request below the socket path's.

    python -m loadgen.bench.shared_memory [--repetitions 3] [--models segmentation,resnet50]
                                          [--concurrency 4] [--window-ms 4000] [--benchmark-seconds 10]
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import tritonclient.grpc as grpcclient

from gateway.testing import GatewayProcess, free_port, start_gateway
from loadgen.bench.runs import write_results
from loadgen.bench.throughput import (
    CACHE,
    ROOT,
    BenchModel,
    benchmark_app,
    prepare_models,
    process_cpu_s,
    success_count,
)

PERF_ANALYZER = Path(os.environ.get("PERF_ANALYZER", CACHE / "perf_analyzer" / "perf_analyzer"))
TARGET = 0.9
# Room for the largest output of one image (segmentation: 21 x 256 x 256 FP32), for variable-shape outputs.
OUTPUT_REGION_BYTES = 6 << 20


class ShmFloor:
    """loadgen/bench/shm_floor.py in its own process: the least a grpcio server spends on these requests."""

    def __init__(self, model: BenchModel, log: Path):
        self.port = free_port()
        self.grpc_url = f"127.0.0.1:{self.port}"
        self.model = model
        cmd = [sys.executable, "-m", "loadgen.bench.shm_floor", "--port", str(self.port),
               "--model_name", model.name, "--model_path", str(model.path),
               "--shape", model.benchmark_shape]  # fmt: skip
        self.process = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if grpcclient.InferenceServerClient(self.grpc_url).is_server_live():
                    return
            except Exception:
                time.sleep(0.2)
        raise RuntimeError(f"the shared-memory floor did not start: {log.read_text()[-1500:]}")

    def answered(self) -> int:
        stats = grpcclient.InferenceServerClient(self.grpc_url).get_inference_statistics(self.model.name)
        return stats.model_stats[0].inference_stats.success.count

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def _answered(served: GatewayProcess | ShmFloor, model: BenchModel) -> int:
    if isinstance(served, ShmFloor):
        return served.answered()
    return success_count(served.http_url, model.name)


def perf_analyzer_run(
    gw: GatewayProcess | ShmFloor, model: BenchModel, memory: str, args: argparse.Namespace, out: Path
) -> dict:
    report = out / f"{model.name}-{memory}-{time.time_ns()}.csv"
    shapes = []
    if isinstance(gw, ShmFloor):  # no batch dimension in its config: whole shapes, as benchmark_app's
        shapes = [
            f"--shape={name}:{dims}" for name, dims in re.findall(r"(\w+)\[([\d,]+)\]", model.benchmark_shape)
        ]
    cmd = [str(PERF_ANALYZER), "-m", model.name, "-u", gw.grpc_url, "-i", "grpc",
           "--concurrency-range", str(args.concurrency), "--measurement-interval", str(args.window_ms),
           "-s", "100", "-r", "6", f"--shared-memory={memory}", *shapes,
           "--output-shared-memory-size", str(OUTPUT_REGION_BYTES), "-f", str(report)]  # fmt: skip
    cpu0, count0 = process_cpu_s(gw.process.pid), _answered(gw, model)
    client0 = _children_cpu_s()
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=args.window_ms / 1000 * 10 + 120)
    client_s = _children_cpu_s() - client0  # perf_analyzer's own CPU time, reaped by run()
    cpu1, count1 = process_cpu_s(gw.process.pid), _answered(gw, model)
    if result.returncode != 0:
        raise RuntimeError(f"perf_analyzer failed: {(result.stdout + result.stderr)[-2000:]}")
    requests = max(1, count1 - count0)
    row = next(csv.DictReader(report.open()))
    return {
        "throughput": float(row["Inferences/Second"]),
        "server_cpu_us_per_request": (cpu1 - cpu0) / requests * 1e6,
        "client_cpu_us_per_request": client_s / requests * 1e6,
    }


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--models", default="segmentation,resnet50")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--window-ms", type=int, default=4000)
    parser.add_argument("--benchmark-seconds", type=int, default=10)
    parser.add_argument("--output", default=str(ROOT / "bench-results"))
    args = parser.parse_args(argv)
    if not PERF_ANALYZER.exists():
        print(f"perf_analyzer is not at {PERF_ANALYZER}: run `make perf-analyzer`", file=sys.stderr)
        return 2
    out = Path(args.output) / (time.strftime("%Y%m%d-%H%M%S") + "-shared_memory")
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"models": {}}
    for model in prepare_models(args.models.split(",")):
        gw = start_gateway(
            ["--model_name", model.name, "--model_path", str(model.path.parent.parent), "--allow_client_shm"],
            out / f"{model.name}.log", timeout=600,
        )  # fmt: skip
        floor = ShmFloor(model, out / f"{model.name}-floor.log")
        rounds = []
        try:
            for rep in range(args.repetitions):
                ceiling = benchmark_app(model, "throughput", args.benchmark_seconds)
                socket = perf_analyzer_run(gw, model, "none", args, out)
                shared = perf_analyzer_run(gw, model, "system", args, out)
                least = perf_analyzer_run(floor, model, "system", args, out)
                row = {
                    "benchmark_app_fps": ceiling["fps"],
                    "benchmark_app_cpu_us_per_image": ceiling["cpu_us_per_image"],
                    "socket_throughput": socket["throughput"],
                    "socket_server_cpu_us": socket["server_cpu_us_per_request"],
                    "shm_throughput": shared["throughput"],
                    "shm_server_cpu_us": shared["server_cpu_us_per_request"],
                    "socket_ratio": socket["throughput"] / ceiling["fps"],
                    "shm_ratio": shared["throughput"] / ceiling["fps"],
                    "shm_cpu_vs_socket": shared["server_cpu_us_per_request"]
                    / socket["server_cpu_us_per_request"],
                    "shm_client_cpu_us": shared["client_cpu_us_per_request"],
                    # The most any server can reach with this client on these cores: benchmark_app's CPU
                    # per image over that plus the client's CPU per request (they share the cores).
                    "shm_ceiling": ceiling["cpu_us_per_image"]
                    / (ceiling["cpu_us_per_image"] + shared["client_cpu_us_per_request"]),
                    # The least a grpcio server spends on the same requests (shm_floor.py), and so how
                    # close to benchmark_app any Python grpcio server comes here.
                    "floor_ratio": least["throughput"] / ceiling["fps"],
                    "floor_server_cpu_us": least["server_cpu_us_per_request"],
                }
                rounds.append(row)
                print(f"{model.name} {rep}: " + ", ".join(f"{k} {v:.3g}" for k, v in row.items()), flush=True)
        finally:
            gw.stop()
            floor.stop()
        summary = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
        summary["rounds"] = rounds
        results["models"][model.name] = summary
    write_results(out, results, markdown(results), bench="shared_memory", args=args)
    print((out / "results.md").read_text())
    return 0


def markdown(results: dict) -> str:
    lines = [
        "# Shared memory: perf_analyzer over gRPC, tensors in shared memory against the socket (medians)",
        "",
        "| model | benchmark_app, FPS | socket: throughput (x benchmark_app) | shared memory: throughput "
        f"(x benchmark_app; target >= {TARGET} for segmentation) | grpcio floor, shared memory (x "
        "benchmark_app) | ceiling with this client | server CPU per request, socket / shared memory / floor, "
        "us | shared / socket CPU | perf_analyzer CPU per request, us |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, m in results["models"].items():
        lines.append(
            f"| {name} | {m['benchmark_app_fps']:.1f} | {m['socket_throughput']:.1f} "
            f"({m['socket_ratio']:.2f}) | {m['shm_throughput']:.1f} ({m['shm_ratio']:.2f}) | "
            f"{m['floor_ratio']:.2f} | {m['shm_ceiling']:.2f} | {m['socket_server_cpu_us']:.0f} / "
            f"{m['shm_server_cpu_us']:.0f} / {m['floor_server_cpu_us']:.0f} | "
            f"{m['shm_cpu_vs_socket']:.2f} | {m['shm_client_cpu_us']:.0f} |"
        )
    lines += [
        "",
        "benchmark_app, the socket run and the shared-memory run take turns within each repetition; each "
        "ratio is that repetition's, then the median. perf_analyzer runs on the same cores as the server: "
        "the ceiling is the most any server could reach with it, benchmark_app's CPU per image over that "
        "plus perf_analyzer's CPU per request. The grpcio floor (loadgen/bench/shm_floor.py) serves the same "
        "requests with nothing but their shared memory and OpenVINO: how close any Python grpcio server "
        "comes here.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
