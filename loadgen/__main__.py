"""python -m loadgen: a perf_analyzer-style load generator for KServe v2 servers.

Closed loop (--concurrency-range) or open loop (--request-rate-range, constant or
Poisson), over gRPC or HTTP with tritonclient's asyncio clients, spread over
several processes so that the loader is not the bottleneck; it reports its own
CPU use. The CSV has perf_analyzer's columns; the server columns come from the
statistics extension when the server has it.
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import os
import sys
import time

import numpy as np

from loadgen.inputs import build_inputs, parse_shapes
from loadgen.worker import WorkerJob, run_worker

CSV_COLUMNS = [
    "Inferences/Second", "Client Send", "Network+Server Send/Recv", "Server Queue", "Server Compute Input",
    "Server Compute Infer", "Server Compute Output", "Client Recv", "p50 latency", "p90 latency",
    "p95 latency", "p99 latency",
]  # fmt: skip


def parse_range(text: str, kind=int) -> list:
    parts = [kind(p) for p in text.split(":")]
    start, end, step = (parts + [parts[0], 1][len(parts) - 1 :])[:3] if len(parts) < 3 else parts
    if len(parts) == 1:
        return [start]
    values, v = [], start
    while v <= end + 1e-9:
        values.append(v)
        v += step
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadgen", description=__doc__.splitlines()[0])
    p.add_argument("-m", dest="model", required=True)
    p.add_argument("-x", dest="version", default="")
    p.add_argument("-u", dest="url", default=None, help="host:port (default localhost:8001 grpc / 8000 http)")
    p.add_argument("-i", dest="protocol", choices=["grpc", "http"], default="http")
    p.add_argument("-b", dest="batch", type=int, default=1)
    p.add_argument("--shape", action="append", default=[], help="NAME:d1,d2 (non-batch dims)")
    p.add_argument("--input-data", default="random", help="zero, random, or a perf_analyzer JSON file")
    p.add_argument("--concurrency-range", default=None, help="start:end:step")
    p.add_argument("--request-rate-range", default=None, help="start:end:step, requests per second")
    p.add_argument("--request-distribution", choices=["constant", "poisson"], default="constant")
    p.add_argument("--measurement-interval", "-p", type=int, default=5000, help="window in ms")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of load before each window")
    p.add_argument("--percentile", type=int, default=None, help="report this percentile as the latency")
    p.add_argument(
        "--processes", type=int, default=None, help="load processes (default: cores, at most the load)"
    )
    p.add_argument("-f", dest="csv", default=None, help="write a perf_analyzer-style CSV here")
    p.add_argument("--json", default=None, help="also write every row as JSON here (error latencies too)")
    return p


def _server_client(protocol: str, url: str):
    if protocol == "grpc":
        import tritonclient.grpc as module
    else:
        import tritonclient.http as module
    return module, module.InferenceServerClient(url)


def _model_shape(protocol: str, url: str, model: str, version: str):
    module, client = _server_client(protocol, url)
    try:
        if protocol == "grpc":
            meta = client.get_model_metadata(model, version, as_json=True)
            extensions = client.get_server_metadata(as_json=True).get("extensions", [])
            try:
                config = client.get_model_config(model, version, as_json=True)["config"]
            except Exception:
                config = {}
        else:
            meta = client.get_model_metadata(model, version)
            extensions = client.get_server_metadata().get("extensions", [])
            try:
                config = client.get_model_config(model, version)
            except Exception:
                config = {}
        inputs = [
            {"name": i["name"], "datatype": i["datatype"], "shape": [int(d) for d in i["shape"]]}
            for i in meta["inputs"]
        ]
        return inputs, int(config.get("max_batch_size", 0)), "statistics" in extensions
    finally:
        client.close()


def _stats(protocol: str, url: str, model: str, version: str) -> dict | None:
    module, client = _server_client(protocol, url)
    try:
        if protocol == "grpc":
            stats = client.get_inference_statistics(model, version, as_json=True)["model_stats"]
        else:
            stats = client.get_inference_statistics(model, version)["model_stats"]
    except Exception:
        return None
    finally:
        client.close()
    totals: dict[str, list[int]] = {}
    for s in stats:
        for key, d in s.get("inference_stats", {}).items():
            t = totals.setdefault(key, [0, 0])
            t[0] += int(d.get("count", 0))
            t[1] += int(d.get("ns", 0))
    return totals


def _server_columns(before, after) -> dict[str, float]:
    if before is None or after is None:
        return {}
    out = {}
    for key in ("queue", "compute_input", "compute_infer", "compute_output"):
        column = "Server " + key.replace("_", " ").title()
        count = after[key][0] - before[key][0]
        out[column] = (after[key][1] - before[key][1]) / count / 1000 if count else 0.0
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    url = args.url or ("localhost:8001" if args.protocol == "grpc" else "localhost:8000")
    if args.concurrency_range and args.request_rate_range:
        raise SystemExit("give --concurrency-range or --request-rate-range, not both")
    mode = "rate" if args.request_rate_range else "concurrency"
    levels = (
        parse_range(args.request_rate_range, float)
        if mode == "rate"
        else parse_range(args.concurrency_range or "1")
    )
    metadata_inputs, max_batch, has_stats = _model_shape(args.protocol, url, args.model, args.version)
    inputs = build_inputs(metadata_inputs, max_batch, args.batch, parse_shapes(args.shape), args.input_data)
    cores = os.cpu_count() or 1
    window_s = args.measurement_interval / 1000
    rows = []
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(args.processes or cores) as pool:
        for level in levels:
            processes = args.processes or (min(cores, max(1, int(level))) if mode == "concurrency" else cores)
            start_at = time.time() + 1.5 + args.warmup  # the pool's processes are already up
            jobs = []
            for k in range(processes):
                share = int(level) // processes + (1 if k < int(level) % processes else 0)
                if mode == "concurrency" and share == 0:
                    continue
                jobs.append(WorkerJob(
                    args.url or url, args.protocol, args.model, args.version, inputs,
                    concurrency=share if mode == "concurrency" else 0,
                    rate=float(level) / processes if mode == "rate" else 0.0,
                    distribution=args.request_distribution, start_at=start_at, window_s=window_s,
                    warmup_s=args.warmup, seed=k,
                ))  # fmt: skip
            before = _stats(args.protocol, url, args.model, args.version) if has_stats else None
            try:
                results = pool.map_async(run_worker, jobs).get(timeout=args.warmup + window_s + 150)
            except multiprocessing.TimeoutError:
                print(f"load processes did not finish at level {level}; giving up", file=sys.stderr)
                return 2
            after = _stats(args.protocol, url, args.model, args.version) if has_stats else None
            rows.append(_report(mode, level, args, results, window_s, _server_columns(before, after)))
    _summary(mode, rows, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["Request Rate" if mode == "rate" else "Concurrency", *CSV_COLUMNS])
            for r in rows:
                writer.writerow(
                    [
                        r["level"],
                        *(
                            round(r.get(c, 0), 1) if c == "Inferences/Second" else int(r.get(c, 0))
                            for c in CSV_COLUMNS
                        ),
                    ]
                )
    return 1 if any(r["completed"] == 0 for r in rows) else 0


def _report(mode, level, args, results, window_s, server) -> dict:
    latencies = np.array([x for r in results for x in r.latencies_ns], dtype=np.int64) / 1000  # µs
    errors = sum(r.errors for r in results)
    loader_cpu = sum(r.cpu_s for r in results) / window_s
    completed = len(latencies)
    throughput = completed * args.batch / window_s
    p = {q: float(np.percentile(latencies, q)) if completed else 0.0 for q in (50, 90, 95, 99)}
    avg = float(latencies.mean()) if completed else 0.0
    row = {
        "level": level,
        "completed": completed,
        "Inferences/Second": throughput,
        "avg": avg,
        "errors": errors,
    }
    row.update({f"p{q} latency": v for q, v in p.items()})
    failed = np.array([x for r in results for x in r.error_latencies_ns], dtype=np.int64) / 1000  # µs
    row["error p50 latency"] = float(np.percentile(failed, 50)) if failed.size else 0.0
    row["error p99 latency"] = float(np.percentile(failed, 99)) if failed.size else 0.0
    row["late sends"] = sum(r.late_sends for r in results)
    row["loader cpu"] = loader_cpu
    row.update(server)
    server_us = sum(
        server.get(c, 0)
        for c in ("Server Queue", "Server Compute Input", "Server Compute Infer", "Server Compute Output")
    )
    row["Network+Server Send/Recv"] = max(0.0, avg - server_us) if server else avg
    label = "Request rate" if mode == "rate" else "Request concurrency"
    print(f"{label}: {level}")
    percentiles = " / ".join(f"p{q} {v:.0f}" for q, v in p.items())
    print(
        f"  Client: requests {completed}, errors {errors}, throughput {throughput:.1f} infer/sec, "
        f"avg latency {avg:.0f} usec, {percentiles} usec"
    )
    if args.percentile:
        value = float(np.percentile(latencies, args.percentile)) if completed else 0.0
        print(f"  p{args.percentile} latency: {value:.0f} usec")
    if server:
        print(
            "  Server: "
            + ", ".join(f"{k.removeprefix('Server ').lower()} {v:.0f} usec" for k, v in server.items())
        )
    late = sum(r.late_sends for r in results)
    print(
        f"  Loader: {len(results)} processes, {loader_cpu * 100:.0f}% of one core"
        + (f", {late} late sends" if late else "")
    )
    if errors:
        p50, p99 = row["error p50 latency"], row["error p99 latency"]
        print(f"  Errors: answered in p50 {p50:.0f} / p99 {p99:.0f} usec")
    first_error = next((r.first_error for r in results if r.first_error), "")
    if first_error:
        print(f"  First error: {first_error[:300]}")
    return row


def _summary(mode, rows, args) -> None:
    name = "Request rate" if mode == "rate" else "Concurrency"
    print("Inferences/Second vs. Client p50/p99 latency")
    for r in rows:
        print(
            f"{name}: {r['level']}, throughput: {r['Inferences/Second']:.1f} infer/sec, "
            f"p50 {r['p50 latency']:.0f} usec, p99 {r['p99 latency']:.0f} usec, errors {r['errors']}"
        )


if __name__ == "__main__":
    sys.exit(main())
