"""Custom nodes: code in a pipeline that is not a model. Two kinds of library (a shared library with
OVMS's C ABI: c_node.py; a Python class: python_node.py), one contract (node_contract.py).

Each pipeline node gets its own instance (`initialize` with the node's params), made when the pipeline
is built and deinitialized once nothing uses it any more (the pipeline retired and its last request and
output buffer gone). `execute` runs in a thread (on the event loop once it has proved to take well under a
millisecond, see executor.py) and may run concurrently for several requests. Inputs are read-only views of
the upstream arrays; outputs are checked against the contract.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from gateway.core.errors import ConfigError
from gateway.pipelines.c_node import CLibrary
from gateway.pipelines.python_node import PythonLibrary, is_python_library

log = logging.getLogger(__name__)

Library = CLibrary | PythonLibrary


@dataclass(frozen=True, slots=True)
class LoadedLibrary:
    """A library from custom_node_library_config_list, loaded, or why it could not be."""

    name: str
    base_path: str
    library: Library | None
    error: str = ""


def load_library(name: str, base_path: str) -> LoadedLibrary:
    try:
        library: Library = (
            PythonLibrary(name, base_path) if is_python_library(base_path) else CLibrary(name, base_path)
        )
    except ConfigError as e:
        log.error("%s", e)
        return LoadedLibrary(name, base_path, None, str(e))
    return LoadedLibrary(name, base_path, library)
