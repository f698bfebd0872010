"""The simulator: deterministic, well formed in both formats, and its ground truth matches the file."""

from __future__ import annotations

import calendar
import gzip
import math
import random
import re
import time
from collections import Counter, defaultdict
from itertools import pairwise
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest

from halo_rlm import simulate as sim
from halo_rlm.evaluate import score_planted
from halo_rlm.simulate import DEFAULT_DISTRACTOR_RATE, DEFAULT_RATES, GroundTruth, simulate

HALO_KEYS = [
    "trace_id",
    "span_id",
    "parent_span_id",
    "trace_state",
    "name",
    "kind",
    "start_time",
    "end_time",
    "status",
    "resource",
    "scope",
    "attributes",
]
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$")
HEX = re.compile(r"^[0-9a-f]+$")
ANY_VALUE_KEYS = {"stringValue", "boolValue", "intValue", "doubleValue", "arrayValue"}
REFUSALS = {text for texts in sim.REFUSALS.values() for text in texts}


def _ns(iso: str) -> int:
    return calendar.timegm(time.strptime(iso[:19], "%Y-%m-%dT%H:%M:%S")) * 10**9 + int(iso[20:29])


def _value(any_value: dict):
    ((kind, v),) = any_value.items()
    if kind == "intValue":
        return int(v)
    if kind == "arrayValue":
        return [_value(x) for x in v["values"]]
    return v


def _lines(path: Path) -> list[bytes]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as f:
        return f.read().splitlines()


def read_spans(path: Path, format: str) -> list[dict]:
    """Both formats as one flat list of spans in file order, with plain attribute dicts."""
    spans = []
    for line in _lines(path):
        if format == "halo":
            d = orjson.loads(line)
            spans.append(
                {
                    "trace": d["trace_id"],
                    "id": d["span_id"],
                    "parent": d["parent_span_id"],
                    "name": d["name"],
                    "start": _ns(d["start_time"]),
                    "end": _ns(d["end_time"]),
                    "error": d["status"]["code"] == "STATUS_CODE_ERROR",
                    "message": d["status"]["message"],
                    "service": d["resource"]["attributes"]["service.name"],
                    "attrs": d["attributes"],
                }
            )
            continue
        for rs in orjson.loads(line)["resourceSpans"]:
            service = {kv["key"]: _value(kv["value"]) for kv in rs["resource"]["attributes"]}["service.name"]
            for ss in rs["scopeSpans"]:
                for s in ss["spans"]:
                    spans.append(
                        {
                            "trace": s["traceId"],
                            "id": s["spanId"],
                            "parent": s["parentSpanId"],
                            "name": s["name"],
                            "start": int(s["startTimeUnixNano"]),
                            "end": int(s["endTimeUnixNano"]),
                            "error": s["status"]["code"] == 2,
                            "message": s["status"].get("message", ""),
                            "service": service,
                            "attrs": {kv["key"]: _value(kv["value"]) for kv in s["attributes"]},
                        }
                    )
    return spans


def by_trace(spans: list[dict]) -> dict[str, list[dict]]:
    traces = defaultdict(list)
    for s in spans:
        traces[s["trace"]].append(s)
    return traces


def tool(s: dict) -> str | None:
    return s["attrs"].get("tool.name") or s["attrs"].get("gen_ai.tool.name")


def tool_args(s: dict) -> str | None:
    return s["attrs"].get("input.value") or s["attrs"].get("gen_ai.tool.call.arguments")


def model(s: dict) -> str | None:
    a = s["attrs"]
    if a.get("openinference.span.kind") == "LLM" or a.get("gen_ai.operation.name") == "chat":
        return a.get("llm.model_name") or a.get("gen_ai.request.model")
    return None


def prompt_tokens(s: dict) -> int:
    return s["attrs"].get("llm.token_count.prompt") or s["attrs"].get("gen_ai.usage.input_tokens") or 0


def finish_reason(s: dict) -> str | None:
    a = s["attrs"]
    return a.get("llm.finish_reason") or (a.get("gen_ai.response.finish_reasons") or [None])[0]


