"""halo_rlm.scrub: credentials out of spans, and the fast check that says which spans need it."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from halo_rlm.formats import otlp
from halo_rlm.scrub import REDACTED, lines_to_scrub, may_hold_secrets, scrub_span, scrub_text

OPENAI_KEY = "sk-proj-" + "a1B2c3D4" * 6


def flat_span(**fields: object) -> dict:
    span = {
        "trace_id": "5b8efff798038103d269b633813fc60c",
        "span_id": "eee19b7ec3c1b174",
        "parent_span_id": "",
        "trace_state": "",
        "name": "step",
        "kind": "SPAN_KIND_INTERNAL",
        "start_time": 1776924720000000000,
        "end_time": 1776924721250000000,
        "status": {"code": "STATUS_CODE_UNSET", "message": ""},
        "resource": {"attributes": {"service.name": "agent"}},
        "scope": {"name": "s", "version": ""},
        "attributes": {},
    }
    span.update(fields)
    return span


def test_scrub_span_reaches_every_text_of_a_span() -> None:
    span = flat_span(
        name=f"call with {OPENAI_KEY}",
        status={"code": "STATUS_CODE_ERROR", "message": "401 for Authorization: Bearer abc123def456ghi"},
        resource={"attributes": {"service.name": "agent", "deployment.api_key": "k-123456"}},
        attributes={
            "input.value": f'{{"password": "hunter22", "key": "{OPENAI_KEY}"}}',
            "llm.token_count.prompt": 1200,
            "nested": [["ok", "AKIAIOSFODNN7EXAMPLE"]],
            "url.full": "https://user:pa55word@db.example.com/x",
        },
        events=[
            {"name": "exception", "time": 1, "attributes": {"exception.message": f"bad key {OPENAI_KEY}"}}
        ],
        links=[{"trace_id": "ab" * 16, "span_id": "cd" * 8, "attributes": {"session_token": "tok-999999"}}],
    )
    scrubbed = scrub_span(span)
    text = orjson.dumps(scrubbed).decode()
    for secret in (
        OPENAI_KEY,
        "abc123def456",
        "k-123456",
        "hunter22",
        "AKIAIOSFODNN7EXAMPLE",
        "pa55word",
        "tok-999999",
    ):
        assert secret not in text, secret
    assert scrubbed["attributes"]["llm.token_count.prompt"] == 1200
    assert scrubbed["resource"]["attributes"] == {"service.name": "agent", "deployment.api_key": REDACTED}
    assert scrubbed["links"][0]["span_id"] == "cd" * 8 and scrubbed["events"][0]["time"] == 1
    assert span["name"] == f"call with {OPENAI_KEY}"  # the input is left as it was


def test_lines_without_credentials_skip_the_slow_scrub() -> None:
    ordinary = flat_span(
        name="llm step 3",
        attributes={
            "openinference.span.kind": "LLM",
            "llm.token_count.prompt": 1203,
            "llm.token_count.completion": 80,
            "gen_ai.usage.input_tokens": 7,
            "input.value": '{"order_id": "ORD-1001", "max_tokens": 50}',
            "url.full": "https://api.openai.com/v1/chat/completions",
        },
    )
    secret = flat_span(attributes={"input.value": f"key {OPENAI_KEY}"})
    lines = [otlp.span_line(ordinary), otlp.span_line(secret), otlp.span_line(ordinary)]
    assert lines_to_scrub(lines) == [1]
    assert lines_to_scrub([]) == []
    assert lines_to_scrub([lines[0], lines[2]]) == []
    assert lines_to_scrub([lines[0], b"\xff not UTF-8"]) == [0, 1]  # scrubbed the slow way


HARMLESS = ["a", " ", "=", ": ", '"', "'", "@", "://", "/", "_", "-", ".", "1", "x" * 20, "0123456789abcdefABCDEF",
            "token", "basic ", "key", "\n", "é", "\u2028", "IOSFODNN7EXAMPLE"]  # fmt: skip
SENSITIVE = [
    "Bearer abc123def",
    "bearer\t1234567890",
    "sk-" + "a" * 16,
    "SK-ant-" + "b" * 16,
    "ghp_" + "c" * 20,
    "github_pat_" + "d" * 20,
    "xoxb-" + "1" * 10,
    "AIza" + "e" * 35,
    "AKIAIOSFODNN7EXAMPLE",
    "api_key",
    "API-KEY",
    "apikey",
    "access_token",
    "auth_token",
    "session.token",
    "id-token",
    "secret",
    "ſecret",  # the long s: Python's case-insensitive matching takes it for "s"
    "PASSWORD",
    "paſſword",
    "passwd",
    "authorization",
    "authorızation",  # dotless i
    "AUTHORİZATION",  # dotted capital I
    "Cookie",
    "credential",
    "private.key",
    "client_secret",
    "user:pw@",
]
harmless = st.lists(st.sampled_from(HARMLESS), max_size=8).map("".join)
# One credential-ish word among harmless text, so a word the fast check missed is not hidden by another.
separator = st.sampled_from(["", " ", "=", '"'])
one_word = st.tuples(harmless, separator, st.sampled_from(SENSITIVE), separator, harmless).map("".join)
PLACES = ["name", "status", "key", "value", "list", "resource", "event"]


def span_with(text: str, place: str, filler: str) -> dict:
    attributes = {"k": filler, "list": [filler]}
    span = flat_span(
        name=filler, status={"code": "STATUS_CODE_ERROR", "message": filler}, attributes=attributes
    )
    if place in ("name",):
        span["name"] = text
    elif place == "status":
        span["status"]["message"] = text
    elif place == "key":
        attributes[text] = filler
    elif place == "value":
        attributes["k"] = text
    elif place == "list":
        attributes["list"] = [filler, [text]]
    elif place == "resource":
        span["resource"] = {"attributes": {"service.name": filler, "v": text}}
    else:
        span["events"] = [{"name": "e", "time": 1, "attributes": {"m": text}}]
    return span


@settings(max_examples=400, deadline=None)
@given(text=one_word, place=st.sampled_from(PLACES), filler=harmless)
def test_every_span_the_scrubber_changes_is_picked_by_the_fast_check(
    text: str, place: str, filler: str
) -> None:
    span = span_with(text, place, filler)
    if scrub_span(span) != span:
        assert lines_to_scrub([otlp.span_line(span)]) == [0]


def request_with(text: str, place: str, filler: str) -> bytes:
    """A protobuf export request with `text` in one place of its one span, `filler` elsewhere."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList

    def kv(key: str, value: AnyValue) -> KeyValue:
        return KeyValue(key=key, value=value)

    def string(value: str) -> AnyValue:
        return AnyValue(string_value=value)

    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.extend(
        [kv("service.name", string(text if place == "resource" else filler))]
    )
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.name = text if place == "scope" else "s"
    span = scope_spans.spans.add(trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name=filler)
    span.trace_state = text if place == "trace_state" else ""
    span.name = text if place == "name" else filler
    span.status.code, span.status.message = 2, (text if place == "status" else filler)
    value = {
        "value": string(text),
        "key": string(filler),
        "list": AnyValue(array_value=ArrayValue(values=[string(filler), string(text)])),
        "nested": AnyValue(kvlist_value=KeyValueList(values=[kv(text, string(filler))])),
        "bytes": AnyValue(bytes_value=text.encode()),
    }.get(place, string(filler))
    span.attributes.extend([kv(text if place == "key" else "k", value), kv("n", AnyValue(int_value=7))])
    if place == "event":
        span.events.add(name="e", time_unix_nano=1).attributes.extend([kv("m", string(text))])
    if place == "link":
        span.links.add(trace_id=b"\x03" * 16, span_id=b"\x04" * 8).attributes.extend([kv("m", string(text))])
    return request.SerializeToString()


