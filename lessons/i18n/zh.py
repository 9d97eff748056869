"""课程各课的文字(中文)。键和 {占位符} 与 `lessons.i18n.en` 相同。"""

STRINGS: dict[str, str] = {
    # -- 公用 -------------------------------------------------------------------------------
    "yes": "是",
    "no": "否",
    "live.step": "» 第 {n} 步:{text}",
    "live.running": "运行中… {seconds:.1f} 秒",
    "error.linux": "{lesson} 需要 Linux({needs});本机是 {system}",
    "list.title": "课程各课(python -m lessons <名字> [--lang zh|en]):",
    "list.more": "每一课都接受 --lang zh|en 和 --json,大多数还接受 --backend local|rabbitmq;"
    "更多见 --help。",
    "topic.process-objects": "进程对象及其他方法",
    "topic.zombie-orphan": "僵尸进程与孤儿进程",
    "topic.daemon": "守护进程",
    "topic.mutex": "互斥锁:抢票",
    "topic.queues": "队列 / 进程间通信",
    "topic.producer-consumer": "生产者消费者模型",
    "topic.threads": "线程",
    "topic.compare": "两个后端对照",
    # -- 守护进程 ---------------------------------------------------------------------------
    "daemon.title": "守护进程 · 后端 {backend}",
    "daemon.without": "不设 p.daemon = True",
    "daemon.step.course": "课程的例子({daemon}):皇帝开设总管进程,随即寿终正寝",
    "daemon.step.after_start": "在 p.start() 之后再设 p.daemon = True",
    "daemon.step.emperor": "taskshuttle 本地后端:生产者开设 2 个 worker 子进程(daemon={daemon}),"
    "它们干活时主进程的代码结束",
    "daemon.step.broker": "taskshuttle 在 RabbitMQ 上:producer 程序发出 20 个任务后退出,"
    "之后才启动消费者",
    "daemon.course.printed": "课程的程序({args})打印:",
    "daemon.course.table": "课程的例子,真实运行(总管睡 {seconds:g} 秒):每一行打印了几次",
    "daemon.col.run": "运行",
    "daemon.col.emperor_exit": "皇帝的进程退出用时(秒)",
    "daemon.course.after_start": "在 p.start() 之后设 p.daemon = True:{error}"
    "(课程:这一句一定要放在 start 方法前面,不然会直接报错)",
    "daemon.course.odd": "与课程说的不同:设了 p.daemon = True,“总管正在死亡”打印了 "
    "{dying_daemon} 次(皇帝 {daemon_exit} 秒后退出);不设,打印了 {dying_plain} 次"
    "({plain_exit} 秒后退出)。",
    "daemon.course.note": "设了 p.daemon = True,总管打印“总管正在死亡” {dying_daemon} 次:"
    "皇帝的进程 {daemon_exit} 秒后结束,Python 在退出时用 SIGTERM 终止它的守护进程,"
    "普通子进程收到 SIGTERM 立刻死亡。不设,Python 退出前先等(join)子进程:"
    "皇帝的进程活了 {plain_exit} 秒,直到总管打印了“总管正在死亡”({dying_plain} 次)。",
    "daemon.local.table": "taskshuttle 本地后端:生产者的主进程代码结束时,"
    "2 个 worker 正忙着 {count} 个任务",
    "daemon.col.workers": "worker 子进程",
    "daemon.col.running_after": "0.1 秒后仍在运行",
    "daemon.col.producer_gone": "生产者退出用时(秒)",
    "daemon.col.done_sent": "完成 / 发出的任务",
    "daemon.col.left_running": "之后仍在运行",
    "daemon.local.note": "与课程相同:守护进程 worker 跟着生产者一起死,没做完的任务随它的队列"
    "一起消失;不是守护进程时,生产者的进程要等 worker 结束(这里队列空了它们就停;"
    "一个永不停止的 worker 会让它永远退不出)。不同之处:总管立刻就死了,我们的守护 worker "
    "稍后才死。Python 用 SIGTERM 终止守护子进程,普通子进程收到就死;我们的 worker 却捕获 "
    "SIGTERM,先把手上的任务做完再退出,这正是任务队列想要的(任务不会做到一半)。",
    "daemon.broker.table": "RabbitMQ:生产者发完就退出,没有什么跟着它死",
    "daemon.col.sent": "发出的任务",
    "daemon.col.producer_exit": "生产者的退出码",
    "daemon.col.producer_ran": "生产者运行(秒)",
    "daemon.col.in_broker": "之后在 broker 中等待",
    "daemon.col.done_later": "后来启动的消费者完成",
    "daemon.step.consumer_dies": "taskshuttle 在 RabbitMQ 上:`consumer` 程序的 2 个守护 worker "
    "正忙时,用 SIGKILL 杀掉它;然后启动另一个消费者",
    "daemon.consumer.table": "RabbitMQ:消费者带着手上的任务死去;broker 把任务放回队列",
    "daemon.col.done_before": "死前完成",
    "daemon.col.workers_after": "之后仍在运行的 worker",
    "daemon.col.back": "回到队列",
    "daemon.col.done_in_all": "总共完成",
    "daemon.broker.note": "在 RabbitMQ 上,没有谁是生产者的守护进程:任务存在 broker 里"
    "(持久化队列、持久化消息),谁来谁走都不影响。守护进程的角色落到了消费者身上:worker 是 "
    "`consumer` 主进程的守护子进程,跟着它一起死;它们没做完的任务没有确认(ack),"
    "broker 会把它放回队列,交给下一个消费者。",
    # -- 互斥锁 -----------------------------------------------------------------------------
    "mutex.title": "互斥锁 · 抢票 · 后端 {backend}",
    "mutex.method.mp-lock": "共享一把 multiprocessing.Lock",
    "mutex.method.none": "不加锁",
    "mutex.method.flock": "flock 文件锁 + 订单号",
    "mutex.method.single-active": "单活跃消费者队列",
    "mutex.method.lock-per-consumer": "每个消费者各自一把 Lock",
    "mutex.course.with_lock": "加锁 mutex = Lock()",
    "mutex.course.without_lock": "不加锁",
    "mutex.step.course": "课程的抢票程序({lock}):一个 data 文件,9 个买票子进程先查票再买票",
    "mutex.step.office": "taskshuttle 后端 {backend}:{buyers} 个买票任务,{consumers} 个 worker "
    "子进程,{method}",
    "mutex.course.table": "课程的程序,真实运行:data 里 {tickets} 张票,9 个用户",
    "mutex.col.course_run": "运行",
    "mutex.col.bought": "买票成功",
    "mutex.col.refused": "买票失败",
    "mutex.col.left": "余票",
    "mutex.col.oversold": "超卖",
    "mutex.col.seconds": "秒",
    "mutex.course.errors": "{run}:有用户出错(最后几行):",
    "mutex.course.note": "加锁:{sold} 个用户买票成功,正好是票数:将并发变成串行,"
    "用时 {locked_s} 秒,不加锁只用 {unlocked_s} 秒,牺牲效率但是保证了数据的安全。"
    "不加锁:{tickets} 张票却有 {bought} 个用户买票成功,多卖了 {oversold} 张:"
    "大家都在别人写回之前读到了同一个票数(数据错乱)。",
    "mutex.course.note_lucky": "加锁:{sold} 个用户买票成功,用时 {locked_s} 秒。"
    "不加锁这一次碰巧没有超卖({tickets} 张票,{bought} 个买票成功,{unlocked_s} 秒):"
    "数据错乱要看时机,再运行一次试试。",
    "mutex.course.delay": "(课程的虚拟网络延迟是 1-3 秒,这里是 0.1-0.3 秒,"
    "这是对它代码唯一的改动。)",
    "mutex.office.table": "taskshuttle 后端 {backend}:{tickets} 张票,{buyers} 个用户,"
    "{consumers} 个 worker 子进程,查票和买票之间隔 {ms:g} 毫秒",
    "mutex.col.method": "方法",
    "mutex.cost": "+{seconds:.2f} 秒 x{ratio:.1f}",
    "mutex.col.processes": "用到的进程",
    "mutex.col.sold": "卖出",
    "mutex.col.lock_cost": "加锁多花的时间",
    "mutex.office.lost": "{method}:{lost} 个用户没有得到回答",
    "mutex.office.replay": "{method}:用同样的订单号再发 {replayed} 次购买(就像消息被重新投递):"
    "又卖出 {sold} 张票。",
    "mutex.office.safe.local": "与课程相同:主进程生成一把锁,交给每个 worker,查票到买票变成一步;"
    "超卖 {oversold} 张,代价是表中多花的时间(用户轮流买票,并发变成串行)。",
    "mutex.office.safe.rabbitmq": "不同之处:multiprocessing.Lock 到不了另一台机器上的消费者"
    "(也到不了不是由生产者开设的消费者)。文件锁让共用一块磁盘的用户轮流买票,订单号让重新投递的"
    "购买不再卖票;单活跃消费者队列在 broker 处就串行了:一个消费者买票,其余的待命。"
    "超卖:{oversold} 张。",
    "mutex.office.safe_failed": "加锁的方法超卖了 {oversold} 张票:这是一个 bug,请报告。",
    "mutex.office.unsafe.local": "不加锁:几个用户在延迟期间读到同一个票数,各自写回票数 - 1:"
    "最多多卖了 {oversold} 张。",
    "mutex.office.unsafe.rabbitmq": "不加锁和本地一样会超卖(最多 {oversold} 张)。课程的 Lock "
    "也帮不上忙:每个消费者进程只能自己生成一把,一把没人来抢的锁谁也拦不住。",
    "mutex.office.unsafe_lucky": "这一次不加锁的运行超卖了 {oversold} 张:数据错乱要看时机"
    "(试试更长的 --delay)。",
    # -- 线程 -------------------------------------------------------------------------------
    "threads.title": "线程 · 后端 {backend} · 本进程 pid {pid}",
    "threads.step.basics": "threading.Thread:开设 3 个线程并 join;先在线程里、再在子进程里"
    "修改一个全局变量",
    "threads.step.race": "4 个线程各给同一个计数器加 1,各 100 次,{how}",
    "threads.step.measure": "Worker 循环,{workload},{who}(各运行 {repeat} 次取最快)",
    "threads.basics.table": "每个线程报出自己是谁(current_thread().name 和进程号)",
    "threads.col.name": "current_thread().name",
    "threads.basics.one_pid": "主线程和它开设的 {count} 个线程报出的都是 pid {pid}:"
    "线程活在同一个进程里面(进程是资源单位,线程才是执行单位)。",
    "threads.basics.pids": "线程报出了不止一个 pid,这不应该发生:本进程是 {pid}。",
    "threads.basics.shared": "全局变量 money = 100,在线程里改成 0:主线程随后看到 "
    "{after_thread}(同一个进程内的线程共享数据)。在子进程里改成 0:主进程看到的仍是 "
    "{after_process}(进程之间数据是隔离的)。",
    "threads.race.with_lock": "加 threading.Lock",
    "threads.race.without_lock": "不加锁",
    "threads.race.table": "共享的计数器:{threads} 个线程 x 各加 {rounds} 次,每次先读、停一下、再写",
    "threads.col.expected": "应得",
    "threads.col.got": "最后的计数",
    "threads.col.lost": "丢失的更新",
    "threads.col.seconds": "秒",
    "threads.race.note": "不加锁:{expected} 次更新丢了 {lost} 次:一个线程读了计数,另一个线程"
    "趁它停顿时写了,前一个再把它读到的旧值加一写回去(数据错乱)。加锁:丢失 {locked_lost} 次,"
    "代价是轮流执行({locked_s} 秒,不加锁 {unlocked_s} 秒)。和进程间的互斥锁是同一回事,"
    "只是更便宜:数据本来就是共享的。",
    "threads.race.odd": "出乎意料:不加锁丢失 {lost} 次,加锁丢失 {locked_lost} 次"
    "(共 {expected} 次)。",
    "threads.cpu": "计算密集",
    "threads.sleep": "IO 密集(睡眠)",
    "threads.who.process": "{n} 个进程",
    "threads.who.thread": "{n} 个线程",
    "threads.measure.table": "同一个 Worker 循环,开进程还是开线程(各运行 {repeat} 次取最快)",
    "threads.col.workload": "任务类型",
    "threads.col.workers": "worker",
    "threads.col.tasks": "任务",
    "threads.col.speedup": "加速",
    "threads.col.cores_busy": "忙的核数",
    "threads.col.at_once": "同时运行",
    "threads.measure.machine": "{cores} 个核;开始时负载 {load}(别的程序会从 worker 手里抢核)。",
    "threads.cpu.processes_parallel": "计算密集,{n} 个进程:x{speedup},{cores} 个核在忙:"
    "它们在不同的核上并行。",
    "threads.cpu.processes_starved": "计算密集,{n} 个进程:只有 x{speedup}({cores} 个核在忙):"
    "本可以并行,但核被别的程序占着(负载 {load})。",
    "threads.cpu.threads_gil": "计算密集,{n} 个线程:x{speedup},{cores} 个核在忙:它们共用一把"
    "解释器锁(GIL),同一时刻只有一个线程在执行 Python 代码。",
    "threads.cpu.threads_gain": "计算密集,{n} 个线程:x{speedup}({cores} 个核在忙),"
    "超出了 GIL 允许的程度;多半是单个 worker 那一轮被别的程序拖慢了。",
    "threads.sleep.as_well": "IO 密集,{n} 个 worker:线程 x{threads},进程 x{processes}:"
    "睡眠中的线程会释放 GIL,所以线程也能重叠执行(同时 {at_once} 个),效果和进程差不多,开销更小。",
    "threads.sleep.behind": "IO 密集,{n} 个 worker:线程 x{threads},进程 x{processes}:"
    "线程重叠执行了(同时 {at_once} 个),但这一次落后了。",
    "threads.measure.pids": "pids 一列分得出谁是谁:线程报出的都是同一个进程。",
    # -- 僵尸进程与孤儿进程 -------------------------------------------------------------------
    "zombie.title": "僵尸进程与孤儿进程 · 后端 {backend}",
    "zombie.gone": "已回收",
    "zombie.step.zombies": "3 个子进程结束了,但没有 join:从 /proc/<pid>/stat 读它们的状态,"
    "然后 join()",
    "zombie.step.pool": "worker 进程池({backend}):用 SIGKILL 杀掉一个 worker,看主进程回收它",
    "zombie.step.orphan": "孤儿进程:子进程还在运行时用 SIGKILL 杀掉父进程,在本课开设的"
    "儿童福利院(child subreaper)里进行",
    "zombie.step.machine": "在本课的福利院之外,本机由谁收养孤儿进程",
    "zombie.step.guard": "用 SIGKILL 杀掉主进程 `{program} ...`:看它的 worker 会怎样",
    "zombie.zombies.table": "结束了却没有被 join 的子进程(状态来自 /proc/<pid>/stat)",
    "zombie.col.child": "子进程 pid",
    "zombie.col.running": "运行中",
    "zombie.col.exited": "结束后",
    "zombie.col.later": "0.3 秒后",
    "zombie.col.joined": "join() 之后",
    "zombie.zombies.note": "Z 即僵尸进程:死了但是没有死透,它的进程号和退出状态留给父进程查看。"
    "join() 回收它们(waitpid),条目随即消失。父进程不死,并且无限制地开设子进程又从不回收,"
    "僵尸进程就会占满进程表。",
    "zombie.zombies.odd": "并非每个子进程在 join() 之前都被看到是僵尸进程(Z):请看表格。",
    "zombie.pool.killed": "worker 进程池({backend}):用 SIGKILL 杀掉 worker {pid}",
    "zombie.pool.before": "  在主进程察看之前,它的状态:{state}",
    "zombie.pool.after": "  WorkerPool.check() join 它之后:{state};替补进程 {new};"
    "存活的 worker:{alive}",
    "zombie.orphan.heading": "孤儿进程",
    "zombie.orphan.started": "父进程 {parent} 开设了子进程 {child}:子进程的 ppid 是 {ppid}",
    "zombie.orphan.killed": "用 SIGKILL 杀掉父进程:子进程的 ppid 变成 {ppid},状态 {state}"
    "(子进程存活,父进程意外死亡)",
    "zombie.orphan.home": "{home} 是本课开设的儿童福利院:一个 child subreaper"
    "(PR_SET_CHILD_SUBREAPER),代替 pid 1 收养了这个孤儿进程,之后结束并回收了它。",
    "zombie.machine.init": "在本机,本课进程自己的一个孤儿进程(pid {orphan})被交给了 pid {pid}"
    "({name}):本课的祖先进程中没有 subreaper,所以 pid 1 就是儿童福利院,孤儿结束时由它负责回收。",
    "zombie.machine.subreaper": "在本机,本课进程自己的一个孤儿进程(pid {orphan})被交给了 "
    "pid {pid}({name}),而不是 pid 1:这个祖先进程登记成了 child subreaper"
    "(systemd --user、tini、容器的 shim 都会这样做),是最近的儿童福利院。",
    "zombie.guard.table": "用 SIGKILL 杀掉主进程 `{program} ...`(pid {pid}):它的子进程",
    "zombie.col.role": "角色",
    "zombie.col.ppid_after": "之后的 ppid",
    "zombie.col.ended": "怎样结束",
    "zombie.col.reaped_after": "多久后回收(秒)",
    "zombie.role.worker": "worker",
    "zombie.role.resource_tracker": "resource tracker",
    "zombie.killed_by": "被 {signal} 杀死",
    "zombie.exit_code": "退出码 {code}",
    "zombie.still_running": "仍在运行:由本课杀死",
    "zombie.guard.strays": "10 秒内没有结束的子进程(游荡的孤儿):{strays}",
    "zombie.guard.note": "每个 worker 都请内核在父进程死亡时给自己发 SIGKILL(PR_SET_PDEATHSIG),"
    "并且留意 os.getppid():一旦成了孤儿进程,它立刻结束,而不是无人看管地继续运行。",
    "zombie.guard.strays_note": "{strays} 个子进程在主进程死后 10 秒仍在运行,由本课杀死。",
    "zombie.guard.rabbitmq": "在 RabbitMQ 上这不会丢任务:死去的 worker 手里没有确认(ack)的消息,"
    "broker 会重新投递。",
    "zombie.guard.local": "在本地,队列本来就随父进程一起消失了。",
    # -- 进程对象 ---------------------------------------------------------------------------
    "objects.title": "进程对象及其他方法 · 后端 {backend}",
    "objects.step.child": "开设一个子进程,问它是谁",
    "objects.step.terminate": "p.terminate(),紧接着 p.is_alive(),再 p.join():做 {tries} 次",
    "objects.step.job.local": "{tasks} 个任务交给 2 个本地 worker(本进程的子进程)",
    "objects.step.job.rabbitmq": "{tasks} 个任务经过 RabbitMQ,由另外启动的 `consumer` 程序完成",
    "objects.who.table": "谁是谁",
    "objects.who.me": "本进程",
    "objects.who.child": "它开设的子进程",
    "objects.who.note": "current_process().pid 和 os.getpid() 是同一个号;子进程的 os.getppid() "
    "是 {pid},也就是本进程:计算机给每一个运行的进程分配一个 PID 号,进程也知道父进程的 PID。",
    "objects.who.odd": "出乎意料:子进程的父进程不是本进程({pid})。",
    "objects.terminate.table": "p.terminate(),紧接着 p.is_alive();然后 p.join()",
    "objects.col.try": "次",
    "objects.col.alive_at_once": "紧接着 is_alive()",
    "objects.col.join_ms": "join() 等了(毫秒)",
    "objects.col.alive_after": "join 之后 is_alive()",
    "objects.terminate.note": "terminate() 之后紧接着 is_alive(),{tries} 次中有 {alive} 次为 "
    "True:terminate() 是告诉操作系统帮我杀死子进程(SIGTERM),需要一定的时间,而代码运行的速度"
    "极其快。join() 等的就是这段时间(exitcode -15 即被 SIGTERM 杀死)。",
    "objects.workers.table": "{tasks} 个任务由谁完成(每个结果都写明了它的 worker)",
    "objects.col.host": "主机",
    "objects.col.name": "进程名",
    "objects.col.tasks": "任务",
    "objects.workers.local": "ppid = {supervisor} = 本进程:在本地,生产者就是 worker 的父进程,"
    "它们都活在它的进程树里。",
    "objects.workers.rabbitmq": "ppid = {supervisor}:是 `consumer` 程序,不是这个生产者"
    "(pid {me})。在 RabbitMQ 上生产者和 worker 没有亲缘关系;如果消费者在另一台机器上运行,"
    "主机一列会写出那台机器。",
    # -- 队列 / 进程间通信 --------------------------------------------------------------------
    "queues.title": "队列 / 进程间通信 · 后端 {backend}",
    "queues.step.caveats": "queue.Queue 和 LifoQueue;multiprocessing.Queue 的 full()、empty()、"
    "qsize();子进程发来的消息",
    "queues.step.order.local": "{tasks} 个编了号的任务经过本地队列,{consumers} 个消费者",
    "queues.step.order.rabbitmq": "{tasks} 个编了号的任务经过 RabbitMQ 队列,{consumers} 个消费者",
    "queues.fifo": "queue.Queue,放入 1..5 再取出:{order}(队列:先进先出)",
    "queues.lifo": "queue.LifoQueue(堆栈):    {order}(堆栈:先进后出)",
    "queues.full": "multiprocessing.Queue({maxsize}) 放入 {maxsize} 个之后:full() -> {full}",
    "queues.full_raised": "再 put(timeout=0.1) 一个:等了 0.1 秒后抛出 queue.Full",
    "queues.full_went_in": "再 put(timeout=0.1) 一个:放进去了",
    "queues.qsize": "qsize():{size}(Linux 上可用;macOS 上抛出 NotImplementedError)",
    "queues.qsize_none": "qsize():NotImplementedError(macOS)",
    "queues.empty": "put() 之后紧接着 empty():{tries} 次中有 {empty} 次为 True",
    "queues.ipc": "子进程(pid {pid})把 {said!r} 放进队列;本进程取到了(进程间通信 IPC)",
    "queues.caveats.note": "put() 在数据写进管道之前就返回了(由一个后台线程写入),而且别的进程"
    "同时也在存取:full()、empty() 和 qsize() 都只是一瞬间的快照。不要先问再取,"
    "用 get(timeout=...) 并处理 queue.Empty。",
    "queues.order.table": "结果的先进先出顺序,任务按发出的顺序编号",
    "queues.col.consumers": "消费者",
    "queues.col.first": "最先回来的结果",
    "queues.col.out_of_order": "乱序",
    "queues.col.each_in_order": "每个 worker 按顺序取",
    "queues.of": "{tasks} 个中 {n} 个",
    "queues.order.note": "一个生产者、一个消费者:从头到尾先进先出。多个消费者:每个仍按顺序取任务,"
    "但快慢不一,结果会互相超车({tasks} 个中有 {late} 个排在了编号更大的结果之后)。",
    "queues.order.odd": "这一次:多个消费者时 {tasks} 个结果中 {late} 个乱序;请看表格。",
    "queues.order.rabbitmq": "RabbitMQ 的队列也是先进先出;被退回或重新投递的消息会比它前后的"
    "消息晚回来(见 `compare`)。",
    # -- 生产者消费者模型 ---------------------------------------------------------------------
    "pc.title": "生产者消费者模型 · 后端 {backend}",
    "pc.step.sentinel": "纯 multiprocessing:3 个消费者,30 份数据,然后每个消费者一个结束信号(None)",
    "pc.step.joinable": "纯 multiprocessing:JoinableQueue 上 3 个守护进程消费者;"
    "生产者在 join() 里等",
    "pc.step.fairness": "公平性,后端 {backend},{how}:1 个慢任务(1 秒)接着 60 个快任务,2 个 worker",
    "pc.local_queue": "本地队列",
    "pc.shutdown.table": "消费者怎样知道活干完了(纯 multiprocessing,3 个消费者)",
    "pc.col.way": "方式",
    "pc.col.items": "数据",
    "pc.col.eaten": "消费了",
    "pc.col.alive_after": "之后存活的消费者",
    "pc.col.exitcodes": "退出码",
    "pc.way.sentinel": "结束信号(每个消费者一个 None)",
    "pc.way.joinable": "JoinableQueue.join() + 守护进程",
    "pc.shutdown.note": "结束信号让每个消费者自己结束(退出码 0)。用 JoinableQueue,"
    "生产者知道活干完了"
    "(每个 task_done() 之后 join() 才返回),但消费者仍在 get() 里等:它们是守护进程,随父进程"
    "一起被终止(退出码 -15)。taskshuttle 两样都不用:每个结果(或 ack)告诉生产者一个任务完成了,"
    "一个停止事件让 worker 结束。",
    "pc.fairness.table": "公平性:1 个慢任务接着 {fast} 个快任务,2 个 worker",
    "pc.col.seconds": "秒",
    "pc.col.queued": "0.25 秒时仍在队列",
    "pc.col.held": "被慢任务耽搁",
    "pc.col.fast_wait": "快任务等待 p50/最长(秒)",
    "pc.col.per_worker": "每个 worker",
    "pc.fairness.rabbitmq": "RabbitMQ 预先交给每个消费者最多 `prefetch` 条未确认的消息。设 100,"
    "队列一下子就全倒进两个 worker 的缓冲,分到慢任务那个 worker 的 {held100} 个快任务"
    "只好排在它后面。"
    "设 1({held1} 个被耽搁),worker 确认了上一条才拿到下一条:空闲的 worker 把快任务都接走。"
    "ack 只在任务处理完之后才发,所以死掉的 worker 会把任务交还。",
    "pc.fairness.rabbitmq_odd": "这一次:prefetch 100 时 {held100} 个快任务排在慢任务后面,"
    "prefetch 1 时 {held1} 个;请看表格。",
    "pc.fairness.local_none": "这里每个 worker 从 multiprocessing.Queue 一次取一个任务,就像 "
    "prefetch 1:没有任务排在慢任务后面。",
    "pc.fairness.local_batches": "本地后端把任务分成小批放进 multiprocessing.Queue(一批一次 put、"
    "一次 pickle),worker 一次取走一整批:这也是一种 prefetch。{held} 个快任务等在慢任务那一批里。",
    "pc.step.client": "用 client 写种子课程的模型,后端 {backend}:4 种任务共 5 份数据,"
    "{workers} 个 worker;每个结果都用它的句柄取",
    "pc.client.table": "按发送的顺序用句柄取每份数据的结果({workers} 个 worker,"
    "秒数从第一次发送算起)",
    "pc.col.item": "数据",
    "pc.col.worker": "worker · pid号",
    "pc.col.ran": "运行 从 → 到(秒)",
    "pc.col.done_as": "第几个回来",
    "pc.col.value": "返回值或错误",
    "pc.item.make": "做包子",
    "pc.item.eat": "吃包子",
    "pc.item.note": "一张字条",
    "pc.item.later": "待会儿的字条",
    "pc.item.burnt": "蒸糊的包子",
    "pc.client.note": "在种子课程里,生产者把数据放进一个 Queue,消费者把结果放进另一个:结果按"
    "完成的先后回来(这里是 {came}),除非生产者在数据里放一个 id、消费者再把它带回来,否则"
    "生产者分不清哪个结果属于哪份数据。这里 send() 给每份数据一个 id 和一个句柄,生产者按自己的"
    "顺序({sent})从每份数据的句柄取结果:哪个 worker 跑的、什么时候、返回值,或者处理函数最后"
    "一次抛出的异常变成的 TaskFailed。带 countdown 的那份从 {not_before} 秒起才能运行,"
    "等待时不占用 worker。同样的代码在两个"
    "后端上都能跑:只有 {client} 这一行不同。",
    # -- 两个后端对照 ------------------------------------------------------------------------
    "compare.title": "对照:同样的工作量在两个后端上,各 {workers} 个 worker",
    "compare.step.throughput": "{backend}:{tasks} 个编了号的任务(吞吐量、延迟、顺序)",
    "compare.step.crash": "{backend}:{tasks} 个任务,一个 worker 在任务中途死掉",
    "compare.step.restart": "{backend}:{tasks} 个任务,生产者中途离开又重新启动",
    "compare.step.locking": "{backend}:抢票,加锁和不加锁",
    "compare.table": "下面每个数字都是这一次运行测出来的",
    "compare.row.tasks": "任务(编号,类似 echo)",
    "compare.row.throughput": "吞吐量(任务/秒)",
    "compare.row.latency": "延迟 p50 / p99(毫秒)",
    "compare.row.out_of_order": "乱序的结果",
    "compare.row.each_in_order": "每个 worker 按顺序取任务",
    "compare.row.crash": "崩溃:一个 worker 中途死掉,任务数",
    "compare.row.crash_lost": "崩溃:丢失的任务",
    "compare.row.crash_redelivered": "崩溃:重新投递后完成",
    "compare.row.crash_twice": "崩溃:做了两次",
    "compare.row.restart_unfinished": "重启:生产者停下时未完成",
    "compare.row.restart_done": "重启:其中重启后完成的",
    "compare.row.lock_method": "加锁:方法",
    "compare.row.lock_oversold": "加锁:超卖(20 张票,80 个用户)",
    "compare.row.lock_rate": "加锁:用户/秒",
    "compare.row.nolock_oversold": "不加锁:超卖",
    "compare.row.seconds": "这一列用时(秒)",
    "compare.note.local": "本地:死掉的 worker 手里的任务经由在途登记表放回了队列"
    "(放回 {recovered} 个;"
    "光一个 multiprocessing.Queue 会把它们丢掉)。生产者被 Ctrl-C 停下:队列活在它的进程里,"
    "所以重新启动的生产者从空队列开始。",
    "compare.note.rabbitmq": "rabbitmq:死掉的 worker 没有确认的每条消息(手上的任务和预取的)"
    "都被 broker 放回队列,标记为重新投递;在 quorum 队列(默认)上,每次退回还计入这条消息的"
    "投递上限,一个总是害死 worker 的任务最后会进入死信队列。生产者发出、得到确认后就退出了;"
    "任务在 broker 里等着消费者。",
    # -- docs/lessons.md ----------------------------------------------------------------------
    "docs.title": "The seed course, runnable · 课程,跑起来",
    "docs.language": "中文",
    "docs.intro": "taskshuttle 脱胎于一门经典的 Python 并发课程(进程对象、僵尸进程与孤儿进程、"
    "守护进程、互斥锁、队列与进程间通信、生产者消费者模型、线程)。课程的每个知识点在这里都是一条命令:"
    "先真实运行课程自己的例子,再用 taskshuttle 在本地后端(围绕一个 `multiprocessing.Queue` 的"
    "一棵进程树)和 RabbitMQ 上演示同一个道理,并说明哪里相同、哪里不同、为什么。每个数字都是那一次"
    "运行测出来的;每一步在运行之前先报出来。`--lang zh|en` 选择语言(默认跟随 locale:LC_ALL、"
    "LC_MESSAGES 或 LANG 以 zh 开头即为中文);`--json` 以 JSON 输出结果;`--url`(或 AMQP_URL)"
    "指定另一个 broker。下面的输出都是在一台 2 核、同时忙着别的工作的机器上真实运行的结果:"
    "pid、用时和数据错乱的次数每次都不一样。",
    "docs.linux": "只能在 Linux 上运行:`zombie-orphan`(读 /proc、调用 prctl)、`daemon`(/proc)、"
    "`mutex --backend rabbitmq` 和 `compare`(fcntl.flock)。在别的系统上它们只输出一行错误,例如 "
    "`lessons: error: zombie-orphan 需要 Linux(/proc, prctl);本机是 darwin`。",
    "docs.snippet.process-objects": "课程的代码:",
    "docs.snippet.zombie-orphan": "课程的原文(这一节没有代码):",
    "docs.snippet.daemon": "课程的例子(本课原样运行它,见 `lessons/course/daemon.py`):",
    "docs.snippet.mutex": "课程的例子中的 `buy` 和 `run`(本课运行整个程序,包括 `search` 和 "
    "`data` 文件,见 `lessons/course/ticket_office.py`):",
    "docs.snippet.queues": "课程的原文(写到这里就停了,还没有代码):",
    "docs.snippet.producer-consumer": "课程列出了这个知识点,但原文在代码之前就停了;"
    "这是本课先用纯 multiprocessing 运行的模型:",
    "docs.snippet.threads": "课程列出了这个知识点;本课从 `threading.Thread` 本身讲起:",
    "docs.teach.process-objects": "每个进程都有一个 PID 号,也知道父进程的 PID;`terminate()` "
    "只是告诉操作系统帮我杀死进程,所以紧接着 `is_alive()` 仍为 True,`join()` 等它真正死去。"
    "在本地,生产者就是 worker 的父进程;在 RabbitMQ 上,worker 是另一个 `consumer` 程序的子进程,"
    "和生产者没有亲缘关系。",
    "docs.teach.zombie-orphan": "结束了却没被 join 的子进程是僵尸进程(/proc 里状态为 Z),"
    "直到父进程 join 它;consumer 的进程池就是这样回收被杀的 worker。孤儿进程交给最近的 child "
    "subreaper 或 pid 1(课程里的儿童福利院):本课在自己开设的福利院里观察一个孤儿进程,"
    "并说出本机的福利院是谁。taskshuttle 的 worker 不会成为游荡的孤儿:父进程一死,它们就请内核发 "
    "SIGKILL 给自己。",
    "docs.teach.daemon": "课程里的总管随皇帝一起死,从不打印“总管正在死亡”;不设 `daemon`,"
    "皇帝的进程就要等他。taskshuttle 的守护 worker 也随生产者一起死,只是稍晚一点:Python 在退出时"
    "用 SIGTERM 终止守护子进程,我们的 worker 捕获它,先做完手上的任务。在 RabbitMQ 上,"
    "没有什么随生产者一起死;死去的消费者手上的任务会回到队列。",
    "docs.teach.mutex": "课程的抢票程序,真实运行,加锁和不加锁:加锁时一张票只卖给一个用户,"
    "大家轮流买;不加锁时几个用户读到同一个票数。然后是 taskshuttle 的售票,加锁和不加锁并排,"
    "以及加锁多花的时间。在 RabbitMQ 上,`multiprocessing.Lock` 到不了消费者:文件锁加订单号,"
    "或者单活跃消费者队列,可以起到同样的作用。",
    "docs.teach.queues": "队列先进先出,堆栈先进后出;`multiprocessing.Queue` 的 full()、empty()、"
    "qsize() 在多个进程之间能保证什么;以及在每个后端上,先进先出的顺序什么时候能从头保持到尾。",
    "docs.teach.producer-consumer": "消费者怎样知道活干完了(结束信号,或 JoinableQueue 加守护进程"
    "消费者;taskshuttle 用 ack),以及有一个慢任务时 prefetch 对公平性的影响。",
    "docs.teach.threads": "`threading.Thread`:所有线程报出同一个 pid,共享所在进程的数据,所以"
    "不加保护的“读-改-写”会丢失更新,加一把 `threading.Lock` 就好了。然后是本项目的 Worker 循环"
    "开成进程和开成线程,分别跑计算密集和睡眠(IO 密集)的任务;表格下面的文字按测得的比例选择。",
    "docs.teach.compare": "同样的工作量在两个后端上,每一格都是这一次测出来的:吞吐量和延迟、"
    "顺序、一个 worker 中途死掉、生产者离开又回来,以及抢票。",
    "docs.notes.title": "本课绕开的一些坑",
    "docs.notes": "- 任务处理函数只看得到它的 payload,拿不到课程里的互斥锁,也拿不到任务 id。"
    "互斥锁一课的本地进程池生成一把 `multiprocessing.Lock`,在每个 worker 进程启动时交给它"
    "(`WorkerSpec.initializer` 在那里运行 `lessons.tasks.share_lock`),并把任务 id 放进 payload。\n"
    "- 课程的例子作为独立的程序运行(`lessons/course/`),stdout 像在终端里一样按行缓冲,"
    "所以每一行完整地、按打印的顺序到达。对它们的改动只有标了 `# lesson:` 的几处(睡得短一些)。\n"
    "- 单活跃消费者队列在工作队列自己的参数之上再声明 `x-single-active-consumer`,"
    "所以它需要自己的消费者进程(`lessons/single_active.py`)。\n"
    "- RabbitMQ 的运行用 quorum 队列(默认,`--queue-type`):死去的 worker 手上的消息会带着"
    "“重新投递”的标记回来,每次退回都计入这条消息的投递上限。\n"
    "- 在本地后端,如果 worker 死在队列的后台线程正在写入的时候,共享队列的写锁会一直被占着;"
    "所以 `compare` 里的崩溃发生在任务开始 0.2 秒之后。\n"
    "- 会杀掉主进程的课(`zombie-orphan`,以及 RabbitMQ 上的 `daemon`)在自己开设的 child "
    "subreaper 里做这件事,由它回收孤儿进程。唯一交给本机福利院的孤儿是 `zombie-orphan` 为了说出"
    "福利院是谁而特意制造的那一个:那时它已经结束,由收养它的进程回收。",
    "docs.generated": "由 `python -m lessons.docs > docs/lessons.md` 在一台 {cores} 核的"
    "机器上生成。",
}
