"""The lessons' words in English. Same keys and placeholders as `lessons.i18n.zh`."""

STRINGS: dict[str, str] = {
    # -- shared ---------------------------------------------------------------------------
    "yes": "yes",
    "no": "no",
    "live.step": "» step {n}: {text}",
    "live.running": "running… {seconds:.1f} s",
    "error.linux": "{lesson} needs Linux ({needs}); this system is {system}",
    "list.title": "The course's lessons (python -m lessons <name> [--lang zh|en]):",
    "list.more": "Each takes --lang zh|en and --json, most --backend local|rabbitmq; --help "
    "for more.",
    "topic.process-objects": "进程对象及其他方法 · process objects",
    "topic.zombie-orphan": "僵尸进程与孤儿进程 · zombie and orphan processes",
    "topic.daemon": "守护进程 · daemon processes",
    "topic.mutex": "互斥锁 · the mutex: the ticket office",
    "topic.queues": "队列 / 进程间通信 · queues and IPC",
    "topic.producer-consumer": "生产者消费者模型 · the producer-consumer model",
    "topic.threads": "线程 · threads",
    "topic.compare": "both backends side by side",
    # -- 守护进程 ---------------------------------------------------------------------------
    "daemon.title": "守护进程 · daemon processes · backend {backend}",
    "daemon.without": "without p.daemon = True",
    "daemon.step.course": "the course's example ({daemon}): the emperor starts the steward "
    "and ends",
    "daemon.step.after_start": "setting p.daemon = True after p.start()",
    "daemon.step.emperor": "taskshuttle, local backend: a producer with 2 workers "
    "(daemon={daemon}) ends its main() while they work",
    "daemon.step.broker": "taskshuttle on RabbitMQ: the producer program sends 20 tasks and "
    "exits; consumers start afterwards",
    "daemon.course.printed": "the course's program ({args}) printed:",
    "daemon.course.table": "the course's example, run for real (the steward sleeps "
    "{seconds:g} s): how often each line was printed",
    "daemon.col.run": "run",
    "daemon.col.emperor_exit": "emperor's process exited after (s)",
    "daemon.course.after_start": "p.daemon = True after p.start(): {error} (the course: the "
    "line must come before start(), or it raises)",
    "daemon.course.note": "With p.daemon = True the steward printed 总管正在死亡 {dying_daemon} "
    "time(s): the emperor's process ended after {daemon_exit} s, and at exit Python terminated "
    "its daemonic child with SIGTERM, of which a plain child dies at once. Without it, Python "
    "joined the child first: the emperor's process lived {plain_exit} s, until the steward had "
    "printed 总管正在死亡 ({dying_plain} time(s)).",
    "daemon.local.table": "taskshuttle, local backend: the producer's main() ends while its 2 "
    "workers are busy with {count} tasks",
    "daemon.col.workers": "workers",
    "daemon.col.running_after": "running 0.1 s after main()",
    "daemon.col.producer_gone": "producer's process gone after (s)",
    "daemon.col.done_sent": "tasks done / sent",
    "daemon.col.left_running": "left running",
    "daemon.local.note": "The same as the course: daemon workers die with the producer, and "
    "the tasks not yet done die with its queue; without daemon the producer's process waits "
    "for its workers (here they stop once the queue is empty; a worker that never stopped "
    "would keep it alive for good). What differs: the steward died at once, our daemon workers "
    "a moment later. Python terminates daemonic children with SIGTERM; a plain child dies of "
    "it, but our workers catch SIGTERM to finish the task in hand before they exit, which is "
    "what a task queue wants (no task cut in half).",
    "daemon.broker.table": "RabbitMQ: the producer sends and exits; nothing dies with it",
    "daemon.col.sent": "tasks sent",
    "daemon.col.producer_exit": "producer's exit code",
    "daemon.col.producer_ran": "producer ran (s)",
    "daemon.col.in_broker": "then waiting in the broker",
    "daemon.col.done_later": "done by consumers started later",
    "daemon.broker.note": "On RabbitMQ nothing is a daemon of the producer: the broker holds "
    "the work (durable queue, persistent messages) whoever comes and goes. The daemon role "
    "moves to the consumer: its workers are daemon children of the `consumer` supervisor and "
    "die with it; a task they had not finished was never acked, so the broker puts it back in "
    "the queue for the next consumer.",
}
