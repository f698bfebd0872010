"""Small helpers every layer shares: times, clipping long text, HALO's cache folder, and the one retry
policy for talking to services (LLM providers and the HTTP trace sources).

A leaf: imports nothing of HALO's, so any module may use it.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = [
    "RetryPolicy",
    "cache_dir",
    "clip",
    "first_line",
    "iso_ms",
    "iso_to_ns",
    "now_iso",
    "ns_to_iso",
    "one_line",
    "parse_time",
    "retry_after",
    "terminal_safe",
    "to_ns",
]

INT64_LIMIT = 2**63

# --- times -----------------------------------------------------------------------------------------

_ISO = re.compile(
    r"(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}(?::\d{2})?)(?:[.,](\d+))?\s*(Z|z|[+-]\d{2}(?::?\d{2})?)?"
)
_RELATIVE = re.compile(r"(\d+)\s*([mhdw])")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def iso_to_ns(text: str) -> int | None:
    """Nanoseconds since the epoch of an ISO-8601 time (no zone means UTC); None when unreadable."""
    match = _ISO.fullmatch(text.strip())
    if not match:
        return None
    date, clock, fraction, zone = match.groups()
    if clock.count(":") == 1:
        clock += ":00"
    zone = zone or "Z"
    zone = (
        "+00:00"
        if zone in ("Z", "z")
        else (zone if ":" in zone or len(zone) == 3 else f"{zone[:3]}:{zone[3:]}")
    )
    try:
        stamp = datetime.fromisoformat(f"{date}T{clock}{zone}")
    except ValueError:
        return None
    nanos = int((fraction or "0")[:9].ljust(9, "0"))
    return int(stamp.timestamp()) * 10**9 + nanos


def to_ns(value: Any) -> int | None:
    """Nanoseconds since the epoch from integers/decimal strings (ns, or s/ms/us by magnitude) or
    ISO-8601 strings; None when absent or unreadable."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return _scale(value)
    if isinstance(value, float):
        return _scale_float(value)
    text = str(value).strip()
    if not text:
        return None
    if text.isdecimal():
        return _scale(int(text))
    try:
        return _scale_float(float(text))
    except ValueError:
        return iso_to_ns(text)


def _scale(n: int) -> int | None:
    if n <= 0:
        return None
    if n < 10**11:  # seconds
        n *= 10**9
    elif n < 10**14:  # milliseconds
        n *= 10**6
    elif n < 10**17:  # microseconds
        n *= 10**3
    return n if n < INT64_LIMIT else None  # past 2262: not a time a span carries (nor a store column holds)


def _scale_float(x: float) -> int | None:
    if not math.isfinite(x) or x <= 0:
        return None
    if x < 1e11:
        return round(x * 1e9)
    return _scale(int(x))


def ns_to_iso(ns: int | None) -> str | None:
    """ISO-8601 UTC with nanoseconds."""
    if ns is None:
        return None
    seconds, nanos = divmod(int(ns), 10**9)
    return f"{_utc_second(seconds)}.{nanos:09d}Z"


@lru_cache(maxsize=4096)
def _utc_second(seconds: int) -> str:
    # Spans written together mostly share their second; formatting it is most of the cost.
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")


def iso_ms(ns: int) -> str:
    """ISO-8601 UTC with milliseconds: the precision every trace API accepts."""
    return f"{_utc_second(ns // 10**9)}.{ns % 10**9 // 10**6:03d}Z"