def template(message: str) -> str:
    """An error message with its variable parts masked, the way detectors group errors."""
    message = re.sub(r"'[^']*'|\"[^\"]*\"|`[^`]*`", "<str>", message)
    message = re.sub(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s,;)\]]+", "<url>", message)
    message = re.sub(r"(?:[/\\][\w.@~-]+){2,}", "<path>", message)
    return re.sub(r"[A-Za-z0-9_][A-Za-z0-9_-]*[0-9][A-Za-z0-9_-]*|[0-9]+", "<n>", message)


def seconds(s: dict) -> float:
    return (s["end"] - s["start"]) / 1e9


def _repeated_calls(spans: list[dict], key: str) -> int:
    return max(Counter(tool_args(s) for s in spans if tool(s) == key).values(), default=0)


# What each planted category leaves in the file: a test on one trace's spans and the pattern's key.
EVIDENCE = {
    "tool_error": lambda spans, key: any(tool(s) == key and s["error"] for s in spans),
    "invalid_tool_arguments": lambda spans, key: any(tool(s) == key and s["error"] for s in spans),
    "timeout": lambda spans, key: any(tool(s) == key and s["error"] and seconds(s) >= 30 for s in spans),
    "hallucinated_tool": lambda spans, key: any(tool(s) == key for s in spans),
    "repetition_loop": lambda spans, key: _repeated_calls(spans, key) >= 3,
    "latency": lambda spans, key: any(tool(s) == key and seconds(s) > 5 for s in spans),
    "rate_limit": lambda spans, key: any(
        key in (model(s), tool(s))
        and s["error"]
        and "429" in s["message"] + (s["attrs"].get("output.value") or "")
        for s in spans
    ),
    "context_overflow": lambda spans, key: any(
        model(s) == key and "context_length_exceeded" in s["message"] for s in spans
    ),
    "empty_or_truncated_output": lambda spans, key: any(
        model(s) == key and finish_reason(s) == "length" for s in spans
    ),
    "cost": lambda spans, key: any(prompt_tokens(s) > 30_000 for s in spans),
    "refusal": lambda spans, key: any(
        s["parent"] == "" and s["attrs"].get("output.value") in REFUSALS for s in spans
    ),
    "max_turns": lambda spans, key: any(
        s["parent"] == "" and s["message"] == "Max turns (10) exceeded" for s in spans
    ),
    "guardrail": lambda spans, key: any(s["attrs"].get("guardrail.triggered") is True for s in spans),
    "handoff": lambda spans, key: any(s["name"] == "handoff" and s["error"] for s in spans),
}


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> dict[str, tuple[GroundTruth, list[dict]]]:
    """One 2,000-trace corpus per format, same seed."""
    out = {}
    for format in ("halo", "otlp"):
        path = tmp_path_factory.mktemp(format) / f"traces.{format}.jsonl"
        truth = simulate(path, traces=2_000, seed=11, format=format)
        out[format] = truth, read_spans(path, format)
    return out


@pytest.fixture(params=["halo", "otlp"])
def corpus(request, corpora) -> tuple[GroundTruth, list[dict]]:
    return corpora[request.param]


def test_same_seed_gives_the_same_bytes_and_another_seed_does_not(tmp_path):
    a = simulate(tmp_path / "a.jsonl", traces=200, seed=3)
    b = simulate(tmp_path / "b.jsonl", traces=200, seed=3)
    c = simulate(tmp_path / "c.jsonl", traces=200, seed=4)
    assert a.traces_path.read_bytes() == b.traces_path.read_bytes()
    assert a.truth_path.read_bytes().replace(b"a.jsonl", b"b.jsonl") == b.truth_path.read_bytes()
    assert a.traces_path.read_bytes() != c.traces_path.read_bytes()


def test_parallel_chunks_write_the_same_bytes_as_one_process(tmp_path, monkeypatch):
    parallel = simulate(tmp_path / "p.jsonl", traces=2_500, seed=5)
    monkeypatch.setattr(sim, "MAX_WORKERS", 1)
    inline = simulate(tmp_path / "i.jsonl", traces=2_500, seed=5)
    assert parallel.traces_path.read_bytes() == inline.traces_path.read_bytes()
    assert parallel.patterns == inline.patterns


