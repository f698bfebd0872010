"""The compare page: pick BEFORE and AFTER (a recorded run of this store, or a trace file or store path,
resolved and shown before anything is read), start the comparison as a background job, and read its
result: the failure table with verdicts, the per-trace outcomes and the mix-shift warnings, as
`halo compare` writes them. Each view has its JSON twin.

    /compare                          the form, and the comparisons made so far
    /compare?before=REF&after=REF     what the two sides resolve to (nothing read yet), and the button
    POST /compare                     start it; redirects to its page
    /compare?run=ID                   one comparison: running, failed, or its result
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from pydantic import ValidationError
from starlette.datastructures import FormData, QueryParams
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response

from halo_rlm.compare import (
    CHANGE_MARKS,
    METHODS,
    VERDICT_MARKS,
    FailureRow,
    Side,
    SideError,
    outcome_change_text,
    pct,
    rate_change_text,
    relative_text,
    value_text,
)
from halo_rlm.runs import Run
from halo_rlm.web.comparisons import CompareOptions, Comparisons, describe
from halo_rlm.web.format import json_response
from halo_rlm.web.state import Ui

FILES = {"compare.md": "text/markdown; charset=utf-8", "compare.html": "text/html; charset=utf-8"}
TEXT: dict[str, Any] = {
    "pct": pct,
    "value_text": value_text,
    "rate_change_text": rate_change_text,
    "outcome_change_text": outcome_change_text,
    "relative_text": relative_text,
    "verdict_marks": VERDICT_MARKS,
    "change_marks": CHANGE_MARKS,
    "methods": METHODS,
    "share": lambda value: f"{value:.0%}",
}


def _ref(values: QueryParams | FormData, name: str) -> str:
    """A side as the form gives it: the path typed in, else the run picked."""
    typed = str(values.get(f"{name}_path") or "").strip()
    return typed or str(values.get(name) or "").strip()


def _options(values: QueryParams | FormData) -> CompareOptions:
    return CompareOptions(
        by=str(values.get("by") or "").strip() or None,
        outcome=str(values.get("outcome") or "").strip() or None,
        lower_is_better=str(values.get("lower_is_better") or "") in ("1", "on", "true"),
    )


async def _resolve(comparisons: Comparisons, ref: str) -> Side | str:
    """The side `ref` names, or why it names none (file-system look-ups, off the event loop)."""
    try:
        return await asyncio.to_thread(comparisons.resolve, ref)
    except SideError as exc:
        return str(exc)


async def compare_page(request: Request, as_json: bool) -> Response:
    ui: Ui = request.app.state.ui
    params = request.query_params
    if params.get("run"):
        return await _result(request, ui, params["run"], as_json)
    before, after = _ref(params, "before"), _ref(params, "after")
    if before or after:
        return await _preview(request, ui, before, after, params, as_json)
    comparisons = ui.comparisons
    candidates, made = comparisons.candidates(), comparisons.runs()
    if as_json:
        return json_response(
            {
                "runs": [r.record for r in candidates],
                "comparisons": [describe(r, comparisons) for r in made],
            }
        )
    return ui.render(
        request,
        "compare.html",
        mode="form",
        candidates=candidates,
        made=made,
        states={r.id: describe(r, comparisons)["status"] for r in made},
        registry=str(comparisons.registry.root),
    )


async def _preview(
    request: Request, ui: Ui, before: str, after: str, params: QueryParams, as_json: bool
) -> Response:
    try:
        options = _options(params)
    except ValidationError as exc:
        return ui.error(request, as_json, 400, _validation(exc))
    sides = {
        name: await _resolve(ui.comparisons, ref) if ref else f"choose the {name} side"
        for name, ref in (("before", before), ("after", after))
    }
    ready = all(isinstance(s, Side) for s in sides.values())
    status = 200 if ready else 400
    if as_json:
        return json_response(
            {name: side if isinstance(side, Side) else {"error": side} for name, side in sides.items()}
            | {"options": options, "ready": ready},
            status,
        )
    runs = {r.id: r for r in ui.comparisons.candidates()}
    return ui.render(
        request,
        "compare.html",
        status=status,
        mode="preview",
        sides=sides,
        refs={"before": before, "after": after},
        runs=runs,
        options=options,
        ready=ready,
    )


async def start(request: Request) -> Response:
    ui: Ui = request.app.state.ui
    form = await request.form()
    try:
        options = _options(form)
    except ValidationError as exc:
        return ui.error(request, False, 400, _validation(exc))
    sides: dict[str, Side] = {}
    for name in ("before", "after"):
        ref = _ref(form, name)
        side = await _resolve(ui.comparisons, ref) if ref else f"choose the {name} side"
        if not isinstance(side, Side):
            return ui.error(request, False, 400, f"{name}: {side}")
        shown = str(form.get(f"{name}_store") or "")
        if shown and shown != side.store:  # a path now names other files than the preview showed
            return ui.error(request, False, 409, f"{name}: it changed since the preview; preview it again")
        sides[name] = side
    run = ui.comparisons.start(sides["before"], sides["after"], options)
    return RedirectResponse(f"/compare?run={run.id}", status_code=303)


async def _result(request: Request, ui: Ui, ref: str, as_json: bool) -> Response:
    comparisons = ui.comparisons
    run = comparisons.get(ref)
    if run is None:
        return ui.error(request, as_json, 404, f"no comparison {ref!r} (see /compare)")
    before, after = comparisons.sides(run)
    comparison = comparisons.comparison(run)
    record = describe(run, comparisons)
    data: dict[str, Any] = {
        "run": record,
        "status": record["status"],
        "stage": record["stage"],
        "before": before,
        "after": after,
        "options": comparisons.options(run),
        "comparison": comparison,
    }
    if as_json:
        return json_response(data)
    here = _in_this_store(ui, before, after)
    failures = []
    for row in comparison.failures if comparison else []:
        failures.append({"row": row, "traces": _trace_link(row) if here else None})
    page = {("state" if k == "status" else k): v for k, v in data.items()}  # `status` is the HTTP one
    return ui.render(
        request,
        "compare.html",
        mode="result",
        failures=failures,
        run_id=run.id,
        again=_again_url(run, comparisons),
        **page,
        **TEXT,
    )


async def result_file(request: Request) -> Response:
    ui: Ui = request.app.state.ui
    run = ui.comparisons.get(request.path_params["run_id"])
    name = request.path_params["name"]
    path = run.file(name) if run and name in FILES else None
    if run is None or path is None or not path.exists():
        return ui.error(request, False, 404, "this comparison has no such file (yet)")
    return FileResponse(path, media_type=FILES[name], filename=f"halo-{run.id}-{name}")


def _in_this_store(ui: Ui, *sides: Side | None) -> bool:
    """Whether the compared traces are this store's (a run's copy of them, or the store itself), so the
    trace list can show them."""
    own = Path(ui.store.path).resolve()
    for side in sides:
        if side is None:
            continue
        if side.kind == "run" or Path(side.store).resolve() == own:
            return True
    return False


def _trace_link(row: FailureRow) -> str | None:
    """The trace list searched for a failure's key (a tool, model, agent or guardrail name): the traces of
    this store that mention it."""
    if not row.key or row.stratum is not None:
        return None
    return "/traces?" + urlencode({"q": row.key})


def _again_url(run: Run, comparisons: Comparisons) -> str:
    """The preview of the same comparison, to run it again."""
    items = (
        [("before", run.record.inputs[0]), ("after", run.record.inputs[1])]
        if len(run.record.inputs) == 2
        else []
    )
    options = comparisons.options(run)
    items += [
        (k, str(v)) for k, v in options.model_dump(exclude_defaults=True).items() if k != "lower_is_better"
    ]
    if options.lower_is_better:
        items.append(("lower_is_better", "1"))
    return "/compare?" + urlencode(items)


def _validation(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())


__all__ = ["compare_page", "result_file", "start"]