def now_iso() -> str:
    """The time now, ISO-8601 UTC to the second."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None, *, now: datetime | None = None) -> str | None:
    """An ISO-8601 time, or a time relative to now (`30m`, `24h`, `7d`, `2w`), as ISO-8601 UTC."""
    if value is None:
        return None
    relative = _RELATIVE.fullmatch(value.strip().lower())
    if relative:
        delta = timedelta(**{_UNITS[relative.group(2)]: int(relative.group(1))})
        moment = (now or datetime.now(UTC)) - delta
        return iso_ms(int(moment.timestamp() * 10**9))
    ns = iso_to_ns(value)
    if ns is None:
        raise ValueError(f"not a time: {value!r} (use ISO-8601 like 2026-04-24T18:00:00Z, or 30m, 24h, 7d)")
    return iso_ms(ns)


# --- text ------------------------------------------------------------------------------------------


def clip(text: str, limit: int) -> str:
    """Head and tail of a long text, saying how much was cut between them (errors are often at the
    end, so the tail is kept too)."""
    if len(text) <= limit:
        return text
    head, tail = limit * 3 // 4, limit // 4
    return f"{text[:head]}\n…[halo: {len(text) - head - tail:,} characters cut]…\n{text[-tail:]}"


def one_line(text: str, limit: int) -> str:
    """`text` on one line (whitespace collapsed), at most `limit` characters: head and tail kept,
    cut at word boundaries where there are any, the cut marked with "…"."""
    flat = " ".join(text.split())
    if len(flat) <= limit:
        return flat
    keep_head, keep_tail = max(1, (limit - 3) * 2 // 3), max(0, (limit - 3) // 3)
    head = flat[:keep_head]
    if " " in head[keep_head // 2 :]:
        head = head[: head.rindex(" ")]
    tail = flat[len(flat) - keep_tail :] if keep_tail else ""
    if " " in tail[: keep_tail // 2]:
        tail = tail[tail.index(" ") + 1 :]
    return f"{head} … {tail}" if tail else f"{head} …"


# What a terminal would act on instead of showing: C0 controls but tab and newline (ESC starts colour,
# title (OSC), hyperlink (OSC 8), clear-screen and hidden-text sequences; CR overwrites a line), DEL,
# C1 controls (0x9b is a one-byte CSI), bidi overrides and isolates (they reorder what is shown),
# zero-width and invisible format characters, and Unicode tag characters (invisible text).
_UNSAFE_ON_TERMINALS = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f"
    "\ufeff\ufff9-\ufffb\U000e0000-\U000e007f]"
)


def terminal_safe(text: str) -> str:
    """`text` (trace text, model output) made safe to print on a terminal: every character a
    terminal would act on or hide instead of showing becomes a visible stand-in — C0 controls their
    control picture (ESC is ␛), everything else `<U+XXXX>` — so nothing it holds can retitle, clear,
    link, hide or reorder what is on the screen. Tab and newline are kept."""
    return _UNSAFE_ON_TERMINALS.sub(_stand_in, text)


def _stand_in(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code < 0x20:
        return chr(0x2400 + code)
    return "␡" if code == 0x7F else f"<U+{code:04X}>"


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --- places ----------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """HALO's cache folder: `$HALO_CACHE_DIR`, else the platform's user cache (e.g. ~/.cache/halo-rlm)."""
    override = os.environ.get("HALO_CACHE_DIR")
    if override:
        return Path(override).expanduser()
    import platformdirs  # imported here: only commands that use the cache pay for it

    return Path(platformdirs.user_cache_dir("halo-rlm"))


# --- retries ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """How to retry a service that is busy or briefly down: honour `Retry-After` (seconds, an HTTP
    date, or `retry-after-ms`) up to `max_retry_after`, else back off with full jitter — a uniform
    wait up to `base_seconds × 2^attempt`, capped at `cap_seconds`. `sleep` does the waiting (tests
    pass one that records the waits); None means `time.sleep`, or `asyncio.sleep` in async clients."""

    attempts: int = 6
    base_seconds: float = 0.5
    cap_seconds: float = 30.0
    max_retry_after: float = 120.0
    sleep: Callable[[float], Any] | None = field(default=None, compare=False)

    def backoff(self, attempt: int) -> float:
        """The wait after failed attempt number `attempt` (0-based), without a server hint."""
        import random

        return random.uniform(0, min(self.cap_seconds, self.base_seconds * 2**attempt))

    def wait(self, attempt: int, headers: Mapping[str, str] | None = None) -> float | None:
        """The wait after failed attempt `attempt` (0-based): the server's `Retry-After` when it gave
        one (plus a little jitter, so clients told the same moment do not all return together), else
        backoff. None when the server asks for longer than `max_retry_after`: give up and say so."""
        hinted = retry_after(headers or {})
        if hinted is None:
            return self.backoff(attempt)
        if hinted > self.max_retry_after:
            return None
        import random

        return hinted + random.uniform(0, 0.1 * hinted + 0.05)


def retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds to wait as a response's headers ask: `retry-after-ms`, else `Retry-After` as
    delta-seconds or an HTTP date (RFC 9110 §10.2.3); None when they do not say."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = (headers.get("retry-after") or "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    import email.utils

    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))
