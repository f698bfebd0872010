"""The scripted LLM server, driven through the real openai SDK (sync and async) as the engine drives it."""

import asyncio
import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx2  # the HTTP library openai 3.x is built on; its errors are the `__cause__` of connection errors
import openai
import pytest
from scripted_llm import (
    Call,
    ChatRequest,
    CutStream,
    Delay,
    EmptyStream,
    Hang,
    HTTPError,
    RateLimited,
    Refusal,
    Script,
    ScriptedLLM,
    Server,
    ServerError,
    StreamError,
    Text,
    ToolCalls,
    Usage,
    scripted_llm,  # noqa: F401  (a fixture)
    text_call,
)

HI = [{"role": "user", "content": "hi"}]
WITH_USAGE = {"include_usage": True}


def sync_client(llm: ScriptedLLM, **options) -> openai.OpenAI:
    return openai.OpenAI(base_url=llm.base_url, api_key="test", **options)


def async_client(llm: ScriptedLLM, **options) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=llm.base_url, api_key="test", **options)


def stream_chunks(llm: ScriptedLLM, **request) -> list:
    with sync_client(llm) as client:
        return list(client.chat.completions.create(model="m", messages=HI, stream=True, **request))


# --- text


def test_non_streamed_text_carries_content_and_full_usage(scripted_llm):
    llm = scripted_llm(Text("Hello there.", usage=Usage(prompt=120, completion=7, cached=100, reasoning=3)))
    with sync_client(llm) as client:
        completion = client.chat.completions.create(model="gpt-test", messages=HI)

    assert completion.object == "chat.completion"
    assert completion.model == "gpt-test"
    choice = completion.choices[0]
    assert (choice.message.role, choice.message.content, choice.finish_reason) == (
        "assistant",
        "Hello there.",
        "stop",
    )
    assert (
        completion.usage.prompt_tokens,
        completion.usage.completion_tokens,
        completion.usage.total_tokens,
    ) == (120, 7, 127)
    assert completion.usage.prompt_tokens_details.cached_tokens == 100
    assert completion.usage.completion_tokens_details.reasoning_tokens == 3


