"""Where the gateway's CPU goes, per request: by thread, and inside the event loop by what it was doing.

For each model and protocol: a gateway on loopback, loadgen at one concurrency, and over the window
1. every thread's CPU time from /proc/<pid>/task/*/stat, grouped (the event loop; OpenVINO's stream
   threads; grpc core's threads; Python worker threads), per answered request;
2. py-spy (--native) sampling the process in a second window (it slows the process it samples, so
   only its proportions are used); the event loop's busy samples are sorted by the deepest
   gateway module on their stack (the transport handler, decoding/encoding, validation, scheduling, the
   hand-over to OpenVINO, accounting; no gateway frame: grpc / aiohttp / uvloop themselves), and its
   CPU time is shared out in those proportions.
Beside them, benchmark_app's CPU per image (THROUGHPUT hint) on the same model: what inference alone
costs. docs/performance.md's table "Where the CPU goes" comes from this.

    python -m loadgen.bench.cpu_split [--models resnet50,segmentation,simple] [--protocols grpc,http]
        [--concurrency 4] [--window-ms 8000] [--benchmark-seconds 8]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from gateway.testing import GatewayProcess, start_gateway
from loadgen.bench.runs import write_results
from loadgen.bench.throughput import (
    CLOCK_TICKS,
    ROOT,
    BenchModel,
    benchmark_app,
    prepare_models,
    success_count,
)

# The deepest gateway module on a stack says what the event loop was doing (first match wins).
ACTIVITIES = [
    (
        "decode / encode tensors",
        ("codecs/tensor.py", "grpc/wire.py", "rest/body.py", "core/jsondoc.py", "codecs/images.py"),
    ),
    ("validation", ("serving/model_version.py",)),
    ("scheduling", ("scheduling/scheduler.py", "scheduling/adaptive.py")),
    ("hand-over to OpenVINO", ("runtime/executor.py",)),
    (
        "accounting (statistics, metrics)",
        ("dataplane/gateway.py", "observability/statistics.py", "observability/metrics.py"),
    ),
    ("transport handler (ours)", ("grpc/server.py", "rest/server.py", "rest/protocol.py")),
]
TRANSPORT = "transport (grpc / aiohttp / uvloop, syscalls)"
IDLE_LEAVES = (
    "epoll_wait",
    "epoll_pwait",
    "poll (",
    "select (",
    "pthread_cond_wait",
    "pthread_cond_timedwait",
)


def thread_ticks(pid: int) -> dict[int, tuple[str, int]]:
    """tid -> (comm, user + system ticks)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            comm = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended
            continue
        out[int(task.name)] = (comm, int(fields[11]) + int(fields[12]))
    return out


def python_threads(pid: int, py_spy: str) -> dict[int, str]:
    """tid -> Python thread name, from `py-spy dump`."""
    text = subprocess.run([py_spy, "dump", "-p", str(pid)], capture_output=True, text=True, timeout=60).stdout
    names = {}
    for line in text.splitlines():
        if line.startswith("Thread ") and '"' in line:
            tid = line.split()[1]
            if tid.isdigit():
                names[int(tid)] = line.split('"')[1]
    return names


def thread_group(tid: int, pid: int, comm: str, python_names: dict[int, str]) -> str:
    if tid == pid:
        return "event loop (main thread)"
    if comm.startswith(("event_engine", "grpc_global")) or python_names.get(tid, "").endswith(
        "(_poll_wrapper)"
    ):
        return "grpc core threads"
    if tid in python_names or comm.startswith("libuv"):
        return "Python / libuv worker threads"
    return "OpenVINO stream threads"


def loop_activities(raw: Path, main_tid: int) -> Counter[str]:
    """Busy samples of the main thread by activity, from py-spy's raw (collapsed) output."""
    counts: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        if not frames or f"({main_tid})" not in frames[0] or frames[-1].startswith(IDLE_LEAVES):
            continue
        activity = TRANSPORT
        for frame in reversed(frames):
            if "gateway/" not in frame:
                continue
            activity = next((a for a, files in ACTIVITIES if any(f in frame for f in files)), TRANSPORT)
            break
        counts[activity] += int(n)
    return counts


