"""Benchmarks for fastgw.

`python -m bench.stream` measures what the gateway adds on the streaming path
(throughput, CPU per request and per event, time-to-first-event, memory) against
its own mock provider used as upstream, optionally with the pii-detector output
policy on and generated prose (with or without PII) as the reply text;
`bench.loadgen` is the HTTP/1.1 load generator it drives, usable on its own with
`python -m bench.loadgen --help`. `bench.trace` stamps the arrival of every SSE
event (holdback measurement), `bench.text` generates the reply texts, and
`python -m bench.pii` runs the pii-detector comparison (off / redact on prose /
redact on PII text, CPU per event and holdback in events). `python -m bench.streams2k` opens many
concurrent long-lived paced streams (2,000 at 20 ms per event by default) through one worker and reports
the inter-event gaps at the client (stalls), TTFB, and the worker's RSS per open stream.

`python -m bench scale` measures the costs that should stay flat as the work grows (stream length, concurrent
streams on one worker, safety-filter term count, workers; bench/scale.py). `python -m bench run` runs systems side by side (fastgw, fastgw with the redaction chain, nginx as the
reference, the upstream directly) and writes the table, JSON and plots; `python -m bench.micro` times the
hot-path pieces in-process (SSE decode/split, chunk framing, event JSON decoding, scanning, the relays), so a
regression shows up where it happens; `bench/locustfile.py` is a locust user for operators load-testing their
own deployment (time to first token and tokens/s as custom metrics); `python -m bench.soak` runs mixed traffic
with injected upstream faults, early disconnects, slow readers and policy blocks against 2 workers and checks
outcomes, memory growth, file descriptors and pooled connections (`bench.faulty_upstream` is its upstream).

Apart from `bench.micro`, which measures fastgw's functions directly, this package imports nothing from
`fastgw`: the gateway is started as a subprocess, exactly as an operator would run it.
"""
