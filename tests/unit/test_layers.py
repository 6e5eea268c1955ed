"""The package's folders are layers: a module imports only from its own layer and the ones below it
(docs/architecture.md). Read from the source, so that a new upward import fails here, not in review."""

from __future__ import annotations

import re
from pathlib import Path

GATEWAY = Path(__file__).resolve().parents[2] / "gateway"
# Bottom to top. `proto` is generated code that imports nothing of ours; the package root (cli, serve,
# healthcheck, demo models, testing) sits above every folder.
LAYERS = ("proto", "core", "security", "config", "codecs", "memory", "observability", "scheduling", "runtime",
          "serving", "pipelines", "dataplane", "transports", "workers")  # fmt: skip
ROOT_LEVEL = len(LAYERS)


def _level(module: str) -> int:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else ROOT_LEVEL


def test_every_layer_imports_only_from_below():
    upward = []
    for path in sorted(GATEWAY.rglob("*.py")):
        module = ".".join(path.relative_to(GATEWAY.parent).with_suffix("").parts)
        for imported in re.findall(r"^\s*(?:from|import) (gateway[\w.]*)", path.read_text(), re.M):
            if _level(imported) > _level(module):
                upward.append(f"{module} imports {imported}")
    assert not upward, "imports from a higher layer:\n" + "\n".join(upward)


def test_every_folder_is_a_layer():
    folders = {p.name for p in GATEWAY.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == set(LAYERS), f"folders not placed in LAYERS (or gone): {folders ^ set(LAYERS)}"
