"""Who may talk to the local app: the per-launch token, the Host and Origin checks, and the
headers every response carries.

A page on any web site can send requests to a port on localhost, and through a DNS name it controls
that resolves to 127.0.0.1 ("DNS rebinding") it can even read the answers. So every request needs
the token printed at launch (a cookie set from the printed URL, or `Authorization: Bearer`), must be
addressed to a local name unless remote access was asked for, and a state-changing request must
come from the app's own origin. No CORS headers are ever sent, and the Content-Security-Policy lets
only the app's own script files run, so trace text that slips into a page still cannot execute.

The OTLP endpoint is the exception: exporters cannot read the page's token, so it follows the
collector's rules (its own Host check, and a bearer token only when `--token` was given); requests
from browsers (they carry an Origin header) are refused there.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl, urlencode

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    # Not "no-referrer": with it, browsers send `Origin: null` on the app's own form posts.
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
SAFE_METHODS = {"GET", "HEAD"}


class Guard:
    """ASGI middleware enforcing the rules above around the whole app."""

    def __init__(
        self, app: ASGIApp, *, token: str, port: int, remote: bool, open_paths: frozenset[str]
    ) -> None:
        self.app = app
        self.token = token.encode()
        self.cookie = f"halo_ui_{port}"
        self.remote = remote
        self.open_paths = open_paths  # paths with rules of their own (the OTLP receiver)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        send = _with_security_headers(send)
        host = headers.get("host", "")
        if not self.remote and not is_local_host(host):
            await _refuse(
                send,
                403,
                "This app answers only requests addressed to localhost (the Host header "
                f"names {host[:100]!r}).",
            )
            return
        path = scope.get("path", "")
        if path in self.open_paths:
            if "origin" in headers:
                await _refuse(send, 403, "Web pages may not send spans here; OTLP exporters send no Origin.")
                return
            await self.app(scope, receive, send)
            return
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True))
        if "token" in query and scope["method"] in SAFE_METHODS:
            await self._login(scope, send, query)
            return
        how = self._authenticated(headers)
        if how is None:
            await _refuse(
                send,
                401,
                "Open the address `halo ui` printed (it carries this launch's token), "
                "or send Authorization: Bearer <token>.",
            )
            return
        if scope["method"] not in SAFE_METHODS and not self._same_origin(headers, host, how):
            await _refuse(send, 403, "Cross-site request refused: its Origin is not this app.")
            return
        await self.app(scope, receive, send)

    async def _login(self, scope: Scope, send: Send, query: dict[str, str]) -> None:
        """The printed URL: trade the token in its query for a cookie, then drop it from the address
        (so it stays out of history and never travels in a Referer)."""
        if not hmac.compare_digest(query.pop("token").encode(), self.token):
            await _refuse(
                send, 401, "That token is not this launch's; open the address `halo ui` printed last."
            )
            return
        path = scope.get("path", "/")
        location = path + ("?" + urlencode(query) if query else "")
        cookie = f"{self.cookie}={self.token.decode()}; HttpOnly; SameSite=Strict; Path=/"
        await send(
            {
                "type": "http.response.start",
                "status": 303,
                "headers": [
                    (b"location", location.encode()),
                    (b"set-cookie", cookie.encode()),
                    (b"cache-control", b"no-store"),
                    (b"content-length", b"0"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b""})

    def _authenticated(self, headers: dict[str, str]) -> str | None:
        scheme, _, given = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.token):
            return "bearer"
        for part in headers.get("cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == self.cookie and hmac.compare_digest(value.encode(), self.token):
                return "cookie"
        return None

    def _same_origin(self, headers: dict[str, str], host: str, how: str) -> bool:
        origin = headers.get("origin")
        if origin is None:
            # Browsers send Origin with every POST; a script with the token in a header is not a browser.
            return how == "bearer" and headers.get("sec-fetch-site") in (None, "same-origin", "none")
        return origin in (f"http://{host}", f"https://{host}")


def is_local_host(header: str) -> bool:
    """Whether a Host header names this machine (`localhost`, `*.localhost`, a loopback address)."""
    name = header.strip().lower()
    if name.startswith("["):
        name = name[1:].split("]")[0]
    elif name.count(":") == 1:
        name = name.rsplit(":", 1)[0]
    name = name.rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _headers(scope: Scope) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in scope.get("headers", ()):
        name = key.decode("latin-1").lower()
        out[name] = (
            out[name] + "; " + value.decode("latin-1")
            if name == "cookie" and name in out
            else value.decode("latin-1")
        )
    return out


def _with_security_headers(send: Send) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            present = {k.lower() for k, _ in message.get("headers", ())}
            message["headers"] = [
                *message.get("headers", ()),
                *((k, v) for k, v in SECURITY_HEADERS if k not in present),
            ]
        await send(message)

    return wrapped


async def _refuse(send: Send, status: int, text: str) -> None:
    body = text.encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


__all__ = ["CONTENT_SECURITY_POLICY", "Guard", "is_local_host"]
