"""`consumer dashboard`: a live web page of one work queue, served on 127.0.0.1.

It shows, as they change: the queue's depths over time (ready, unacked, delayed tasks of
all queues of its type, dead letters), throughput and task durations (from the workers' task
events), the workers and the task each has in hand (from their heartbeats), the recent tasks
and their fate, and the DLQ with why each letter is there, with buttons to replay one letter
or all of them and to purge the DLQ. See `server` for who may do what.

The web stack (Starlette, uvicorn) is the ``dashboard`` extra, imported only when the
command runs: the workers and ``--help`` never load it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import secrets
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Annotated

import typer

from common.cli import rabbitmq_settings
from consumer.admin import connection

if TYPE_CHECKING:
    import uvicorn

    from common.settings import Settings
    from consumer.dashboard.state import Board

log = logging.getLogger("taskshuttle.dashboard")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
MISSING_EXTRA = "the dashboard needs its web server: pip install 'taskshuttle[dashboard]'"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: Seconds between two tries of an event listener that failed.
LISTENER_RETRY = 3.0


def register(app: typer.Typer) -> None:
    """Add the ``dashboard`` command to `app` (the ``consumer`` program)."""
    app.command("dashboard")(dashboard)


@connection
def dashboard(
    ctx: typer.Context,
    host: Annotated[
        str,
        typer.Option(
            help="Address to listen on; beyond loopback, others can reach the page "
            "(the token still guards it, but travels unencrypted)."
        ),
    ] = DEFAULT_HOST,
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="Port to listen on (0: any free one).")
    ] = DEFAULT_PORT,
    management_url: Annotated[
        str,
        typer.Option(
            envvar="TASKSHUTTLE_MANAGEMENT_URL",
            help="RabbitMQ's management API, for the count of unacked messages, which AMQP "
            "cannot tell ('': do without); its credentials default to the broker URL's.",
        ),
    ] = "http://127.0.0.1:15672",
) -> None:
    """Serve a live web dashboard of the queue; prints its URL, with the token it needs."""
    settings = rabbitmq_settings(
        ctx, "the local backend's queue lives inside the producer's processes"
    )
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise typer.BadParameter(MISSING_EXTRA) from None
    serve(settings, host, port, management_url)


def listen_for_events(url: str, queue: str) -> Callable[[Board, threading.Event], None]:
    """The loop the event thread runs: every task and worker event of `queue`, into the
    board, until stopped; a listener that fails is opened again after `LISTENER_RETRY`."""

    def listen(board: Board, stopping: threading.Event) -> None:
        from common.factory import open_event_listener

        while not stopping.is_set():
            try:
                with open_event_listener(url, queue=queue) as listener:
                    board.events_status = "listening"
                    while not stopping.is_set():
                        event = listener.get(timeout=0.5)
                        if event is not None:
                            board.add(event)
            except Exception as exc:  # whatever it was, the page says it and we try again
                board.events_status = f"disconnected: {exc}"
                log.warning("task events: %s; listening again in %gs", exc, LISTENER_RETRY)
                stopping.wait(LISTENER_RETRY)

    return listen


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so a port in use is one clear error, and port 0
    gives the port that was really taken before the URL is printed."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise typer.BadParameter(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}", param_hint="'--port'"
        ) from None
    sock.listen(128)
    return sock


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:  # a scoped IPv6 address (fe80::1%eth0) is no loopback one
        return False


def _server_class() -> type[uvicorn.Server]:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, but a SIGINT or SIGTERM only stops it: uvicorn raises the
        signal again once it has stopped, and the process would die of it, where a dashboard
        stopped on purpose exits 0, as the consumer does. A second SIGINT still forces it."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in STOP_SIGNALS}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return Server


def serve(settings: Settings, host: str, port: int, management_url: str) -> None:
    """Connect, bind, print the URL, serve until SIGINT/SIGTERM."""
    import uvicorn

    from common.factory import Role, open_backend
    from common.rabbitmq import RabbitBackend
    from consumer.dashboard.depths import AmqpDepths, DepthReader, ManagementDepths
    from consumer.dashboard.letters import LetterDesk
    from consumer.dashboard.server import Dashboard, build_app
    from consumer.dashboard.state import Board

    management = None
    if management_url:
        try:
            management = ManagementDepths(
                management_url, settings.amqp_url, settings.queue, settings.queue_type
            )
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="'--management-url'") from None

    def open_admin() -> RabbitBackend:
        admin = open_backend(settings, Role.ADMIN)
        assert isinstance(admin, RabbitBackend)  # the local backend was refused
        return admin

    desk = LetterDesk(open_admin)  # a wrong URL or password: one line, before binding
    sock = _bind(host, port)
    amqp = AmqpDepths(settings.amqp_url, settings.queue, settings.queue_type)
    reader = DepthReader(management, amqp)
    about = {"queue": settings.queue, "broker": settings.safe_url}
    board = Board()
    listen = listen_for_events(settings.amqp_url, settings.queue)
    runtime = Dashboard(board, desk, reader, listen, about)
    token = secrets.token_urlsafe(24)
    app = build_app(runtime, token, lambda: server.should_exit)
    config = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=2)
    server = _server_class()(config)
    runtime.start()
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    if not _is_loopback(bound_host):
        log.warning(
            "listening on %s: whoever can reach this port and learns the token (it travels "
            "unencrypted over HTTP) can replay and purge dead letters",
            bound_host,
        )
    print(f"dashboard: http://{shown}:{bound_port}/?token={token}", flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        runtime.stop()
        sock.close()
