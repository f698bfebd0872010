"""Filling the store from the app, in real Chromium: an empty store's welcome page, a file path
previewed (resolved and shown before anything is read) then imported as a background job with its
rejects summary, an upload, the example traces, a Langfuse import against a server that answers like
Langfuse, and jobs that are cancelled, interrupted by a restart, and resumed without duplicates."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from browser import chromium
from test_langfuse import PUBLIC, SECRET, LangfuseServer

from halo_rlm.simulate import simulate
from halo_rlm.web import Server, Settings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


def page_for(browser: Any, server: Server) -> Any:
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    page.goto(server.login_url)
    return page


def api(server: Server) -> httpx.Client:
    return httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {server.settings.token}"}, timeout=30
    )


def wait_job(client: httpx.Client, job_id: str, wanted: set[str], timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = next(j for j in client.get("/sources.json").json()["jobs"] if j["id"] == job_id)
        if job["status"] in wanted:
            return job
        assert time.monotonic() < deadline, f"job stayed {job['status']}"
        time.sleep(0.1)


def count(server: Server, sql: str) -> int:
    cursor = server.ui.store.con.cursor()
    try:
        return int(cursor.execute(sql).fetchall()[0][0])
    finally:
        cursor.close()


def test_an_empty_store_shows_how_to_connect_and_a_previewed_file_imports(
    browser: Any, tmp_path: Path
) -> None:
    simulate(tmp_path / "traces.jsonl", traces=30, seed=5)
    lines = (tmp_path / "traces.jsonl").read_bytes().splitlines()
    (tmp_path / "with-rejects.jsonl").write_bytes(
        b"\n".join([*lines[:40], b'{"not": "a span"', b"[1, 2, 3]", *lines[40:]]) + b"\n"
    )
    with Server(Settings(store=tmp_path / "store.duckdb", port=0)) as server:
        page = page_for(browser, server)
        assert page.is_visible(".onboarding")
        assert f"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT={server.url}/v1/traces" in page.inner_text(".onboarding")
        page.click("text=Add trace files")
        page.fill("textarea[name=paths]", str(tmp_path / "*.jsonl"))
        page.click("#files button[type=submit]")
        page.wait_for_selector("#preview")
        shown = page.inner_text("#preview")
        assert (
            str((tmp_path / "with-rejects.jsonl").resolve()) in shown
            and str((tmp_path / "traces.jsonl").resolve()) in shown
        )
        assert count(server, "SELECT count(*) FROM spans") == 0  # nothing read before the confirmation
        page.click("text=Import these files")
        page.wait_for_selector("#jobs tr[data-status=completed]", timeout=60_000)
        jobs = page.inner_text("#jobs")
        assert "2" in page.inner_text("#jobs tr[data-status=completed] td:nth-child(6)")  # two rejected
        page.click("#jobs details summary") if not page.is_visible("#jobs .rejects") else None
        assert page.query_selector("#jobs .rejects li") is not None, jobs
        distinct = count(server, "SELECT count(*) FROM traces")
        assert distinct == 30
        page.goto(f"{server.url}/traces")
        assert page.inner_text("[data-stat=traces]") == "30"


def test_upload_examples_and_langfuse_imports_run_as_jobs(browser: Any, tmp_path: Path) -> None:
    simulate(tmp_path / "up.jsonl", traces=12, seed=8)
    langfuse = LangfuseServer()
    import threading

    threading.Thread(target=langfuse.serve_forever, daemon=True).start()
    try:
        with Server(Settings(store=tmp_path / "store.duckdb", port=0)) as server, api(server) as client:
            page = page_for(browser, server)
            page.goto(f"{server.url}/sources")
            page.set_input_files("#upload input[type=file]", str(tmp_path / "up.jsonl"))
            page.click("#upload button[type=submit]")
            page.wait_for_selector("#jobs tr[data-status=completed]", timeout=60_000)
            assert count(server, "SELECT count(*) FROM traces") == 12
            uploads = Path(f"{tmp_path / 'store.duckdb'}.uploads")
            assert not any(uploads.rglob("*.jsonl"))  # an ingested upload is not kept
            page.fill("#langfuse input[name=host]", langfuse.url)
            page.fill("#langfuse input[name=public_key]", PUBLIC)
            page.fill("#langfuse input[name=secret_key]", SECRET)
            page.click("#langfuse button[type=submit]")
            wait_job(client, client.get("/sources.json").json()["jobs"][0]["id"], {"completed", "failed"})
            job = client.get("/sources.json").json()["jobs"][0]
            assert job["status"] == "completed" and job["kind"] == "langfuse", job["error"]
            assert job["spans"] == len(langfuse.observations) and job["spans"] > 0
            assert SECRET not in (tmp_path / "store.duckdb.jobs.json").read_text()
            page.goto(f"{server.url}/sources")
            page.click("#live button[type=submit]")  # the example traces
            page.wait_for_selector("#jobs tr[data-status=completed]:nth-child(1)")
            wait_job(client, client.get("/sources.json").json()["jobs"][0]["id"], {"completed"})
            assert (
                count(server, "SELECT count(*) FROM traces WHERE list_contains(services, 'support-bot')") > 0
            )
    finally:
        langfuse.shutdown()
        langfuse.server_close()


def test_a_job_cancelled_or_cut_by_a_restart_resumes_without_duplicates(tmp_path: Path) -> None:
    corpus = tmp_path / "big.jsonl.gz"
    # Compressed, so it is read in batches, each committed: a job can stop between them.
    simulate(corpus, traces=1500, seed=12)
    store = tmp_path / "store.duckdb"
    with Server(Settings(store=store, port=0)) as server, api(server) as client:
        started = client.post("/sources/files", data={"path": str(corpus.resolve())}, follow_redirects=False)
        assert started.status_code == 303
        job_id = client.get("/sources.json").json()["jobs"][0]["id"]
        wait_job(client, job_id, {"running"})
        client.post(f"/sources/jobs/{job_id}/cancel")
        cancelled = wait_job(client, job_id, {"cancelled", "completed"})
        assert cancelled["status"] == "cancelled", "the job finished before it could be cancelled"
        client.post(f"/sources/jobs/{job_id}/resume")
        wait_job(client, job_id, {"running"})
    # the app stopped mid-job
    saved = orjson.loads(Path(f"{store}.jobs.json").read_bytes())
    assert saved[0]["status"] in ("interrupted", "completed")
    with Server(Settings(store=store, port=0)) as server, api(server) as client:
        job = client.get("/sources.json").json()["jobs"][0]
        if job["status"] == "interrupted":
            client.post(f"/sources/jobs/{job_id}/resume")
        done = wait_job(client, job_id, {"completed", "failed"})
        assert done["status"] == "completed", done
        spans = count(server, "SELECT count(*) FROM spans")
        unique = count(server, "SELECT count(DISTINCT (trace_id, span_id)) FROM spans")
        assert count(server, "SELECT count(*) FROM traces") == 1500 and spans == unique


def test_bad_paths_and_forms_get_clear_errors(tmp_path: Path) -> None:
    with Server(Settings(store=tmp_path / "store.duckdb", port=0)) as server, api(server) as client:
        missing = client.post("/sources/files/preview", data={"paths": str(tmp_path / "nope.jsonl")})
        assert missing.status_code == 200 and "no such file" in missing.text
        sneaky = client.post("/sources/files", data={"path": str(tmp_path)})  # not what a preview showed
        assert sneaky.status_code in (400, 409)
        bad_time = client.post(
            "/sources/phoenix", data={"endpoint": "http://127.0.0.1:9", "since": "last tuesday"}
        )
        assert bad_time.status_code == 400 and "not a time" in bad_time.text
        no_keys = client.post("/sources/langfuse", data={"host": "http://127.0.0.1:9"})
        assert no_keys.status_code == 400 and "key" in no_keys.text
        unreachable = client.post(
            "/sources/phoenix", data={"endpoint": "http://127.0.0.1:9"}, follow_redirects=False
        )
        assert unreachable.status_code == 303
        job_id = client.get("/sources.json").json()["jobs"][0]["id"]
        failed = wait_job(client, job_id, {"failed", "completed"})
        assert failed["status"] == "failed" and failed["error"], failed
        assert re.search(r"127\.0\.0\.1:9|connect|refused|reach", failed["error"], re.I), failed["error"]
