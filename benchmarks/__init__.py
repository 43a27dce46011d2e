"""Speed and memory benchmarks (make bench); figures go into the README."""