def test_streamed_text_arrives_in_several_deltas_then_a_usage_chunk(scripted_llm):
    llm = scripted_llm(Text("The quick brown fox.", usage=Usage(50, 5, cached=40, reasoning=2)))
    chunks = stream_chunks(llm, stream_options=WITH_USAGE)

    assert {chunk.object for chunk in chunks} == {"chat.completion.chunk"}
    assert len({chunk.id for chunk in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    contents = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert contents == ["The ", "quick ", "brown ", "fox."]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    *content_chunks, usage_chunk = chunks
    assert all(chunk.usage is None for chunk in content_chunks)
    assert usage_chunk.choices == []
    assert (
        usage_chunk.usage.prompt_tokens,
        usage_chunk.usage.completion_tokens,
        usage_chunk.usage.total_tokens,
    ) == (50, 5, 55)
    assert usage_chunk.usage.prompt_tokens_details.cached_tokens == 40
    assert usage_chunk.usage.completion_tokens_details.reasoning_tokens == 2


def test_stream_has_no_usage_unless_asked_for(scripted_llm):
    chunks = stream_chunks(scripted_llm(Text("ok")))
    assert all(chunk.usage is None and chunk.choices for chunk in chunks)


def test_usage_is_estimated_when_not_scripted(scripted_llm):
    llm = scripted_llm(Text("four words of reply"))
    with sync_client(llm) as client:
        usage = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x" * 400}]
        ).usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (100, 4)


def test_content_given_as_a_list_fixes_the_stream_deltas(scripted_llm):
    chunks = stream_chunks(scripted_llm(Text(['{"a": ', '"\\u00e9', '"}'])))
    assert [c.choices[0].delta.content for c in chunks[1:-1]] == ['{"a": ', '"\\u00e9', '"}']


def test_finish_reason_length(scripted_llm):
    llm = scripted_llm(Text("truncated", finish_reason="length"))
    assert stream_chunks(llm)[-1].choices[0].finish_reason == "length"
    with sync_client(llm) as client:
        assert client.chat.completions.create(model="m", messages=HI).choices[0].finish_reason == "length"


def test_responder_shorthands_string_and_message_parts(scripted_llm):
    llm = scripted_llm(
        Script([["Let me check. ", Call("search", {"q": "x"}), Call("read", {"path": "a"})], "Done."])
    )
    with sync_client(llm) as client:
        first = client.chat.completions.create(model="m", messages=HI).choices[0].message
        second = client.chat.completions.create(model="m", messages=HI).choices[0].message
    assert first.content == "Let me check. "
    assert [call.function.name for call in first.tool_calls] == ["search", "read"]
    assert second.content == "Done."


def test_chunk_delay_streams_the_same_reply(scripted_llm):
    llm = scripted_llm(ToolCalls([Call("a", {"x": 1}), Call("b", {"y": 2})]), chunk_delay=0.001)
    with sync_client(llm) as client, client.chat.completions.stream(model="m", messages=HI) as stream:
        calls = stream.get_final_completion().choices[0].message.tool_calls
    assert [(call.function.name, json.loads(call.function.arguments)) for call in calls] == [
        ("a", {"x": 1}),
        ("b", {"y": 2}),
    ]


# --- tool calls


PARALLEL = ToolCalls(
    [
        Call("search_spans", {"query": 'status = "ERROR"', "limit": 20}),
        Call("read_file", {"path": "/srv/app.py"}),
        Call("list_agents", {}),
    ],
    content="Looking at three things at once.",
)


def test_parallel_tool_calls_are_reassembled_by_the_sdk_stream_helper(scripted_llm):
    llm = scripted_llm(PARALLEL)
    with (
        sync_client(llm) as client,
        client.chat.completions.stream(model="m", messages=HI, stream_options=WITH_USAGE) as stream,
    ):
        deltas = [
            event.chunk.choices[0].delta for event in stream if event.type == "chunk" and event.chunk.choices
        ]
        message = stream.get_final_completion().choices[0].message
        finish_reason = stream.get_final_completion().choices[0].finish_reason

    assert finish_reason == "tool_calls"
    assert message.content == "Looking at three things at once."
    assert [(c.id, c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls] == [
        ("call_1_0", "search_spans", {"query": 'status = "ERROR"', "limit": 20}),
        ("call_1_1", "read_file", {"path": "/srv/app.py"}),
        ("call_1_2", "list_agents", {}),
    ]
    # How the calls were split: each call opens once (id, type, name, empty arguments), then its
    # arguments follow in several pieces, alternating between calls.
    tool_deltas = [call for delta in deltas for call in delta.tool_calls or []]
    openings = [d for d in tool_deltas if d.id is not None]
    assert [(d.index, d.type, d.function.name, d.function.arguments) for d in openings] == [
        (0, "function", "search_spans", ""),
        (1, "function", "read_file", ""),
        (2, "function", "list_agents", ""),
    ]
    pieces = [d for d in tool_deltas if d.id is None]
    assert all(d.type is None and d.function.name is None for d in pieces)
    assert [d.index for d in pieces] == [0, 1, 2, 0, 1, 2, 0, 1, 0, 1]  # "{}" of list_agents makes two pieces


def test_sdk_stream_helper_reports_interleaved_calls_done_too_early(scripted_llm):
    # An SDK quirk engines must know: `.stream()` emits `tool_calls.function.arguments.done` for a
    # call as soon as another index shows up, so with interleaving providers it fires with partial
    # arguments. Only `get_final_completion()` (or the engine's own accumulation) is reliable.
    llm = scripted_llm(ToolCalls([Call("a", {"x": 1}), Call("b", {"y": 2})]))
    with sync_client(llm) as client, client.chat.completions.stream(model="m", messages=HI) as stream:
        done = [
            (event.index, event.arguments)
            for event in stream
            if event.type == "tool_calls.function.arguments.done"
        ]
    assert done[0] == (0, "")


def test_tool_calls_can_be_streamed_one_after_the_other(scripted_llm):
    chunks = stream_chunks(scripted_llm(ToolCalls(PARALLEL.calls, interleave=False)))
    indexes = [call.index for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or []]
    assert indexes == sorted(indexes)


def test_async_stream_deltas_accumulate_into_tool_calls(scripted_llm):
    llm = scripted_llm(PARALLEL)

    async def collect() -> dict[int, dict]:
        calls: dict[int, dict] = {}
        async with async_client(llm) as client:
            stream = await client.chat.completions.create(model="m", messages=HI, stream=True)
            async for chunk in stream:
                for delta in chunk.choices[0].delta.tool_calls or []:
                    call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                    call["id"] += delta.id or ""
                    call["name"] += delta.function.name or ""
                    call["arguments"] += delta.function.arguments or ""
        return calls

    calls = asyncio.run(collect())
    assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == [
        (call.name, call.arguments) for call in PARALLEL.calls
    ]
    assert [c["id"] for c in calls.values()] == ["call_1_0", "call_1_1", "call_1_2"]


def test_malformed_arguments_arrive_verbatim(scripted_llm):
    broken = '{"path": "/srv/app.py", "lines": [1, 2'
    llm = scripted_llm(ToolCalls([Call("read_file", broken, id="call_broken")]))
    with sync_client(llm) as client:
        message = client.chat.completions.create(model="m", messages=HI).choices[0].message
        with client.chat.completions.stream(model="m", messages=HI) as stream:
            streamed = stream.get_final_completion().choices[0].message
    for call in (message.tool_calls[0], streamed.tool_calls[0]):
        assert (call.id, call.function.arguments) == ("call_broken", broken)


# --- refusals


def test_refusal_sets_message_refusal_and_nulls_content(scripted_llm):
    llm = scripted_llm(Refusal("I can't help with that request."))
    with sync_client(llm) as client:
        message = client.chat.completions.create(model="m", messages=HI).choices[0].message
    assert (message.content, message.refusal) == (None, "I can't help with that request.")

    chunks = stream_chunks(llm)
    assert chunks[0].choices[0].delta.content is None
    assert "".join(c.choices[0].delta.refusal or "" for c in chunks) == "I can't help with that request."
    assert chunks[-1].choices[0].finish_reason == "stop"


# --- HTTP faults


def test_rate_limit_is_retried_after_the_servers_retry_after(scripted_llm, caplog):
    caplog.set_level(logging.INFO, logger="openai")
    llm = scripted_llm(Script([RateLimited(retry_after=1, retry_after_ms=50), Text("after the wait")]))
    with sync_client(llm, max_retries=1) as client:
        reply = client.chat.completions.create(model="m", messages=HI)

    assert reply.choices[0].message.content == "after the wait"
    assert [r.headers["x-stainless-retry-count"] for r in llm.requests] == ["0", "1"]
    # retry-after-ms wins over Retry-After; the SDK logs the wait it chose.
    assert "Retrying request in 0.050000 seconds" in caplog.text


def test_rate_limit_without_retries_raises_rate_limit_error(scripted_llm):
    llm = scripted_llm(RateLimited(retry_after=2))
    with sync_client(llm, max_retries=0) as client, pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="m", messages=HI)
    assert (caught.value.status_code, caught.value.code) == (429, "rate_limit_exceeded")
    assert caught.value.response.headers["retry-after"] == "2"


def test_retry_after_beyond_two_minutes_is_not_retried_at_all(scripted_llm):
    llm = scripted_llm(RateLimited(retry_after=600))
    with sync_client(llm, max_retries=2) as client, pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="m", messages=HI)
    assert len(llm.requests) == 1


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_error_raises_internal_server_error(scripted_llm, status):
    llm = scripted_llm(ServerError(status))
    with sync_client(llm, max_retries=0) as client, pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="m", messages=HI, stream=True)
    assert (caught.value.status_code, caught.value.type) == (status, "server_error")


