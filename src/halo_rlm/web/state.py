"""What the app keeps while it runs (`Ui`: the store, the live hub, the analyses, the templates) and
its settings. Views reach it as `request.app.state.ui`.

One process holds the store open for writing for as long as it runs (DuckDB lets one process write
a file, and no other process open it meanwhile): the pages read through their own connections off
the event loop, which see a consistent snapshot while ingest jobs, imports and the OTLP receiver write.
"""

from __future__ import annotations

import asyncio
import logging
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
from halo_rlm.store import DuckDBStore, TraceFilters, TraceStore, paths, text_index
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
TEXT_CACHE = 4  # text searches remembered while the store (and its search index) is unchanged
INDEX_PAUSE_SECONDS = 0.5  # the search index catches up at most this often while writes keep coming
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
        self._text_cache: OrderedDict[tuple[str, int, int], list[str]] = OrderedDict()
        # The index of span text that answers searches (DuckDB stores; beside the store file), kept
        # level with the store by a thread of its own: built at start, caught up after each write.
        self.search = (
            text_index.TextIndex(self.store, paths.beside(self.store.path, ".search"))
            if isinstance(self.store, DuckDBStore)
            else None
        )
        self._closing = threading.Event()
        self._index_wanted = threading.Event()
        self._indexer: threading.Thread | None = None
        if self.search is not None:
            self._index_wanted.set()
            self._indexer = threading.Thread(target=self._keep_index, name="halo-search-index", daemon=True)
            self._indexer.start()
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
        """Filters with their text search replaced by the traces it matches: from the search index
        once it is built (a search for one word, or part of one, from it alone; others from the scan
        of the traces it leaves), else from a scan of every span's record. Answers are kept until
        the store or the index changes."""
        if not filters.text:
            return filters
        text, index = filters.text, self.search
        key = (text, self.generation, index.version if index is not None and index.ready else -1)
        matched = self._text_cache.get(key)
        if matched is None:
            match = await asyncio.to_thread(index.search, text) if index is not None else None
            if match is None:
                matched = await self.read(lambda store: store.traces_containing(text))
            elif match.exact:
                matched = match.traces.to_pylist()
            else:
                among = match.traces.to_pylist()
                matched = await self.read(lambda store: store.traces_containing(text, among=among))
            self._text_cache[key] = matched
            while len(self._text_cache) > TEXT_CACHE:
                self._text_cache.popitem(last=False)
        self._text_cache.move_to_end(key)
        if filters.trace_ids is not None:
            wanted = set(filters.trace_ids)
            matched = [trace_id for trace_id in matched if trace_id in wanted]
        return filters.model_copy(update={"text": None, "trace_ids": matched})

    def search_info(self, filters: TraceFilters) -> dict[str, Any] | None:
        """How a page's text search is answered (`index`, or `scan` while the index is built), and the
        index's state; None without a search."""
        if not filters.text:
            return None
        if self.search is None:
            return {"by": "scan", "index": None}
        status = self.search.status()
        answered = status.state == "ready" and bool(text_index.words(filters.text))
        return {"by": "index" if answered else "scan", "index": status.as_dict()}

    def _keep_index(self) -> None:
        """The search index's thread: build it, then catch it up after writes (at most every
        INDEX_PAUSE_SECONDS); open pages hear when it has (their search answers may change)."""
        assert self.search is not None
        while True:
            self._index_wanted.wait()
            if self._closing.is_set():
                return
            self._index_wanted.clear()
            version = self.search.version
            try:
                self.search.catch_up(should_stop=self._closing.is_set)
            except Exception:  # its status says so, searches scan meanwhile, and the next write retries
                logging.getLogger(__name__).exception("the search index could not catch up")
            if self.search.version != version:
                self.hub.publish_threadsafe("store", {"generation": self.generation})
            self._closing.wait(INDEX_PAUSE_SECONDS)

    # --- writing ------------------------------------------------------------------------------

    def changed(self) -> None:
        """Something was written to the store (from any thread). Open pages hear of it at once, then at
        most every STORE_EVENT_SECONDS while writes keep coming."""
        self._index_wanted.set()
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
        self._closing.set()
        self._index_wanted.set()
        if self._indexer is not None:
            self._indexer.join()
        self.hub.close()
        self.store.close()


def base_url(settings: Settings) -> str:
    host = (
        "127.0.0.1" if settings.host in ("0.0.0.0", "") else "::1" if settings.host == "::" else settings.host
    )
    return f"http://{f'[{host}]' if ':' in host else host}:{settings.port}"


__all__ = ["DEFAULT_PORT", "Settings", "Ui", "base_url"]
