"""Live updates: an in-process hub that fans events out to server-sent-event streams.

Each event gets an increasing id and is kept in a short ring buffer, so a browser that reconnects
(EventSource sends `Last-Event-ID`) receives what it missed. Events come from the event loop
(`publish`) or from other threads (`publish_threadsafe`: the OTLP flusher, ingest jobs). A client
too slow to keep up is disconnected rather than buffered without bound; it reconnects and replays.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

REPLAY_EVENTS = 2_000
CLIENT_QUEUE = 1_000
KEEPALIVE_SECONDS = 15.0


@dataclass(frozen=True)
class Event:
    id: int
    topic: str
    data: Any

    def encode(self) -> bytes:
        return b"id: %d\nevent: %s\ndata: %s\n\n" % (self.id, self.topic.encode(), orjson.dumps(self.data))


class Hub:
    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._next_id = 1
        self._recent: deque[Event] = deque(maxlen=REPLAY_EVENTS)
        self._clients: set[asyncio.Queue[Event | None]] = set()

    @property
    def last_id(self) -> int:
        """The id of the newest event so far (0 before any)."""
        return self._next_id - 1

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def publish(self, topic: str, data: Any) -> None:
        """Send an event to every listener (call from the event loop)."""
        event = Event(self._next_id, topic, data)
        self._next_id += 1
        self._recent.append(event)
        for queue in list(self._clients):
            if queue.qsize() < CLIENT_QUEUE:
                queue.put_nowait(event)
                continue
            # Too far behind: end its stream; the browser reconnects and replays from its last id.
            self._clients.discard(queue)
            while not queue.empty():
                queue.get_nowait()
            queue.put_nowait(None)

    def publish_threadsafe(self, topic: str, data: Any) -> None:
        """`publish` from any thread; dropped when the app is not running."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self.publish, topic, data)

    def close_threadsafe(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self.close)

    def close(self) -> None:
        """End every stream (at shutdown)."""
        for queue in list(self._clients):
            queue.put_nowait(None)
        self._clients.clear()

    async def stream(self, topics: set[str] | None, last_id: int | None) -> AsyncIterator[bytes]:
        """Server-sent events for `topics` (all when None), replaying those after `last_id`."""
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self._clients.add(queue)
        try:
            yield b"retry: 1000\n\n"
            if last_id is not None:
                for missed in list(self._recent):
                    if missed.id > last_id and (topics is None or missed.topic in topics):
                        yield missed.encode()
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), KEEPALIVE_SECONDS)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                if event is None:
                    return
                if topics is None or event.topic in topics:
                    yield event.encode()
        finally:
            self._clients.discard(queue)


__all__ = ["Event", "Hub"]
