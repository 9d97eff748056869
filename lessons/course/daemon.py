# ruff: noqa: UP031 - the course's code, as the course writes it
"""守护进程: the course's steward (总管) and emperor (皇帝).

``python -m lessons.course.daemon daemon 3``: with p.daemon = True, the steward sleeps 3 s;
``python -m lessons.course.daemon plain 3``: the same without p.daemon = True.
"""
# fmt: off

import sys
import time
from multiprocessing import Process


def task(name, seconds=3):
    print('%s 总管正在活着' % name)
    time.sleep(seconds)  # lesson: the course sleeps 3 s; the lesson may ask for less
    print('%s 总管正在死亡' % name)


def main(daemon=True, seconds=3.0):
    p = Process(target=task, args=('egon', seconds))
    if daemon:  # lesson: run once with this line, once without
        p.daemon = True  # 将进程P设置为守护进程 这一句一定要放在start方法前面,不然会直接报错
    p.start()
    print('皇帝寿终正寝')


if __name__ == '__main__':
    main(sys.argv[1] == 'daemon', float(sys.argv[2]))
