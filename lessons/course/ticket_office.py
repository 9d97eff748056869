# ruff: noqa: UP015, UP031 - the course's code, as the course writes it
"""互斥锁: the course's ticket office. A JSON file named ``data`` holds the ticket count;
buyers 1..9 each `search` (查票), then `buy` (买票: read, network delay, decrement, write).

    python -m lessons.course.ticket_office lock       # buy() between mutex.acquire/release
    python -m lessons.course.ticket_office no-lock    # the same buyers, no lock

Run it in a folder holding ``data`` (the lesson writes ``{"ticket_num": 1}`` there first).
"""
# fmt: off

import json
import random
import sys
import time
from multiprocessing import Lock, Process


# 查票
def search(i):
    # 文件操作读取票数
    with open('data', 'r', encoding='utf-8') as f:
        dic = json.load(f)
    print('用户%s查询余票:%s' % (i, dic.get('ticket_num')))


# 买票 1.查票 3.再买
def buy(i):
    # 先查票
    with open('data', 'r', encoding='utf-8') as f:
        dic = json.load(f)
    # 虚拟网络延迟
    time.sleep(random.randint(1, 3) / 10)  # lesson: the course sleeps 1-3 s; here 0.1-0.3 s
    # 判断当前是否有票
    if dic.get('ticket_num') > 0:
        # 修改数据库 买票
        dic['ticket_num'] -= 1
        # 写入数据库
        with open('data', 'w', encoding='utf-8') as f:
            json.dump(dic, f)
        print('用户%s买票成功' % i)
    else:
        print('用户%s买票失败' % i)


def run(i, mutex):
    search(i)
    # 给买票环节加锁处理
    # 抢锁
    mutex.acquire()
    buy(i)
    # 释放
    mutex.release()


def run_without_lock(i):  # lesson: the same buyer with no lock, to see what the lock prevents
    search(i)
    buy(i)


if __name__ == '__main__':
    locked = sys.argv[1] == 'lock'
    # 在主进程中生成一把锁 让所有的子进程抢 谁先抢到谁先买票
    mutex = Lock()
    for i in range(1, 10):
        if locked:
            p = Process(target=run, args=(i, mutex))
        else:
            p = Process(target=run_without_lock, args=(i,))
        p.start()
