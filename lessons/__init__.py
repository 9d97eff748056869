"""The seed course, runnable: each topic of the classic `multiprocessing` course as a command
that first runs the course's own example (`lessons.course`), then shows the same idea on the
local backend and on RabbitMQ, in the course's Chinese or in English (`lessons.i18n`).

    python -m lessons                       # the list
    python -m lessons daemon --lang zh
    python -m lessons mutex --backend rabbitmq --no-lock

Each lesson module has `run(...)`, which returns a plain result (a dataclass the tests check);
run from the command line it announces each step and draws each part as it is measured
(`lessons.show`). `render(result)` prints a finished result at once. See docs/lessons.md.

What it may import: the product's public names (`common`, `consumer`, `producer`: no name with
a leading underscore), its backends only through `common.factory`, and typer and rich (the
command line, `lessons.show`); never pika itself, nor `bench`. tests/test_layers.py and
pyproject.toml's [tool.importlinter] contracts hold this.
"""

#: command -> (original topic name, module)
LESSONS = {
    "process-objects": ("进程对象 (process objects)", "lessons.process_objects"),
    "zombie-orphan": ("僵尸进程与孤儿进程 (zombie and orphan processes)", "lessons.zombie_orphan"),
    "daemon": ("守护进程 (daemon processes)", "lessons.daemon"),
    "mutex": ("互斥锁 (the mutex)", "lessons.mutex"),
    "queues": ("队列 / 进程间通信 (queues and IPC)", "lessons.queues"),
    "producer-consumer": ("生产者消费者模型 (producer-consumer)", "lessons.producer_consumer"),
    "threads": ("线程 (threads)", "lessons.threads"),
    "compare": ("both backends side by side", "lessons.compare"),
}
