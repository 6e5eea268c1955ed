"""make bench, images: the ResNet-50-shaped model fed 224x224 JPEGs against the same model fed float tensors.

One gateway serves the model twice from the same IR, both with `layout: NHWC:NCHW` (so both compile to the
same graph): `resnet50_float` takes FP32 NHWC tensors, `resnet50_jpeg` is shown to clients as BYTES
(`image_inputs`) and takes JPEG files. Each runs under loadgen over gRPC and REST at a few concurrencies,
repeated; medians are reported. Beside throughput and the server's CPU per image, the gateway's own decode
cost per image (its decoder threads' CPU time, from ovgw_image_decode_cpu_us / ovgw_images_decoded) is set
against OpenCV's own decode loop on the same JPEG in this process (imdecode, and imdecode + the conversion
to float32 that the gateway also does), measured in the same run.

Targets: JPEG throughput >= 0.9 x float-tensor throughput; decode cost per image <= 1.2 x the
library's own loop.

    python -m loadgen.bench.images [--repetitions 3] [--window-ms 3000] [--concurrency 1,4,8]
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import openvino as ov
from openvino import opset13 as ops

from gateway.demo_models import save
from gateway.testing import GatewayProcess, start_gateway
from loadgen.bench.models import resnet50_shaped
from loadgen.bench.runs import write_results
from loadgen.bench.throughput import CACHE, ROOT, BenchModel, gateway_run


def tiny_image_model() -> ov.Model:
    """input FP32 [1,224,224,3] -> its mean: an inference of microseconds, so that the decode cost measured
    through it is the gateway's alone, not also the cache misses a ResNet inference leaves behind."""
    x = ops.parameter([1, 224, 224, 3], ov.Type.f32, name="input")
    x.output(0).get_tensor().set_names({"input"})
    mean = ops.reduce_mean(x, ops.constant(np.array([1, 2, 3], np.int64)), keep_dims=False)
    mean.output(0).get_tensor().set_names({"mean"})
    return ov.Model([mean.output(0)], [x], "tiny_image")


def natural_picture(size: int = 224, seed: int = 0) -> np.ndarray:
    """A picture with a photograph's statistics, roughly: smooth regions, edges and some noise (BGR)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    image = np.stack(
        [
            128 + 100 * np.sin(x / 17 + c) * np.cos(y / 23 - c) + 20 * ((x + y * (c + 1)) // 40 % 2)
            for c in range(3)
        ],
        -1,
    )
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def library_decode_us(jpeg: bytes, seconds: float = 2.0) -> dict[str, float]:
    """OpenCV's own loop on one thread, CPU time per image: imdecode, and imdecode + astype(float32)."""
    cv2.setNumThreads(1)
    data = np.frombuffer(jpeg, np.uint8)
    out = {}
    for name, work in (
        ("imdecode", lambda: cv2.imdecode(data, cv2.IMREAD_UNCHANGED)),
        ("imdecode_to_fp32", lambda: np.asarray(cv2.imdecode(data, cv2.IMREAD_UNCHANGED)).astype(np.float32)),
    ):
        work()
        count, started, deadline = 0, time.thread_time(), time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            work()
            count += 1
        out[name] = (time.thread_time() - started) / count * 1e6
    return out


def library_decode_paced_us(jpeg: bytes, interval_s: float, seconds: float = 2.0) -> float:
    """OpenCV's loop (imdecode + astype(float32)) on one thread, one decode per `interval_s` (the thread
    sleeps between them), CPU time per decode: the library at the pace of the gateway's requests. A decode
    that follows an idle gap costs more than one straight after another (caches, and the core's state):
    in process, 213-252 us back to back, 318-345 us with 1 ms between decodes, 414-432 us with 3 ms."""
    cv2.setNumThreads(1)
    data = np.frombuffer(jpeg, np.uint8)
    decode_ns, count, deadline = 0, 0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started_wall, started = time.perf_counter(), time.thread_time_ns()
        np.asarray(cv2.imdecode(data, cv2.IMREAD_UNCHANGED)).astype(np.float32)
        decode_ns += time.thread_time_ns() - started
        count += 1
        time.sleep(max(0.0, interval_s - (time.perf_counter() - started_wall)))
    return decode_ns / max(1, count) / 1e3


def library_decode_under_load_us(
    jpeg: bytes,
    gw: GatewayProcess,
    model: BenchModel,
    protocol: str,
    concurrency: int,
    window_ms: int,
    out: Path,
) -> float:
    """OpenCV's loop (imdecode + astype(float32)) on a thread of this process while the gateway serves the
    float model at the same concurrency: the library under the CPU contention the gateway's decoder threads
    meet (on 2 cores, OpenVINO's busy stream threads and the loader share them)."""
    holder: dict[str, float] = {}

    def loop() -> None:
        time.sleep(1.0)  # the loader's warm-up
        holder.update(library_decode_us(jpeg, seconds=max(0.5, window_ms / 1000 - 0.5)))

    thread = threading.Thread(target=loop)
    thread.start()
    gateway_run(gw, model, protocol, concurrency, window_ms, out)
    thread.join()
    return holder["imdecode_to_fp32"]


