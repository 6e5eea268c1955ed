"""`make bench` keeps working: one tiny run of the harness (its timings are benchmarks, not checked here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path

import pytest

from loadgen.bench import report
from loadgen.bench import workers as workers_bench
from tests.support.perf_analyzer import find_perf_analyzer

ROOT = Path(__file__).resolve().parents[2]


# Each bench's smoke run, longest first: tiny windows on Triton's `simple` where the bench takes a model.
SMOKE_RUNS = {
    bench: args.split()
    for bench, args in {
        "images": "--repetitions 1 --window-ms 1000 --concurrency 1",
        "overload": "--models simple --window-ms 700 --soak-seconds 2",
        "scheduling": "--model simple --repetitions 1 --window-ms 1000 --benchmark-seconds 1 "
        "--contention-sets priorities",
        "ceiling": "--models simple --rounds 2 --window-ms 1000 --concurrency 1",
        "throughput": "--models simple --repetitions 1 --window-ms 500 --benchmark-seconds 1 --concurrency 1",
        "cpu_split": "--models simple --protocols grpc --window-ms 2000 --benchmark-seconds 1",
        "object_storage": "--model dummy --stores gcs --repetitions 1 --poll-seconds 3",
        "pipelines": "--repetitions 1 --requests 2 --images 1,2",
        # perf_analyzer gives up on a window it finds unstable (here, beside the other runs): these run
        # last, one at a time, once the others are done.
        "workers": "--models simple --rounds 1 --window-ms 500 --concurrency 1,2 --protocols grpc "
        "--share-concurrency 2",
        "shared_memory": "--models segmentation --repetitions 1 --window-ms 500 --benchmark-seconds 1 "
        "--concurrency 1",
    }.items()
}
NEEDS_PERF_ANALYZER = ("workers", "shared_memory")


def _run_bench(out: Path, bench: str, args: list[str], env: dict[str, str] | None = None) -> Path:
    """`python -m loadgen.bench.<bench> args --output out`, from the project root, with `env` added to the
    environment; the run folder it wrote."""
    module = f"loadgen.bench.{bench}"
    result = subprocess.run(
        [sys.executable, "-m", module, *args, "--output", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run,) = out.iterdir()
    # Every run records where and how it ran, and docs/performance.md's generator renders it from the JSON.
    results = json.loads((run / "results.json").read_text())
    assert results["run"]["bench"] == bench and results["run"]["cores"] > 0
    assert results["run"]["command"].startswith(f"python -m {module}")
    page = report.render([results])
    assert results["run"]["command"] in page and "| --- |" in page.split(results["run"]["command"])[1]
    return run


@pytest.fixture(scope="module")
def bench_runs(tmp_path_factory):
    """The smoke runs start with the module's first test, three at a time: a run is mostly fixed windows,
    sleeps and process start-ups, so three share the machine without starving each other's windows, and
    the module takes far less than their sum. The runs that drive perf_analyzer follow alone, or are left
    out, their tests skipping to say why, where it cannot be installed. Each test checks its own run."""
    try:
        env, no_perf_analyzer = {"PERF_ANALYZER": find_perf_analyzer()}, ""
    except pytest.skip.Exception as e:
        env, no_perf_analyzer = {}, str(e)
    runs: dict[str, Future | str] = {}
    with ThreadPoolExecutor(max_workers=3) as together, ThreadPoolExecutor(max_workers=1) as alone:
        for bench, args in SMOKE_RUNS.items():
            if bench not in NEEDS_PERF_ANALYZER:
                runs[bench] = together.submit(_run_bench, tmp_path_factory.mktemp(bench), bench, args)
        others = list(runs.values())

        def after_the_others(bench: str, args: list[str]) -> Path:
            wait(others)
            return _run_bench(tmp_path_factory.mktemp(bench), bench, args, env)

        for bench in NEEDS_PERF_ANALYZER:
            if no_perf_analyzer:
                runs[bench] = no_perf_analyzer
            else:
                runs[bench] = alone.submit(after_the_others, bench, SMOKE_RUNS[bench])
        yield runs


def run_of(bench_runs: dict[str, Future | str], bench: str) -> Path:
    run = bench_runs[bench]
    if isinstance(run, str):
        pytest.skip(run)
    return run.result()


def test_bench_harness_writes_its_tables(bench_runs):
    run = run_of(bench_runs, "throughput")
    results = json.loads((run / "results.json").read_text())
    entry = results["models"]["simple"]
    assert entry["benchmark_app"]["throughput"]["fps"] > 0
    assert entry["benchmark_app"]["throughput"]["cpu_us_per_image"] > 0
    assert {row["protocol"] for row in entry["gateway"]} == {"grpc", "http"}
    for row in entry["gateway"]:
        assert row["median_throughput"] > 0 and row["median_server_cpu_us_per_request"] > 0
        assert row["cpu_ratio_to_benchmark_app"] > 0 and row["median_loader_cpu_pct"] >= 0
    # The KServe peer ran the same rows; each gateway row carries the ratios to it.
    assert [(r["protocol"], r["concurrency"]) for r in entry["kserve"]] == [
        (r["protocol"], r["concurrency"]) for r in entry["gateway"]
    ]
    for row, peer in zip(entry["gateway"], entry["kserve"], strict=True):
        assert peer["median_throughput"] > 0 and peer["median_server_cpu_us_per_request"] > 0
        assert row["throughput_vs_kserve"] > 0 and row["cpu_vs_kserve"] > 0
    # grpc.aio's floor ran simple's gRPC rows; each gateway gRPC row says what it costs above it.
    (floor,) = entry["grpc_floor"]
    assert floor["median_throughput"] > 0 and floor["median_server_cpu_us_per_request"] > 0
    (grpc_row,) = [r for r in entry["gateway"] if r["protocol"] == "grpc"]
    assert grpc_row["cpu_above_floor_us"] == pytest.approx(
        grpc_row["median_server_cpu_us_per_request"] - floor["median_server_cpu_us_per_request"]
    )
    assert grpc_row["throughput_vs_floor"] == pytest.approx(
        grpc_row["median_throughput"] / floor["median_throughput"]
    )
    # The floor with inference ran them too, beside benchmark_app: it answered with simple's real sums.
    (floor_infer,) = entry["grpc_floor_infer"]
    assert floor_infer["median_throughput"] > 0 and floor_infer["ratio_to_benchmark_app"] > 0
    assert floor_infer["cpu_ratio_to_benchmark_app"] > 0
    assert grpc_row["throughput_vs_floor_infer"] == pytest.approx(
        grpc_row["median_throughput"] / floor_infer["median_throughput"]
    )
    table = (run / "results.md").read_text()
    assert "| simple |" in table and "ratio" in table and "gateway / KServe" in table
    assert "gateway above the floor" in table and "floor+infer infer/s" in table


def test_ceiling_bench_takes_its_ratios_round_by_round(bench_runs):
    run = run_of(bench_runs, "ceiling")
    entry = json.loads((run / "results.json").read_text())["models"]["simple"]
    assert len(entry["rounds"]) == 2
    for windows in entry["rounds"]:
        assert set(windows) == {"benchmark_app", "gateway", "floor_infer"}
        assert all(w["throughput"] > 0 and w["cpu_us"] > 0 for w in windows.values())
    first = entry["rounds"][0]
    assert entry["ratios"]["gateway_vs_floor_infer"]["throughput"][0] == pytest.approx(
        first["gateway"]["throughput"] / first["floor_infer"]["throughput"]
    )
    assert "| simple |" in (run / "results.md").read_text()


def test_cpu_split_names_where_the_cpu_goes(bench_runs):
    run = run_of(bench_runs, "cpu_split")
    row = json.loads((run / "results.json").read_text())["simple-grpc"]
    assert row["threads_us"]["event loop (main thread)"] > 0
    # OpenVINO's threads are found and named; whether they worked in the window depends on the machine's
    # load (a busy machine runs `simple` inline on the loop), so only their presence is checked.
    assert "OpenVINO stream threads" in row["threads_us"]
    assert all(us >= 0 for us in row["threads_us"].values())
    assert row["total_us"] >= sum(row["threads_us"].values()) * 0.999
    # py-spy saw the event loop at work, inside the gateway's own modules as well as in grpc.
    assert row["loop_us"] and "transport (grpc / aiohttp / uvloop, syscalls)" in row["loop_us"]
    assert "| simple | grpc |" in (run / "results.md").read_text()


def test_scheduling_bench_writes_its_tables(bench_runs):
    # On Triton's tiny `simple` rather than the ResNet-50-shaped model of the real run: the harness is
    # the same, and six gateways compile in a fraction of the time.
    out_dir = run_of(bench_runs, "scheduling")
    results = json.loads((out_dir / "results.json").read_text())
    assert results["batching"]["on"]["median_throughput"] > 0
    assert results["contention"]["priorities"]["contended"]["median_throughput"] > 0
    assert "Dynamic batching" in (out_dir / "results.md").read_text()


def test_image_bench_writes_its_table(bench_runs):
    run = run_of(bench_runs, "images")
    results = json.loads((run / "results.json").read_text())
    assert {row["protocol"] for row in results["rows"]} == {"grpc", "http"}
    for row in results["rows"]:
        assert row["float"]["throughput"] > 0 and row["jpeg"]["throughput"] > 0
        assert row["gateway_decode_us_per_image"] > 0 and row["decode_ratio"] > 0
        assert row["library_under_load_us"] > 0 and row["decode_ratio_under_load"] > 0
        assert row["tiny_decode_us_per_image"] > 0 and row["tiny_decode_ratio"] > 0
    assert results["library"]["imdecode"] > 0
    assert "JPEG / float" in (run / "results.md").read_text()


def test_overload_bench_writes_its_results(bench_runs):
    run = run_of(bench_runs, "overload")
    results = json.loads((run / "results.json").read_text())
    entry = results["models"]["simple"]
    assert entry["capacity"]["Inferences/Second"] > 0 and entry["capacity"]["server_cpu_us_per_request"] > 0
    # the refusal cost was measured with calls the gateway refused, beside grpc.aio's floor answering them
    assert set(entry["refusal"]["status_counts"]) == {"NOT_FOUND"}
    assert entry["refusal"]["cpu_us_per_call"] > 0 and entry["grpc_floor_call"]["cpu_us_per_call"] > 0
    assert 0 <= entry["ceilings"]["open_10x_admitted_ratio_at_most"] <= 1
    assert entry["ceilings"]["closed_512_refusals_per_second_allowed"] > 0
    for key in ("closed_512", "open_10x"):  # 0 when nothing was answered inside the window: a result too
        assert entry[key]["throughput_ratio"] >= 0 and entry[key]["p99_ratio"] >= 0
        assert entry[key]["errors"] >= 0 and entry[key]["error p99 latency"] >= 0
    assert results["soak"]["rss_start_kib"] > 0 and results["soak"]["throughput"] > 0


def test_pipeline_bench_writes_its_table(bench_runs):
    run = run_of(bench_runs, "pipelines")
    results = json.loads((run / "results.json").read_text())
    assert [row["images"] for row in results["rows"]] == [1, 2]
    for row in results["rows"]:
        assert row["pipeline"] > 0 and row["pipeline_batched"] > 0 and row["client_one_by_one"] > 0
        assert row["nodes_compute_ms"] > 0 and row["pipeline_batched_executions_per_request"] >= 1
        assert row["batch_compute_vs_client"] > 0  # the floor of the batched ratio on this machine
    table = (run / "results.md").read_text()
    assert "batched / one-by-one" in table and "the batch's own compute / one-by-one" in table


def test_object_storage_bench_counts_what_loading_and_polling_cost(bench_runs):
    results = json.loads((run_of(bench_runs, "object_storage") / "results.json").read_text())
    gcs = results["stores"]["gcs"]
    assert gcs["remote_bytes"] >= results["model_bytes"], "the first start fetched the model"
    # the restart lists as the first start did, and fetches no file
    assert gcs["remote_bytes"] - gcs["restart_bytes"] >= results["model_bytes"]
    assert gcs["polls"] >= 2 and gcs["poll_requests"] <= gcs["polls"] + 1, "one listing per poll"
    assert "Model repositories in object storage" in report.render([results])


def test_shared_memory_bench_writes_its_table(bench_runs):
    run = run_of(bench_runs, "shared_memory")
    segmentation = json.loads((run / "results.json").read_text())["models"]["segmentation"]
    assert segmentation["shm_throughput"] > 0 and segmentation["socket_throughput"] > 0
    assert 0 < segmentation["shm_ceiling"] <= 1


def test_workers_bench_takes_turns_and_writes_its_table(bench_runs):
    run = run_of(bench_runs, "workers")
    results = json.loads((run / "results.json").read_text())
    simple = results["models"]["simple"]
    (round_,) = simple["rounds"]
    contenders = {f"{c}-grpc-c{n}" for c in ("single", "workers", "copies") for n in (1, 2)}
    assert set(round_) == contenders | {"share-grpc-c2"}
    for row in round_.values():
        assert row["throughput"] > 0 and row["server_cpu_us"] > 0 and 0 <= row["idle"] <= 1
        assert row["switches_per_request"] >= 0
    assert results["channel_round_trip_us_128B"] > 0
    assert simple["grpc-c2"]["throughput_ratio"] > 0 and simple["grpc-c2"]["ceiling"] >= 1
    assert 0 < simple["workers-grpc-saturation"] <= 1
    # The copies answered, and each one's answers were counted from its own metrics (the sum is what
    # perf_analyzer was answered: its CPU per request would be far off if one copy's count were missing).
    assert simple["grpc-c2"]["copies_throughput_ratio"] > 0 and simple["grpc-c2"]["copies_cpu_ratio"] > 0
    assert simple["grpc-c2"]["workers_over_copies_throughput"] > 0
    # The share ran open loop at the rate asked: the target's share of the single process's c=2 rate.
    share = simple["grpc-c2"]["share_rate"] / round_["single-grpc-c2"]["throughput"]
    assert 0.5 < share / (workers_bench.TARGET_THROUGHPUT / results["workers"]) < 1.5
    assert simple["grpc-c2"]["share_cpu_ratio"] > 0
    assert "Worker processes" in report.render([results])
