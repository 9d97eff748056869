"""Benchmark harness: taskshuttle beside raw pika, raw multiprocessing, Celery and Dramatiq.

Run it with ``python bench/run.py`` (see ``bench/README.md``). Nothing here is imported by the
library or its tests, except the smoke test that runs the harness as a subprocess.
"""
