"""The sources page: add trace files (a path, resolved and shown before anything is read, or an
upload), the example traces, Langfuse and Phoenix imports; and the jobs that run them, with progress,
cancel, resume and what each rejected."""

from __future__ import annotations

import os
import re
from pathlib import Path

from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from halo_rlm.defaults import EXAMPLE_TRACES
from halo_rlm.sources import LangfuseFilters
from halo_rlm.store import StoreError
from halo_rlm.utils import parse_time
from halo_rlm.web.format import json_response
from halo_rlm.web.jobs import Secrets, resolve_paths
from halo_rlm.web.state import Ui

MAX_UPLOAD_BYTES = 2 << 30
UPLOAD_CHUNK = 1 << 20


def _redirect(fragment: str = "jobs") -> Response:
    return RedirectResponse(f"/sources#{fragment}", status_code=303)


def _env() -> dict[str, bool]:
    return {
        name: bool(os.environ.get(name))
        for name in ("LANGFUSE_PUBLIC_KEY", "LANGFUSE_SECRET_KEY", "PHOENIX_API_KEY")
    }


async def sources_page(request: Request, as_json: bool) -> Response:
    ui: Ui = request.app.state.ui
    jobs = ui.jobs.ordered()
    if as_json:
        return json_response({"jobs": jobs, "uploads": str(ui.jobs.uploads), "env": _env()})
    template = "jobs.html" if request.query_params.get("part") == "jobs" else "sources.html"
    return ui.render(
        request,
        template,
        jobs=jobs,
        env=_env(),
        onboarding=ui.onboarding(),
        defaults={
            "langfuse_host": os.environ.get("LANGFUSE_HOST", "https://cloud.langfuse.com"),
            "phoenix_endpoint": os.environ.get("PHOENIX_ENDPOINT", "http://localhost:6006"),
        },
    )


async def preview_files(request: Request) -> Response:
    """What a path names, resolved to files with their sizes, before anything is read."""
    ui: Ui = request.app.state.ui
    form = await request.form()
    text = str(form.get("paths") or "")
    found, problems = resolve_paths(text)
    return ui.render(
        request,
        "sources_preview.html",
        text=text,
        found=found,
        problems=problems,
        total=sum(f.size or 0 for f in found),
    )


async def add_files(request: Request) -> Response:
    ui: Ui = request.app.state.ui
    form = await request.form()
    chosen = [str(p) for p in form.getlist("path")]
    found, problems = resolve_paths("\n".join(chosen))
    if problems or not found:
        return ui.error(request, False, 400, "; ".join(problems) or "no files chosen")
    if {f.path for f in found} != set(chosen):  # a chosen directory or glob now names other files
        return ui.error(request, False, 409, "the files changed since the preview; preview them again")
    ui.jobs.add_files([f.path for f in found])
    return _redirect()


async def upload(request: Request) -> Response:
    """Files sent by the browser: saved beside the store, then ingested like any other file."""
    ui: Ui = request.app.state.ui
    form = await request.form(max_files=50)
    uploads = [f for f in form.getlist("file") if isinstance(f, UploadFile) and f.filename]
    if not uploads:
        return ui.error(request, False, 400, "choose a trace file to upload")
    folder = ui.jobs.upload_folder()
    saved: list[str] = []
    try:
        for item in uploads:
            target = folder / _safe_name(item.filename or "upload.jsonl")
            written = 0
            with target.open("wb") as out:
                while chunk := await item.read(UPLOAD_CHUNK):
                    written += len(chunk)
                    if written > MAX_UPLOAD_BYTES:
                        raise StoreError(
                            f"{item.filename}: over {MAX_UPLOAD_BYTES >> 30} GiB; give its path instead"
                        )
                    out.write(chunk)
            saved.append(str(target))
    except StoreError as exc:
        return ui.error(request, False, 413, str(exc))
    finally:
        await form.close()
    ui.jobs.add_files(saved, label=", ".join(Path(p).name for p in saved), uploaded=True)
    return _redirect()


