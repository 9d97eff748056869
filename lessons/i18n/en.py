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
    "daemon.course.note": "With p.daemon = True, 总管正在死亡 was printed {dying_daemon} times: "
    "the emperor's process ended after {daemon_exit} s, and at exit Python terminated its "
    "daemonic child with SIGTERM, of which a plain child dies at once. Without it, "
    "{dying_plain} time: Python joined the child first, so the emperor's process lived "
    "{plain_exit} s, until the steward had slept and said it.",
    "daemon.course.odd": "Not what the course says: 总管正在死亡 was printed {dying_daemon} "
    "times with p.daemon = True (emperor gone after {daemon_exit} s) and {dying_plain} times "
    "without (after {plain_exit} s).",
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
    "daemon.step.consumer_dies": "taskshuttle on RabbitMQ: the `consumer` program is killed "
    "(SIGKILL) while its 2 daemon workers are busy; then another consumer starts",
    "daemon.consumer.table": "RabbitMQ: the consumer dies with tasks in hand; the broker puts "
    "them back",
    "daemon.col.done_before": "done before it died",
    "daemon.col.workers_after": "its workers running after",
    "daemon.col.back": "back in the queue",
    "daemon.col.done_in_all": "done in all",
    "daemon.broker.note": "On RabbitMQ nothing is a daemon of the producer: the broker holds "
    "the work (durable queue, persistent messages) whoever comes and goes. The daemon role "
    "moves to the consumer: its workers are daemon children of the `consumer` supervisor and "
    "die with it; a task they had not finished was never acked, so the broker puts it back in "
    "the queue for the next consumer.",
    # -- 互斥锁 -----------------------------------------------------------------------------
    "mutex.title": "互斥锁 · the mutex: the ticket office · backend {backend}",
    "mutex.method.mp-lock": "shared multiprocessing.Lock",
    "mutex.method.none": "no lock",
    "mutex.method.flock": "flock + purchase id",
    "mutex.method.single-active": "single-active-consumer queue",
    "mutex.method.lock-per-consumer": "multiprocessing.Lock per consumer",
    "mutex.course.with_lock": "with mutex = Lock()",
    "mutex.course.without_lock": "without the lock",
    "mutex.step.course": "the course's ticket office ({lock}): a data file, 9 buyer processes "
    "that search, then buy",
    "mutex.step.office": "taskshuttle, backend {backend}: {buyers} buyers on {consumers} worker "
    "processes, {method}",
    "mutex.course.table": "the course's program, run for real: {tickets} ticket(s) in data, "
    "9 buyers",
    "mutex.col.course_run": "run",
    "mutex.col.bought": "bought 买票成功",
    "mutex.col.refused": "refused 买票失败",
    "mutex.col.left": "left",
    "mutex.col.oversold": "oversold",
    "mutex.col.seconds": "seconds",
    "mutex.course.errors": "{run}: a buyer failed (its last lines):",
    "mutex.course.note": "With the lock {sold} buyer(s) bought, as many as there were tickets: "
    "buying became serial (并发变成串行), {locked_s} s against {unlocked_s} s without it. "
    "Without the lock {bought} buyers were told 买票成功 for {tickets} ticket(s), {oversold} "
    "too many: each read the count before anyone wrote it back (数据错乱).",
    "mutex.course.note_lucky": "With the lock {sold} buyer(s) bought, in {locked_s} s. "
    "Without it this run happened to oversell nothing ({bought} bought, {tickets} ticket(s), "
    "{unlocked_s} s): the race depends on timing; run it again.",
    "mutex.course.delay": "(The course's network delay is 1-3 s; here 0.1-0.3 s, the only "
    "change to its code.)",
    "mutex.office.table": "taskshuttle, backend {backend}: {tickets} tickets, {buyers} buyers, "
    "{consumers} worker processes, {ms:g} ms between check and buy",
    "mutex.col.method": "method",
    "mutex.cost": "+{seconds:.2f} s x{ratio:.1f}",
    "mutex.col.processes": "processes",
    "mutex.col.sold": "sold",
    "mutex.col.lock_cost": "the lock cost",
    "mutex.office.lost": "{method}: {lost} buyers got no answer",
    "mutex.office.replay": "{method}: {replayed} purchases sent again with the same ids (as a "
    "redelivery would): {sold} more tickets taken.",
    "mutex.office.safe.local": "The same as the course: one Lock made by the parent and handed "
    "to every worker makes check-and-buy one step; oversold {oversold}, at the cost in time "
    "shown (the buyers take turns).",
    "mutex.office.safe.rabbitmq": "What differs: a multiprocessing.Lock cannot reach a "
    "consumer on another machine (or one started apart from the producer). The file lock "
    "serializes the buyers who share the disk, and the purchase id makes a redelivered "
    "purchase a no-op; the single-active-consumer queue serializes at the broker: one consumer "
    "buys, the others stand by. Oversold: {oversold}.",
    "mutex.office.safe_failed": "The safe methods oversold {oversold} ticket(s): that is a bug; "
    "please report it.",
    "mutex.office.unsafe.local": "Without the lock, several buyers read the same count during "
    "the delay and each wrote count - 1: up to {oversold} buyers too many were told yes.",
    "mutex.office.unsafe.rabbitmq": "No lock oversells as locally (up to {oversold}). Nor does "
    "the course's Lock help: each consumer process can only make its own, and a lock nobody "
    "else takes excludes nobody.",
    "mutex.office.unsafe_lucky": "The unsafe runs oversold {oversold} this time: the race "
    "depends on timing (try a longer --delay).",
    # -- 线程 -------------------------------------------------------------------------------
    "threads.title": "线程 · threads · backend {backend} · this process is pid {pid}",
    "threads.step.basics": "threading.Thread: start 3 threads and join them; change a global "
    "from a thread, then from a child process",
    "threads.step.race": "4 threads add 1 to one shared counter 100 times each, {how}",
    "threads.step.measure": "the Worker loop, {workload}, as {who} (fastest of {repeat} runs)",
    "threads.basics.table": "each thread says who it is (current_thread().name, its pid)",
    "threads.col.name": "current_thread().name",
    "threads.basics.one_pid": "The main thread and its {count} threads all report pid {pid}: "
    "threads live inside one process (a process holds resources; its threads are what runs).",
    "threads.basics.pids": "The threads reported several pids, which should not happen: "
    "{pid} is this process.",
    "threads.basics.shared": "A global money = 100 set to 0 by a thread: the main thread then "
    "sees {after_thread} (threads share their process's data). Set to 0 by a child process: the "
    "main process still sees {after_process} (processes are isolated from each other).",
    "threads.race.with_lock": "with a threading.Lock",
    "threads.race.without_lock": "without a lock",
    "threads.race.table": "a shared counter: {threads} threads x {rounds} increments, each "
    "read, pause, write",
    "threads.col.expected": "expected",
    "threads.col.got": "counter at the end",
    "threads.col.lost": "updates lost",
    "threads.col.seconds": "seconds",
    "threads.race.note": "Without a lock {lost} of {expected} updates were lost: a thread read "
    "the counter, another ran in the pause and wrote, and the first wrote back its stale value "
    "plus one. With the lock: {locked_lost} lost, at the cost of taking turns ({locked_s} s "
    "against {unlocked_s} s). The same 互斥锁 as between processes, only cheaper: the data is "
    "already shared.",
    "threads.race.odd": "Unexpected: {lost} updates lost without the lock, {locked_lost} with "
    "it (of {expected}).",
    "threads.cpu": "cpu-bound",
    "threads.sleep": "sleep-bound",
    "threads.who.process": "{n} process(es)",
    "threads.who.thread": "{n} thread(s)",
    "threads.measure.table": "the same Worker loop as processes or as threads (fastest of "
    "{repeat} runs each)",
    "threads.col.workload": "workload",
    "threads.col.workers": "workers",
    "threads.col.tasks": "tasks",
    "threads.col.speedup": "speedup",
    "threads.col.cores_busy": "cores busy",
    "threads.col.at_once": "at once",
    "threads.measure.machine": "{cores} cores; load average {load} when this began (other "
    "programs take cores from the workers).",
    "threads.cpu.processes_parallel": "cpu-bound, {n} processes: x{speedup}, {cores} cores "
    "busy: they ran side by side on separate cores.",
    "threads.cpu.processes_starved": "cpu-bound, {n} processes: only x{speedup} ({cores} cores "
    "busy): they could run side by side, but other programs held the cores (load {load}).",
    "threads.cpu.threads_gil": "cpu-bound, {n} threads: x{speedup}, {cores} cores busy: they "
    "share one interpreter lock (the GIL), so only one of them runs Python code at a time.",
    "threads.cpu.threads_gain": "cpu-bound, {n} threads: x{speedup} ({cores} cores busy), more "
    "than the GIL should allow; the one-worker run was probably slowed by other programs.",
    "threads.sleep.as_well": "sleep-bound, {n} workers: threads x{threads}, processes "
    "x{processes}: a sleeping thread releases the GIL, so threads overlap ({at_once} at once) "
    "about as well as processes, and cost less.",
    "threads.sleep.behind": "sleep-bound, {n} workers: threads x{threads}, processes "
    "x{processes}: the threads overlapped ({at_once} at once) but fell behind this time.",
    "threads.measure.pids": "pids shows which is which: threads all report one process.",
    # -- 僵尸进程与孤儿进程 -------------------------------------------------------------------
    "zombie.title": "僵尸进程与孤儿进程 · zombie and orphan processes · backend {backend}",
    "zombie.gone": "gone",
    "zombie.step.zombies": "3 children exit and are not joined: their state, read from "
    "/proc/<pid>/stat, then join()",
    "zombie.step.pool": "a worker pool ({backend}): kill one worker with SIGKILL and watch the "
    "supervisor reap it",
    "zombie.step.orphan": "an orphan: a parent SIGKILLed while its child runs, inside a "
    "welfare home (a child subreaper) the lesson sets up",
    "zombie.step.machine": "who adopts an orphan on this machine, outside the lesson's home",
    "zombie.step.guard": "the supervisor `{program} ...` killed with SIGKILL: what its workers do",
    "zombie.zombies.table": "children that exited and were not joined (state from "
    "/proc/<pid>/stat)",
    "zombie.col.child": "child pid",
    "zombie.col.running": "running",
    "zombie.col.exited": "exited",
    "zombie.col.later": "0.3 s later",
    "zombie.col.joined": "after join()",
    "zombie.zombies.note": "Z = zombie (僵尸进程): dead, but its pid and exit status wait for "
    "the parent. join() collects them (waitpid) and the entry is gone. A parent that starts "
    "children forever and never joins them fills the process table with zombies.",
    "zombie.zombies.odd": "Not every child was seen as a zombie (Z) before join(): look at the "
    "table.",
    "zombie.pool.killed": "a worker pool ({backend}): worker {pid} killed with SIGKILL",
    "zombie.pool.before": "  its state until the supervisor looks: {state}",
    "zombie.pool.after": "  after WorkerPool.check() joined it: {state}; replaced by {new}; "
    "workers alive: {alive}",
    "zombie.orphan.heading": "孤儿进程 · an orphan",
    "zombie.orphan.started": "parent {parent} started child {child}: the child's ppid is {ppid}",
    "zombie.orphan.killed": "parent killed with SIGKILL: the child's ppid is now {ppid}, its "
    "state {state} (alive without its parent)",
    "zombie.orphan.home": "{home} is the lesson's welfare home (儿童福利院): a child subreaper "
    "(PR_SET_CHILD_SUBREAPER) standing in for pid 1; it adopted the orphan, then ended and "
    "reaped it.",
    "zombie.machine.init": "On this machine an orphan of the lesson's own process (pid "
    "{orphan}) went to pid {pid} ({name}): no ancestor of the lesson is a subreaper, so pid 1 "
    "is the welfare home, whose job is to reap the orphan when it ends.",
    "zombie.machine.subreaper": "On this machine an orphan of the lesson's own process (pid "
    "{orphan}) went to pid {pid} ({name}), not to pid 1: that ancestor registered as a child "
    "subreaper (as systemd --user, tini or a container's shim do), the nearest welfare home.",
    "zombie.guard.table": "the supervisor `{program} ...` (pid {pid}) killed with SIGKILL: "
    "its children",
    "zombie.col.role": "role",
    "zombie.col.ppid_after": "ppid after",
    "zombie.col.ended": "how it ended",
    "zombie.col.reaped_after": "reaped after (s)",
    "zombie.role.worker": "worker",
    "zombie.role.resource_tracker": "resource tracker",
    "zombie.killed_by": "killed by {signal}",
    "zombie.exit_code": "exit code {code}",
    "zombie.still_running": "still running: killed",
    "zombie.guard.strays": "children not ended within 10 s (strays): {strays}",
    "zombie.guard.note": "Each worker asked the kernel for SIGKILL when its parent dies "
    "(PR_SET_PDEATHSIG) and also watches os.getppid(): orphaned, it ends at once instead of "
    "running on unsupervised.",
    "zombie.guard.strays_note": "{strays} children outlived their supervisor by 10 s and were "
    "killed by the lesson.",
    "zombie.guard.rabbitmq": "On RabbitMQ nothing is lost by it: the broker redelivers "
    "whatever the dead workers held unacked.",
    "zombie.guard.local": "Locally the queue died with the parent anyway.",
    # -- 进程对象 ---------------------------------------------------------------------------
    "objects.title": "进程对象及其他方法 · process objects · backend {backend}",
    "objects.step.child": "start a child process and ask it who it is",
    "objects.step.terminate": "p.terminate(), then at once p.is_alive(), then p.join(): "
    "{tries} times",
    "objects.step.job.local": "a job of {tasks} tasks on 2 local workers (children of this "
    "process)",
    "objects.step.job.rabbitmq": "a job of {tasks} tasks through RabbitMQ, done by a `consumer` "
    "program started apart",
    "objects.who.table": "who is who",
    "objects.who.me": "this process",
    "objects.who.child": "a child it started",
    "objects.who.note": "current_process().pid and os.getpid() are the same number; the "
    "child's os.getppid() is {pid}, this process: every process has a pid (进程号), and knows "
    "its parent's.",
    "objects.who.odd": "Unexpected: the child's parent is not this process ({pid}).",
    "objects.terminate.table": "p.terminate(), then at once p.is_alive(); then p.join()",
    "objects.col.try": "try",
    "objects.col.alive_at_once": "is_alive() at once",
    "objects.col.join_ms": "join() waited (ms)",
    "objects.col.alive_after": "is_alive() after join",
    "objects.terminate.note": "is_alive() right after terminate() said True in {alive} of "
    "{tries} tries: terminate() only asks the OS to kill the child (SIGTERM), which takes a "
    "moment, and the code runs on at once. join() waits for that moment (exitcode -15 = "
    "killed by SIGTERM).",
    "objects.workers.table": "who ran the {tasks} tasks (every result names its worker)",
    "objects.col.host": "host",
    "objects.col.name": "process name",
    "objects.col.tasks": "tasks",
    "objects.workers.local": "ppid = {supervisor} = this process: locally the producer is the "
    "workers' parent, and they live and die in its process tree.",
    "objects.workers.rabbitmq": "ppid = {supervisor}: the `consumer` program, not this "
    "producer (pid {me}). On RabbitMQ producer and workers are no relatives; the host column "
    "would name another machine if the consumer ran there.",
    # -- 队列 / 进程间通信 --------------------------------------------------------------------
    "queues.title": "队列 / 进程间通信 · queues and IPC · backend {backend}",
    "queues.step.caveats": "queue.Queue and LifoQueue; a multiprocessing.Queue's full(), "
    "empty(), qsize(); a child's message",
    "queues.step.order.local": "{tasks} numbered tasks through the local queue, {consumers} "
    "consumer(s)",
    "queues.step.order.rabbitmq": "{tasks} numbered tasks through a RabbitMQ queue, "
    "{consumers} consumer(s)",
    "queues.fifo": "queue.Queue, put 1..5 then get: {order}  (队列: first in, first out)",
    "queues.lifo": "queue.LifoQueue (a stack):      {order}  (堆栈: first in, last out)",
    "queues.full": "multiprocessing.Queue({maxsize}) after {maxsize} puts: full() -> {full}",
    "queues.full_raised": "one more put(timeout=0.1): raised queue.Full after waiting 0.1 s",
    "queues.full_went_in": "one more put(timeout=0.1): went in",
    "queues.qsize": "qsize(): {size} (works on Linux; NotImplementedError on macOS)",
    "queues.qsize_none": "qsize(): NotImplementedError (macOS)",
    "queues.empty": "empty() right after put(): True in {empty} of {tries} tries",
    "queues.ipc": "a child (pid {pid}) put {said!r} on the queue; this process got it "
    "(进程间通信, IPC)",
    "queues.caveats.note": "put() returns before the item is in the pipe (a feeder thread "
    "writes it), and other processes put and get at the same time: full(), empty() and qsize() "
    "are only snapshots. Use get(timeout=...) and handle queue.Empty instead of asking first.",
    "queues.order.table": "FIFO order of results, tasks numbered as sent",
    "queues.col.consumers": "consumers",
    "queues.col.first": "first results to come back",
    "queues.col.out_of_order": "out of order",
    "queues.col.each_in_order": "each worker in order",
    "queues.of": "{n} of {tasks}",
    "queues.order.note": "One producer, one consumer: FIFO end to end. Several consumers: each "
    "still takes tasks in order, but they finish at different speeds, so results overtake each "
    "other ({late} of {tasks} came after a later-numbered one).",
    "queues.order.odd": "This run: {late} of {tasks} results came back out of order with "
    "several consumers; look at the table.",
    "queues.order.rabbitmq": "On RabbitMQ the queue is FIFO too; a requeued or redelivered "
    "message comes back later than its neighbours (see `compare`).",
    # -- 生产者消费者模型 ---------------------------------------------------------------------
    "pc.title": "生产者消费者模型 · the producer-consumer model · backend {backend}",
    "pc.step.sentinel": "plain multiprocessing: 3 consumers, 30 items, then one sentinel "
    "(None) per consumer",
    "pc.step.joinable": "plain multiprocessing: 3 daemon consumers on a JoinableQueue; the "
    "producer waits in join()",
    "pc.step.fairness": "fairness, backend {backend}, {how}: 1 slow task (1 s) then 60 fast "
    "ones, 2 workers",
    "pc.local_queue": "local queue",
    "pc.shutdown.table": "how the consumers learn the work is over (plain multiprocessing, "
    "3 consumers)",
    "pc.col.way": "way",
    "pc.col.items": "items",
    "pc.col.eaten": "eaten",
    "pc.col.alive_after": "consumers alive after",
    "pc.col.exitcodes": "exit codes",
    "pc.way.sentinel": "sentinel (None per consumer)",
    "pc.way.joinable": "JoinableQueue.join() + daemon",
    "pc.shutdown.note": "A sentinel ends each consumer from inside (exit code 0). With "
    "JoinableQueue the producer learns the work is done (join() returns after every "
    "task_done()), but the consumers still wait in get(): as 守护进程 they are terminated with "
    "their parent (exit code -15). taskshuttle does neither: each result (or ack) tells the "
    "producer a task is done, and a stop event ends the workers.",
    "pc.fairness.table": "fairness: 1 slow task then {fast} fast ones, 2 workers",
    "pc.col.seconds": "seconds",
    "pc.col.queued": "queued at 0.25 s",
    "pc.col.held": "held behind slow",
    "pc.col.fast_wait": "fast wait p50/max (s)",
    "pc.col.per_worker": "per worker",
    "pc.fairness.rabbitmq": "RabbitMQ hands each consumer up to `prefetch` unacked messages "
    "ahead. With 100, the queue empties at once into the two workers' buffers, and {held100} "
    "fast tasks dealt to the slow task's worker waited behind it. With 1 ({held1} waited), a "
    "worker gets its next task only after it acked the last: the free worker takes the fast "
    "ones. An ack is sent only after the handler finished, so a worker that dies gives its "
    "tasks back.",
    "pc.fairness.rabbitmq_odd": "This run: {held100} fast tasks waited behind the slow one "
    "with prefetch 100, {held1} with prefetch 1; look at the table.",
    "pc.fairness.local_none": "Here each worker took its tasks from the multiprocessing.Queue "
    "one at a time, like prefetch 1: nothing waited behind the slow task.",
    "pc.fairness.local_batches": "The local backend puts tasks on the multiprocessing.Queue in "
    "small batches (one put, one pickle per batch), and a worker takes a whole batch: that is a "
    "prefetch too. {held} fast tasks waited in the slow task's batch.",
    "pc.step.client": "the seed's model with the client, backend {backend}: 5 items of 4 "
    "kinds, {workers} workers; each result read by its handle",
    "pc.client.table": "each item by its handle, in the order sent ({workers} workers, seconds "
    "from the first send)",
    "pc.col.item": "item",
    "pc.col.worker": "worker · pid",
    "pc.col.ran": "ran from → to (s)",
    "pc.col.done_as": "came back",
    "pc.col.value": "value or error",
    "pc.item.make": "make a bun",
    "pc.item.eat": "eat a bun",
    "pc.item.note": "a note",
    "pc.item.later": "a note for later",
    "pc.item.burnt": "a burnt bun",
    "pc.client.note": "In the seed the producer puts items on one Queue and the consumers put "
    "their results on another: the results come in the order they are done (here {came}), and "
    "nothing tells which result is which item's unless the producer puts an id in the item and "
    "the consumer copies it back. Here send() gives each item an id and a handle, and the "
    "producer reads each result from its item's handle, in its own order ({sent}): which "
    "worker ran it, when, its value, or the TaskFailed its handler's last raise became. The "
    "item with a countdown could run from {not_before} s on, and held no worker while it "
    "waited. The same code runs on both "
    "backends: only {client} changes.",
    # -- 两个后端对照 ------------------------------------------------------------------------
    "compare.title": "compare: the same workload on both backends, {workers} workers each",
    "compare.step.throughput": "{backend}: {tasks} numbered tasks (throughput, latency, order)",
    "compare.step.crash": "{backend}: {tasks} tasks, one worker dies mid-task",
    "compare.step.restart": "{backend}: {tasks} tasks, the producer goes away and starts again",
    "compare.step.locking": "{backend}: the ticket office with a lock and without",
    "compare.table": "every figure below was measured in this run",
    "compare.row.tasks": "tasks (numbered, echo-like)",
    "compare.row.throughput": "throughput (tasks/s)",
    "compare.row.latency": "latency p50 / p99 (ms)",
    "compare.row.out_of_order": "results out of order",
    "compare.row.each_in_order": "each worker took its tasks in order",
    "compare.row.crash": "crash: one worker dies mid-task, in (tasks)",
    "compare.row.crash_lost": "crash: tasks lost",
    "compare.row.crash_redelivered": "crash: done after redelivery",
    "compare.row.crash_twice": "crash: done twice",
    "compare.row.restart_unfinished": "restart: unfinished when the producer stopped",
    "compare.row.restart_done": "restart: of those, done after the restart",
    "compare.row.lock_method": "locking: method",
    "compare.row.lock_oversold": "locking: oversold (20 tickets, 80 buyers)",
    "compare.row.lock_rate": "locking: buyers/s",
    "compare.row.nolock_oversold": "locking: oversold without a lock",
    "compare.row.seconds": "seconds this column took",
    "compare.note.local": "local: the dead worker's tasks came back through the in-flight "
    "registry ({recovered} put back; a bare multiprocessing.Queue would have lost them). The "
    "producer was stopped with Ctrl-C: the queue lived in its process, so a restarted producer "
    "starts empty.",
    "compare.note.rabbitmq": "rabbitmq: the broker requeued every delivery the dead worker had "
    "not acked (the task in hand and its prefetch), flagged redelivered; on a quorum queue (the "
    "default) each return also counts toward the message's delivery limit, so a task that kept "
    "killing its workers would end in the DLQ. The producer sent, confirmed and exited; the "
    "work waited in the broker for the consumers.",
    # -- docs/lessons.md ----------------------------------------------------------------------
    "docs.title": "The seed course, runnable · 课程,跑起来",
    "docs.language": "English",
    "docs.intro": "taskshuttle grew out of a classic Python course on concurrency, in Chinese "
    "(processes, zombies and orphans, daemons, the mutex, queues and IPC, the producer-consumer "
    "model, threads). Each of its topics is a command here. It opens with the course's own "
    "example, run for real, then shows the same idea in taskshuttle on the local backend (one "
    "process tree around a `multiprocessing.Queue`) and on RabbitMQ, and says what is the same, "
    "what differs and why. Every figure is measured in that run; each step is announced before "
    "it runs. `--lang zh|en` chooses the language (by default the locale's: LC_ALL, LC_MESSAGES "
    "or LANG starting with zh gives Chinese); `--json` prints the result as JSON; `--url` (or "
    "AMQP_URL) names another broker. The outputs below are real runs on a 2-core machine that "
    "was busy with other work: pids, timings and the counts of a race change from run to run.",
    "docs.linux": "Linux only: `zombie-orphan` (it reads /proc and calls prctl), `daemon` "
    "(/proc), `mutex --backend rabbitmq` and `compare` (fcntl.flock). Elsewhere they stop with "
    "one line, e.g. `lessons: error: zombie-orphan needs Linux (/proc, prctl); this system is "
    "darwin`.",
    "docs.snippet.process-objects": "The course's snippet:",
    "docs.snippet.zombie-orphan": "The course's text (it has no code for this topic):",
    "docs.snippet.daemon": "The course's example (the lesson runs it as it is, in "
    "`lessons/course/daemon.py`):",
    "docs.snippet.mutex": "The course's example, its `buy` and `run` (the lesson runs the whole "
    "program, `search` and the `data` file included, in `lessons/course/ticket_office.py`):",
    "docs.snippet.queues": "The course's text (it stops here, before any code):",
    "docs.snippet.producer-consumer": "The course names this topic, but its text stops before "
    "the code; this is the model the lesson runs in plain multiprocessing first:",
    "docs.snippet.threads": "The course names this topic; the lesson starts from "
    "`threading.Thread` itself:",
    "docs.teach.process-objects": "Every process has a pid, and knows its parent's; "
    "`terminate()` only asks the OS, so `is_alive()` right after it still says True, and "
    "`join()` waits for the death. Locally the producer is the workers' parent; on RabbitMQ "
    "they are children of a separate `consumer` program, no relatives of the producer.",
    "docs.teach.zombie-orphan": "A child that exited and was not joined is a zombie (state Z "
    "in /proc) until its parent joins it; the consumer's pool does that for a killed worker. "
    "An orphan goes to the nearest child subreaper or to pid 1 (the course's 儿童福利院): the "
    "lesson watches one inside a home of its own, and names the home this machine has. "
    "taskshuttle's workers never run on as orphans: they ask for SIGKILL when their parent "
    "dies.",
    "docs.teach.daemon": "The course's steward dies with the emperor and never prints "
    "总管正在死亡; without `daemon` the emperor's process waits for him. taskshuttle's daemon "
    "workers die with their producer too, a moment later: Python terminates daemonic children "
    "with SIGTERM at exit, and our workers catch it to finish the task in hand. On RabbitMQ "
    "nothing dies with the producer, and the tasks a dead consumer held go back to the queue.",
    "docs.teach.mutex": "The course's ticket office, run for real with its Lock and without: "
    "with it one buyer per ticket, serially; without it several buyers read the same count. "
    "Then taskshuttle's office, with a lock and without side by side, and the time the lock "
    "cost. On RabbitMQ no `multiprocessing.Lock` reaches the consumers: a file lock with a "
    "purchase id, or a single-active-consumer queue, does the same job.",
    "docs.teach.queues": "First in, first out (队列) and first in, last out (堆栈); what a "
    "`multiprocessing.Queue`'s full(), empty() and qsize() can promise across processes; and "
    "when FIFO order holds end to end on each backend.",
    "docs.teach.producer-consumer": "How the consumers learn that the work is over (a sentinel, "
    "or JoinableQueue with daemon consumers; acks in taskshuttle), and what prefetch does to "
    "fairness when one task is slow.",
    "docs.teach.threads": "`threading.Thread`: all threads report one pid and share their "
    "process's data, so an unguarded read-modify-write loses updates and a `threading.Lock` "
    "fixes it. Then the project's Worker loop as processes and as threads, on CPU- and "
    "sleep-bound work; the text under the table is chosen from the measured ratios.",
    "docs.teach.compare": "The same workloads on both backends, every cell measured in this "
    "run: throughput and latency, order, a worker that dies mid-task, a producer that goes "
    "away and comes back, and the ticket office.",
    "docs.notes.title": "Notes on what the lessons work around",
    "docs.notes": "- A handler sees only its payload, so it cannot reach the course's mutex "
    "nor the task's id. The mutex lesson's local pool makes one `multiprocessing.Lock` and "
    "hands it to each worker process as it starts (`WorkerSpec.initializer` runs "
    "`lessons.tasks.share_lock` there), and puts the task id into the payload.\n"
    "- The course's examples run as programs of their own (`lessons/course/`), with stdout "
    "line-buffered as on a terminal, so that their lines arrive whole and in the order they were "
    "printed. Their only changes are marked `# lesson:` (shorter sleeps).\n"
    "- The single-active-consumer queue is declared with `x-single-active-consumer` on top of "
    "the work queue's own arguments, so it needs consumer processes of its own "
    "(`lessons/single_active.py`).\n"
    "- The RabbitMQ runs use quorum queues, the default (`--queue-type`): a message a dead "
    "worker held comes back flagged redelivered, and each such return counts toward the "
    "message's delivery limit.\n"
    "- On the local backend, a worker that dies while its queue's feeder thread is writing "
    "leaves the shared queue's write lock taken; the crash in `compare` therefore happens "
    "0.2 s into a task.\n"
    "- Lessons that kill a supervisor (`zombie-orphan`, `daemon` on RabbitMQ) do it inside a "
    "child subreaper of their own, which reaps the orphans. The one orphan left to this "
    "machine's own welfare home is the one `zombie-orphan` makes on purpose to name it: it has "
    "exited by then, and its adopter reaps it.",
    "docs.generated": "Generated by `python -m lessons.docs > docs/lessons.md` on a machine "
    "with {cores} cores.",
}
