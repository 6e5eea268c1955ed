"""make bench, worker processes: one gateway process against the same gateway with worker processes, taking
turns under perf_analyzer.

Per round, for each protocol and concurrency, perf_analyzer measures the single process and then the
gateway with `--grpc_workers N --rest_workers N`: N processes serving, the owner and N - 1 workers (the order
alternating between rounds). On `simple` a third contender takes its turn: N whole gateways sharing the
ports (loadgen/bench/gateway_copy.py), between which nothing crosses: what spreading the load over N
processes costs on this machine without any crossing. Server CPU is every process's together, from
/proc, over the requests answered (the statistics', or the copies' metrics summed). Reported, as medians
of per-round ratios:

- `simple` (protocol work dominates): workers / single throughput and server CPU per request, at c = 16
  and 64 (targets: >= 1.2 x throughput, <= 1.15 x CPU); and, for each contender, c = 64's throughput over the
  best concurrency's (target >= 0.95: throughput does not fall past saturation);
- `simple`, the copies: copies / single throughput and CPU per request at the same points;
- `simple`, the share: right after the single process's run at a target point, the same process at the
  fixed rate each of N processes would carry at the target throughput (open loop, TARGET_THROUGHPUT x its
  rate / N), its CPU per request over its own at saturation: what an even split costs each process before
  anything crosses, a ceiling for the CPU target;
- the ResNet-50-shaped model (compute dominates): workers / single throughput at c = 4 and p50 at c = 1
  (target 0.98-1.02).

    python -m loadgen.bench.workers [--workers 2] [--rounds 3] [--window-ms 3000]
        [--concurrency 2,4,16,64] [--protocols grpc,http] [--models simple,resnet50]
        [--share-concurrency 16,64]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from gateway.testing import GatewayProcess, free_ports, start_gateway
from loadgen.bench.runs import write_results
from loadgen.bench.throughput import (
    CLOCK_TICKS,
    ROOT,
    BenchModel,
    prepare_models,
    process_cpu_s,
    success_count,
)

CACHE = ROOT / ".cache"
PERF_ANALYZER = Path(os.environ.get("PERF_ANALYZER", CACHE / "perf_analyzer" / "perf_analyzer"))
CONTENDERS = ("single", "workers", "copies")
# where the protocol work dominates: the copies and the share run there; ResNet would compile N times for
# nothing
PROTOCOL_BOUND_MODELS = ("simple",)
TARGET_THROUGHPUT = 1.2
TARGET_CPU = 1.15
TARGET_SATURATION = 0.95
COMPUTE_BOUND = (0.98, 1.02)


def tree(pid: int) -> list[int]:
    """A process and its children (the owner and its workers)."""
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        pids += [int(child) for child in (task / "children").read_text().split()]
    return pids


def tree_cpu_s(pid: int) -> float:
    total = 0.0
    for member in tree(pid):
        try:
            total += process_cpu_s(member)
        except (FileNotFoundError, ProcessLookupError):
            pass  # a worker that just exited
    return total


def tree_switches(pid: int) -> int:
    """Context switches of every thread of the process tree so far: each is a thread that slept and woke."""
    total = 0
    for member in tree(pid):
        for task in Path(f"/proc/{member}/task").glob("*"):
            try:
                status = (task / "status").read_text()
            except (FileNotFoundError, ProcessLookupError):
                continue
            total += sum(int(line.split()[1]) for line in status.splitlines() if "ctxt_switches" in line)
    return total


async def _channel_round_trips(size: int, count: int) -> float:
    """CPU seconds per round trip of an inference of `size` bytes through a Channel, both ends in this
    process and loop: what the channel itself costs, without a second process to wake."""
    import numpy as np

    from gateway.core.records import InferInput, InferOutput, InferRequest, InferResponse
    from gateway.workers.channel import Channel
    from gateway.workers.wire import pack_request, pack_response, unpack_request, unpack_response

    class Owner:
        async def infer(self, packed: tuple) -> tuple:
            request = unpack_request(packed)
            out = InferOutput("y", "FP32", (1, 4), np.zeros((1, 4), np.float32))
            return pack_response(InferResponse(request.model_name, "1", [out]))

    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    _, owner = await loop.create_unix_connection(
        lambda: Channel(handler=Owner(), exposed=("infer",), on_lost=lambda e: None, peer="worker"), sock=a
    )
    _, worker = await loop.create_unix_connection(
        lambda: Channel(handler=None, exposed=(), on_lost=lambda e: None, peer="owner"), sock=b
    )
    x = np.ones((1, size // 4), np.float32)
    request = InferRequest("m", [InferInput("x", "FP32", x.shape, x)])
    for _ in range(20):
        unpack_response(await worker.call("infer", pack_request(request)))
    started = time.process_time()
    for _ in range(count):
        unpack_response(await worker.call("infer", pack_request(request)))
    spent = time.process_time() - started
    worker.close()
    owner.close()
    return spent / count


def channel_costs() -> dict[str, float]:
    import uvloop  # the gateway's loop: the standard one reads a large frame in many more pieces

    from gateway.malloc_tuning import tune_malloc

    tune_malloc()  # as the gateway's processes do

    return {
        f"channel_round_trip_us_{size}B": uvloop.run(_channel_round_trips(size, 500)) * 1e6
        for size in (128, 602112)  # simple's two inputs; the ResNet-50-shaped image
    }


def machine_idle_s() -> tuple[float, float]:
    """(idle, all) CPU seconds of the machine so far, from /proc/stat's first line."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (fields[3] + fields[4]) / CLOCK_TICKS, sum(fields) / CLOCK_TICKS