def library_decode_between_inferences_us(jpeg: bytes, model_path: Path, seconds: float = 4.0) -> float:
    """OpenCV's loop (imdecode + astype(float32)) with a ResNet inference (OpenVINO, this process, the same
    NHWC layout) after each decode, timing the decodes only: the library in the gateway's situation, where
    every decode follows an inference that has just swept the caches."""
    core = ov.Core()
    model = core.read_model(str(model_path))
    ppp = ov.preprocess.PrePostProcessor(model)
    ppp.input().tensor().set_layout(ov.Layout("NHWC"))
    ppp.input().model().set_layout(ov.Layout("NCHW"))
    compiled = core.compile_model(ppp.build(), "CPU", {"PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    data = np.frombuffer(jpeg, np.uint8)
    decode_ns, count, deadline = 0, 0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.thread_time_ns()
        image = np.asarray(cv2.imdecode(data, cv2.IMREAD_UNCHANGED)).astype(np.float32)
        decode_ns += time.thread_time_ns() - started
        count += 1
        request.infer({0: image[np.newaxis]})
    return decode_ns / count / 1e3


def decode_counters(gw: GatewayProcess, model: str) -> tuple[float, float]:
    with urllib.request.urlopen(f"http://{gw.http_url}/metrics", timeout=10) as r:
        text = r.read().decode()
    values = []
    for family in ("ovgw_images_decoded", "ovgw_image_decode_cpu_us"):
        found = re.search(rf'^{family}\{{name="{model}",version="1"\}} (\S+)$', text, re.M)
        values.append(float(found.group(1)) if found else 0.0)
    return values[0], values[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadgen.bench.images")
    p.add_argument("--repetitions", type=int, default=3)
    p.add_argument("--window-ms", type=int, default=3000)
    p.add_argument("--concurrency", default="1,4,8")
    p.add_argument("--output", default=str(ROOT / "bench-results"))
    args = p.parse_args(argv)
    out_dir = Path(args.output) / (time.strftime("%Y%m%d-%H%M%S") + "-images")
    (out_dir / "raw").mkdir(parents=True)

    path = CACHE / "bench_models" / "resnet50" / "1" / "model.xml"
    if not path.exists():
        save(resnet50_shaped(), path.parent)
    jpeg = cv2.imencode(".jpg", natural_picture(), [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    data_file = out_dir / "jpeg.json"
    data_file.write_text(json.dumps({"data": [{"input": {"b64": base64.b64encode(jpeg).decode()}}]}))
    tiny = CACHE / "bench_models" / "tiny_image" / "1" / "model.xml"
    if not tiny.exists():
        save(tiny_image_model(), tiny.parent)
    base = {"base_path": str(path.parent.parent), "layout": "NHWC:NCHW"}
    config = {
        "model_config_list": [
            {"config": {"name": "resnet50_float", **base}},
            {"config": {"name": "resnet50_jpeg", **base, "image_inputs": ["input"]}},
            {
                "config": {
                    "name": "tiny_jpeg",
                    "base_path": str(tiny.parent.parent),
                    "image_inputs": ["input"],
                }
            },
        ]
    }
    (out_dir / "config.json").write_text(json.dumps(config))
    models = {
        "float": BenchModel("resnet50_float", path, "", ["input:224,224,3"]),
        "jpeg": BenchModel("resnet50_jpeg", path, "", []),
    }
    results: dict = {"jpeg_bytes": len(jpeg), "rows": []}
    gw = start_gateway(["--config_path", str(out_dir / "config.json")], out_dir / "gateway.log", timeout=300)
    try:
        for protocol in ("grpc", "http"):
            for concurrency in (int(c) for c in args.concurrency.split(",")):
                row: dict = {"protocol": protocol, "concurrency": concurrency}
                for kind, model in models.items():
                    extra = ["--input-data", str(data_file)] if kind == "jpeg" else []
                    decoded0 = decode_counters(gw, "resnet50_jpeg")
                    runs = [
                        gateway_run(gw, model, protocol, concurrency, args.window_ms, out_dir / "raw", extra)
                        for _ in range(args.repetitions)
                    ]
                    decoded1 = decode_counters(gw, "resnet50_jpeg")
                    row[kind] = {
                        "throughput": statistics.median(r["throughput"] for r in runs),
                        "server_cpu_us_per_image": statistics.median(
                            r["server_cpu_us_per_request"] for r in runs
                        ),
                        "p50_us": statistics.median(r["p50_us"] for r in runs),
                        "runs": runs,
                    }
                    if kind == "jpeg":
                        images = decoded1[0] - decoded0[0]
                        row["gateway_decode_us_per_image"] = (decoded1[1] - decoded0[1]) / max(1.0, images)
                row["throughput_ratio"] = row["jpeg"]["throughput"] / row["float"]["throughput"]
                row["library_under_load_us"] = library_decode_under_load_us(
                    jpeg, gw, models["float"], protocol, concurrency, args.window_ms, out_dir / "raw"
                )
                tiny_model = BenchModel("tiny_jpeg", tiny, "", [])
                decoded0 = decode_counters(gw, "tiny_jpeg")
                tiny_runs = [
                    gateway_run(gw, tiny_model, protocol, concurrency, args.window_ms, out_dir / "raw",
                                ["--input-data", str(data_file)])
                    for _ in range(args.repetitions)
                ]  # fmt: skip
                decoded1 = decode_counters(gw, "tiny_jpeg")
                row["tiny_decode_us_per_image"] = (decoded1[1] - decoded0[1]) / max(
                    1.0, decoded1[0] - decoded0[0]
                )
                row["tiny_throughput"] = statistics.median(r["throughput"] for r in tiny_runs)
                # the decoder thread's pace through the tiny model: one image per answered request
                row["library_paced_us"] = library_decode_paced_us(jpeg, 1 / max(1.0, row["tiny_throughput"]))
                results["rows"].append(row)
                floats, jpegs = row["float"], row["jpeg"]
                print(
                    f"{protocol} c={concurrency}: float {floats['throughput']:.1f}/s "
                    f"({floats['server_cpu_us_per_image']:.0f} us CPU/img), jpeg {jpegs['throughput']:.1f}/s "
                    f"({jpegs['server_cpu_us_per_image']:.0f} us CPU/img): {row['throughput_ratio']:.2f} x; "
                    f"decode {row['gateway_decode_us_per_image']:.0f} us/img "
                    f"(library under the same load {row['library_under_load_us']:.0f}; through a tiny model "
                    f"{row['tiny_decode_us_per_image']:.0f})",
                    flush=True,
                )
    finally:
        gw.stop()
    results["library"] = library_decode_us(jpeg)
    results["library"]["between_inferences"] = library_decode_between_inferences_us(jpeg, path)
    for row in results["rows"]:
        row["decode_ratio"] = row["gateway_decode_us_per_image"] / results["library"]["imdecode_to_fp32"]
        row["decode_ratio_under_load"] = row["gateway_decode_us_per_image"] / row["library_under_load_us"]
        row["tiny_decode_ratio"] = row["tiny_decode_us_per_image"] / results["library"]["imdecode_to_fp32"]
        row["tiny_decode_ratio_paced"] = row["tiny_decode_us_per_image"] / row["library_paced_us"]
    table = markdown(results, args.repetitions)
    write_results(out_dir, results, table, bench="images", args=args)
    print(table)
    print(f"written to {out_dir}")
    return 0


def markdown(results: dict, repetitions: int) -> str:
    lib = results["library"]
    lines = [
        f"# ResNet-50-shaped: 224x224 JPEG ({results['jpeg_bytes']} bytes) vs FP32 tensors "
        f"(medians of {repetitions} runs)",
        "",
        f"OpenCV's own loop, one thread, CPU per image: imdecode {lib['imdecode']:.0f} us, imdecode + "
        f"astype(float32) {lib['imdecode_to_fp32']:.0f} us, idle machine; the same with a ResNet inference "
        f"(OpenVINO, in process) after each decode, decodes timed: {lib['between_inferences']:.0f} us; "
        "and the same loop on a thread "
        "while the gateway serves the float model at the same concurrency (the contention the gateway's "
        "decoder threads meet). The gateway's decode cost is its decoder threads' CPU per image (decode, "
        "channel check, conversion to FP32; no resize at 224x224); through ResNet it includes the cache "
        "misses each inference leaves (ResNet's 97 MB of weights pass through the caches between two "
        "decodes), through the tiny model (a mean over the image) it is the gateway's own cost; beside it "
        "OpenCV's loop paced like the tiny model's requests (one decode per answered request's interval, "
        "the thread sleeping between them: a decode after an idle gap costs more than one straight after "
        "another).",
        "",
        "| protocol | concurrency | float img/s | float server CPU us/img | JPEG img/s "
        "| JPEG server CPU us/img | JPEG / float | gateway decode us/img | decode / library idle "
        "| library under the same load us/img | decode / library under load "
        "| decode through a tiny model us/img | tiny decode / library idle "
        "| library paced like those requests us/img | tiny decode / library paced |",
        "|" + " --- |" * 15,
    ]
    for row in results["rows"]:
        cells = [
            row["protocol"], str(row["concurrency"]), f"{row['float']['throughput']:.1f}",
            f"{row['float']['server_cpu_us_per_image']:.0f}", f"{row['jpeg']['throughput']:.1f}",
            f"{row['jpeg']['server_cpu_us_per_image']:.0f}", f"{row['throughput_ratio']:.2f}",
            f"{row['gateway_decode_us_per_image']:.0f}", f"{row['decode_ratio']:.2f}",
            f"{row['library_under_load_us']:.0f}", f"{row['decode_ratio_under_load']:.2f}",
            f"{row['tiny_decode_us_per_image']:.0f}", f"{row['tiny_decode_ratio']:.2f}",
            f"{row['library_paced_us']:.0f}", f"{row['tiny_decode_ratio_paced']:.2f}",
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
