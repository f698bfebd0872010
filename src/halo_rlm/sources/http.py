"""HTTP for the trace sources: GET JSON from one service with bounded retries (the shared
`RetryPolicy`: `Retry-After` honoured, full-jitter backoff on 5xx and network errors), and one-line
errors for bad keys, wrong URLs and servers that are not there."""

from __future__ import annotations

import time
from typing import Any

import httpx
import orjson

from halo_rlm.utils import RetryPolicy

__all__ = ["Http", "NotFound", "SourceError"]


class SourceError(Exception):
    """The source cannot be read; the message is one line that says why and what to check."""


class NotFound(SourceError):
    """HTTP 404 (or 405): the endpoint or the project is not there."""


class Http:
    """GET JSON from one service, with the retries and error messages every import needs.

    `auth_hint` and `not_found_hint` finish the one-line errors for 401/403 and 404 (e.g. which option
    holds the key). `secrets` are blanked out of any server text quoted in an error."""

    def __init__(
        self,
        base_url: str,
        *,
        auth_hint: str,
        not_found_hint: str,
        auth: httpx.Auth | tuple[str, str] | None = None,
        headers: dict[str, str] | None = None,
        secrets: tuple[str, ...] = (),
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry = retry or RetryPolicy(base_seconds=1.0)
        self.auth_hint = auth_hint
        self.not_found_hint = not_found_hint
        self.secrets = tuple(s for s in secrets if s)
        self.client = httpx.Client(
            base_url=self.base_url, auth=auth, headers=headers, timeout=timeout, follow_redirects=True
        )

    def close(self) -> None:
        self.client.close()

    def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        url = f"{self.base_url}{path}"
        problem = ""
        attempts = self.retry.attempts
        for attempt in range(attempts):
            try:
                response = self.client.get(path, params=_query(params))  # type: ignore[arg-type]
            except httpx.ConnectError as exc:
                raise SourceError(f"cannot connect to {self.base_url}: {self._clean(_reason(exc))}") from exc
            except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                problem, wait = (
                    f"{type(exc).__name__}: {self._clean(_reason(exc))}",
                    self.retry.backoff(attempt),
                )
            else:
                status = response.status_code
                if status < 400:
                    return self._json(response, url)
                if status in (401, 403):
                    raise SourceError(f"{url}: HTTP {status} {self._detail(response)}— {self.auth_hint}")
                if status in (404, 405):
                    raise NotFound(f"{url}: HTTP {status} {self._detail(response)}— {self.not_found_hint}")
                if status != 429 and status < 500:
                    raise SourceError(f"{url}: HTTP {status} {self._detail(response)}".rstrip())
                problem = f"HTTP {status}" + (" (rate limited)" if status == 429 else "")
                hinted = self.retry.wait(attempt, response.headers)
                if hinted is None:
                    asked = response.headers.get("retry-after")
                    raise SourceError(
                        f"{url}: {problem}; the server asks to wait {asked}s, longer than "
                        f"{self.retry.max_retry_after:g}s: try again later"
                    )
                wait = hinted
            if attempt < attempts - 1:
                (self.retry.sleep or time.sleep)(wait)
        raise SourceError(f"{url}: still failing after {attempts} attempts ({problem})")

    def _json(self, response: httpx.Response, url: str) -> Any:
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError:
            kind = response.headers.get("content-type", "no content type").split(";")[0]
            raise SourceError(f"{url}: the answer is not JSON ({kind}); is this the right URL?") from None

    def _detail(self, response: httpx.Response) -> str:
        """The server's own one-line explanation, if it gave one (with a trailing space)."""
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            body = response.text if response.headers.get("content-type", "").startswith("text/plain") else ""
        if isinstance(body, dict):
            body = next((body[k] for k in ("message", "detail", "error") if isinstance(body.get(k), str)), "")
        text = self._clean(" ".join(body.split())) if isinstance(body, str) else ""
        text = text if len(text) <= 120 else text[:119] + "…"
        return f"({text}) " if text else ""

    def _clean(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text


def _query(params: dict[str, Any] | None) -> list[tuple[str, str]] | None:
    """Query parameters without empty values; lists repeat their key (`environment=a&environment=b`)."""
    if not params:
        return None
    pairs = []
    for key, value in params.items():
        for item in value if isinstance(value, list | tuple) else [value]:
            if item is not None and item != "":
                pairs.append((key, "true" if item is True else "false" if item is False else str(item)))
    return pairs


def _reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0]