def _samples(metrics_port: int, family: str, timeout: float = 10) -> list:
    """One gateway process's samples of `family`, from its own /metrics (its statistics are its own), read
    with Prometheus' own parser."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=timeout) as r:
        families = text_string_to_metric_families(r.read().decode())
    return [sample for f in families if f.name == family for sample in f.samples]


def infer_successes(metrics_port: int, model: str) -> int:
    """The inferences one gateway process answered."""
    return int(
        sum(
            s.value
            for s in _samples(metrics_port, "ovms_requests_success")
            if s.labels.get("name") == model and s.labels.get("method") == "ModelInfer"
        )
    )


@dataclass
class Contender:
    """What perf_analyzer drives: one gateway (the owner and its workers), or whole gateways sharing the
    ports, each with a metrics port of its own to count its answers."""

    processes: list[GatewayProcess]
    metrics_ports: tuple[int, ...] = ()

    @property
    def main(self) -> GatewayProcess:
        return self.processes[0]

    def cpu_s(self) -> float:
        return sum(tree_cpu_s(gw.process.pid) for gw in self.processes)

    def switches(self) -> int:
        return sum(tree_switches(gw.process.pid) for gw in self.processes)

    def answered(self, model: str) -> int:
        if not self.metrics_ports:
            return success_count(self.main.http_url, model)
        return sum(infer_successes(port, model) for port in self.metrics_ports)

    def stop(self) -> None:
        for gw in self.processes:
            gw.stop()


def perf_analyzer_run(
    served: Contender,
    model: BenchModel,
    protocol: str,
    concurrency: int,
    window_ms: int,
    out: Path,
    rate: float | None = None,
) -> dict:
    """A closed loop at `concurrency`, or, given a `rate`, requests sent at that fixed rate (open loop)."""
    report = out / f"{model.name}-{protocol}-{concurrency}-{time.time_ns()}.csv"
    gw = served.main
    url = gw.grpc_url if protocol == "grpc" else gw.http_url
    load = ["--concurrency-range", str(concurrency)]
    if rate is not None:  # threads enough to keep the schedule at a few thousand requests a second
        load = ["--request-rate-range", f"{rate:.0f}", "--max-threads", "8"]
    # The version named: perf_analyzer otherwise picks it from the statistics it reads before and after,
    # and fails to when two copies, each counting its own, answered those two reads.
    cmd = [str(PERF_ANALYZER), "-m", model.name, "-x", model.path.parent.name, "-u", url, "-i", protocol,
           *load, "--measurement-interval", str(window_ms), "-s", "100", "-r", "6",
           "-f", str(report)]  # fmt: skip
    owner0 = process_cpu_s(gw.process.pid)
    cpu0, count0 = served.cpu_s(), served.answered(model.name)
    idle0, all0 = machine_idle_s()
    switches0 = served.switches()
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=window_ms / 1000 * 10 + 120)
    switches1 = served.switches()
    idle1, all1 = machine_idle_s()
    cpu1, count1 = served.cpu_s(), served.answered(model.name)
    owner1 = process_cpu_s(gw.process.pid)
    if result.returncode != 0:
        raise RuntimeError(f"perf_analyzer failed: {(result.stdout + result.stderr)[-2000:]}")
    row = next(csv.DictReader(report.open()))
    return {
        "throughput": float(row["Inferences/Second"]),
        "p50_us": float(row["p50 latency"]),
        "server_cpu_us": (cpu1 - cpu0) / max(1, count1 - count0) * 1e6,
        "switches_per_request": (switches1 - switches0) / max(1, count1 - count0),
        # the process that runs the models (all of it, for the single process): what caps the rate of a
        # small model however many workers there are
        "owner_cpu_us": (owner1 - owner0) / max(1, count1 - count0) * 1e6,
        # the machine's idle share over the run (perf_analyzer's start and stabilisation included)
        "idle": (idle1 - idle0) / max(1e-9, all1 - all0),
    }


def start(model: BenchModel, workers: int, log: Path) -> Contender:
    flags = ["--grpc_workers", str(workers), "--rest_workers", str(workers)] if workers > 1 else []
    return Contender(
        [
            start_gateway(
                ["--model_name", model.name, "--model_path", str(model.path.parent.parent), *flags],
                log,
                timeout=600,
            )
        ]
    )


def start_copies(model: BenchModel, copies: int, out: Path) -> Contender:
    """`copies` whole gateways on the same two ports, each ready (its model loaded) before this returns:
    a probe of the shared port would reach whichever copy the kernel picked."""
    grpc_port, rest_port, *metrics_ports = free_ports(2 + copies)
    processes = [
        start_gateway(
            [
                "--model_name",
                model.name,
                "--model_path",
                str(model.path.parent.parent),
                "--metrics_port",
                str(metrics_port),
            ],
            out / f"{model.name}-copy{i}.log",
            wait_ready=False,
            ports=(grpc_port, rest_port),
            module="loadgen.bench.gateway_copy",
        )  # fmt: skip
        for i, metrics_port in enumerate(metrics_ports)
    ]
    served = Contender(processes, tuple(metrics_ports))
    deadline = time.monotonic() + 600
    for gw, port in zip(processes, metrics_ports, strict=True):
        while not _model_loaded(port, model.name):
            if gw.process.poll() is not None or time.monotonic() > deadline:
                served.stop()
                raise RuntimeError(f"a copy of the gateway did not load {model.name}:\n{gw.log()}")
            time.sleep(0.2)
    return served


def _model_loaded(metrics_port: int, model: str) -> bool:
    try:
        streams = _samples(metrics_port, "ovms_streams", timeout=2)
    except OSError:
        return False  # not listening yet
    return any(s.value > 0 for s in streams if s.labels.get("name") == model)


def measure_model(
    model: BenchModel, points: list[tuple[str, int]], args: argparse.Namespace, out: Path
) -> dict:
    servers = {
        "single": start(model, 1, out / f"{model.name}-single.log"),
        "workers": start(model, args.workers, out / f"{model.name}-workers.log"),
    }
    if model.name in PROTOCOL_BOUND_MODELS:
        servers["copies"] = start_copies(model, args.workers, out)
    contenders = tuple(c for c in CONTENDERS if c in servers)
    rounds: list[dict] = []
    try:
        for rep in range(args.rounds):
            order = contenders if rep % 2 == 0 else contenders[::-1]
            row: dict = {}
            for protocol, concurrency in points:
                for contender in order:
                    key = f"{contender}-{protocol}-c{concurrency}"
                    run = partial(
                        perf_analyzer_run,
                        servers[contender],
                        model,
                        protocol,
                        concurrency,
                        args.window_ms,
                        out,
                    )
                    row[key] = _run_once_more_on_failure(f"{model.name} {key}", rep, run)
                    if contender == "single" and share_at(model, concurrency, args):
                        # the load each of N processes carries at the target, on this process, open loop
                        rate = row[key]["throughput"] * TARGET_THROUGHPUT / args.workers
                        share = f"share-{protocol}-c{concurrency}"
                        row[share] = _run_once_more_on_failure(
                            f"{model.name} {share}", rep, partial(run, rate=rate)
                        )
            rounds.append(row)
    finally:
        for gw in servers.values():
            gw.stop()
    return {"rounds": rounds}


def share_at(model: BenchModel, concurrency: int, args: argparse.Namespace) -> bool:
    return model.name in PROTOCOL_BOUND_MODELS and concurrency in args.share_concurrency


def _run_once_more_on_failure(key: str, rep: int, run: Callable[[], dict]) -> dict:
    try:
        result = run()
    except RuntimeError as e:  # one failed run (an unstable window) does not end the bench
        print(f"round {rep} {key}: once more, after {e}", flush=True)
        result = run()
    print(f"round {rep} {key}: {result}", flush=True)
    return result


def summarize(model: str, rounds: list[dict], points: list[tuple[str, int]]) -> dict:
    def median(values) -> float:
        return statistics.median(list(values))

    summary: dict = {}
    for protocol, concurrency in points:
        point = f"{protocol}-c{concurrency}"
        summary[point] = {
            "single_throughput": median(r[f"single-{point}"]["throughput"] for r in rounds),
            "workers_throughput": median(r[f"workers-{point}"]["throughput"] for r in rounds),
            "single_cpu_us": median(r[f"single-{point}"]["server_cpu_us"] for r in rounds),
            "workers_cpu_us": median(r[f"workers-{point}"]["server_cpu_us"] for r in rounds),
            "throughput_ratio": median(
                r[f"workers-{point}"]["throughput"] / r[f"single-{point}"]["throughput"] for r in rounds
            ),
            "cpu_ratio": median(
                r[f"workers-{point}"]["server_cpu_us"] / r[f"single-{point}"]["server_cpu_us"] for r in rounds
            ),
            "p50_ratio": median(
                r[f"workers-{point}"]["p50_us"] / r[f"single-{point}"]["p50_us"] for r in rounds
            ),
            # The most any split of the same work could gain here: the cores the single process left idle,
            # at its CPU per request (the issue's own reckoning: 27 % idle, about 1.25 x).
            "single_idle": median(r[f"single-{point}"]["idle"] for r in rounds),
            "single_switches": median(r[f"single-{point}"].get("switches_per_request", 0) for r in rounds),
            "workers_switches": median(r[f"workers-{point}"].get("switches_per_request", 0) for r in rounds),
            "owner_cpu_us": median(r[f"workers-{point}"].get("owner_cpu_us", 0) for r in rounds),
            "ceiling": median(1 / (1 - r[f"single-{point}"]["idle"]) for r in rounds),
        }
        if f"copies-{point}" in rounds[0]:  # nothing crossing: what the split into processes costs alone

            def ratio(a: str, b: str, key: str, point: str = point) -> float:
                return median(r[f"{a}-{point}"][key] / r[f"{b}-{point}"][key] for r in rounds)

            summary[point] |= {
                "copies_throughput": median(r[f"copies-{point}"]["throughput"] for r in rounds),
                "copies_cpu_us": median(r[f"copies-{point}"]["server_cpu_us"] for r in rounds),
                "copies_idle": median(r[f"copies-{point}"]["idle"] for r in rounds),
                "copies_throughput_ratio": ratio("copies", "single", "throughput"),
                "copies_cpu_ratio": ratio("copies", "single", "server_cpu_us"),
                "workers_over_copies_throughput": ratio("workers", "copies", "throughput"),
                "workers_over_copies_cpu": ratio("workers", "copies", "server_cpu_us"),
            }
        if f"share-{point}" in rounds[0]:  # the single process at the load one of N carries at the target
            summary[point] |= {
                "share_rate": median(r[f"share-{point}"]["throughput"] for r in rounds),
                "share_cpu_us": median(r[f"share-{point}"]["server_cpu_us"] for r in rounds),
                "share_cpu_ratio": median(
                    r[f"share-{point}"]["server_cpu_us"] / r[f"single-{point}"]["server_cpu_us"]
                    for r in rounds
                ),
            }
    # Throughput past saturation: the highest concurrency's rate over the best one's, per round.
    for protocol in sorted({p for p, _ in points}):
        levels = sorted(c for p, c in points if p == protocol)
        if len(levels) < 2:
            continue
        for contender in (c for c in CONTENDERS if f"{c}-{protocol}-c{levels[-1]}" in rounds[0]):
            summary[f"{contender}-{protocol}-saturation"] = median(
                r[f"{contender}-{protocol}-c{levels[-1]}"]["throughput"]
                / max(r[f"{contender}-{protocol}-c{c}"]["throughput"] for c in levels)
                for r in rounds
            )
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window-ms", type=int, default=3000)
    parser.add_argument("--concurrency", default="2,4,16,64", help="for simple")
    parser.add_argument("--protocols", default="grpc,http")
    parser.add_argument("--models", default="simple,resnet50")
    parser.add_argument(
        "--share-concurrency",
        type=lambda levels: {int(c) for c in levels.split(",") if c},
        default="16,64",
        help="simple's concurrencies after whose single-process run the share is measured",
    )
    parser.add_argument("--output", default=str(ROOT / "bench-results"))
    args = parser.parse_args(argv)
    if not PERF_ANALYZER.exists():
        print(f"perf_analyzer is not at {PERF_ANALYZER}: run `make perf-analyzer`", file=sys.stderr)
        return 2
    out = Path(args.output) / (time.strftime("%Y%m%d-%H%M%S") + "-workers")
    out.mkdir(parents=True, exist_ok=True)
    protocols = args.protocols.split(",")
    results: dict = {
        "workers": args.workers,
        "cores": len(os.sched_getaffinity(0)),
        **channel_costs(),
        "models": {},
    }
    for model in prepare_models(args.models.split(",")):
        if model.name == "simple":
            points = [(p, int(c)) for p in protocols for c in args.concurrency.split(",")]
        else:  # compute-bound: the latency of a lone request, and throughput with a few in flight
            points = [(p, c) for p in protocols for c in (1, 4)]
        measured = measure_model(model, points, args, out)
        results["models"][model.name] = {
            **summarize(model.name, measured["rounds"], points),
            "rounds": measured["rounds"],
        }
    write_results(out, results, markdown(results), bench="workers", args=args)
    print((out / "results.md").read_text())
    return 0


def markdown(results: dict) -> str:
    n = results["workers"]
    lines = [
        f"# Worker processes: one process against {n} serving processes (the owner and {n - 1} worker"
        f"{'s' if n > 2 else ''}) on "
        f"{results['cores']} cores (perf_analyzer, medians of per-round ratios)",
        "",
        "| model | protocol | concurrency | single: infer/s, server CPU us | workers: infer/s, server CPU "
        "us | "
        f"throughput workers / single (target >= {TARGET_THROUGHPUT} on simple at c >= 16) | CPU per request "
        f"workers / single (target <= {TARGET_CPU}) | p50 workers / single | machine idle beside the single "
        "process | ceiling: 1 / (1 - idle) | context switches per request, single / workers | "
        "of the workers' CPU per request, the owner's us |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    saturation, copies, shares = [], [], []
    for name, m in results["models"].items():
        for point, v in m.items():
            if not isinstance(v, dict) or "throughput_ratio" not in v:
                if point.endswith("-saturation"):
                    saturation.append(f"| {name} | {point.removesuffix('-saturation')} | {v:.2f} |")
                continue
            protocol, concurrency = point.split("-c")
            lines.append(
                f"| {name} | {protocol} | {concurrency} | {v['single_throughput']:.0f}, "
                f"{v['single_cpu_us']:.0f} | "
                f"{v['workers_throughput']:.0f}, {v['workers_cpu_us']:.0f} | {v['throughput_ratio']:.2f} | "
                f"{v['cpu_ratio']:.2f} | {v['p50_ratio']:.2f} | {v['single_idle']:.0%} | "
                f"{v['ceiling']:.2f} | "
                f"{v.get('single_switches', 0):.1f} / {v.get('workers_switches', 0):.1f} | "
                f"{v.get('owner_cpu_us', 0):.0f} |"
            )
            if "share_cpu_ratio" in v:
                shares.append(
                    f"| {name} | {protocol} | {concurrency} | {v['share_rate']:.0f} | "
                    f"{v['share_cpu_us']:.0f} | {v['share_cpu_ratio']:.2f} |"
                )
            if "copies_throughput_ratio" in v:
                copies.append(
                    f"| {name} | {protocol} | {concurrency} | {v['copies_throughput']:.0f}, "
                    f"{v['copies_cpu_us']:.0f} | {v['copies_throughput_ratio']:.2f} | "
                    f"{v['copies_cpu_ratio']:.2f} | {v['copies_idle']:.0%} | "
                    f"{v['workers_over_copies_throughput']:.2f} | {v['workers_over_copies_cpu']:.2f} |"
                )
    if copies:
        lines += [
            "",
            f"The split alone: {n} whole gateways sharing the ports, nothing crossing between them: what "
            "spreading the load over processes costs on this machine without any crossing. Ratios are to the "
            "single process in the same round; the last two columns are the workers' over the copies' in the "
            "same round.",
            "",
            "| model | protocol | concurrency | copies: infer/s, server CPU us | throughput copies / single "
            "| CPU per request copies / single | machine idle beside the copies "
            "| throughput workers / copies | CPU workers / copies |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
            *copies,
        ]
    if shares:
        lines += [
            "",
            f"The share: right after its run at each point, the single process at the fixed rate each of {n} "
            f"processes would carry at {TARGET_THROUGHPUT} x its throughput (open loop). Its CPU per request "
            "there, over its own at the point, is what an even split costs each process before anything "
            f"crosses: above {TARGET_CPU}, an even split misses the CPU target even if crossing cost "
            "nothing.",
            "",
            "| model | protocol | concurrency | share: requests/s | share: server CPU us | CPU per request "
            "share / single |",
            "| --- | --- | --- | --- | --- | --- |",
            *shares,
        ]
    if saturation:
        lines += [
            "",
            f"Past saturation: the highest concurrency's throughput over the best concurrency's (target >= "
            f"{TARGET_SATURATION}).",
            "",
            "| model | contender-protocol | c=max / best |",
            "| --- | --- | --- |",
            *saturation,
        ]
    lines += [
        "",
        "The channel alone (both ends in one process, no second process to wake), CPU per round trip: "
        f"{results.get('channel_round_trip_us_128B', 0):.0f} us for simple's request, "
        f"{results.get('channel_round_trip_us_602112B', 0):.0f} us for a 602,112-byte image.",
        "",
        "The contenders run side by side and take turns, one perf_analyzer run each per point, the order "
        "alternating by round; each ratio is a round's, then the median. perf_analyzer shares the cores with "
        f"the server. On the ResNet-50-shaped model the target is {COMPUTE_BOUND[0]}-{COMPUTE_BOUND[1]} x.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