def test_gzip_output_holds_the_same_corpus(tmp_path):
    plain = simulate(tmp_path / "t.jsonl", traces=1_500, seed=9)
    packed = simulate(tmp_path / "t.jsonl.gz", traces=1_500, seed=9)
    assert packed.truth_path == tmp_path / "t.truth.json"
    assert packed.corpus.compressed and not plain.corpus.compressed
    assert gzip.decompress(packed.traces_path.read_bytes()) == plain.traces_path.read_bytes()
    again = simulate(tmp_path / "again.jsonl.gz", traces=1_500, seed=9)
    assert again.traces_path.read_bytes() == packed.traces_path.read_bytes()


def test_truth_file_round_trips_and_has_the_documented_shape(corpora):
    truth, _ = corpora["halo"]
    loaded = GroundTruth.load(truth.truth_path)
    assert loaded == truth and loaded.traces_path == truth.traces_path
    data = orjson.loads(truth.truth_path.read_bytes())
    assert set(data) == {"corpus", "patterns", "distractor_trace_ids", "healthy_traces"}
    assert {"traces", "spans", "seed", "format", "rates"} <= set(data["corpus"])
    for pattern in data["patterns"]:
        assert {
            "id",
            "category",
            "description",
            "key",
            "affected_trace_ids",
            "affected_traces",
            "systemic",
        } <= set(pattern)
        assert pattern["affected_trace_ids"] == sorted(pattern["affected_trace_ids"])