BODY_PLACES = ["name", "status", "key", "value", "resource", "scope", "trace_state", "event", "link", "list",
               "nested", "bytes"]  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(text=one_word, place=st.sampled_from(BODY_PLACES), filler=harmless)
def test_every_protobuf_request_the_scrubber_changes_is_picked_by_the_search_of_its_body(
    text: str, place: str, filler: str
) -> None:
    """The collector searches a protobuf request's body instead of its lines when the lines hold no
    text the body does not (`Lines.verbatim`); whatever the scrubber would change, one of the two says so."""
    body = request_with(text, place, filler)
    decoded = otlp.request_lines(body, otlp.PROTOBUF)
    spans = [orjson.loads(line) for line in decoded.lines]
    if [scrub_span(span) for span in spans] != spans:
        assert not decoded.verbatim or may_hold_secrets(body)


def test_a_secret_key_made_of_nested_keys_is_not_missed_by_the_body_search() -> None:
    """`{"api": {"key": ...}}` is the attribute `api.key`, a secret whose name the body never holds
    whole: such a request is searched line by line."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue, KeyValueList

    request = ExportTraceServiceRequest()
    span = (
        request.resource_spans.add().scope_spans.add().spans.add(trace_id=b"\x01" * 16, span_id=b"\x02" * 8)
    )
    inner = KeyValueList(values=[KeyValue(key="key", value=AnyValue(string_value="x9y8z7w6"))])
    span.attributes.extend([KeyValue(key="api", value=AnyValue(kvlist_value=inner))])
    body = request.SerializeToString()
    decoded = otlp.request_lines(body, otlp.PROTOBUF)
    assert not may_hold_secrets(body)
    assert not decoded.verbatim and lines_to_scrub(decoded.lines) == [0]
    assert scrub_span(orjson.loads(decoded.lines[0]))["attributes"]["api.key"] == REDACTED
    plain = otlp.request_lines(request_with("x", "value", "y"), otlp.PROTOBUF)
    assert plain.verbatim and plain.lines


def test_scrub_text_unchanged_on_ordinary_text() -> None:
    ordinary = "count the tokens: 1200 prompt tokens, max_tokens=50; the bearer responsibility is ours"
    assert scrub_text(ordinary) == ordinary
