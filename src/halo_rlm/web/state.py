"""What the app keeps while it runs (`Ui`: the store, the live hub, the analyses, the templates) and
its settings. Views reach it as `request.app.state.ui`.

One process holds the store open for writing for as long as it runs (DuckDB lets one process write
a file, and no other process open it meanwhile): the pages read through their own connections off
the event loop, which see a consistent snapshot while ingest jobs, imports and the OTLP receiver write.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import jinja2
import markupsafe
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from halo_rlm import files
from halo_rlm.collect import Collector
from halo_rlm.defaults import UI_PORT
from halo_rlm.store import TraceFilters, TraceStore, paths
from halo_rlm.web import markdown
from halo_rlm.web.comparisons import Comparisons
from halo_rlm.web.format import FILTERS, json_response, script_json
from halo_rlm.web.jobs import Jobs
from halo_rlm.web.live import Hub
from halo_rlm.web.live_runs import LiveRuns

T = TypeVar("T")
HERE = Path(__file__).parent
DEFAULT_PORT = UI_PORT
STORE_EVENT_SECONDS = 0.25  # at most this often, pages hear that the store changed
TEXT_CACHE = 16  # text searches remembered while the store is unchanged
OTLP_FLUSH_SECONDS = 0.25  # received spans reach the store (and the open pages) within about this


@dataclass
class Settings:
    store: Path | str  # a DuckDB file, or a ClickHouse store's URL (`chdb:FOLDER`, `clickhouse://…`)
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    allow_remote: bool = False
    exporter_token: str | None = None  # --token: what OTLP exporters must send to /v1/traces
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))  # the pages' per-launch token
    traces: Sequence[str] = ()  # files to ingest at start

    @property
    def store_name(self) -> str:
        """The store as the page header shows it: a file's name, or a ClickHouse store's URL."""
        return str(self.store) if paths.is_url(str(self.store)) else Path(self.store).name


class Ui:
    """What the app keeps while it runs; views reach it as `request.app.state.ui`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = TraceStore.open(settings.store)
        self.hub = Hub()
        self.generation = 0  # bumped on every write, so cached answers know they are stale
        self._lock = threading.Lock()
        self._store_event_pending = False
        self._last_store_event = 0.0
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
        self.runs = LiveRuns(self.store, self.hub, self.resolve_text)
        self.comparisons = Comparisons(self.store, self.runs.registry, self.hub)
        # OTLP/HTTP at /v1/traces, by the collector's rules: what it acknowledges is durable in its
        # spool first, and written to the store from there.
        self.receiver = Collector(
            store=self.store.path,
            token=settings.exporter_token,
            flush_seconds=OTLP_FLUSH_SECONDS,
            rest_per_write=0.0,  # an open page shows a span soon, whatever each write costs the CPU
            on_flush=lambda stats: self.changed(),
        )
        self.jobs = Jobs(self.store, self.hub, on_write=self.changed)
        if settings.traces:  # given on the command line: ingested in the background
            self.jobs.add_files([f.path for f in files.resolve(settings.traces)])

    # --- reading ------------------------------------------------------------------------------

    async def read(self, work: Callable[[TraceStore], T]) -> T:
        """Run store work off the event loop on a connection of its own."""
        return await self.store.run(work)

    async def resolve_text(self, filters: TraceFilters) -> TraceFilters:
        """Filters with their text search replaced by the traces it matches. The search reads every
        span's record, so its answer is kept until the store changes."""
        if not filters.text:
            return filters
        text, generation = filters.text.casefold(), self.generation
        cached = self._text_cache.get(text)
        if cached is None or cached[0] != generation:
            cached = (generation, await self.read(lambda store: store.traces_containing(text)))
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
        """Something was written to the store (from any thread). Open pages hear of it at once, then at
        most every STORE_EVENT_SECONDS while writes keep coming."""
        with self._lock:
            self.generation += 1
            now = time.monotonic()
            if self._store_event_pending:
                return
            wait = max(0.0, self._last_store_event + STORE_EVENT_SECONDS - now)
            self._store_event_pending = True
        threading.Timer(wait, self._announce).start()

    def _announce(self) -> None:
        with self._lock:
            self._store_event_pending = False
            self._last_store_event = time.monotonic()
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
        """Stop the running job (resumable later), write what the receiver holds, end live streams,
        close the store."""
        self.jobs.close()
        self.receiver.stop()
        self.hub.close()
        self.store.close()


def base_url(settings: Settings) -> str:
    host = (
        "127.0.0.1" if settings.host in ("0.0.0.0", "") else "::1" if settings.host == "::" else settings.host
    )
    return f"http://{f'[{host}]' if ':' in host else host}:{settings.port}"


__all__ = ["DEFAULT_PORT", "Settings", "Ui", "base_url"]
