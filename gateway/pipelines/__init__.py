"""OVMS pipelines: the graph, its executor, the registry, custom nodes (C ABI and Python)."""
