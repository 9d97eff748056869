"""`python -m lessons <name>`: one command per lesson of the seed course."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from common.cli import Backend, Json, Url, Version, new_app, run_app, setup_logging
from common.defaults import DEFAULT_AMQP_URL, BackendName
from common.errors import TaskshuttleError
from lessons import LESSONS, show
from lessons.i18n import Lang, from_locale, set_language, t

app = new_app(help="The seed course's lessons, on the local backend and on RabbitMQ.")

LangOption = Annotated[
    Lang | None,
    typer.Option(
        "--lang",
        help="zh or en: the language of the lesson (default: from LC_ALL, LC_MESSAGES or "
        "LANG; zh if it starts with zh, else en).",
        show_default=False,
    ),
]

#: lesson -> what it needs of Linux, for the lessons that cannot run elsewhere
NEEDS_LINUX = {
    "zombie-orphan": "/proc, prctl",
    "daemon": "/proc",
    "compare": "fcntl.flock",
}


def _begin(name: str, lang: Lang | None, as_json: bool, needs: str | None = None) -> None:
    """Choose the language, refuse a lesson this system cannot run, start the live output."""
    set_language(lang or from_locale())
    needs = needs or NEEDS_LINUX.get(name)
    if needs and sys.platform != "linux":
        raise TaskshuttleError(t("error.linux", lesson=name, needs=needs, system=sys.platform))
    show.start_live(as_json)


def _done(module: Any, result: Any, as_json: bool) -> None:
    if as_json:
        show.as_json(result)
    # Otherwise each part was drawn as soon as it was measured.


def _help(name: str) -> str:
    return LESSONS[name][0]


@app.callback(invoke_without_command=True)
def main(ctx: typer.Context, version: Version = False, lang: LangOption = None) -> None:
    setup_logging(False)
    if ctx.invoked_subcommand is None:  # no lesson named: list them, and exit 0
        set_language(lang or from_locale())
        print(t("list.title"))
        width = max(map(len, LESSONS))
        for name in LESSONS:
            print(f"  {name:<{width}}  {t('topic.' + name)}")
        print(t("list.more"))
        raise typer.Exit(0)


@app.command("process-objects", help=_help("process-objects"))
def process_objects(
    backend: Backend = BackendName.local,
    url: Url = DEFAULT_AMQP_URL,
    tasks: Annotated[int, typer.Option(min=1, help="Tasks in the job.")] = 20,
    as_json: Json = False,
    lang: LangOption = None,
) -> None:
    from lessons import process_objects as lesson

    _begin("process-objects", lang, as_json)

    _done(lesson, lesson.run(backend.value, url, tasks), as_json)


@app.command("zombie-orphan", help=_help("zombie-orphan"))
def zombie_orphan(
    backend: Backend = BackendName.local,
    url: Url = DEFAULT_AMQP_URL,
    as_json: Json = False,
    lang: LangOption = None,
) -> None:
    from lessons import zombie_orphan as lesson

    _begin("zombie-orphan", lang, as_json)

    _done(lesson, lesson.run(backend.value, url), as_json)


@app.command("daemon", help=_help("daemon"))
def daemon(
    backend: Backend = BackendName.local,
    url: Url = DEFAULT_AMQP_URL,
    as_json: Json = False,
    lang: LangOption = None,
) -> None:
    from lessons import daemon as lesson

    _begin("daemon", lang, as_json)

    _done(lesson, lesson.run(backend.value, url), as_json)


@app.command("mutex", help=_help("mutex"))
def mutex(
    backend: Backend = BackendName.local,
    no_lock: Annotated[
        bool, typer.Option("--no-lock", help="Only the unsafe ticket office (default: both).")
    ] = False,
    tickets: Annotated[int, typer.Option(min=0)] = 50,
    buyers: Annotated[int, typer.Option(min=1)] = 200,
    consumers: Annotated[int, typer.Option(min=1, max=32, help="Worker processes.")] = 4,
    delay: Annotated[float, typer.Option(min=0, help="Seconds between check and buy.")] = 0.01,
    url: Url = DEFAULT_AMQP_URL,
    as_json: Json = False,
    lang: LangOption = None,
) -> None:
    from lessons import mutex as lesson

    _begin("mutex", lang, as_json, "fcntl.flock" if backend is BackendName.rabbitmq else None)

    result = lesson.run(
        backend.value,
        False if no_lock else None,
        tickets=tickets,
        buyers=buyers,
        consumers=consumers,
        delay=delay,
        url=url,
    )
    _done(lesson, result, as_json)


@app.command("queues", help=_help("queues"))
def queues(
    backend: Backend = BackendName.local,
    url: Url = DEFAULT_AMQP_URL,
    tasks: Annotated[int, typer.Option(min=1, help="Numbered tasks per run.")] = 200,
    as_json: Json = False,
    lang: LangOption = None,
) -> None:
    from lessons import queues as lesson

    _begin("queues", lang, as_json)

    _done(lesson, lesson.run(backend.value, url, tasks), as_json)


@app.command("producer-consumer", help=_help("producer-consumer"))
def producer_consumer(
    backend: Backend = BackendName.local,
    url: Url = DEFAULT_AMQP_URL,
    as_json: Json = False,
    lang: LangOption = None,
) -> None:
    from lessons import producer_consumer as lesson

    _begin("producer-consumer", lang, as_json)

    _done(lesson, lesson.run(backend.value, url), as_json)


@app.command("threads", help=_help("threads"))
def threads(
    backend: Backend = BackendName.local,
    workers: Annotated[int, typer.Option(min=2, max=16, help="Processes / threads.")] = 2,
    url: Url = DEFAULT_AMQP_URL,
    as_json: Json = False,
    lang: LangOption = None,
) -> None:
    from lessons import threads as lesson

    _begin("threads", lang, as_json)

    _done(lesson, lesson.run(backend.value, workers, url), as_json)


@app.command("compare", help="The same workload on both backends, one table side by side.")
def compare(
    url: Url = DEFAULT_AMQP_URL,
    workers: Annotated[int, typer.Option(min=1, max=16)] = 2,
    tasks: Annotated[int, typer.Option(min=10, help="Tasks in the throughput run.")] = 2000,
    as_json: Json = False,
    lang: LangOption = None,
) -> None:
    from lessons import compare as lesson

    _begin("compare", lang, as_json)

    _done(lesson, lesson.run(url, workers=workers, tasks=tasks), as_json)


def cli(argv: list[str] | None = None) -> None:
    run_app(app, "lessons", argv)


if __name__ == "__main__":
    cli()
