"""Benchmarks for fastgw.

`python -m bench.stream` measures what the gateway adds on the streaming path
(throughput, CPU per request, time-to-first-event, memory) against its own mock
provider used as upstream; `bench.loadgen` is the HTTP/1.1 load generator it
drives, usable on its own with `python -m bench.loadgen --help`.

This package imports nothing from `fastgw`: the gateway is started as a
subprocess, exactly as an operator would run it.
"""
