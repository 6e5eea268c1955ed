"""make bench, object storage: start to ready for a ResNet-50-sized model (random weights, ~100 MB of FP32)
from each object store against the same model on local disk, and what loading and polling cost in requests
and bytes.

The stores are the local servers the tests use (S3 on moto, GCS on fake-gcs-server, Azure Blob on
Azurite), each behind a counting reverse proxy on loopback (loadgen/bench/counting_proxy.py). Each
repetition takes turns, in this order, per store:
- local: the gateway on the local folder, start to ready (fresh compiled-blob cache: it compiles);
- download: the store's own SDK fetching the version's files (boto3's transfer manager, Azure's
  `download_blob(max_concurrency=8)`, GCS's media GET): the store's throughput here;
- remote: the gateway on the store's URL with an empty model cache, start to ready;
- restart: the same again with the model cache kept: the bytes it fetched are only the listing's.
Then, once per store, the gateway left polling every second for `--poll-seconds`: requests per poll.

Target: remote <= 1.3 x (local + download), the median of each repetition's ratio; polling an unchanged
repository costs one listing request per model per poll.

    python -m loadgen.bench.object_storage [--repetitions 3] [--stores s3,gcs,azure] [--poll-seconds 10]
                                           [--model resnet50|dummy]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

from gateway.demo_models import dummy_model, save
from gateway.testing import start_gateway
from loadgen.bench.counting_proxy import CountingProxy
from loadgen.bench.models import resnet50_shaped
from loadgen.bench.runs import write_results
from loadgen.bench.throughput import ROOT

TARGET = 1.3


class Store:
    """One store kind behind a counting proxy: the URL and environment the gateway is given, and a download
    of the version with the store's own SDK, through the same proxy."""

    def __init__(self, kind: str):
        from tests.support.object_stores import CONTAINER, start_store

        self.kind, self.container = kind, CONTAINER
        self.under_test = start_store(kind)
        self.under_test.create_container()
        server = self.under_test.server
        upstream = server.blob_endpoint.rsplit("/", 1)[0] if kind == "azure" else server.endpoint
        self.proxy = CountingProxy(upstream)

    def upload(self, folder: Path) -> None:
        self.under_test.upload_folder(folder, "resnet/1")

    @property
    def url(self) -> str:
        if self.kind == "s3":
            return f"s3://127.0.0.1:{self.proxy.port}/{self.container}/resnet"
        return self.under_test.url("resnet")

    def environ(self) -> dict[str, str]:
        env = self.under_test.environ()
        if self.kind == "gcs":
            env["STORAGE_EMULATOR_HOST"] = f"127.0.0.1:{self.proxy.port}"
        elif self.kind == "azure":
            endpoint = f"http://127.0.0.1:{self.proxy.port}/devstoreaccount1"
            env["AZURE_STORAGE_CONNECTION_STRING"] = self.under_test.server.connection_string(
                endpoint=endpoint
            )
        return env

    def download(self, into: Path) -> float:
        """Seconds to fetch resnet/1's files with the store's own SDK."""
        into.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        if self.kind == "s3":
            import boto3

            server = self.under_test.server
            client = boto3.client(
                "s3", endpoint_url=f"http://127.0.0.1:{self.proxy.port}", region_name="us-east-1",
                aws_access_key_id=server.access_key, aws_secret_access_key=server.secret_key,
            )  # fmt: skip
            for item in client.list_objects_v2(Bucket=self.container, Prefix="resnet/1/")["Contents"]:
                client.download_file(self.container, item["Key"], str(into / Path(item["Key"]).name))
        elif self.kind == "azure":
            from azure.storage.blob import BlobServiceClient

            connection = self.environ()["AZURE_STORAGE_CONNECTION_STRING"]
            container = BlobServiceClient.from_connection_string(connection).get_container_client(
                self.container
            )
            for blob in container.list_blobs(name_starts_with="resnet/1/"):
                with open(into / Path(blob.name).name, "wb") as out:
                    container.download_blob(blob.name, max_concurrency=8).readinto(out)
        else:
            base = f"http://127.0.0.1:{self.proxy.port}"
            listing = json.load(
                urllib.request.urlopen(f"{base}/storage/v1/b/{self.container}/o?prefix=resnet/1/")
            )
            for item in listing["items"]:
                quoted = urllib.parse.quote(item["name"], safe="")
                url = f"{base}/storage/v1/b/{self.container}/o/{quoted}?alt=media"
                with (
                    urllib.request.urlopen(url) as response,
                    open(into / Path(item["name"]).name, "wb") as out,
                ):
                    shutil.copyfileobj(response, out, 8 << 20)
        return time.perf_counter() - started

    def stop(self) -> None:
        self.proxy.stop()
        self.under_test.stop()


