"""Who may talk to `halo ui`: the per-launch token (cookie from the printed URL, or a bearer header),
the Host check against DNS rebinding, the Origin check on state-changing requests, no CORS, the
Content-Security-Policy, and the bind address."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from halo_rlm.store import TraceStore
from halo_rlm.web.app import Server, Settings, UiError
from halo_rlm.web.security import CONTENT_SECURITY_POLICY


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    store = tmp_path_factory.mktemp("security") / "store.duckdb"
    TraceStore.open(store).close()
    with Server(Settings(store=store, port=0)) as running:
        yield running


def test_every_page_needs_the_token(server: Server) -> None:
    with httpx.Client(base_url=server.url) as client:
        for path in ("/traces", "/traces.json", "/traces/abc", "/live", "/static/app.js", "/nowhere"):
            refused = client.get(path)
            assert refused.status_code == 401, path
            assert "token" in refused.text
        assert client.get("/traces", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/traces?token=wrong").status_code == 401
        assert (
            client.get("/traces", headers={"Cookie": f"halo_ui_{server.settings.port}=wrong"}).status_code
            == 401
        )


def test_the_printed_url_trades_its_token_for_a_cookie(server: Server) -> None:
    with httpx.Client(base_url=server.url) as client:
        login = client.get(server.login_url.removeprefix(server.url))
        assert (
            login.status_code == 303 and login.headers["location"] == "/traces"
        )  # token gone from the address
        cookie = login.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert client.get("/traces.json").status_code == 200  # the cookie jar now carries it
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {server.settings.token}"}
    ) as client:
        assert client.get("/traces.json").status_code == 200


def test_foreign_host_and_origin_are_refused(server: Server) -> None:
    token = {"Authorization": f"Bearer {server.settings.token}"}
    with httpx.Client(base_url=server.url) as client:
        # DNS rebinding: a page on attacker.example resolving to 127.0.0.1 sends its own Host.
        rebound = client.get(
            "/traces.json", headers={**token, "Host": f"attacker.example:{server.settings.port}"}
        )
        assert rebound.status_code == 403
        for host in ("localhost", f"localhost:{server.settings.port}", f"127.0.0.1:{server.settings.port}"):
            assert client.get("/traces.json", headers={**token, "Host": host}).status_code == 200
        cookie = {"Cookie": f"halo_ui_{server.settings.port}={server.settings.token}"}
        for headers in (
            {**cookie, "Origin": "http://attacker.example"},
            cookie,
            {**token, "Origin": "http://attacker.example"},
            {**token, "Sec-Fetch-Site": "cross-site"},
        ):
            assert client.post("/traces", headers=headers).status_code == 403, headers
        same = client.post("/traces", headers={**cookie, "Origin": server.url})
        assert same.status_code == 405  # past the guard; the page takes GET only
        # browsers may not post spans to the OTLP endpoint
        otlp = client.post(
            "/v1/traces",
            headers={"Origin": "http://attacker.example", "Content-Type": "application/json"},
            content=b"{}",
        )
        assert otlp.status_code == 403


def test_no_cors_and_a_strict_content_security_policy(server: Server) -> None:
    token = {"Authorization": f"Bearer {server.settings.token}"}
    with httpx.Client(base_url=server.url) as client:
        page = client.get("/traces", headers=token)
        preflight = client.options(
            "/traces.json",
            headers={**token, "Origin": "http://attacker.example", "Access-Control-Request-Method": "GET"},
        )
        for response in (
            page,
            preflight,
            client.get("/traces.json", headers={**token, "Origin": "http://x"}),
        ):
            assert not any(name.lower().startswith("access-control-") for name in response.headers)
        assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert (
            "script-src 'self'" in CONTENT_SECURITY_POLICY and "unsafe-inline" not in CONTENT_SECURITY_POLICY
        )
        assert (
            page.headers["x-frame-options"] == "DENY" and page.headers["x-content-type-options"] == "nosniff"
        )


def test_binding_beyond_loopback_needs_allow_remote(tmp_path: Path) -> None:
    with pytest.raises(UiError, match="--allow-remote"):
        Server(Settings(store=tmp_path / "s.duckdb", host="0.0.0.0", port=0))