def test_score_matches_findings_to_patterns_by_category_and_key(corpora):
    truth, _ = corpora["halo"]
    planted = {p.id: p.affected_traces for p in truth.patterns}
    tool, loop = planted["tool_error:lookup_order"], planted["repetition_loop:web_search"]
    findings = [
        SimpleNamespace(category="tool_error", key="lookup_order", affected_traces=tool),
        # one pattern split over two findings: each half is far off the truth
        SimpleNamespace(category="repetition_loop", key="web_search", affected_traces=loop // 2),
        SimpleNamespace(category="repetition_loop", key="web_search", affected_traces=loop - loop // 2),
        SimpleNamespace(category="tool_error", key="export_calendar", affected_traces=3),
    ]
    score = score_planted(truth, findings)
    systemic = [pid for pid, n in planted.items() if n >= 0.02 * 2_000]
    assert score.systemic == systemic and {"tool_error:lookup_order", "repetition_loop:web_search"} <= set(
        systemic
    )
    assert score.recall == 2 / len(systemic) and len(score.missed) == len(systemic) - 2
    assert (
        score.found == 3
        and score.false_positives == ["tool_error:export_calendar"]
        and score.precision == 2 / 3
    )
    assert score.count_errors["tool_error:lookup_order"] == 0 and score.worst_count_error >= 0.5


def test_both_formats_carry_the_same_corpus(corpora):
    (halo, halo_spans), (otlp, otlp_spans) = corpora["halo"], corpora["otlp"]
    assert halo.patterns == otlp.patterns
    assert halo.distractor_trace_ids == otlp.distractor_trace_ids

    def skeleton(spans):
        return [(s["trace"], s["name"], s["start"], s["end"]) for s in spans]

    assert skeleton(halo_spans) == skeleton(otlp_spans)


def test_halo_lines_have_the_documented_shape(corpora):
    truth, _ = corpora["halo"]
    widths = {}
    for line in _lines(truth.traces_path):
        d = orjson.loads(line)
        assert list(d) == HALO_KEYS + (["events"] if "events" in d else [])
        assert len(d["trace_id"]) == 32 and HEX.match(d["trace_id"])
        width = widths.setdefault(d["resource"]["attributes"]["service.name"], len(d["span_id"]))
        assert width in (16, 24) and len(d["span_id"]) == width and HEX.match(d["span_id"])
        parent = d["parent_span_id"]
        assert parent == "" or (len(parent) == width and HEX.match(parent))
        assert ISO.match(d["start_time"]) and ISO.match(d["end_time"]) and d["start_time"] <= d["end_time"]
        assert d["kind"] in ("SPAN_KIND_INTERNAL", "SPAN_KIND_CLIENT")
        assert set(d["status"]) == {"code", "message"}
        assert d["status"]["code"] in ("STATUS_CODE_OK", "STATUS_CODE_ERROR", "STATUS_CODE_UNSET")
        assert set(d["resource"]) == {"attributes"} and set(d["scope"]) == {"name", "version"}
        if "events" in d:
            assert d["events"]
            assert all(e["name"] == "exception" and ISO.match(e["timestamp"]) for e in d["events"])
        for value in d["attributes"].values():
            assert value is None or isinstance(value, str | int | float | bool | list)
    assert widths["support-bot"] == 24 and widths["code-helper"] == 16


def test_otlp_lines_have_the_documented_shape(corpora):
    truth, _ = corpora["otlp"]

    def check_any_value(v):
        ((kind, inner),) = v.items()
        assert kind in ANY_VALUE_KEYS
        if kind == "intValue":
            assert isinstance(inner, str) and inner.lstrip("-").isdigit()
        if kind == "arrayValue":
            for x in inner["values"]:
                check_any_value(x)

    lines = _lines(truth.traces_path)
    assert len(lines) == truth.corpus.traces
    for line in lines:
        d = orjson.loads(line)
        assert list(d) == ["resourceSpans"]
        for rs in d["resourceSpans"]:
            for kv in rs["resource"]["attributes"]:
                check_any_value(kv["value"])
            for ss in rs["scopeSpans"]:
                assert set(ss["scope"]) == {"name", "version"}
                for s in ss["spans"]:
                    assert len(s["traceId"]) == 32 and HEX.match(s["traceId"])
                    assert len(s["spanId"]) == 16 and HEX.match(s["spanId"])
                    parent = s["parentSpanId"]
                    assert parent == "" or (len(parent) == 16 and HEX.match(parent))
                    assert s["startTimeUnixNano"].isdigit() and s["endTimeUnixNano"].isdigit()
                    assert int(s["startTimeUnixNano"]) <= int(s["endTimeUnixNano"])
                    assert s["kind"] in (1, 3) and s["status"]["code"] in (0, 1, 2)
                    for kv in s["attributes"]:
                        assert set(kv) == {"key", "value"}
                        check_any_value(kv["value"])
                    for e in s.get("events", ()):
                        assert e["timeUnixNano"].isdigit() and e["name"] == "exception"


def test_every_trace_is_one_tree_written_children_first(corpus):
    truth, spans = corpus
    traces = by_trace(spans)
    assert len(traces) == truth.corpus.traces and len(spans) == truth.corpus.spans
    order = [s["trace"] for s in spans]
    assert sum(a != b for a, b in pairwise(order)) == len(traces) - 1, "traces must be contiguous"
    for trace in traces.values():
        ids = {s["id"]: s for s in trace}
        roots = [s for s in trace if s["parent"] == ""]
        assert len(roots) == 1 and trace[-1] is roots[0], "one root, written last"
        assert roots[0]["attrs"].get("openinference.span.kind", "AGENT") == "AGENT"
        for s in trace:
            assert s["name"]
            assert s["attrs"].get("openinference.span.kind") or s["attrs"].get("gen_ai.operation.name")
            if s["parent"]:
                parent = ids[s["parent"]]
                assert parent["start"] <= s["start"] and s["end"] <= parent["end"]
        ends = [s["end"] for s in trace]
        assert ends == sorted(ends), "a span is written when it ends"


def test_each_pattern_is_in_exactly_its_listed_traces(corpus):
    truth, spans = corpus
    traces = by_trace(spans)
    assert sorted(p.id for p in truth.patterns) == sorted(m.id for m in sim.MODES)
    for pattern in truth.patterns:
        found = sorted(t for t, trace in traces.items() if EVIDENCE[pattern.category](trace, pattern.key))
        assert found == pattern.affected_trace_ids, pattern.id
        assert pattern.affected_traces == len(found) and pattern.systemic


def test_errors_happen_only_in_planted_and_distractor_traces(corpus):
    truth, spans = corpus
    explained = set(truth.distractor_trace_ids).union(*(p.affected_trace_ids for p in truth.patterns))
    failing = {s["trace"] for s in spans if s["error"]}
    assert failing <= explained
    assert truth.healthy_traces > truth.corpus.traces / 2
    assert len(set(by_trace(spans)) - explained) == truth.healthy_traces


def test_distractors_are_one_off_errors(corpus):
    truth, spans = corpus
    traces = by_trace(spans)
    planted = set().union(*(p.affected_trace_ids for p in truth.patterns))
    assert truth.distractor_trace_ids and not planted & set(truth.distractor_trace_ids)
    tools, templates = [], []
    for trace_id in truth.distractor_trace_ids:
        errors = [s for s in traces[trace_id] if s["error"]]
        assert len(errors) == 1 and tool(errors[0])
        tools.append(tool(errors[0]))
        text = errors[0]["message"] + " " + (errors[0]["attrs"].get("output.value") or "")
        templates.append(template(text))
    assert len(set(tools)) == len(tools) and len(set(templates)) == len(templates)
    calls = Counter(t for trace in traces.values() for t in {tool(s) for s in trace})
    assert all(calls[t] == 1 for t in tools), "a one-off tool appears in one trace only"
    assert not set(tools) & set(sim.TOOLS)


def test_one_off_errors_stay_distinct_at_scale():
    one_offs, rng = sim._OneOffs(seed=1, index=0, chunks=1), random.Random(1)
    made = [one_offs.next(rng) for _ in range(10_000)]
    assert len({tool for tool, _, _ in made}) == len(made)
    assert len({template(message) for _, _, message in made}) == len(made)


def test_rates_are_respected(corpora):
    truth, _ = corpora["halo"]
    n = truth.corpus.traces
    planted = {p.id: p.affected_traces for p in truth.patterns}
    counts = {m.rate_name: planted.get(m.id, 0) for m in sim.MODES}
    for name, rate in {**DEFAULT_RATES, "distractors": DEFAULT_DISTRACTOR_RATE}.items():
        count = counts.get(name, len(truth.distractor_trace_ids))
        assert abs(count - rate * n) <= 4 * math.sqrt(n * rate * (1 - rate)) + 3, (name, count, rate * n)


def test_rates_can_be_changed_and_turned_off(tmp_path):
    truth = simulate(
        tmp_path / "t.jsonl", traces=400, rates={"tool_error": 0.0, "guardrail": 0.15}, distractors=0
    )
    counts = {p.category: p.affected_traces for p in truth.patterns}
    assert "tool_error" not in counts and not truth.distractor_trace_ids
    assert 0.1 * 400 <= counts["guardrail"] <= 0.2 * 400
    with pytest.raises(ValueError, match="unknown failure patterns"):
        simulate(tmp_path / "u.jsonl", rates={"hallucination": 0.1})


def test_services_use_their_own_conventions(corpora):
    _, spans = corpora["halo"]
    keys = defaultdict(set)
    for s in spans:
        keys[s["service"]].update(s["attrs"])
    genai = keys["code-helper"]
    assert {
        "gen_ai.operation.name",
        "gen_ai.input.messages",
        "gen_ai.usage.input_tokens",
        "gen_ai.tool.call.arguments",
    } <= genai
    assert not any(k.startswith("llm.") for k in genai)
    assert "llm.input_messages" in keys["billing-agent"]
    assert "llm.input_messages.0.message.role" not in keys["billing-agent"]
    assert "llm.input_messages" not in keys["research-assistant"]
    assert "llm.input_messages.0.message.role" in keys["research-assistant"]
    assert {
        "llm.input_messages",
        "llm.input_messages.0.message.role",
        "inference.llm.input_tokens",
        "agent.tools",
    } <= keys["support-bot"]
    assert "llm.cost.total" in keys["billing-agent"] and "llm.cost.total" not in keys["travel-planner"]