def measure(
    gw: GatewayProcess,
    model: BenchModel,
    protocol: str,
    concurrency: int,
    window_ms: int,
    out: Path,
    py_spy: str,
) -> dict:
    url = gw.grpc_url if protocol == "grpc" else gw.http_url
    shapes = [a for s in model.loadgen_shape for a in ("--shape", s)]
    loader = [sys.executable, "-m", "loadgen", "-m", model.name, "-u", url, "-i", protocol,
              "--concurrency-range", str(concurrency), *shapes]  # fmt: skip
    subprocess.run([*loader, "-p", "1500"], capture_output=True, timeout=120, check=True)  # warm-up
    pid = gw.process.pid
    names = python_threads(pid, py_spy)
    seconds = max(1, window_ms // 1000)
    # Thread times from a window without the profiler (py-spy --native stops the threads to unwind them,
    # which slows the gateway down); the event loop's activities from a second window, as proportions only.
    load = subprocess.Popen([*loader, "-p", str(window_ms + 2000)], stdout=subprocess.DEVNULL)
    time.sleep(1.0)
    before, count0 = thread_ticks(pid), success_count(gw.http_url, model.name)
    time.sleep(seconds)
    after, count1 = thread_ticks(pid), success_count(gw.http_url, model.name)
    load.wait(timeout=window_ms / 1000 + 120)
    raw = out / f"{model.name}-{protocol}-pyspy.txt"
    load = subprocess.Popen([*loader, "-p", str(window_ms + 2000)], stdout=subprocess.DEVNULL)
    time.sleep(1.0)
    spy = [py_spy, "record", "--native", "--threads", "-r", "50", "-d", str(seconds),
           "-f", "raw", "-o", str(raw), "-p", str(pid)]  # fmt: skip
    subprocess.run(spy, capture_output=True, timeout=seconds + 60)
    load.wait(timeout=window_ms / 1000 + 120)
    requests = max(1, count1 - count0)
    groups: Counter[str] = Counter()
    for tid, (comm, ticks) in after.items():
        spent = ticks - before.get(tid, (comm, 0))[1]
        groups[thread_group(tid, pid, comm, names)] += spent
    per_request = {g: t / CLOCK_TICKS / requests * 1e6 for g, t in groups.items()}
    activities = loop_activities(raw, pid) if raw.exists() else Counter()
    busy = sum(activities.values()) or 1
    loop_us = per_request.get("event loop (main thread)", 0.0)
    return {
        "requests_per_s": requests / seconds,
        "threads_us": per_request,
        "total_us": sum(per_request.values()),
        "loop_us": {a: loop_us * n / busy for a, n in activities.most_common()},
    }


def _table_row(row: dict) -> str:
    threads = "; ".join(f"{g} {us:,.0f}" for g, us in sorted(row["threads_us"].items(), key=lambda x: -x[1]))
    loop = "; ".join(f"{a} {us:,.0f}" for a, us in row["loop_us"].items() if us >= 1)
    return (
        f"| {row['model']} | {row['protocol']} | {row['requests_per_s']:.1f} | "
        f"{row['benchmark_app_cpu_us_per_image']:,.0f} | {row['total_us']:,.0f} | {threads} | {loop} |"
    )


def markdown(results: dict, concurrency: int) -> str:
    lines = [
        f"# Where the CPU goes (gateway, concurrency {concurrency}, us of CPU per request)",
        "",
        "| model | protocol | req/s | benchmark_app CPU/img | gateway total | by thread "
        "| event loop by activity |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines += [_table_row(row) for key, row in results.items() if key != "run"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadgen.bench.cpu_split")
    p.add_argument("--models", default="resnet50,segmentation,simple")
    p.add_argument("--protocols", default="grpc,http")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--window-ms", type=int, default=8000)
    p.add_argument("--benchmark-seconds", type=int, default=8)
    p.add_argument("--output", default=str(ROOT / "bench-results"))
    args = p.parse_args(argv)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not os.path.exists(py_spy):
        print("py-spy is not installed (make install-test installs it)", file=sys.stderr)
        return 2
    out = Path(args.output) / (time.strftime("%Y%m%d-%H%M%S") + "-cpu-split")
    out.mkdir(parents=True)
    results: dict[str, dict] = {}
    for model in prepare_models(args.models.split(",")):
        reference = benchmark_app(model, "throughput", args.benchmark_seconds)["cpu_us_per_image"]
        gw = start_gateway(
            ["--model_name", model.name, "--model_path", str(model.path.parent.parent)],
            out / f"{model.name}.log",
            timeout=300,
        )
        try:
            for protocol in args.protocols.split(","):
                row = measure(gw, model, protocol, args.concurrency, args.window_ms, out, py_spy)
                row["benchmark_app_cpu_us_per_image"] = reference
                row["model"], row["protocol"] = model.name, protocol
                results[f"{model.name}-{protocol}"] = row
                print(_table_row(row), flush=True)
        finally:
            gw.stop()
    write_results(out, results, markdown(results, args.concurrency), bench="cpu_split", args=args)
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
