"""Compiled-blob caching: a second start imports from the cache; a corrupt blob is recompiled, not fatal."""

from __future__ import annotations

import urllib.request

import numpy as np
import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families

from tests.support.servers import start_test_gateway


def _cache_loads(gw) -> dict:
    with urllib.request.urlopen(f"http://{gw.http_url}/metrics", timeout=10) as r:
        text = r.read().decode()
    (family,) = [f for f in text_string_to_metric_families(text) if f.name == "ovgw_model_cache_loads"]
    return {(s.labels["name"], s.labels["result"]): s.value for s in family.samples}


def _serve_once(model_repo, cache, log):
    gw = start_test_gateway(
        ["--model_name", "simple", "--model_path", str(model_repo / "simple"), "--cache_dir", str(cache)], log
    )
    try:
        loads = _cache_loads(gw)
        client = grpcclient.InferenceServerClient(gw.grpc_url)
        a = np.ones((1, 16), np.int32)
        inputs = [grpcclient.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
        for t in inputs:
            t.set_data_from_numpy(a)
        np.testing.assert_array_equal(client.infer("simple", inputs).as_numpy("OUTPUT0"), 2 * a)
        client.close()
    finally:
        assert gw.stop() == 0
    return loads, log.read_text()


def test_second_start_imports_from_the_cache_and_corrupt_blobs_are_recompiled(model_repo, tmp_path):
    cache = tmp_path / "cache"
    loads, log = _serve_once(model_repo, cache, tmp_path / "first.log")
    assert loads == {("simple", "miss"): 1}
    assert "compiled and cached" in log
    blobs = list(cache.glob("*.blob"))
    assert blobs, "the first start must leave compiled blobs in the cache folder"

    loads, log = _serve_once(model_repo, cache, tmp_path / "second.log")
    assert loads == {("simple", "hit"): 1}
    assert "imported from the cache" in log

    for blob in blobs:
        blob.write_bytes(b"not a compiled model" * 64)
    loads, log = _serve_once(model_repo, cache, tmp_path / "third.log")
    assert loads == {("simple", "miss"): 1}  # recompiled, and the model serves
    assert any(b.read_bytes()[:20] != b"not a compiled model" for b in cache.glob("*.blob"))  # overwritten
