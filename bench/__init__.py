"""Benchmark harness: taskshuttle beside raw pika, raw multiprocessing, Celery and Dramatiq.

Run it with ``python bench/run.py`` (see ``bench/README.md``). Nothing here is imported by the
library or its tests, except the smoke test that runs the harness as a subprocess.

What it may import: the product's public names (`common`, `consumer`, `producer`: no name with
a leading underscore), its backends only through `common.factory`; pika where it measures from
outside or measures raw pika (`bench.broker`: the raw publisher, the queue sampler and the gate
it measures every system with; `bench.baselines`; and the tracers of `bench.timeline` and
`bench.e2e`, which wrap pika's channel methods), Celery and Dramatiq for their own rows, and
rich and matplotlib for its report. tests/test_layers.py holds the first two.
"""
