"""Read the gateway's /metrics as Prometheus' own parser does."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def scrape(gw) -> dict:
    with urllib.request.urlopen(f"http://{gw.http_url}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(families, family, **labels) -> float:
    found = [
        s.value
        for s in families[family].samples
        if s.name in (family, family + "_total", family + "_count")
        and all(s.labels.get(k) == v for k, v in labels.items())
        and set(labels) | {"api"} >= set(s.labels) - {"le"}
    ]
    return sum(found)
