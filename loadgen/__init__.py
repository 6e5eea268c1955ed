"""A perf_analyzer-style load generator (issue 3); see loadgen/README.md when it lands."""
