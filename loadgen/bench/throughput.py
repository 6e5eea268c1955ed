"""make bench: the gateway against OpenVINO's own benchmark_app on the same models, back to back.

For each bench model: benchmark_app with the throughput and latency hints (the
ceiling), then the gateway under loadgen over gRPC and REST (binary tensors) at
several concurrencies, each repeated; medians are reported. Beside wall-clock
figures, the server's CPU time per request (from /proc/<pid>/stat around each
run, divided by the requests its statistics counted) is reported: on a shared
2-core machine it is far steadier than throughput. Results go to bench-results/
as Markdown and JSON (git-ignored).

    python -m loadgen.bench.throughput [--repetitions 3] [--window-ms 3000] \
        [--models simple,resnet50,ppocr_det]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.demo_models import save, simple_model
from gateway.testing import GatewayProcess, start_gateway
from loadgen.bench.models import fetch_ppocr_det, resnet50_shaped, segmentation_shaped
from loadgen.bench.peer_process import FloorProcess, PeerProcess, start_grpc_floor, start_kserve_peer
from loadgen.bench.runs import write_results

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class BenchModel:
    name: str
    path: Path
    benchmark_shape: str  # benchmark_app -shape
    loadgen_shape: list[str]  # loadgen --shape (non-batch dims)


def prepare_models(names: list[str]) -> list[BenchModel]:
    root = CACHE / "bench_models"
    models = []
    if "simple" in names:
        path = root / "simple" / "1" / "model.xml"
        if not path.exists():
            save(simple_model(), path.parent)
        models.append(BenchModel("simple", path, "INPUT0[1,16],INPUT1[1,16]", []))
    if "resnet50" in names:
        path = root / "resnet50" / "1" / "model.xml"
        if not path.exists():
            save(resnet50_shaped(), path.parent)
        models.append(BenchModel("resnet50", path, "input[1,3,224,224]", []))
    if "segmentation" in names:
        path = root / "segmentation" / "1" / "model.xml"
        if not path.exists():
            save(segmentation_shaped(), path.parent)
        models.append(BenchModel("segmentation", path, "image[1,3,256,256]", []))
    if "ppocr_det" in names:
        try:
            path = fetch_ppocr_det(CACHE)
            models.append(BenchModel("ppocr_det", path, "x[1,3,480,480]", ["x:3,480,480"]))
        except RuntimeError as e:
            print(f"skipping ppocr_det: {e}")
    return models


def _search(pattern: str, text: str, flags: int = 0) -> re.Match[str]:
    """re.search that says what was missing from a tool's output instead of failing on None."""
    found = re.search(pattern, text, flags)
    if found is None:
        raise RuntimeError(f"no match for {pattern!r} in: {text[-1500:]}")
    return found


def benchmark_app(model: BenchModel, hint: str, seconds: int, static: bool = False) -> dict:
    """OpenVINO's benchmark_app on the bench model, with its CPU time per image.

    By default the model keeps its dynamic dimensions, as the gateway serves it, and
    only the data has a shape (-data_shape): that is the ceiling for the same compiled
    model. static=True reshapes the model itself (-shape), which OpenVINO's CPU plugin
    runs faster (measured: PP-OCRv4 det 145 vs 109 FPS at 480x480); the gateway gets
    that too when the model's config sets `shape`.

    CPU per image is the process's CPU time from its first inference (read from /proc
    when it prints that line) to its exit (wait4's rusage), over the iterations it
    counted: the figure to set beside the gateway's server CPU per request.
    """
    tool = Path(sys.executable).parent / "benchmark_app"
    shape_flag = "-shape" if static else "-data_shape"
    cmd = [str(tool), "-m", str(model.path), "-d", "CPU", "-hint", hint, "-t", str(seconds),
           shape_flag, model.benchmark_shape]  # fmt: skip
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, cpu_at_first_inference = [], None
    assert process.stdout is not None  # stdout=PIPE
    for line in process.stdout:
        lines.append(line)
        if cpu_at_first_inference is None and "First inference took" in line:
            cpu_at_first_inference = process_cpu_s(process.pid)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    out = "".join(lines)
    if process.returncode != 0:
        raise RuntimeError(f"benchmark_app failed: {out[-1500:]}")
    fps = float(_search(r"Throughput:\s+([\d.]+) FPS", out).group(1))
    value, unit = _search(r"Median:\s+([\d.]+) (ms|us)", out).groups()
    streams = re.search(r"NUM_STREAMS:\s+(\d+)", out) or re.search(r"NUM_STREAMS\s*,\s*(\d+)", out)
    iterations = int(_search(r"Count:\s+(\d+) iterations", out).group(1))
    run_cpu_s = usage.ru_utime + usage.ru_stime - (cpu_at_first_inference or 0.0)
    return {
        "hint": hint,
        "fps": fps,
        "median_us": float(value) * (1000 if unit == "ms" else 1),
        "streams": int(streams.group(1)) if streams else None,
        "cpu_us_per_image": run_cpu_s / max(1, iterations) * 1e6,
    }


