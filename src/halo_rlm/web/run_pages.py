"""The analysis pages: the run history, the form that starts a run from a trace list's filters, one
run (live agent tree, report with citations that open the traces, follow-ups, hand-off to a coding
agent), each with its JSON twin."""

from __future__ import annotations

import os
from typing import Any

from pydantic import ValidationError
from starlette.datastructures import FormData, QueryParams
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response

from halo_rlm.defaults import DEFAULT_PROMPT, ReasoningEffort
from halo_rlm.engine import EngineError
from halo_rlm.report import Report
from halo_rlm.runs import Run
from halo_rlm.web.format import json_response
from halo_rlm.web.handoff import handoffs, prompt_for
from halo_rlm.web.live_runs import RunSettings, agents_of
from halo_rlm.web.state import Ui
from halo_rlm.web.traces import BadRequest, parse_list

EFFORTS: tuple[ReasoningEffort, ...] = ("none", "minimal", "low", "medium", "high", "xhigh")
NUMBERS = ("max_depth", "max_parallel", "max_turns", "max_cost", "max_tokens", "timeout")
TEXTS = ("model", "synthesis_model", "compaction_model", "reasoning_effort", "base_url", "repo_path")


def _redirect(path: str) -> Response:
    return RedirectResponse(path, status_code=303)


def _status(ui: Ui, run: Run) -> str:
    return "running" if ui.runs.active(run) else run.record.status


async def runs_list(request: Request, as_json: bool) -> Response:
    ui: Ui = request.app.state.ui
    runs = ui.runs.runs()
    if as_json:
        return json_response(
            {"runs": [{**r.record.model_dump(mode="json"), "status": _status(ui, r)} for r in runs]}
        )
    return ui.render(
        request,
        "runs.html",
        runs=runs,
        states={r.id: _status(ui, r) for r in runs},
        registry=str(ui.runs.registry.root),
    )


async def new_run(request: Request, as_json: bool) -> Response:
    """The form, filled from the trace list's filters (its URL parameters), with what they match."""
    ui: Ui = request.app.state.ui
    return await _form(ui, request, request.query_params, RunSettings(), DEFAULT_PROMPT, None, 200, as_json)


async def _form(
    ui: Ui,
    request: Request,
    params: QueryParams,
    settings: RunSettings,
    prompt: str,
    error: str | None,
    status: int,
    as_json: bool,
) -> Response:
    try:
        view = parse_list(params)
        filters = await ui.resolve_text(view.filters)
        stats = await ui.read(lambda store: store.trace_stats(filters))
    except BadRequest as exc:
        return ui.error(request, as_json, 400, str(exc))
    data = {"filters": view.filters, "stats": stats, "settings": settings, "prompt": prompt, "error": error}
    if as_json:
        return json_response(data, status)
    return ui.render(
        request,
        "run_new.html",
        status=status,
        view=view,
        query=str(params),
        efforts=EFFORTS,
        key_from_env=bool(os.environ.get("OPENAI_API_KEY")),
        **data,
    )


async def create_run(request: Request) -> Response:
    ui: Ui = request.app.state.ui
    form = await request.form()
    params = QueryParams(str(form.get("filters") or ""))
    prompt = str(form.get("prompt") or "")
    try:
        settings = _settings(form)
    except ValidationError as exc:
        return await _form(ui, request, params, RunSettings(), prompt, _validation(exc), 400, False)
    try:
        view = parse_list(params)
    except BadRequest as exc:
        return ui.error(request, False, 400, str(exc))
    run = ui.runs.start(
        prompt=prompt,
        query=[(k, v) for k, v in params.multi_items() if k != "cursor"],
        filters=view.filters,
        settings=settings,
        api_key=_key(form),
    )
    return _redirect(f"/runs/{run.id}")


async def run_page(request: Request, as_json: bool) -> Response:
    ui: Ui = request.app.state.ui
    run = ui.runs.get(request.path_params["run_id"])
    if run is None:
        return ui.error(request, as_json, 404, f"no run {request.path_params['run_id']!r} (see /runs)")
    report_path = ui.runs.report_path(run)
    view = ui.runs.views.get(run.id)
    active = ui.runs.active(run)
    data: dict[str, Any] = {
        "run": run.record,
        "state": _status(ui, run),
        "report": _report(run),
        "agents": agents_of(view, active) if view else [],
        "report_path": str(report_path),
        "settings": ui.runs.settings_of(run),
        "follow_up": ui.runs.can_follow_up(run),
        "handoff": {"prompt": prompt_for(report_path), "tools": handoffs(report_path)},
    }
    if as_json:
        return json_response({**data, "status": data.pop("state")})
    query = [(str(k), str(v)) for k, v in run.record.filters.get("query", [])]
    return ui.render(
        request,
        "run.html",
        list_url="/traces?" + str(QueryParams(query)),
        query=query,
        key_from_env=bool(os.environ.get("OPENAI_API_KEY")),
        active=active,
        **data,
    )


async def run_action(request: Request) -> Response:
    """Cancel, run again, or ask a follow-up question."""
    ui: Ui = request.app.state.ui
    run = ui.runs.get(request.path_params["run_id"])
    if run is None:
        return ui.error(request, False, 404, f"no run {request.path_params['run_id']!r}")
    action = request.path_params["action"]
    form = await request.form()
    try:
        if action == "cancel":
            ui.runs.cancel(run)
        elif action == "rerun":
            return _redirect(f"/runs/{ui.runs.rerun(run, _key(form)).id}")
        elif action == "ask":
            ui.runs.follow_up(run, str(form.get("question") or ""), _key(form))
        else:
            return ui.error(request, False, 404, f"no action {action!r}")
    except EngineError as exc:
        return ui.error(request, False, 409, str(exc))
    return _redirect(f"/runs/{run.id}")


async def report_file(request: Request) -> Response:
    ui: Ui = request.app.state.ui
    run = ui.runs.get(request.path_params["run_id"])
    path = run.file("report.md") if run else None
    if run is None or path is None or not path.exists():
        return ui.error(request, False, 404, "this run has no report yet")
    return FileResponse(path, media_type="text/markdown; charset=utf-8", filename=f"halo-report-{run.id}.md")


def _report(run: Run) -> Report | None:
    path = run.file("report.json")
    if path is None or not path.exists():
        return None
    try:
        return Report.model_validate_json(path.read_bytes())
    except (OSError, ValidationError):
        return None


def _settings(form: FormData) -> RunSettings:
    values: dict[str, Any] = {}
    for name in (*TEXTS, *NUMBERS):
        value = str(form.get(name) or "").strip()
        if value:
            values[name] = value
    return RunSettings.model_validate(values)


def _key(form: FormData) -> str | None:
    """An API key typed into the form: used for this run, kept in memory, never written anywhere."""
    return str(form.get("api_key") or "").strip() or None


def _validation(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())


__all__ = ["create_run", "new_run", "report_file", "run_action", "run_page", "runs_list"]
