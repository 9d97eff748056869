"""Both languages: the same keys and placeholders, every key the code asks for, the locale's
default, and each language really on screen."""

from __future__ import annotations

import re
import string
import subprocess
import sys

import pytest

from lessons import LESSONS
from lessons.i18n import Lang, from_locale, set_language, t
from lessons.i18n.en import STRINGS as EN
from lessons.i18n.zh import STRINGS as ZH
from lessons.runner import ROOT, project_env

CJK = re.compile(r"[\u4e00-\u9fff]")
#: zh strings that are code or a name, the same in both languages
NOT_WORDS = {
    "threads.col.name",
    "threads.col.workers",
    "zombie.role.worker",
    "zombie.role.resource_tracker",
    "queues.qsize_none",
}


def _placeholders(text: str) -> set[str]:
    return {field for _, field, _, _ in string.Formatter().parse(text) if field is not None}


def test_both_languages_have_the_same_keys_and_placeholders() -> None:
    assert EN.keys() == ZH.keys()
    for key in EN:
        assert _placeholders(EN[key]) == _placeholders(ZH[key]), key


def test_every_chinese_string_is_chinese() -> None:
    english = [k for k, v in ZH.items() if k not in NOT_WORDS and not CJK.search(v)]
    assert english == []


def test_the_course_terms_are_the_courses() -> None:
    zh = "\n".join(ZH.values())
    for term in (
        "守护进程",
        "互斥锁",
        "僵尸进程",
        "孤儿进程",
        "生产者消费者模型",
        "进程间通信",
        "儿童福利院",
        "先进先出",
        "先进后出",
        "查票",
        "买票",
        "并发变成串行",
    ):
        assert term in zh, term


def _keys_in_code() -> set[str]:
    """Every literal key passed to t() or show.step() in lessons/."""
    found: set[str] = set()
    call = re.compile(r"""(?:\bt|show\.step)\(\s*"([a-z][\w.\-]*)"[,)]""")
    for path in (ROOT / "lessons").rglob("*.py"):
        found |= set(call.findall(path.read_text(encoding="utf-8")))
    return found


def test_every_key_the_code_asks_for_exists() -> None:
    keys = _keys_in_code()
    assert len(keys) > 100
    assert sorted(keys - EN.keys()) == []
    # keys built from a value
    for name in LESSONS:
        assert f"topic.{name}" in EN
    for backend in ("local", "rabbitmq"):
        for key in (
            "objects.step.job",
            "objects.workers",
            "queues.step.order",
            "mutex.office.safe",
            "mutex.office.unsafe",
        ):
            assert f"{key}.{backend}" in EN


def test_every_string_formats() -> None:
    for lang, table in ((Lang.en, EN), (Lang.zh, ZH)):
        set_language(lang)
        for key, text in table.items():
            values = {name: 1 for name in _placeholders(text)}
            assert t(key, **values)
    set_language(Lang.en)


@pytest.mark.parametrize(
    ("environ", "lang"),
    [
        ({}, Lang.en),
        ({"LANG": "zh_CN.UTF-8"}, Lang.zh),
        ({"LANG": "C.UTF-8"}, Lang.en),
        ({"LC_MESSAGES": "zh_TW.UTF-8", "LANG": "en_US.UTF-8"}, Lang.zh),
        ({"LC_ALL": "en_GB.UTF-8", "LANG": "zh_CN.UTF-8"}, Lang.en),
        ({"LC_ALL": "", "LANG": "zh_CN.UTF-8"}, Lang.zh),
    ],
)
def test_the_default_language_comes_from_the_locale(environ: dict[str, str], lang: Lang) -> None:
    assert from_locale(environ) is lang


def _lessons(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in project_env().items() if k not in ("LC_ALL", "LC_MESSAGES", "LANG")}
    return subprocess.run(
        [sys.executable, "-m", "lessons", *args],
        cwd=ROOT,
        env=base | (env or {}),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.timeout(90)
def test_a_lesson_speaks_the_language_asked_for() -> None:
    zh = _lessons("queues", "--tasks", "20", "--lang", "zh")
    en = _lessons("queues", "--tasks", "20", "--lang", "en")
    by_locale = _lessons("queues", "--tasks", "20", env={"LANG": "zh_CN.UTF-8"})
    for done in (zh, en, by_locale):
        assert done.returncode == 0, done.stderr
        assert done.stderr == ""
    assert "» 第 1 步:" in zh.stdout and "结果的先进先出顺序" in zh.stdout
    assert "» step" not in zh.stdout and "FIFO order of results" not in zh.stdout
    assert "» step 1:" in en.stdout and "FIFO order of results" in en.stdout
    # In English, Chinese only in the course's own text (│) and the course's names for things.
    words = [line for line in en.stdout.splitlines() if "│ " not in line[:5]]
    for term in ("队列", "进程间通信", "堆栈"):
        words = [line.replace(term, "") for line in words]
    assert [line for line in words if CJK.search(line)] == []
    assert "» 第 1 步:" in by_locale.stdout


@pytest.mark.timeout(30)
def test_a_language_there_is_none_of_is_one_line() -> None:
    done = _lessons("daemon", "--lang", "fr")
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "lessons: error: Invalid value for '--lang': 'fr' is not one of 'zh', 'en'."
    ]
