"""A perf_analyzer-style load generator: `python -m loadgen --help`.

Also holds install_perf_analyzer.sh, which installs Triton's real perf_analyzer
into a private folder (`make perf-analyzer`).
"""
