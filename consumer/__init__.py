"""The consumer: the worker loop and what runs it, and the operator's tools.

What lives here: the worker loop (`worker`), the task handlers (`handlers`), what a worker is
started with (`spec`), the pools that start, reap and replace workers (`supervisor`, processes;
`threads`, threads) and what a death counts for (`restarts`, `inflight`, `shutdown`), the live
table (`live`); and the operator's tools: `status` (a queue family's figures and workers),
`metrics` (Prometheus), `dashboard/`, `admin` (purge, dead letters) and `watch` (status and
events in a terminal); `cli` is the `consumer` command.

What it may import: `common` (backends only through `common.factory`, which builds them), the
standard library and its own dependencies (typer, rich, prometheus_client; starlette and
uvicorn in `dashboard/`). Never `producer`, `lessons` or `bench`, and never pika: the broker is
`common.rabbitmq`'s. pyproject.toml's [tool.importlinter] contracts hold this.
"""
