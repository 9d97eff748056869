"""Write docs/lessons.md from real runs of every lesson, in both languages.

    python -m lessons.docs > docs/lessons.md          # needs the broker for the RabbitMQ runs

Each section starts with the course's snippet it teaches, then the lesson's output as a
student sees it (piped, so its steps are plain lines), in English and in Chinese, on the local
backend and on RabbitMQ. The snippet the lesson prints first is left out of the copies below
it (it is the section's first block). The words around them are in `lessons.i18n`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

from lessons import LESSONS
from lessons.i18n import Lang, set_language, t
from lessons.runner import ROOT, project_env

#: lesson -> (the module holding its course snippet, the snippet's name there)
SNIPPETS = {
    "process-objects": ("process_objects", "COURSE_CODE"),
    "zombie-orphan": ("zombie_orphan", "COURSE_TEXT"),
    "daemon": ("daemon", "COURSE_CODE"),
    "mutex": ("mutex", "COURSE_CODE"),
    "queues": ("queues", "COURSE_TEXT"),
    "producer-consumer": ("producer_consumer", "MODEL_CODE"),
    "threads": ("threads", "BASICS_CODE"),
}


COMMANDS = """
bash scripts/broker.sh start                # only for --backend rabbitmq
python -m lessons                           # the list · 课程列表
python -m lessons daemon --lang zh          # 守护进程, in Chinese · 中文
python -m lessons mutex --backend rabbitmq  # with a lock and without, side by side
python -m lessons mutex --no-lock           # only the unsafe ticket office
python -m lessons compare                   # both backends, side by side
"""


def lesson_output(name: str, lang: Lang, *args: str) -> str:
    """One real run, as `python -m lessons <name> --lang <lang> <args>` prints it."""
    env = {k: v for k, v in project_env().items() if k not in ("LC_ALL", "LC_MESSAGES", "LANG")}
    done = subprocess.run(
        [sys.executable, "-m", "lessons", name, "--lang", lang.value, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        raise SystemExit(f"lessons {name} {' '.join(args)} failed: {done.stderr.strip()}")
    lines = [line.rstrip() for line in done.stdout.splitlines() if not line.startswith("  │")]
    return "\n".join(lines).strip("\n")


def _snippet(name: str) -> str:
    import importlib

    module, attribute = SNIPPETS[name]
    return str(getattr(importlib.import_module(f"lessons.{module}"), attribute)).strip("\n")


def sections() -> Iterator[str]:
    set_language(Lang.en)
    yield f"# {t('docs.title')}\n"
    for lang in (Lang.en, Lang.zh):
        set_language(lang)
        yield t("docs.intro") + "\n"
    set_language(Lang.en)
    yield "```bash\n" + COMMANDS.strip("\n") + "\n```\n"
    rows = ["| # | 课程 · topic | command |", "|---|---|---|"]
    for n, name in enumerate(LESSONS, 1):
        set_language(Lang.zh)
        zh = t(f"topic.{name}")
        set_language(Lang.en)
        en = t(f"topic.{name}").split(" · ")[-1]
        number = str(n) if name != "compare" else "-"
        rows.append(f"| {number} | {zh} · {en} | `python -m lessons {name}` |")
    yield "\n".join(rows) + "\n"
    for lang in (Lang.en, Lang.zh):
        set_language(lang)
        yield t("docs.linux") + "\n"
    for n, name in enumerate(LESSONS, 1):
        set_language(Lang.zh)
        zh = t(f"topic.{name}")
        set_language(Lang.en)
        en = t(f"topic.{name}").split(" · ")[-1]
        number = f"{n}. " if name != "compare" else ""
        yield f"## {number}{zh} · {en}\n"
        if name in SNIPPETS:
            for lang in (Lang.en, Lang.zh):
                set_language(lang)
                yield t(f"docs.snippet.{name}") + "\n"
            # text, not python: a formatter must never rewrite the course's code
            yield "```text\n" + _snippet(name) + "\n```\n"
        for lang in (Lang.en, Lang.zh):
            set_language(lang)
            yield f"### {t('docs.language')}\n"
            yield t(f"docs.teach.{name}") + "\n"
            runs = [()] if name == "compare" else [(), ("--backend", "rabbitmq")]
            for args in runs:
                command = " ".join(["python -m lessons", name, "--lang", lang.value, *args])
                started = time.monotonic()
                out = lesson_output(name, lang, *args)
                print(f"{command}: {time.monotonic() - started:.0f} s", file=sys.stderr)
                yield f"`{command}`\n\n```text\n{out}\n```\n"
    for lang in (Lang.en, Lang.zh):
        set_language(lang)
        yield f"## {t('docs.notes.title')}\n"
        yield t("docs.notes") + "\n"
    for lang in (Lang.en, Lang.zh):
        set_language(lang)
        yield t("docs.generated", cores=os.cpu_count()) + "\n"


def main() -> None:
    print("\n".join(sections()), end="")


if __name__ == "__main__":
    main()
