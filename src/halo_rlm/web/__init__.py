"""`halo ui`: the local web app. It browses the trace store live (the OTLP receiver runs in the same
server), imports traces, launches analyses and shows their reports, with a JSON twin for every page.

    from halo_rlm.web import Server, Settings
    with Server(Settings(store=Path("traces.duckdb"), port=0)) as server:
        print(server.login_url)

It sits on top of the package: it uses the store, sources, engine and run APIs, and nothing imports it.
"""

from halo_rlm.web.app import DEFAULT_PORT, Server, Settings, UiError, create_app

__all__ = ["DEFAULT_PORT", "Server", "Settings", "UiError", "create_app"]
