"""The Celery side of the comparison: one no-op task on the harness's broker and queue.

Read by both the harness (to send) and ``celery -A bench.celery_app worker`` (to run), with
the broker URL and queue name in the environment variables below. Celery's defaults stay
as they are (prefork pool, prefetch multiplier 4, ack before the task runs, no result
backend); remote control is off so no pidbox queue outlives a run.
"""

from __future__ import annotations

import os

from celery import Celery

from bench.stamps import STAMPS_ENV, LiveStamps
from common.settings import DEFAULT_AMQP_URL

URL_ENV = "TASKSHUTTLE_BENCH_AMQP_URL"
QUEUE_ENV = "TASKSHUTTLE_BENCH_QUEUE"
#: When and how many tasks each worker process ran, for the harness to read as they run.
stamps = LiveStamps(os.environ[STAMPS_ENV]) if os.environ.get(STAMPS_ENV) else None

app = Celery("taskshuttle_bench", broker=os.environ.get(URL_ENV, DEFAULT_AMQP_URL))
app.conf.update(
    task_default_queue=os.environ.get(QUEUE_ENV, "bench.celery"),
    broker_connection_retry_on_startup=True,
    worker_enable_remote_control=False,
    worker_hijack_root_logger=False,
)


@app.task(name="bench.noop")
def noop(pad: str) -> None:
    if stamps is not None:
        stamps.hit()
