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
from halo_rlm.web.analyses import RunSettings, agents_of
from halo_rlm.web.format import json_response
from halo_rlm.web.handoff import handoffs, prompt_for
from halo_rlm.web.state import Ui
from halo_rlm.web.traces import BadRequest, parse_list

EFFORTS: tuple[ReasoningEffort, ...] = ("none", "minimal", "low", "medium", "high", "xhigh")
NUMBERS = ("max_depth", "max_parallel", "max_turns", "max_cost", "max_tokens", "timeout")
TEXTS = ("model", "synthesis_model", "compaction_model", "reasoning_effort", "base_url", "repo_path")


def _redirect(path: str) -> Response:
    return RedirectResponse(path, status_code=303)


async def runs_list(request: Request, as_json: bool) -> Response:
    ui: Ui = request.app.state.ui
    runs = ui.analyses.ordered()
    if as_json:
        return json_response({"runs": runs})
    return ui.render(request, "runs.html", runs=runs)


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
        key_from_env=bool(_env_key()),
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
    run = ui.analyses.start(
        prompt=prompt,
        query=[(k, v) for k, v in params.multi_items() if k != "cursor"],
        filters=view.filters,
        settings=settings,
        api_key=_key(form),
    )
    return _redirect(f"/runs/{run.id}")


async def run_page(request: Request, as_json: bool) -> Response:
    ui: Ui = request.app.state.ui
    run = ui.analyses.get(request.path_params["run_id"])
    if run is None:
        return ui.error(request, as_json, 404, f"no run {request.path_params['run_id']!r} (see /runs)")
    report_path = ui.analyses.report_path(run)
    view = ui.analyses.views.get(run.id)
    data: dict[str, Any] = {
        "run": run,
        "reports": [ui.analyses.turn_report(run, i) for i in range(len(run.turns))],
        "agents": agents_of(view, run.active) if view else [],
        "report_path": str(report_path),
        "handoff": {"prompt": prompt_for(report_path), "tools": handoffs(report_path)},
    }
    if as_json:
        return json_response(data)
    return ui.render(
        request,
        "run.html",
        list_url="/traces?" + str(QueryParams(run.query)),
        key_from_env=bool(_env_key()),
        **data,
    )


async def run_action(request: Request) -> Response:
    """Cancel, retry, or ask a follow-up question."""
    ui: Ui = request.app.state.ui
    run = ui.analyses.get(request.path_params["run_id"])
    if run is None:
        return ui.error(request, False, 404, f"no run {request.path_params['run_id']!r}")
    action = request.path_params["action"]
    form = await request.form()
    try:
        if action == "cancel":
            ui.analyses.cancel(run)
        elif action == "retry":
            ui.analyses.retry(run, _key(form))
        elif action == "ask":
            ui.analyses.ask(run, str(form.get("question") or ""), _key(form))
        else:
            return ui.error(request, False, 404, f"no action {action!r}")
    except EngineError as exc:
        return ui.error(request, False, 409, str(exc))
    return _redirect(f"/runs/{run.id}")


async def report_file(request: Request) -> Response:
    ui: Ui = request.app.state.ui
    run = ui.analyses.get(request.path_params["run_id"])
    path = ui.analyses.report_path(run) if run else None
    if run is None or path is None or not path.exists():
        return ui.error(request, False, 404, "this run has no report yet")
    return FileResponse(path, media_type="text/markdown; charset=utf-8", filename=f"halo-report-{run.id}.md")


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


def _env_key() -> str | None:
    return os.environ.get("OPENAI_API_KEY")


def _validation(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())


__all__ = ["create_run", "new_run", "report_file", "run_action", "run_page", "runs_list"]
