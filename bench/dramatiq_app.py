"""The Dramatiq side of the comparison: one no-op actor on the harness's broker and queue.

Read by both the harness (to send) and ``dramatiq bench.dramatiq_app`` (to run), with the
broker URL and queue name in the environment variables below. Dramatiq's defaults stay as
they are (no publisher confirms, its default middleware, prefetch of two per thread).
"""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from bench.stamps import STAMPS_ENV, LiveStamps
from common.settings import DEFAULT_AMQP_URL

URL_ENV = "TASKSHUTTLE_BENCH_AMQP_URL"
QUEUE_ENV = "TASKSHUTTLE_BENCH_QUEUE"
#: When and how many tasks each worker process ran, for the harness to read as they run.
stamps = LiveStamps(os.environ[STAMPS_ENV]) if os.environ.get(STAMPS_ENV) else None

broker = RabbitmqBroker(url=os.environ.get(URL_ENV, DEFAULT_AMQP_URL))
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name="bench_noop", queue_name=os.environ.get(QUEUE_ENV, "bench.dramatiq"))
def noop(pad: str) -> None:
    if stamps is not None:
        stamps.hit()
