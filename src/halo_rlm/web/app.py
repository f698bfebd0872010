"""The app: its routes (every page beside its JSON twin) and the server that runs it."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from halo_rlm.collect import BODY_SECONDS, TRACES_PATH, Collector, Reply
from halo_rlm.store import StoreError, TraceStore
from halo_rlm.web import compare_pages, run_pages, source_pages, traces
from halo_rlm.web.security import Guard
from halo_rlm.web.state import DEFAULT_PORT, HERE, Settings, Ui, base_url

# --- routes ---------------------------------------------------------------------------------


View = Callable[[Request, bool], Awaitable[Response]]


def twin(path: str, view: View) -> list[BaseRoute]:
    """A page and its JSON twin at the same path plus `.json`."""

    async def as_json(request: Request) -> Response:
        return await view(request, True)

    async def as_html(request: Request) -> Response:
        return await view(request, False)

    return [Route(path + ".json", as_json), Route(path, as_html)]


async def home(request: Request) -> Response:
    return RedirectResponse("/traces", status_code=303)


async def receive_otlp(request: Request) -> Response:
    """OTLP/HTTP export requests (protobuf or JSON), judged and made durable by the collector."""
    collector: Collector = request.app.state.ui.receiver
    headers = {
        name: request.headers.get(name) for name in ("content-type", "content-encoding", "authorization")
    }
    declared = request.headers.get("content-length", "")
    refused = collector.refuse(
        content_type=headers["content-type"],
        content_encoding=headers["content-encoding"],
        authorization=headers["authorization"],
        length=int(declared) if declared.isdecimal() else None,
    )
    if refused is not None:
        return _otlp_response(refused)
    body = bytearray()
    try:
        with anyio.fail_after(BODY_SECONDS):
            async for chunk in request.stream():
                body += chunk
                if len(body) > collector.max_body_bytes:
                    break  # the collector refuses it by its length
    except TimeoutError:
        return Response(f"the body did not arrive within {BODY_SECONDS:g}s", status_code=408)
    except ClientDisconnect:
        return Response(status_code=400)
    reply = await anyio.to_thread.run_sync(
        lambda: collector.receive(
            bytes(body),
            content_type=headers["content-type"],
            content_encoding=headers["content-encoding"],
            authorization=headers["authorization"],
        )
    )
    return _otlp_response(reply)


def _otlp_response(reply: Reply) -> Response:
    return Response(reply.body, status_code=reply.status, headers=reply.headers)


async def live(request: Request) -> Response:
    ui: Ui = request.app.state.ui
    topics = set(request.query_params.getlist("topic")) or None
    last = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    last_id = int(last) if last and last.isdecimal() else None
    return StreamingResponse(
        ui.hub.stream(topics, last_id),
        media_type="text/event-stream",
        headers={"cache-control": "no-store", "x-accel-buffering": "no"},
    )


def routes() -> list[BaseRoute]:
    return [
        Route("/", home),
        *twin("/traces", traces.list_page),
        Route("/traces/latest.json", traces.latest),
        *twin("/traces/{trace_id}/spans/{span_id}", traces.span_panel),
        *twin("/traces/{trace_id}/conversation", traces.conversation_view),
        *twin("/traces/{trace_id}", traces.trace_page),
        *twin("/runs", run_pages.runs_list),
        Route("/runs", run_pages.create_run, methods=["POST"]),
        *twin("/runs/new", run_pages.new_run),
        Route("/runs/{run_id}/report.md", run_pages.report_file),
        Route("/runs/{run_id}/{action}", run_pages.run_action, methods=["POST"]),
        *twin("/runs/{run_id}", run_pages.run_page),
        *twin("/sources", source_pages.sources_page),
        Route("/sources/files/preview", source_pages.preview_files, methods=["POST"]),
        Route("/sources/files", source_pages.add_files, methods=["POST"]),
        Route("/sources/upload", source_pages.upload, methods=["POST"]),
        Route("/sources/examples", source_pages.add_examples, methods=["POST"]),
        Route("/sources/langfuse", source_pages.add_langfuse, methods=["POST"]),
        Route("/sources/phoenix", source_pages.add_phoenix, methods=["POST"]),
        Route("/sources/jobs/{job_id}/{action}", source_pages.job_action, methods=["POST"]),
        *twin("/compare", compare_pages.compare_page),
        Route("/compare", compare_pages.start, methods=["POST"]),
        Route("/compare/{run_id}/{name}", compare_pages.result_file),
        Route("/live", live),
        Route(TRACES_PATH, receive_otlp, methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]


def create_app(settings: Settings) -> Starlette:
    """The ASGI app. The store opens when the app starts (its lifespan) and closes when it stops."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        ui = Ui(settings)
        ui.hub.attach(asyncio.get_running_loop())
        app.state.ui = ui
        try:
            yield
        finally:
            await ui.runs.close()
            await ui.comparisons.close()
            ui.close()

    guard = Middleware(
        Guard,
        token=settings.token,
        port=settings.port,
        remote=settings.allow_remote,
        open_paths=frozenset({TRACES_PATH}),
    )
    return Starlette(routes=routes(), middleware=[guard], lifespan=lifespan)


# --- the server -----------------------------------------------------------------------------


class UiError(Exception):
    """The app cannot start as asked; the message says why."""


def bind(settings: Settings) -> socket.socket:
    """Listen on the settings' host and port (port 0: any free one, written back into `settings`)."""
    try:
        family, _, _, _, address = socket.getaddrinfo(settings.host, settings.port, type=socket.SOCK_STREAM)[
            0
        ]
    except (socket.gaierror, UnicodeError) as exc:
        raise UiError(f"cannot resolve host {settings.host!r}: {exc}") from exc
    if not ipaddress.ip_address(str(address[0]).split("%")[0]).is_loopback and not settings.allow_remote:
        raise UiError(
            f"{settings.host} accepts connections from other machines; pass --allow-remote to bind it "
            "(every page still needs the printed token)"
        )
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address[:2])
    except OSError as exc:
        sock.close()
        raise UiError(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}") from exc
    sock.listen(128)
    sock.set_inheritable(True)
    settings.port = sock.getsockname()[1]
    return sock


class Server:
    """A running app. `start()` serves from a background thread (tests, benchmarks); `run()` serves
    in the foreground until Ctrl-C (the `halo ui` command)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        try:  # fail here, with a clear message, not inside the server's startup
            TraceStore.open(settings.store).close()
        except StoreError as exc:
            raise UiError(str(exc)) from exc
        self._socket = bind(settings)
        self.app = create_app(settings)
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=2,
            ws="none",
        )
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return base_url(self.settings)

    @property
    def login_url(self) -> str:
        """The address to open: it carries the per-launch token, which the app trades for a cookie."""
        return f"{self.url}/traces?token={self.settings.token}"

    @property
    def ui(self) -> Ui:
        return self.app.state.ui

    def run(self) -> None:
        self._server.run(sockets=[self._socket])

    def start(self, timeout: float = 30.0) -> Server:
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, name="halo-ui", daemon=True
        )
        self._thread.start()
        deadline = threading.Event()
        for _ in range(int(timeout / 0.02)):
            if self._server.started or not self._thread.is_alive():
                break
            deadline.wait(0.02)
        if not self._server.started:
            raise UiError("the app did not start (see the log above)")
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        self.ui.hub.close_threadsafe()  # live streams never end by themselves
        self._server.should_exit = True
        self._thread.join(30)
        self._thread = None

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["DEFAULT_PORT", "Server", "Settings", "Ui", "UiError", "base_url", "create_app"]
