"""Triton's statistics and request outcomes; every Prometheus family."""