def test_context_length_exceeded_has_openais_error_body(scripted_llm):
    llm = scripted_llm(HTTPError.context_length_exceeded())
    with sync_client(llm) as client, pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="m", messages=HI)
    error = caught.value
    assert (error.code, error.param, error.type) == (
        "context_length_exceeded",
        "messages",
        "invalid_request_error",
    )
    assert error.body["message"].startswith("This model's maximum context length is")
    assert len(llm.requests) == 1  # 4xx other than 408/409/429 are not retried


@pytest.mark.parametrize(
    ("fault", "exception", "code"),
    [
        (HTTPError.invalid_api_key(), openai.AuthenticationError, "invalid_api_key"),
        (HTTPError.permission_denied(), openai.PermissionDeniedError, "unsupported_country_region_territory"),
        (HTTPError.model_not_found("gpt-nope"), openai.NotFoundError, "model_not_found"),
        (HTTPError(422, "bad_schema", "Unprocessable"), openai.UnprocessableEntityError, "bad_schema"),
    ],
)
def test_http_errors_map_to_sdk_exceptions(scripted_llm, fault, exception, code):
    llm = scripted_llm(fault)
    with sync_client(llm) as client, pytest.raises(exception) as caught:
        client.chat.completions.create(model="gpt-nope", messages=HI, stream=True)
    assert (caught.value.status_code, caught.value.code) == (fault.status, code)