async def add_examples(request: Request) -> Response:
    ui: Ui = request.app.state.ui
    ui.jobs.add_files([str(EXAMPLE_TRACES)], label="HALO's example traces")
    return _redirect()


async def add_langfuse(request: Request) -> Response:
    ui: Ui = request.app.state.ui
    form = await request.form()
    try:
        since, until = _window(form)
        filters = LangfuseFilters(
            environments=tuple(_list(form, "environments")),
            trace_name=_text(form, "trace_name"),
            user_id=_text(form, "user_id"),
            session_id=_text(form, "session_id"),
            tags=tuple(_list(form, "tags")),
        )
    except ValueError as exc:
        return ui.error(request, False, 400, str(exc))
    host = _text(form, "host")
    if not host:
        return ui.error(request, False, 400, "give the Langfuse address (e.g. https://cloud.langfuse.com)")
    public = _text(form, "public_key") or os.environ.get("LANGFUSE_PUBLIC_KEY")
    secret = _text(form, "secret_key") or os.environ.get("LANGFUSE_SECRET_KEY")
    if not public or not secret:
        return ui.error(
            request,
            False,
            400,
            "Langfuse needs a public and a secret key (typed in, or "
            "LANGFUSE_PUBLIC_KEY and LANGFUSE_SECRET_KEY where the app runs)",
        )
    ui.jobs.add_langfuse(
        host=host, public_key=public, secret_key=secret, since=since, until=until, filters=filters
    )
    return _redirect()


async def add_phoenix(request: Request) -> Response:
    ui: Ui = request.app.state.ui
    form = await request.form()
    try:
        since, until = _window(form)
    except ValueError as exc:
        return ui.error(request, False, 400, str(exc))
    endpoint = _text(form, "endpoint")
    if not endpoint:
        return ui.error(request, False, 400, "give the Phoenix address (e.g. http://localhost:6006)")
    ui.jobs.add_phoenix(
        endpoint=endpoint,
        project=_text(form, "project") or "default",
        api_key=_text(form, "api_key"),
        since=since,
        until=until,
    )
    return _redirect()


async def job_action(request: Request) -> Response:
    ui: Ui = request.app.state.ui
    job = ui.jobs.get(request.path_params["job_id"])
    if job is None:
        return ui.error(request, False, 404, f"no job {request.path_params['job_id']!r}")
    action = request.path_params["action"]
    form = await request.form()
    if action == "cancel":
        ui.jobs.cancel(job)
    elif action == "resume":
        keys = Secrets(
            public_key=_text(form, "public_key"),
            secret_key=_text(form, "secret_key"),
            api_key=_text(form, "api_key"),
        )
        try:
            ui.jobs.resume(job, keys if any(vars(keys).values()) else None)
        except StoreError as exc:
            return ui.error(request, False, 409, str(exc))
    else:
        return ui.error(request, False, 404, f"no action {action!r}")
    return _redirect()


def _text(form: FormData, name: str) -> str | None:
    value = form.get(name)
    return str(value).strip() or None if isinstance(value, str) else None


def _list(form: FormData, name: str) -> list[str]:
    return [part.strip() for part in (_text(form, name) or "").split(",") if part.strip()]


def _window(form: FormData) -> tuple[str | None, str | None]:
    """`since`/`until` as given (`7d`, `24h`, an ISO time), checked now so a bad one fails here."""
    since, until = _text(form, "since"), _text(form, "until")
    for value in (since, until):
        parse_time(value)
    return since, until


def _safe_name(name: str) -> str:
    """An uploaded file's name, as a plain file name (no folders, no leading dot)."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name.replace("\\", "/")).name).lstrip(".")
    return base[:120] or "upload.jsonl"


__all__ = [
    "add_examples",
    "add_files",
    "add_langfuse",
    "add_phoenix",
    "job_action",
    "preview_files",
    "sources_page",
    "upload",
]
