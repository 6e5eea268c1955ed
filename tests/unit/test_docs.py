"""The documentation keeps up with the code: every flag and metric documented, every link alive, and no
reference to what a clone does not have (an issue number, a results folder)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.cli import build_parser
from gateway.observability.metrics import ALL_FAMILIES
from gateway.transports.rest.openapi import document

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
# What a clean clone does not have: git-ignored folders and build outputs.
UNTRACKED = {".git", ".venv", ".cache", "bench-results", "build", "dist", "__pycache__", ".pytest_cache",
             ".ruff_cache", ".mypy_cache", ".schemathesis"}  # fmt: skip
TEXT_SUFFIXES = {
    ".py",
    ".pyi",
    ".md",
    ".toml",
    ".yaml",
    ".yml",
    ".json",
    ".txt",
    ".sh",
    ".c",
    ".h",
    ".proto",
    "",
}


def _docs_text() -> str:
    return "\n".join(p.read_text() for p in sorted(DOCS.rglob("*.md")))


def _repository_files() -> list[Path]:
    return [
        p
        for p in ROOT.rglob("*")
        if p.is_file()
        and p.suffix in TEXT_SUFFIXES
        and not UNTRACKED.intersection(p.relative_to(ROOT).parts)
        and not any(part.endswith(".egg-info") for part in p.relative_to(ROOT).parts)
    ]


def test_every_cli_flag_is_documented():
    docs = _docs_text()
    flags = [
        opt for action in build_parser()._actions for opt in action.option_strings if opt.startswith("--")
    ]
    missing = [f for f in flags if f != "--help" and not re.search(rf"{re.escape(f)}(?![\w])", docs)]
    assert not missing, f"flags that docs/ never mentions: {missing}"


def test_every_metric_family_is_documented():
    metrics_page = (DOCS / "metrics.md").read_text()
    missing = [f for f in ALL_FAMILIES if f not in metrics_page]
    assert not missing, f"metric families docs/metrics.md never mentions: {missing}"


def test_every_rest_route_is_documented():
    protocol_page = (DOCS / "protocol.md").read_text()
    missing = [path for path in document()["paths"] if f"`{path}`" not in protocol_page]
    assert not missing, f"REST routes docs/protocol.md never lists: {missing}"


def test_readme_stays_short():
    lines = (ROOT / "README.md").read_text().count("\n")
    assert lines <= 200, f"README.md has {lines} lines: reference material belongs in docs/"


@pytest.mark.parametrize(
    "page", ["README.md", "CONTRIBUTING.md", *sorted(str(p.relative_to(ROOT)) for p in DOCS.rglob("*.md"))]
)
def test_relative_links_resolve(page):
    path = ROOT / page
    broken = [
        target
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text())
        if "://" not in target and not (path.parent / target).exists()
    ]
    assert not broken, f"{page} links to files that do not exist: {broken}"


def test_nothing_names_an_issue_number_or_a_results_folder():
    pattern = re.compile(r"\bissues? #?\d+|bench-results/\d", re.IGNORECASE)
    found = [
        f"{p.relative_to(ROOT)}:{n}: {line.strip()[:100]}"
        for p in _repository_files()
        for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
        if pattern.search(line)
    ]
    assert not found, "references a clone cannot follow:\n" + "\n".join(found)