def test_unknown_endpoint_is_404_in_openais_shape_and_models_are_listed(scripted_llm):
    llm = scripted_llm(Text("unused"), models=["gpt-a", "gpt-b"])
    with sync_client(llm) as client:
        assert [model.id for model in client.models.list()] == ["gpt-a", "gpt-b"]
        with pytest.raises(openai.NotFoundError) as caught:
            client.completions.create(model="m", prompt="hi")
    assert caught.value.body["message"] == "Invalid URL (POST /v1/completions)"
    assert [(r.method, r.path) for r in llm.requests] == [("GET", "/v1/models"), ("POST", "/v1/completions")]


# --- broken streams and stalls


def test_abrupt_cut_stream_raises_api_connection_error_mid_iteration(scripted_llm):
    llm = scripted_llm(CutStream(after_chunks=3))
    received = []
    with sync_client(llm) as client, pytest.raises(openai.APIConnectionError) as caught:
        for chunk in client.chat.completions.create(model="m", messages=HI, stream=True):
            received.append(chunk)
    assert len(received) == 3
    assert isinstance(caught.value.__cause__, httpx2.RemoteProtocolError)
    assert len(llm.requests) == 1  # a stream that already started is never retried by the SDK


def test_abrupt_cut_stream_raises_in_async_client_too(scripted_llm):
    llm = scripted_llm(CutStream(after_chunks=2, reply=PARALLEL))

    async def consume() -> int:
        received = 0
        async with async_client(llm) as client:
            stream = await client.chat.completions.create(model="m", messages=HI, stream=True)
            with pytest.raises(openai.APIConnectionError) as caught:
                async for _ in stream:
                    received += 1
        assert isinstance(caught.value.__cause__, httpx2.RemoteProtocolError)
        return received

    assert asyncio.run(consume()) == 2


def test_cleanly_ended_stream_without_done_looks_finished_to_the_sdk(scripted_llm):
    chunks = stream_chunks(scripted_llm(CutStream(after_chunks=2, abrupt=False)))
    assert len(chunks) == 2
    assert all(chunk.choices[0].finish_reason is None for chunk in chunks)  # the only sign of truncation


def test_cut_non_streamed_body_raises_api_connection_error(scripted_llm):
    llm = scripted_llm(CutStream())
    with sync_client(llm, max_retries=0) as client, pytest.raises(openai.APIConnectionError) as caught:
        client.chat.completions.create(model="m", messages=HI)
    assert isinstance(caught.value.__cause__, httpx2.RemoteProtocolError)


def test_cut_non_streamed_body_is_retried_by_the_sdk(scripted_llm):
    llm = scripted_llm(Script([CutStream(), Text("second try")]))
    with sync_client(llm, max_retries=1) as client:  # the SDK's own backoff (~0.4 s) before the retry
        assert (
            client.chat.completions.create(model="m", messages=HI).choices[0].message.content == "second try"
        )
    assert len(llm.requests) == 2


def test_delay_then_reply(scripted_llm):
    llm = scripted_llm(Delay(0.01, Text("late but fine")))
    with sync_client(llm) as client:
        assert (
            client.chat.completions.create(model="m", messages=HI).choices[0].message.content
            == "late but fine"
        )


@pytest.mark.parametrize("stall", [Delay(30, Text("too late")), Hang()])
def test_stall_past_the_client_timeout_raises_api_timeout_error(scripted_llm, stall):
    llm = scripted_llm(stall)
    with (
        sync_client(llm, max_retries=0, timeout=0.2) as client,
        pytest.raises(openai.APITimeoutError) as caught,
    ):
        client.chat.completions.create(model="m", messages=HI, stream=True)
    assert isinstance(caught.value.__cause__, httpx2.ReadTimeout)
    # Teardown closes the server, which releases the stalled handler instead of waiting for it.


