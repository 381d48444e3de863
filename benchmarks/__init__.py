"""Speed, memory and detection benchmarks, run as `python -m benchmarks.NAME`; their results sit beside them."""
