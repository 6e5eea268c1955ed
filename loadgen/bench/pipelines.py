"""make bench, pipelines: OVMS's super-resolution flow as one pipeline request against a client that calls
the model itself, image by image, with batching off and on for the model node.

    images [N,1,3,128,128] -> demultiplexed (dynamic) -> resize (C custom node, 64x64, the original passed
    on) -> sr (two inputs, a small convolutional net) -> gathered [N,1,3,128,128]

Closed loop, one client (tritonclient gRPC), N = 1, 4, 16; every figure a median over the repetitions,
each repetition the median latency of its requests. Measured in the same run:
- the pipeline's time per request, with `sr_b1` (batch 1, no batching) and `sr_batched` (max_batch_size 16)
  as the model node;
- the nodes' own compute: the model's compute per execution from the gateway's statistics (input +
  infer + output, while the pipeline ran) and the C node's execute time in this process, through ctypes;
- a client doing the pipeline's work itself: the resize in numpy (beforehand, untimed), then N calls of
  `sr_b1`, alternating request by request with the batched pipeline: their ratio (the target's) is each
  repetition's, and the row gives the median of those. Every request's inputs are built once, as loadgen
  and perf_analyzer build theirs.

Targets: at N = 1 the pipeline within 1.1 x the sum of its nodes' own compute time; with batching
on, N = 16 images in <= 0.5 x the time of 16 batch-1 calls. Beside that ratio the bench gives the least it can
be on the machine: the batched model's own compute per request over the one-by-one client's time (where a
batch buys little compute, as on CPUs without AMX, it stays above 0.5 whatever the server does).

    python -m loadgen.bench.pipelines [--repetitions 3] [--requests 20] [--images 1,4,16]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import openvino as ov
import tritonclient.grpc as grpcclient
from openvino import opset13 as ops

from gateway.demo_models import save
from gateway.malloc_tuning import tune_malloc
from gateway.pipelines.custom_node import load_library
from gateway.testing import GatewayProcess, start_gateway
from loadgen.bench.runs import write_results
from loadgen.bench.throughput import CACHE, ROOT
from loadgen.custom_nodes import build_c_library

HIGH, LOW = 128, 64


def sr_model(batch: int) -> ov.Model:
    """enhanced = large + convs(large) + mean(small): a two-input model of about 0.4 GFLOP per image."""
    small = ops.parameter([batch, 3, LOW, LOW], ov.Type.f32, name="small")
    small.output(0).get_tensor().set_names({"small"})
    large = ops.parameter([batch, 3, HIGH, HIGH], ov.Type.f32, name="large")
    large.output(0).get_tensor().set_names({"large"})
    rng = np.random.default_rng(3)
    x = large
    for c_in, c_out in ((3, 32), (32, 32), (32, 3)):
        weights = (rng.standard_normal((c_out, c_in, 3, 3)) / np.sqrt(9 * c_in)).astype(np.float32)
        x = ops.convolution(x, ops.constant(weights), [1, 1], [1, 1], [1, 1], [1, 1])
        if c_out != 3:
            x = ops.relu(x)
    mean = ops.reduce_mean(small, ops.constant(np.array([2, 3], np.int64)), keep_dims=True)
    enhanced = ops.add(ops.add(large, x), mean)
    enhanced.output(0).get_tensor().set_names({"enhanced"})
    return ov.Model([enhanced.output(0)], [small, large], "sr")


def pipeline(name: str, model: str) -> dict:
    return {
        "name": name,
        "inputs": ["images"],
        "demultiply_count": -1,
        "nodes": [
            {
                "name": "resize",
                "type": "custom",
                "library_name": "resize",
                "params": {"target_height": str(LOW), "target_width": str(LOW)},
                "inputs": [{"image": {"node_name": "request", "data_item": "images"}}],
                "outputs": [
                    {"data_item": "resized", "alias": "small"},
                    {"data_item": "original", "alias": "large"},
                ],
            },
            {
                "name": "sr",
                "type": "DL model",
                "model_name": model,
                "inputs": [
                    {"small": {"node_name": "resize", "data_item": "small"}},
                    {"large": {"node_name": "resize", "data_item": "large"}},
                ],
                "outputs": [{"data_item": "enhanced", "alias": "enhanced"}],
            },
        ],
        "outputs": [{"enhanced": {"node_name": "sr", "data_item": "enhanced"}}],
    }


def prepare(out_dir: Path) -> tuple[Path, Path]:
    root = CACHE / "bench_models" / "pipeline"
    for name, batch in (("sr_b1", 1), ("sr_batched", -1)):
        if not (root / name / "1" / "model.xml").exists():
            save(sr_model(batch), root / name / "1")
    library = build_c_library(out_dir)
    config = {
        "model_config_list": [
            {"config": {"name": "sr_b1", "base_path": str(root / "sr_b1")}},
            {
                "config": {
                    "name": "sr_batched",
                    "base_path": str(root / "sr_batched"),
                    "max_batch_size": 16,
                    "max_queue_delay_microseconds": 1000,
                }
            },
        ],
        "custom_node_library_config_list": [{"name": "resize", "base_path": str(library)}],
        "pipeline_config_list": [
            pipeline("sr_pipeline", "sr_b1"),
            pipeline("sr_pipeline_batched", "sr_batched"),
        ],
    }
    path = out_dir / "config.json"
    path.write_text(json.dumps(config))
    return path, library


def _input(name: str, array: np.ndarray) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(array.shape), "FP32")
    tensor.set_data_from_numpy(array)
    return tensor


def timed(call, requests: int) -> float:
    """Median wall time of `requests` calls, in ms (after one warm-up call)."""
    call()
    times = []
    for _ in range(requests):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def timed_pair(call_a, call_b, requests: int) -> tuple[float, float]:
    """Median wall times of `requests` calls of each, in ms, the two alternating (one warm-up call each)."""
    call_a()
    call_b()
    times_a: list[float] = []
    times_b: list[float] = []
    for _ in range(requests):
        for call, times in ((call_a, times_a), (call_b, times_b)):
            started = time.perf_counter()
            call()
            times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times_a), statistics.median(times_b)


def record_phase(run: dict, kind: str, before, after, server_before, server_after, requests: int) -> None:
    """The gateway's figures over one phase of `requests` calls (+ the warm-up) of `kind`'s pipeline."""
    answered = max(1, server_after[0] - server_before[0])
    run[f"{kind}_server_ms"] = (server_after[1] - server_before[1]) / answered
    run[f"{kind}_model_compute_ms_per_request"] = (after[1] - before[1]) / (requests + 1)
    run[f"{kind}_executions_per_request"] = (after[0] - before[0]) / (requests + 1)


def _stats(gw: GatewayProcess, name: str) -> dict:
    with urllib.request.urlopen(f"http://{gw.http_url}/v2/models/{name}/stats", timeout=10) as response:
        return json.loads(response.read())["model_stats"][0]


def server_ms(gw: GatewayProcess, pipeline: str) -> tuple[int, float]:
    """(requests, total ms inside the gateway) of a pipeline: its statistics' `success`, from the request's
    arrival to its response (reading and decoding the request included, sending the response not)."""
    success = _stats(gw, pipeline)["inference_stats"]["success"]
    return int(success["count"]), int(success["ns"]) / 1e6


def model_compute_ms(gw: GatewayProcess, model: str) -> tuple[int, float]:
    """(executions, total compute ms) of a model from the gateway's statistics."""
    stats = _stats(gw, model)
    total = sum(stats["batch_stats"][i][k]["ns"] for i in range(len(stats["batch_stats"]))
                for k in ("compute_input", "compute_infer", "compute_output"))  # fmt: skip
    return int(stats["execution_count"]), total / 1e6