# --- concurrency and scripts


def test_fifty_concurrent_async_streams_are_served_at_once(scripted_llm):
    all_in_flight = threading.Barrier(50, timeout=10)

    def responder(request: ChatRequest) -> Text:
        all_in_flight.wait()  # breaks (and the request fails) unless all 50 requests are handled concurrently
        return Text(f"answer to {request.last_user_text}", usage=Usage(10, 3))

    llm = scripted_llm(responder)

    async def one(client: openai.AsyncOpenAI, n: int) -> str:
        stream = await client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": f"task {n}"}],
            stream=True,
            stream_options=WITH_USAGE,
        )
        return "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])

    async def run_all() -> list[str]:
        async with async_client(llm, max_retries=0) as client:
            return await asyncio.gather(*(one(client, n) for n in range(50)))

    assert asyncio.run(run_all()) == [f"answer to task {n}" for n in range(50)]
    assert len(llm.requests) == 50


def run_agent(client: openai.OpenAI, task: str, tools: dict) -> str:
    """A minimal agent loop: call the model, run its tool calls in parallel, repeat until it answers."""
    messages = [{"role": "system", "content": "You are an agent."}, {"role": "user", "content": task}]
    while True:
        message = client.chat.completions.create(model="m", messages=messages).choices[0].message
        if not message.tool_calls:
            return message.content
        messages.append(message.model_dump(exclude_none=True))
        with ThreadPoolExecutor() as pool:
            results = pool.map(
                lambda call: tools[call.function.name](**json.loads(call.function.arguments)),
                message.tool_calls,
            )
            messages += [
                {"role": "tool", "tool_call_id": call.id, "content": result}
                for call, result in zip(message.tool_calls, results, strict=True)
            ]


def test_script_routes_root_and_concurrent_sub_agents_to_their_own_queues(scripted_llm):
    script = Script(
        {
            "Investigate the outage": [
                ToolCalls(
                    [
                        Call("spawn_agent", {"task": "Check the auth service"}),
                        Call("spawn_agent", {"task": "Check the database"}),
                    ]
                ),
                Text("Root cause: an expired certificate."),
            ],
            "Check the auth service": [
                ToolCalls([Call("read_logs", {"service": "auth"})]),
                Text("auth: cert expired"),
            ],
            "Check the database": [Text("db: healthy")],
        }
    )
    llm = scripted_llm(script)
    with sync_client(llm) as client:
        tools = {
            "spawn_agent": lambda task: run_agent(client, task, tools),
            "read_logs": lambda service: f"{service}: x509 certificate has expired",
        }
        assert run_agent(client, "Investigate the outage", tools) == "Root cause: an expired certificate."

    assert script.remaining() == {
        "Investigate the outage": 0,
        "Check the auth service": 0,
        "Check the database": 0,
    }
    final_root_request = llm.chat_requests[-1]
    assert [m["content"] for m in final_root_request.tool_results] == ["auth: cert expired", "db: healthy"]


def test_script_matches_the_one_queue_whose_key_occurs_in_the_conversation(scripted_llm):
    script = Script({"auth service": [Text("auth ok")], "database": [Text("db ok")]})
    llm = scripted_llm(script)
    with sync_client(llm) as client:
        task = [{"role": "user", "content": "Sub-task 2 of 2: check the database.\nReport briefly."}]
        assert client.chat.completions.create(model="m", messages=task).choices[0].message.content == "db ok"


def test_script_key_can_be_chosen_and_queues_extended(scripted_llm):
    script = Script({}, key=lambda request: request.headers.get("x-agent-id", ""))
    script.add("root", Text("from root queue"))
    llm = scripted_llm(script)
    with sync_client(llm, default_headers={"X-Agent-Id": "root"}) as client:
        assert (
            client.chat.completions.create(model="m", messages=HI).choices[0].message.content
            == "from root queue"
        )


