"""The dashboard's web server: one page, a server-sent event stream, two actions.

Three threads feed what the page shows: the event listener (task and worker events, as they
come), and the poller (once a second: queue depths, the DLQ's length and, when it changed,
its letters). Each open page gets the whole picture once a second over ``/events``: on the
loopback that is cheaper than keeping per-page state, and a page that reconnects misses
nothing but the seconds it was away.

Who may do what (`Guard`):

- every request but the page's own static files (a chart library, a script, a style sheet:
  the package's files, nothing about the broker) needs the token printed at start-up. The
  page and the stream show task ids, errors and host names, which other users of a shared
  machine have no business reading, and any port on 127.0.0.1 is open to all of them;
- GET takes the token as ``?token=`` (a browser's EventSource cannot send a header); POST
  only as the ``X-Dashboard-Token`` header, which a cross-site form cannot send and a
  cross-site script cannot send without a CORS preflight, which gets 403 (next point);
- a request whose ``Origin`` is present and is not this server's own origin gets 403, token
  or not: another site's script, or a page rebound to 127.0.0.1 by DNS, changes nothing;
- responses forbid framing (no clickjacking of the buttons), leak no Referer (the URL holds
  the token), and allow scripts from this server only.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from common.errors import TaskshuttleError
from consumer.dashboard.depths import DepthReader
from consumer.dashboard.letters import LetterDesk
from consumer.dashboard.state import Board

log = logging.getLogger("taskshuttle.dashboard")

STATIC = Path(__file__).resolve().with_name("static")
TOKEN_HEADER = "X-Dashboard-Token"
#: Seconds between two pictures sent to a page, and between two depth readings.
PERIOD = 1.0
#: The largest action body read (a task id, as JSON).
MAX_BODY = 4096

SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; frame-ancestors 'none'; base-uri 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-content-type-options", b"nosniff"),
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class Dashboard:
    """The threads that keep `board` and `desk` up to date, and what the page is sent."""

    def __init__(
        self,
        board: Board,
        desk: LetterDesk,
        depths: DepthReader,
        listen: Callable[[Board, threading.Event], None],
        about: dict[str, Any],
    ) -> None:
        self.board, self.desk, self.depths, self.about = board, desk, depths, about
        self.stopping = threading.Event()
        self._threads = [
            threading.Thread(target=listen, args=(board, self.stopping), name="events"),
            threading.Thread(target=self._poll, name="poller"),
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.daemon = True  # a broker call stuck past `stop`'s wait must not hold exit
            thread.start()

    def _poll(self) -> None:
        while not self.stopping.is_set():
            try:
                depths, why = self.depths.read()
                self.board.tick(depths, self.depths.source, why)
                self.desk.refresh()
            except Exception as exc:  # a page that stops moving says nothing: keep going
                log.exception("reading the queue failed")
                self.board.tick(None, "none", f"{type(exc).__name__}: {exc}")
            self.stopping.wait(PERIOD)

    def picture(self) -> dict[str, Any]:
        return {**self.board.snapshot(), "dlq": self.desk.snapshot(), "about": self.about}

    def stop(self, timeout: float = 5.0) -> None:
        self.stopping.set()
        for thread in self._threads:
            thread.join(timeout)
        self.depths.close()
        self.desk.close()


class Guard:
    """The rules of the module's docstring, in front of every route."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], token: str):
        self.app, self._token = app, token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        refusal = self._refusal(request)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], *SECURITY_HEADERS]
            await send(message)

        if refusal is not None:
            response = JSONResponse({"error": refusal}, status_code=403)
            await response(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)

    def _refusal(self, request: Request) -> str | None:
        origin = request.headers.get("origin")
        if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
            return "cross-origin request refused"
        if request.url.path.startswith("/static/"):
            return None
        if request.method in ("GET", "HEAD"):
            given = request.query_params.get("token", "")
        else:
            given = request.headers.get(TOKEN_HEADER, "")
        if not hmac.compare_digest(given.encode(), self._token):
            return "missing or wrong token"
        return None


def build_app(dashboard: Dashboard, token: str, should_exit: Callable[[], bool]) -> Guard:
    """The ASGI app: routes behind `Guard`. `should_exit` ends the event streams (the
    server is stopping)."""

    async def page(_request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"cache-control": "no-store"})

    async def state(_request: Request) -> Response:
        return JSONResponse(dashboard.picture(), headers={"cache-control": "no-store"})

    async def events(request: Request) -> Response:
        async def stream() -> Any:
            while not (should_exit() or dashboard.stopping.is_set()):
                if await request.is_disconnected():
                    return
                yield f"event: picture\ndata: {json.dumps(dashboard.picture())}\n\n"
                await asyncio.sleep(PERIOD)

        headers = {"cache-control": "no-store", "x-accel-buffering": "no"}
        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)

    async def replay(request: Request) -> Response:
        body = await _json_body(request)
        if isinstance(body, Response):
            return body
        task_id = body.get("task_id")
        if task_id is not None and (not isinstance(task_id, str) or not 0 < len(task_id) < 256):
            return JSONResponse({"error": "task_id must be a short string"}, status_code=400)
        return await _act(lambda: {"replayed": dashboard.desk.replay(task_id)})

    async def purge(_request: Request) -> Response:
        return await _act(lambda: {"purged": dashboard.desk.purge()})

    routes = [
        Route("/", page),
        Route("/api/state", state),
        Route("/events", events),
        Route("/api/dlq/replay", replay, methods=["POST"]),
        Route("/api/dlq/purge", purge, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Guard(Starlette(routes=routes), token)


async def _json_body(request: Request) -> dict[str, Any] | Response:
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            return JSONResponse({"error": "body too large"}, status_code=413)
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        return JSONResponse({"error": "body is not JSON"}, status_code=400)
    if not isinstance(body, dict):
        return JSONResponse({"error": "body must be a JSON object"}, status_code=400)
    return body


async def _act(action: Callable[[], dict[str, int]]) -> Response:
    """Run a DLQ action in a worker thread (it waits on the broker)."""
    from starlette.concurrency import run_in_threadpool

    try:
        return JSONResponse(await run_in_threadpool(action))
    except TaskshuttleError as exc:
        return JSONResponse({"error": str(exc)}, status_code=502)
