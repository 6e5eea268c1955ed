"""The benchmarks of `make bench`, their floors and peers, and docs/performance.md's generator."""