def test_dry_script_fails_loudly_once_and_again_on_exit():
    with pytest.raises(AssertionError, match="ran dry after 1 replies"):
        with ScriptedLLM(Script({"hi": [Text("only reply")]})) as llm, sync_client(llm) as client:
            client.chat.completions.create(model="m", messages=HI)
            with pytest.raises(openai.InternalServerError) as caught:
                client.chat.completions.create(model="m", messages=HI)  # default max_retries=2
            assert "script for conversation 'hi' ran dry" in caught.value.message
            assert caught.value.type == "scripted_llm_error"
            assert len(llm.requests) == 2  # x-should-retry: false stops the SDK's retries
    assert len(llm.errors) == 1


def test_unscripted_conversation_and_responder_exceptions_are_reported():
    def responder(request: ChatRequest):
        if request.last_user_text == "boom":
            raise ValueError("no reply planned for boom")
        return Script({"a": [Text("a")], "b": [Text("b")]})(request)

    with ScriptedLLM(responder, strict=False) as llm, sync_client(llm) as client:
        for text in ("boom", "neither", "a and b"):
            with pytest.raises(openai.InternalServerError):
                client.chat.completions.create(model="m", messages=[{"role": "user", "content": text}])
    assert llm.errors == [
        "responder raised ValueError: no reply planned for boom",
        "conversation 'neither' matches no scripted conversation; scripted: ['a', 'b']",
        "conversation 'a and b' matches several scripted conversations; scripted: ['a', 'b']",
    ]


# --- what the server saw


def test_request_headers_are_recorded_and_keyless_clients_send_no_authorization(scripted_llm):
    llm = scripted_llm(Text("ok"))
    with sync_client(llm, default_headers={"X-Custom": "from -H"}) as client:
        client.chat.completions.create(model="m", messages=HI)
    # openai 3.52 refuses an empty api_key; a keyless provider needs the header omitted per request.
    with openai.OpenAI(base_url=llm.base_url, api_key="unused") as keyless:
        keyless.chat.completions.create(
            model="m", messages=HI, extra_headers={"Authorization": openai.Omit()}
        )

    with_key, without_key = llm.requests
    assert with_key.headers["authorization"] == "Bearer test"
    assert with_key.headers["x-custom"] == "from -H"
    assert "authorization" not in without_key.headers
    assert with_key.body == {"model": "m", "messages": HI}


def test_chat_request_exposes_what_the_engine_sent(scripted_llm):
    seen: list[ChatRequest] = []
    llm = scripted_llm(lambda request: seen.append(request) or Text("ok"))
    messages = [
        {"role": "system", "content": "Be terse."},
        {"role": "developer", "content": [{"type": "text", "text": "Use tools."}]},
        {"role": "user", "content": "Find slow spans."},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "query", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "3 spans"},
        {
            "role": "user",
            "content": [{"type": "text", "text": "Now "}, {"type": "text", "text": "summarize."}],
        },
    ]
    tools = [{"type": "function", "function": {"name": "query", "parameters": {"type": "object"}}}]
    with sync_client(llm) as client:
        client.chat.completions.create(
            model="gpt-test",
            messages=messages,
            tools=tools,
            tool_choice="auto",
            parallel_tool_calls=True,
            max_completion_tokens=256,
            temperature=0.2,
            reasoning_effort="low",
            stream=True,
            stream_options=WITH_USAGE,
            extra_headers={"X-Agent": "root"},
        )

    (request,) = seen
    assert (request.model, request.stream, request.include_usage) == ("gpt-test", True, True)
    assert (request.max_tokens, request.temperature, request.reasoning_effort) == (256, 0.2, "low")
    assert (request.tool_choice, request.parallel_tool_calls) == ("auto", True)
    assert request.system_text == "Be terse.\n\nUse tools."
    assert (request.first_user_text, request.last_user_text) == ("Find slow spans.", "Now summarize.")
    assert request.tool_results == [{"role": "tool", "tool_call_id": "c1", "content": "3 spans"}]
    assert request.turn == 1
    assert request.has_tool("query") and not request.has_tool("delete")
    assert request.headers["x-agent"] == "root"
    assert llm.chat_requests[0].body == request.body


# --- local servers: windows, self-description, dropped tools, no usage

LONG = [{"role": "user", "content": "x" * 4_000}]  # 1,000 tokens at four characters a token
TOOL = {"type": "function", "function": {"name": "count", "parameters": {"type": "object", "properties": {}}}}