def node_execute_ms(library_path: Path, image: np.ndarray, repeats: int = 200) -> float:
    loaded = load_library("resize", str(library_path))
    assert loaded.library is not None, loaded.error
    instance = loaded.library.instance({"target_height": str(LOW), "target_width": str(LOW)})
    instance.execute({"image": image})
    started = time.perf_counter()
    for _ in range(repeats):
        instance.execute({"image": image})
    return (time.perf_counter() - started) * 1000 / repeats


def client_side_resize(image: np.ndarray) -> np.ndarray:
    rows = np.arange(LOW) * HIGH // LOW
    return np.ascontiguousarray(image[:, :, rows][:, :, :, rows])


def call_pipeline(client: grpcclient.InferenceServerClient, name: str, inputs: list) -> None:
    client.infer(name, inputs)


def call_one_by_one(client: grpcclient.InferenceServerClient, per_image: list[list]) -> None:
    """What a client does without the pipeline: one model call per image (its resize done beforehand)."""
    for inputs in per_image:
        client.infer("sr_b1", inputs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--requests", type=int, default=20, help="requests per repetition and case")
    parser.add_argument("--images", default="1,4,16")
    parser.add_argument("--output", default=str(ROOT / "bench-results"))
    args = parser.parse_args(argv)
    # This process is the client: without it, every 3 MB answer (N = 16) cost it 5-6 ms of page faults
    # (gateway/malloc_tuning.py), 0.62 -> 0.54 of the one-by-one client's time; see worker.run_worker.
    tune_malloc()
    args.out = Path(args.output) / (time.strftime("%Y%m%d-%H%M%S") + "-pipelines")
    args.out.mkdir(parents=True, exist_ok=True)
    config, library = prepare(args.out)
    gw = start_gateway(["--config_path", str(config)], args.out / "gateway.log", timeout=300)
    client = grpcclient.InferenceServerClient(gw.grpc_url)
    rng = np.random.default_rng(0)
    results: dict = {"rows": []}
    try:
        results["resize_node_ms"] = node_execute_ms(library, rng.random((1, 3, HIGH, HIGH), np.float32))
        for n in (int(v) for v in args.images.split(",")):
            images = rng.random((n, 1, 3, HIGH, HIGH), np.float32)
            # Inputs built once, as loadgen and perf_analyzer do: the timings are the calls, not numpy's
            # conversions in the client (the one-by-one client's resize is done here, beforehand).
            pipeline_inputs = [_input("images", images)]
            per_image = [[_input("small", client_side_resize(i)), _input("large", i)] for i in images]
            row: dict = {"images": n, "runs": []}
            for _ in range(args.repetitions):
                run: dict = {}
                name, model = "sr_pipeline", "sr_b1"
                before, server_before = model_compute_ms(gw, model), server_ms(gw, name)
                run["pipeline"] = timed(
                    lambda: call_pipeline(client, "sr_pipeline", pipeline_inputs),  # noqa: B023
                    args.requests,
                )
                after, server_after = model_compute_ms(gw, model), server_ms(gw, name)
                record_phase(run, "pipeline", before, after, server_before, server_after, args.requests)
                # The batched pipeline and the one-by-one client alternate request by request: their ratio
                # is measured in the same seconds (this shared machine's speed drifts between phases: the
                # one-by-one client's median moved 42 -> 53 ms between repetitions of one run).
                name, model = "sr_pipeline_batched", "sr_batched"
                before, server_before = model_compute_ms(gw, model), server_ms(gw, name)
                compute_before, calls_before = model_compute_ms(gw, "sr_b1"), server_ms(gw, "sr_b1")
                run["pipeline_batched"], run["client_one_by_one"] = timed_pair(
                    lambda: call_pipeline(client, "sr_pipeline_batched", pipeline_inputs),  # noqa: B023
                    lambda: call_one_by_one(client, per_image),  # noqa: B023
                    args.requests,
                )
                after, server_after = model_compute_ms(gw, model), server_ms(gw, name)
                compute_after, calls_after = model_compute_ms(gw, "sr_b1"), server_ms(gw, "sr_b1")
                record_phase(
                    run, "pipeline_batched", before, after, server_before, server_after, args.requests
                )
                run["batched_vs_client"] = run["pipeline_batched"] / run["client_one_by_one"]
                # The least that ratio can be on this machine: the batched model's own compute per request,
                # before any transport or server work, against the one-by-one client's time.
                run["batch_compute_vs_client"] = (
                    run["pipeline_batched_model_compute_ms_per_request"] / run["client_one_by_one"]
                )
                calls = max(1, calls_after[0] - calls_before[0])
                # the gateway's own cost for one plain model call, beside the pipeline's
                run["model_call_server_ms"] = (calls_after[1] - calls_before[1]) / calls
                run["model_call_compute_ms"] = (compute_after[1] - compute_before[1]) / calls
                row["runs"].append(run)
            for key in row["runs"][0]:
                row[key] = statistics.median(r[key] for r in row["runs"])
            node_compute = row["pipeline_model_compute_ms_per_request"] + n * results["resize_node_ms"]
            row["nodes_compute_ms"] = node_compute
            row["pipeline_vs_nodes_compute"] = row["pipeline"] / node_compute
            row["pipeline_server_vs_nodes_compute"] = row["pipeline_server_ms"] / node_compute
            row["pipeline_vs_client"] = row["pipeline"] / row["client_one_by_one"]
            results["rows"].append(row)
            print(
                f"N={n}: pipeline {row['pipeline']:.2f} ms, in the server {row['pipeline_server_ms']:.2f} ms "
                f"(nodes' compute {node_compute:.2f} ms: {row['pipeline_vs_nodes_compute']:.2f} x, in the "
                f"server {row['pipeline_server_vs_nodes_compute']:.2f} x), batched "
                f"{row['pipeline_batched']:.2f} ms "
                f"({row['pipeline_batched_executions_per_request']:.1f} executions), client one by one "
                f"{row['client_one_by_one']:.2f} ms; batched / one-by-one {row['batched_vs_client']:.2f} "
                f"(the batch's own compute alone {row['batch_compute_vs_client']:.2f})",
                flush=True,
            )
    finally:
        client.close()
        gw.stop()
    write_results(args.out, results, markdown(results, args.repetitions), bench="pipelines", args=args)
    print((args.out / "results.md").read_text())
    return 0


def markdown(results: dict, repetitions: int) -> str:
    lines = [
        f"# Pipelines (medians of {repetitions} repetitions; ms per request, one closed-loop gRPC client)",
        "",
        f"C resize node execute: {results['resize_node_ms']:.3f} ms per image (in process).",
        "",
        "| N | pipeline (batch-1 model): client / in the server | its nodes' compute | ratio: client / "
        "server | pipeline, batching on | executions | client calling the model one by one | batched / "
        "one-by-one | the batch's own compute / one-by-one |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in results["rows"]:
        lines.append(
            f"| {row['images']} | {row['pipeline']:.2f} / {row['pipeline_server_ms']:.2f} | "
            f"{row['nodes_compute_ms']:.2f} | {row['pipeline_vs_nodes_compute']:.2f} / "
            f"{row['pipeline_server_vs_nodes_compute']:.2f} | {row['pipeline_batched']:.2f} | "
            f"{row['pipeline_batched_executions_per_request']:.1f} | {row['client_one_by_one']:.2f} | "
            f"{row['batched_vs_client']:.2f} | {row['batch_compute_vs_client']:.2f} |"
        )
    lines += [
        "",
        "A plain call of the model (the one-by-one client's), in the server / its compute: "
        + ", ".join(
            f"N={row['images']}: {row['model_call_server_ms']:.2f} / {row['model_call_compute_ms']:.2f} ms"
            for row in results["rows"]
        )
        + ".",
        "",
        "Targets: N = 1 pipeline / nodes' compute <= 1.1; N = 16 batched / one-by-one <= 0.5. The last "
        "column is the least the batched ratio can be on this machine: the batched model's compute per "
        "request (from the gateway's statistics), before any transport or server work, over the one-by-one "
        "client's time (medians of the repetitions' ratios).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
