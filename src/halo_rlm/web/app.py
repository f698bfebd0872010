"""The app: its settings, the state it keeps while running (`Ui`), its routes, and the server.

One process holds the store open for writing for as long as it runs (DuckDB lets one process write
a file, and no other process open it meanwhile): the pages read through their own connections off
the event loop, which see a consistent snapshot while ingest jobs, imports and the OTLP receiver write.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import secrets
import socket
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anyio
import duckdb
import jinja2
import markupsafe
import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from halo_rlm import web_queries as q
from halo_rlm.store import TraceStore
from halo_rlm.web import markdown, run_pages, traces
from halo_rlm.web.analyses import Analyses
from halo_rlm.web.format import FILTERS, json_response, script_json
from halo_rlm.web.live import Hub
from halo_rlm.web.security import Guard

T = TypeVar("T")
HERE = Path(__file__).parent
DEFAULT_PORT = 8799
STORE_EVENT_SECONDS = 0.25  # at most this often, pages hear that the store changed
TEXT_CACHE = 16  # text searches remembered while the store is unchanged


@dataclass
class Settings:
    store: Path
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    allow_remote: bool = False
    exporter_token: str | None = None  # --token: what OTLP exporters must send to /v1/traces
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))  # the pages' per-launch token
    traces: Sequence[str] = ()  # files to ingest at start


class Ui:
    """What the app keeps while it runs; views reach it as `request.app.state.ui`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = TraceStore.open(settings.store)
        self.hub = Hub()
        self.generation = 0  # bumped on every write, so cached answers know they are stale
        self._lock = threading.Lock()
        self._store_event_pending = False
        self._text_cache: OrderedDict[str, tuple[int, list[str]]] = OrderedDict()
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.templates.filters.update(FILTERS)
        self.templates.filters["script_json"] = lambda value: markupsafe.Markup(script_json(value))
        self.templates.filters["markdown"] = markdown.render
        self.templates.globals["cite_url"] = markdown.citation_url
        self.analyses = Analyses(self)

    # --- reading ------------------------------------------------------------------------------

    async def read(self, work: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """Run a query off the event loop on a connection of its own."""

        def run() -> T:
            with self.store.borrow() as connection:
                return work(connection.con)

        return await anyio.to_thread.run_sync(run)

    async def resolve_text(self, filters: q.ListFilters) -> q.ListFilters:
        """Filters with their text search replaced by the traces it matches. The search reads every
        span's record, so its answer is kept until the store changes."""
        if not filters.text:
            return filters
        text, generation = filters.text.casefold(), self.generation
        cached = self._text_cache.get(text)
        if cached is None or cached[0] != generation:
            cached = (generation, await self.read(lambda con: q.text_matches(con, text)))
            self._text_cache[text] = cached
            while len(self._text_cache) > TEXT_CACHE:
                self._text_cache.popitem(last=False)
        self._text_cache.move_to_end(text)
        matched = set(cached[1])
        if filters.trace_ids is not None:
            matched &= set(filters.trace_ids)
        return filters.model_copy(update={"text": None, "trace_ids": sorted(matched)})

    # --- writing ------------------------------------------------------------------------------

    def changed(self) -> None:
        """Something was written to the store (from any thread): pages listening hear of it, at most
        every STORE_EVENT_SECONDS."""
        with self._lock:
            self.generation += 1
            if self._store_event_pending:
                return
            self._store_event_pending = True
        threading.Timer(STORE_EVENT_SECONDS, self._announce).start()

    def _announce(self) -> None:
        with self._lock:
            self._store_event_pending = False
            generation = self.generation
        self.hub.publish_threadsafe("store", {"generation": generation})

    # --- pages --------------------------------------------------------------------------------

    def render(self, request: Request, template: str, status: int = 200, **context: Any) -> Response:
        html = self.templates.get_template(template).render(
            request=request,
            path=request.url.path,
            app_settings=self.settings,
            last_event_id=self.hub.last_id,
            **context,
        )
        return HTMLResponse(html, status_code=status, headers={"cache-control": "no-store"})

    def error(self, request: Request, as_json: bool, status: int, message: str) -> Response:
        if as_json:
            return json_response({"error": message}, status)
        return self.render(request, "error.html", status=status, status_code=status, message=message)

    def onboarding(self) -> dict[str, Any]:
        """How to get traces into an empty store."""
        endpoint = f"{base_url(self.settings)}/v1/traces"
        env = [
            f"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT={endpoint}",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=http/protobuf",
        ]
        if self.settings.exporter_token:
            env.append("OTEL_EXPORTER_OTLP_TRACES_HEADERS=Authorization=Bearer%20<the --token value>")
        return {"endpoint": endpoint, "env": env}

    def close(self) -> None:
        self.hub.close()
        self.store.close()


def base_url(settings: Settings) -> str:
    host = (
        "127.0.0.1" if settings.host in ("0.0.0.0", "") else "::1" if settings.host == "::" else settings.host
    )
    return f"http://{f'[{host}]' if ':' in host else host}:{settings.port}"


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
        Route("/live", live),
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
            await ui.analyses.close()
            ui.close()

    guard = Middleware(
        Guard,
        token=settings.token,
        port=settings.port,  # type: ignore[arg-type]
        remote=settings.allow_remote,
        open_paths=frozenset({"/v1/traces"}),
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
        return self.app.state.ui  # type: ignore[no-any-return]

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