def test_llama_server_refuses_a_long_prompt_with_its_own_error_and_describes_itself(scripted_llm):
    llm = scripted_llm(Text("unused"), server=Server("llama-server", context_window=512))
    with sync_client(llm, max_retries=0) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model="m", messages=LONG, stream=True)
        props = client.get("/../props", cast_to=object)
        models = client.models.list()
    assert caught.value.body["type"] == "exceed_context_size_error"
    assert (caught.value.body["n_prompt_tokens"], caught.value.body["n_ctx"]) == (1_000, 512)
    assert props["default_generation_settings"]["n_ctx"] == 512
    assert models.data[0].owned_by == "llamacpp"
    assert llm.errors == []  # an over-long request uses no scripted reply


def test_llama_cpp_python_streams_nothing_then_explains_without_streaming(scripted_llm):
    llm = scripted_llm(Text("unused"), server=Server("llama-cpp-python", context_window=1_100))
    with sync_client(llm, max_retries=0) as client:
        chunks = list(client.chat.completions.create(model="m", messages=LONG, stream=True, max_tokens=200))
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model="m", messages=LONG, max_tokens=200)
    assert [c.choices[0].delta.content for c in chunks] == [None] and chunks[0].choices[
        0
    ].finish_reason is None
    assert caught.value.code == "context_length_exceeded"
    assert "maximum context length is 1100 tokens. However, you requested 1200 tokens" in caught.value.message


def test_vllm_and_ollama_say_their_windows(scripted_llm):
    vllm = scripted_llm(Text("unused"), server=Server("vllm", context_window=2_048))
    ollama = scripted_llm(Text("ok"), server=Server("ollama", context_window=300, num_ctx_set=True))
    with sync_client(vllm, max_retries=0) as client:
        assert client.models.list().data[0].max_model_len == 2_048  # type: ignore[attr-defined]
        with pytest.raises(openai.BadRequestError, match="maximum context length is 2048 tokens"):
            client.chat.completions.create(model="m", messages=LONG, max_tokens=1_500)
    with sync_client(ollama) as client:
        loaded = client.get("/../api/ps", cast_to=object)
        shown = client.post("/../api/show", body={"model": "m"}, cast_to=object)
        usage = client.chat.completions.create(model="m", messages=LONG).usage
    assert loaded["models"][0]["context_length"] == 300 and "num_ctx" in shown["parameters"]
    assert usage.prompt_tokens == 300  # Ollama cuts the prompt and says nothing


def test_dropped_tools_are_not_counted_and_refused_tools_fail_as_the_server_fails(scripted_llm):
    counts = {}
    for drops in (False, True):
        llm = scripted_llm(Text("ok"), server=Server(drops_tools=drops))
        with sync_client(llm) as client:
            counts[drops] = client.chat.completions.create(
                model="m", messages=HI, tools=[TOOL]
            ).usage.prompt_tokens
    assert counts[True] < counts[False]
    llm = scripted_llm(Text("unused"), server=Server("llama-server", refuses_tools=True))
    with sync_client(llm, max_retries=0) as client, pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="m", messages=HI, tools=[TOOL])
    assert caught.value.message.endswith("tools param requires --jinja flag")


def test_no_usage_and_replies_cut_at_max_tokens(scripted_llm):
    llm = scripted_llm(Text("word " * 100), server=Server(reports_usage=False))
    chunks = stream_chunks(llm, stream_options=WITH_USAGE, max_tokens=10)
    assert all(c.usage is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ("word " * 100)[:40]
    assert chunks[-1].choices[0].finish_reason == "length"


def test_empty_streams_error_events_and_text_calls(scripted_llm):
    llm = scripted_llm(EmptyStream(role_chunk=False))
    assert stream_chunks(llm) == []
    llm = scripted_llm(StreamError(HTTPError.llama_server_overflow(900, 512)))
    with pytest.raises(openai.APIError) as caught:
        stream_chunks(llm)
    assert caught.value.body["n_ctx"] == 512
    fenced, bare, qwen = (
        text_call("count", {"a": 1}, style=style).content for style in ("fenced", "bare", "qwen")
    )
    assert fenced == '```json\n{"name": "count", "arguments": {"a":1}}\n```'
    assert bare == '{"name": "count", "arguments": {"a":1}}'
    assert qwen == '<tool_call>\n{"name": "count", "arguments": {"a":1}}\n</tool_call>'