def start_to_ready(args: list[str], log: Path, env: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    gw = start_gateway(args, log, timeout=600, env=env)
    elapsed = time.perf_counter() - started
    gw.stop()
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--stores", default="s3,gcs,azure")
    parser.add_argument("--poll-seconds", type=float, default=10.0, help="how long to count polling requests")
    parser.add_argument(
        "--model", choices=["resnet50", "dummy"], default="resnet50", help="dummy: OVMS's tiny demo model"
    )
    parser.add_argument("--output", default=str(ROOT / "bench-results"))
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))  # the tests' store servers (tests/support)
    out = Path(args.output) / (time.strftime("%Y%m%d-%H%M%S") + "-object_storage")
    out.mkdir(parents=True, exist_ok=True)
    local = out / "local" / "resnet"
    save(resnet50_shaped(1) if args.model == "resnet50" else dummy_model(), local / "1")
    model_bytes = sum(p.stat().st_size for p in (local / "1").iterdir())
    results: dict = {"model_bytes": model_bytes, "stores": {}}
    for kind in args.stores.split(","):
        store = Store(kind)
        try:
            store.upload(local / "1")
            rounds = []
            for rep in range(args.repetitions):
                scratch = out / f"{kind}-{rep}"
                row: dict = {}
                row["local_s"] = start_to_ready(
                    [
                        "--model_name",
                        "resnet",
                        "--model_path",
                        str(local),
                        "--cache_dir",
                        str(scratch / "blobs-l"),
                    ],
                    scratch.with_suffix(".local.log"),
                )
                row["download_s"] = store.download(scratch / "sdk")
                store.proxy.reset()
                remote = ["--model_name", "resnet", "--model_path", store.url, "--cache_dir",
                          str(scratch / "blobs-r"), "--model_cache_dir", str(scratch / "cache")]  # fmt: skip
                row["remote_s"] = start_to_ready(remote, scratch.with_suffix(".remote.log"), store.environ())
                loaded = store.proxy.reset()
                row["remote_requests"], row["remote_bytes"] = loaded.total, loaded.response_bytes
                shutil.rmtree(scratch / "blobs-r")  # a restart that finds the download, not the blob
                row["restart_s"] = start_to_ready(
                    remote, scratch.with_suffix(".restart.log"), store.environ()
                )
                restarted = store.proxy.reset()
                row["restart_requests"], row["restart_bytes"] = restarted.total, restarted.response_bytes
                row["ratio"] = row["remote_s"] / (row["local_s"] + row["download_s"])
                rounds.append(row)
                print(f"{kind} {rep}: " + ", ".join(f"{k} {v:.3g}" for k, v in row.items()), flush=True)
                shutil.rmtree(scratch, ignore_errors=True)
            summary = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
            summary["throughput_mb_s"] = model_bytes / summary["download_s"] / 1e6
            summary["polls"], summary["poll_requests"], summary["poll_bytes"] = _poll_cost(store, out, args)
            summary["rounds"] = rounds
            results["stores"][kind] = summary
        finally:
            store.stop()
    write_results(out, results, markdown(results), bench="object_storage", args=args)
    print((out / "results.md").read_text())
    return 0


def _poll_cost(store: Store, out: Path, args: argparse.Namespace) -> tuple[int, int, int]:
    """Polls, requests and bytes while the gateway polls an unchanged repository every second."""
    gw = start_gateway(
        ["--model_name", "resnet", "--model_path", store.url, "--model_cache_dir", str(out / "poll-cache"),
         "--cache_dir", str(out / "poll-blobs"), "--object_store_poll_wait_seconds", "1"],
        out / f"{store.kind}.poll.log", timeout=600, env=store.environ(),
    )  # fmt: skip
    try:
        time.sleep(1.5)  # past the first poll after start-up
        store.proxy.reset()
        started = time.monotonic()
        time.sleep(args.poll_seconds)
        counts = store.proxy.reset()
        polls = round(time.monotonic() - started)  # one per second
    finally:
        gw.stop()
        shutil.rmtree(out / "poll-cache", ignore_errors=True)
        shutil.rmtree(out / "poll-blobs", ignore_errors=True)
    return polls, counts.total, counts.response_bytes


def markdown(results: dict) -> str:
    mb = results["model_bytes"] / 1e6
    lines = [
        f"# Object storage: start to ready for a model of {mb:.1f} MB, medians",
        "",
        "| store | local disk, s | SDK download, s (MB/s) | from the store, s | remote / (local + download) "
        f"(target <= {TARGET}) | requests, MB fetched | restart from the model cache, s: requests, MB | "
        "polling an unchanged repository: requests per poll |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for kind, s in results["stores"].items():
        per_poll = s["poll_requests"] / s["polls"] if s["polls"] else float("nan")
        lines.append(
            f"| {kind} | {s['local_s']:.2f} | {s['download_s']:.2f} ({s['throughput_mb_s']:.0f}) | "
            f"{s['remote_s']:.2f} | {s['ratio']:.2f} | "
            f"{s['remote_requests']:.0f}, {s['remote_bytes'] / 1e6:.1f} | "
            f"{s['restart_s']:.2f}: {s['restart_requests']:.0f}, {s['restart_bytes'] / 1e6:.3f} | "
            f"{per_poll:.2f} ({s['poll_requests']} in {s['polls']} polls) |"
        )
    lines += [
        "",
        "Local disk and the store run in turn within each repetition; the ratio is each repetition's, then "
        "the median. The stores are local servers on loopback, so the download is fast and the ratio shows "
        "the gateway's own overhead on top of it.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
