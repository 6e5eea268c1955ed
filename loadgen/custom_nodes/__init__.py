"""Custom node libraries for the tests and the pipeline benchmark: `resize_node.c` (OVMS's C ABI, built
here with gcc) and its Python twin `resize_node.py` (the gateway's Python contract)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

NODES = Path(__file__).resolve().parent


def build_c_library(out_dir: Path) -> Path:
    """resize_node.c as a shared library in `out_dir`; RuntimeError when there is no C compiler."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise RuntimeError(
            "no C compiler (gcc) on this machine; `make gcc` (part of `make test`) installs it"
        )
    target = out_dir / "libresize_node.so"
    result = subprocess.run(
        [gcc, "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o", str(target), str(NODES / "resize_node.c")],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"gcc could not build resize_node.c: {result.stderr[-2000:]}")
    return target