def process_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def success_count(http_url: str, model: str) -> int:
    with urllib.request.urlopen(f"http://{http_url}/v2/models/{model}/stats", timeout=10) as r:
        stats = json.load(r)["model_stats"]
    return sum(s["inference_stats"]["success"]["count"] for s in stats)


def _answered(server: GatewayProcess | PeerProcess, model: str) -> int:
    if isinstance(server, PeerProcess):
        return server.answered(model)
    return success_count(server.http_url, model)


def _peer_shapes(model: BenchModel) -> list[str]:
    """loadgen --shape for a server without Triton's model config: whole shapes, batch 1 included."""
    return [f"{name}:{dims}" for name, dims in re.findall(r"(\w+)\[([\d,]+)\]", model.benchmark_shape)]


def gateway_run(
    server: GatewayProcess | PeerProcess,
    model: BenchModel,
    protocol: str,
    concurrency: int,
    window_ms: int,
    out_dir: Path,
    extra_args: list[str] | None = None,
) -> dict:
    """One loadgen window against `server` (the gateway, or the KServe peer), with the server process's CPU
    time per answered request over the whole run. `extra_args` go to loadgen (e.g. --input-data)."""
    url = server.grpc_url if protocol == "grpc" else server.http_url
    tag = (
        "floor"
        if isinstance(server, FloorProcess)
        else "kserve"
        if isinstance(server, PeerProcess)
        else "gateway"
    )
    report = out_dir / f"{model.name}-{tag}-{protocol}-c{concurrency}-{time.time_ns()}.csv"
    shape_args = _peer_shapes(model) if isinstance(server, PeerProcess) else model.loadgen_shape
    shapes = [a for s in shape_args for a in ("--shape", s)]
    cmd = [sys.executable, "-m", "loadgen", "-m", model.name, "-u", url, "-i", protocol,
           "--concurrency-range", str(concurrency), "-p", str(window_ms),
           "-f", str(report), *shapes, *(extra_args or [])]  # fmt: skip
    cpu0, count0 = process_cpu_s(server.process.pid), _answered(server, model.name)
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=window_ms / 1000 * 4 + 120)
    cpu1, count1 = process_cpu_s(server.process.pid), _answered(server, model.name)
    if result.returncode != 0:
        raise RuntimeError(f"loadgen failed: {result.stdout[-1500:]}{result.stderr[-1500:]}")
    row = next(csv.DictReader(report.open()))
    loader = re.search(r"Loader: \d+ processes, (\d+)% of one core", result.stdout)
    return {
        "throughput": float(row["Inferences/Second"]),
        "p50_us": float(row["p50 latency"]),
        "p99_us": float(row["p99 latency"]),
        "server_cpu_us_per_request": (cpu1 - cpu0) / max(1, count1 - count0) * 1e6,
        "loader_cpu_pct": int(loader.group(1)) if loader else None,
    }


def time_to_ready(model: BenchModel, cache_dir: Path, log: Path) -> tuple[float, float]:
    """(process start to readiness, the model's own read + compile/import time) in seconds, with a blob cache.

    The first includes the interpreter's start-up (about 0.5 s here), which no cache shortens."""
    started = time.perf_counter()
    args = [
        "--model_name",
        model.name,
        "--model_path",
        str(model.path.parent.parent),
        "--cache_dir",
        str(cache_dir),
    ]
    gw = start_gateway(args, log, timeout=300)
    elapsed = time.perf_counter() - started
    try:
        with urllib.request.urlopen(f"http://{gw.http_url}/metrics", timeout=10) as r:
            text = r.read().decode()
        load = float(_search(r"^ovgw_model_load_seconds\{[^}]*\} (\S+)$", text, re.M).group(1))
    finally:
        gw.stop()
    return elapsed, load


def cache_benchmark(model: BenchModel, out_dir: Path, repetitions: int) -> dict:
    """Time-to-ready with an empty cache (cold) and with the blobs the cold start left (warm)."""
    cold, warm = [], []
    for i in range(repetitions):
        cache = out_dir / "cache" / f"{model.name}-{i}"
        cold.append(time_to_ready(model, cache, out_dir / f"cold-{model.name}-{i}.log"))
        warm.append(time_to_ready(model, cache, out_dir / f"warm-{model.name}-{i}.log"))
    return {
        "cold_s": statistics.median(r[0] for r in cold),
        "warm_s": statistics.median(r[0] for r in warm),
        "cold_load_s": statistics.median(r[1] for r in cold),
        "warm_load_s": statistics.median(r[1] for r in warm),
        "cold_runs": cold,
        "warm_runs": warm,
    }


def median_of(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadgen.bench.throughput")
    p.add_argument("--repetitions", type=int, default=3)
    p.add_argument("--window-ms", type=int, default=3000)
    p.add_argument("--benchmark-seconds", type=int, default=10)
    p.add_argument("--models", default="simple,resnet50,ppocr_det,segmentation")
    p.add_argument("--concurrency", default="1,2,4,8,16")
    p.add_argument("--output", default=str(ROOT / "bench-results"), help="results go to OUTPUT/<time>/")
    p.add_argument(
        "--peer",
        choices=["kserve", "none"],
        default="kserve",
        help="also serve each model with KServe's ModelServer (loadgen/bench/kserve_peer.py) and compare",
    )
    args = p.parse_args(argv)

    out_dir = Path(args.output) / time.strftime("%Y%m%d-%H%M%S")
    (out_dir / "raw").mkdir(parents=True)
    models = prepare_models(args.models.split(","))
    config = {
        "model_config_list": [
            {"config": {"name": m.name, "base_path": str(m.path.parent.parent)}} for m in models
        ]
    }
    (out_dir / "config.json").write_text(json.dumps(config))
    results: dict[str, Any] = {
        "machine": {"cores": os.cpu_count(), "loadavg_start": os.getloadavg()},
        "models": {},
    }
    gw = start_gateway(["--config_path", str(out_dir / "config.json")], out_dir / "gateway.log", timeout=300)
    try:
        for model in models:
            entry: dict[str, Any] = {"benchmark_app": {}, "gateway": []}
            results["models"][model.name] = entry
            # Back to back on the same machine state: the ceiling first, then the gateway.
            for hint in ("throughput", "latency"):
                entry["benchmark_app"][hint] = benchmark_app(model, hint, args.benchmark_seconds)
                print(f"{model.name} benchmark_app {hint}: {entry['benchmark_app'][hint]}", flush=True)
            entry["benchmark_app"]["throughput_static_shape"] = benchmark_app(
                model, "throughput", args.benchmark_seconds, static=True
            )
            ceiling = entry["benchmark_app"]["throughput"]["fps"]
            ceiling_cpu = entry["benchmark_app"]["throughput"]["cpu_us_per_image"]
            for protocol in ("grpc", "http"):
                for concurrency in (int(c) for c in args.concurrency.split(",")):
                    runs = [
                        gateway_run(gw, model, protocol, concurrency, args.window_ms, out_dir / "raw")
                        for _ in range(args.repetitions)
                    ]
                    row: dict[str, Any] = {
                        "protocol": protocol,
                        "concurrency": concurrency,
                        "runs": runs,
                        **{
                            f"median_{k}": median_of(runs, k)
                            for k in (
                                "throughput",
                                "p50_us",
                                "p99_us",
                                "server_cpu_us_per_request",
                                "loader_cpu_pct",
                            )
                        },  # fmt: skip
                        "loadavg": os.getloadavg()[0],
                    }
                    row["ratio_to_benchmark_app"] = row["median_throughput"] / ceiling
                    # Below 1 by the CPU the gateway adds per inference, whatever the loader takes.
                    row["cpu_ratio_to_benchmark_app"] = ceiling_cpu / row["median_server_cpu_us_per_request"]
                    entry["gateway"].append(row)
                    print(
                        f"{model.name} {protocol} c={concurrency}: {row['median_throughput']:.1f}/s "
                        f"({row['ratio_to_benchmark_app']:.2f} x benchmark_app, "
                        f"CPU/inference {row['cpu_ratio_to_benchmark_app']:.2f} x), "
                        f"p99 {row['median_p99_us']:.0f} us, "
                        f"server {row['median_server_cpu_us_per_request']:.0f} us CPU/req",
                        flush=True,
                    )
    finally:
        gw.stop()
    if args.peer == "kserve":
        for model in models:
            peer_benchmark(model, results["models"][model.name], args, out_dir)
    for model in models:
        floor_benchmark(model, results["models"][model.name], args, out_dir)
        floor_benchmark(model, results["models"][model.name], args, out_dir, infer=True)
    for model in models:
        if model.name != "simple":  # a tiny model says nothing about compile time
            cache = results["models"][model.name]["cache"] = cache_benchmark(model, out_dir, args.repetitions)
            print(
                f"{model.name} time to ready: cold {cache['cold_s']:.2f} s, warm {cache['warm_s']:.2f} s; "
                f"model load: cold {cache['cold_load_s']:.3f} s, warm {cache['warm_load_s']:.3f} s",
                flush=True,
            )
    results["machine"]["loadavg_end"] = os.getloadavg()
    table = markdown(results, args.repetitions)
    write_results(out_dir, results, table, bench="throughput", args=args)
    print(table)
    print(f"written to {out_dir}")
    return 0


def _medians(runs: list[dict]) -> dict:
    keys = ("throughput", "p50_us", "p99_us", "server_cpu_us_per_request", "loader_cpu_pct")
    return {f"median_{k}": median_of(runs, k) for k in keys}


def peer_benchmark(model: BenchModel, entry: dict, args, out_dir: Path) -> None:
    """The same runs against KServe's ModelServer with a minimal OpenVINO model class; each gateway row gets
    gateway / KServe ratios of throughput and of server CPU per request."""
    peer = start_kserve_peer(model.name, model.path, out_dir / f"kserve-{model.name}.log")
    entry["kserve"] = []
    try:
        for row in entry["gateway"]:
            try:
                runs = [
                    gateway_run(
                        peer, model, row["protocol"], row["concurrency"], args.window_ms, out_dir / "raw"
                    )
                    for _ in range(args.repetitions)
                ]
            except RuntimeError as e:  # e.g. no answer at all inside a window: the peer is too slow for it
                entry["kserve"].append(
                    {"protocol": row["protocol"], "concurrency": row["concurrency"], "error": str(e)[-300:]}
                )
                print(f"{model.name} kserve {row['protocol']} c={row['concurrency']}: failed", flush=True)
                continue
            peer_row = {"protocol": row["protocol"], "concurrency": row["concurrency"], "runs": runs,
                        **_medians(runs)}  # fmt: skip
            entry["kserve"].append(peer_row)
            row["throughput_vs_kserve"] = row["median_throughput"] / peer_row["median_throughput"]
            row["cpu_vs_kserve"] = (
                row["median_server_cpu_us_per_request"] / peer_row["median_server_cpu_us_per_request"]
            )
            print(
                f"{model.name} kserve {row['protocol']} c={row['concurrency']}: "
                f"{peer_row['median_throughput']:.1f}/s, p50 {peer_row['median_p50_us']:.0f} us, "
                f"server {peer_row['median_server_cpu_us_per_request']:.0f} us CPU/req; gateway / KServe: "
                f"throughput {row['throughput_vs_kserve']:.2f} x, CPU/req {row['cpu_vs_kserve']:.2f} x",
                flush=True,
            )
    finally:
        peer.stop()


def floor_benchmark(model: BenchModel, entry: dict, args, out_dir: Path, infer: bool = False) -> None:
    """The model's gRPC rows against grpc.aio's own floor (loadgen/bench/grpc_floor.py: canned answers of the
    model's shapes, nothing else): the most any Python gRPC server could do with these bytes on this
    machine. Each gateway gRPC row gets its server CPU per request above the floor's and its throughput
    as a fraction of the floor's. With `infer`, the floor also runs the model (grpc_floor's --infer): the
    most any Python gRPC server could do serving this model here, set beside benchmark_app too."""
    key = "grpc_floor_infer" if infer else "grpc_floor"
    what = "grpc floor with inference" if infer else "grpc floor"
    floor = start_grpc_floor(
        out_dir / f"{key.replace('_', '-')}-{model.name}.log",
        timeout=300,
        model=(model.name, model.path, model.benchmark_shape),
        infer=infer,
    )
    entry[key] = []
    ceiling = entry["benchmark_app"]["throughput"]
    try:
        for row in entry["gateway"]:
            if row["protocol"] != "grpc":
                continue
            runs = [
                gateway_run(floor, model, "grpc", row["concurrency"], args.window_ms, out_dir / "raw")
                for _ in range(args.repetitions)
            ]
            floor_row = {"concurrency": row["concurrency"], "runs": runs, **_medians(runs)}
            floor_row["ratio_to_benchmark_app"] = floor_row["median_throughput"] / ceiling["fps"]
            floor_row["cpu_ratio_to_benchmark_app"] = (
                ceiling["cpu_us_per_image"] / floor_row["median_server_cpu_us_per_request"]
            )
            entry[key].append(floor_row)
            above = row["median_server_cpu_us_per_request"] - floor_row["median_server_cpu_us_per_request"]
            fraction = row["median_throughput"] / floor_row["median_throughput"]
            suffix = "_infer" if infer else ""
            row[f"cpu_above_floor{suffix}_us"], row[f"throughput_vs_floor{suffix}"] = above, fraction
            print(
                f"{model.name} {what} c={row['concurrency']}: {floor_row['median_throughput']:.1f}/s "
                f"({floor_row['ratio_to_benchmark_app']:.2f} x benchmark_app, CPU/inference "
                f"{floor_row['cpu_ratio_to_benchmark_app']:.2f} x), "
                f"server {floor_row['median_server_cpu_us_per_request']:.0f} us CPU/req; gateway above it "
                f"{above:.0f} us, {fraction:.2f} x its throughput",
                flush=True,
            )
    finally:
        floor.stop()


def _beside_gateway_grpc_rows(results: dict, key: str, cells: Callable[[dict, dict], list[str]]) -> list[str]:
    """A Markdown row for each of the models' `key` rows (a floor's), its cells from that row and the
    gateway's gRPC row at the same concurrency, after the model's name and the concurrency."""
    lines = []
    for name, entry in results["models"].items():
        gateway_rows = {r["concurrency"]: r for r in entry.get("gateway", []) if r["protocol"] == "grpc"}
        for row in entry.get(key, []):
            beside = cells(row, gateway_rows[row["concurrency"]])
            lines.append("| " + " | ".join([name, str(row["concurrency"]), *beside]) + " |")
    return lines


def markdown(results: dict, repetitions: int) -> str:
    lines = [
        f"# Gateway vs benchmark_app ({results['machine']['cores']} cores; medians of {repetitions} runs)",
        "",
        f"Load average at start {results['machine']['loadavg_start'][0]:.2f}, at end "
        f"{results['machine'].get('loadavg_end', (0,))[0]:.2f}.",
        "",
        "benchmark_app runs the same model as the gateway, dynamic dimensions included (`-data_shape`); the "
        "static-shape column reshapes the model first (`-shape`), for reference. "
        "ratio = gateway / benchmark_app throughput hint. CPU ratio = benchmark_app's CPU per image "
        "(throughput hint) / the gateway process's CPU per request: 1 when serving adds no CPU, whatever "
        "the loader, which shares the machine, takes (loader CPU, % of one core).",
        "",
        "| model | benchmark_app tput FPS | static-shape FPS | benchmark_app latency p50 us "
        "| benchmark_app CPU us/img | protocol | concurrency | gateway infer/s | ratio | p50 us | p99 us "
        "| server CPU us/req | CPU ratio | loader CPU % | load avg |",
        "|" + " --- |" * 15,
    ]
    for name, entry in results["models"].items():
        tput = entry["benchmark_app"]["throughput"]["fps"]
        static = entry["benchmark_app"]["throughput_static_shape"]["fps"]
        lat = entry["benchmark_app"]["latency"]["median_us"]
        cpu = entry["benchmark_app"]["throughput"]["cpu_us_per_image"]
        for row in entry["gateway"]:
            cells = [
                name, f"{tput:.1f}", f"{static:.1f}", f"{lat:.0f}", f"{cpu:.0f}", row["protocol"],
                str(row["concurrency"]), f"{row['median_throughput']:.1f}",
                f"{row['ratio_to_benchmark_app']:.2f}",
                f"{row['median_p50_us']:.0f}", f"{row['median_p99_us']:.0f}",
                f"{row['median_server_cpu_us_per_request']:.0f}", f"{row['cpu_ratio_to_benchmark_app']:.2f}",
                f"{row['median_loader_cpu_pct']:.0f}", f"{row['loadavg']:.2f}",
            ]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
    if any("kserve" in entry for entry in results["models"].values()):
        lines += [
            "",
            "The peer: KServe's ModelServer (the kserve package) with a minimal OpenVINO model class "
            "(`bench/kserve_peer.py`: THROUGHPUT hint, a pool of infer requests), same models and loader. "
            "CPU gateway / KServe below 1 means the gateway spends less server CPU per request.",
            "",
            "| model | protocol | concurrency | KServe infer/s | p50 us | server CPU us/req "
            "| gateway / KServe throughput | gateway / KServe CPU per request |",
            "|" + " --- |" * 8,
        ]
        for name, entry in results["models"].items():
            for row, peer in zip(entry["gateway"], entry.get("kserve", []), strict=False):
                if "error" in peer:
                    cells = [
                        name,
                        row["protocol"],
                        str(row["concurrency"]),
                        "no answer in a window",
                        "",
                        "",
                        "",
                        "",
                    ]
                    lines.append("| " + " | ".join(cells) + " |")
                    continue
                cells = [
                    name, row["protocol"], str(row["concurrency"]), f"{peer['median_throughput']:.1f}",
                    f"{peer['median_p50_us']:.0f}", f"{peer['median_server_cpu_us_per_request']:.0f}",
                    f"{row['throughput_vs_kserve']:.2f}", f"{row['cpu_vs_kserve']:.2f}",
                ]  # fmt: skip
                lines.append("| " + " | ".join(cells) + " |")
    floor_lines = _beside_gateway_grpc_rows(
        results,
        "grpc_floor",
        lambda f, g: [
            f"{f['median_throughput']:.1f}",
            f"{f['median_server_cpu_us_per_request']:.0f}",
            f"{g['median_throughput']:.1f}",
            f"{g['throughput_vs_floor']:.2f}",
            f"{g['median_server_cpu_us_per_request']:.0f}",
            f"{g['cpu_above_floor_us']:.0f}",
        ],
    )
    if floor_lines:
        lines += [
            "",
            "grpc.aio's own floor (`bench/grpc_floor.py`: canned answers of each model's shapes, no work), "
            "same loader and rows, against the gateway over gRPC: the most a Python gRPC server could answer "
            "with these bytes here.",
            "",
            "| model | concurrency | floor infer/s | floor server CPU us/req | gateway infer/s "
            "| gateway / floor | gateway server CPU us/req | gateway above the floor us/req |",
            "|" + " --- |" * 8,
            *floor_lines,
        ]
    infer_lines = _beside_gateway_grpc_rows(
        results,
        "grpc_floor_infer",
        lambda f, g: [
            f"{f['median_throughput']:.1f}",
            f"{f['ratio_to_benchmark_app']:.2f}",
            f"{f['median_server_cpu_us_per_request']:.0f}",
            f"{f['cpu_ratio_to_benchmark_app']:.2f}",
            f"{f['median_loader_cpu_pct']:.0f}",
            f"{g['ratio_to_benchmark_app']:.2f}",
            f"{g['cpu_ratio_to_benchmark_app']:.2f}",
            f"{g['throughput_vs_floor_infer']:.2f}",
            f"{g['cpu_above_floor_infer_us']:.0f}",
        ],
    )
    if infer_lines:
        lines += [
            "",
            "The floor with inference (`bench/grpc_floor.py --infer`: bytes in, OpenVINO's start_async on "
            "the THROUGHPUT-hint model, bytes out; nothing else), same loader and rows: the most any Python "
            "gRPC server could do serving each model here, beside benchmark_app and the gateway over gRPC.",
            "",
            "| model | concurrency | floor+infer infer/s | ratio | server CPU us/req | CPU ratio "
            "| loader CPU % | gateway ratio | gateway CPU ratio | gateway / floor+infer "
            "| gateway above it us/req |",
            "|" + " --- |" * 11,
            *infer_lines,
        ]
    lines += [
        "",
        "| model | process to ready, cold cache (s) | warm (s) | model load, cold (s) | warm (s) "
        "| load warm / cold |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, entry in results["models"].items():
        if "cache" in entry:
            c = entry["cache"]
            cells = [name, f"{c['cold_s']:.2f}", f"{c['warm_s']:.2f}", f"{c['cold_load_s']:.3f}",
                     f"{c['warm_load_s']:.3f}", f"{c['warm_load_s'] / c['cold_load_s']:.2f}"]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
