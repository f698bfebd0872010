"""A scripted OpenAI-compatible Chat Completions server on loopback, for tests.

No LLM provider is reachable from test machines, so every LLM code path is driven through the real
`openai` SDK against this server. It speaks the wire format of `POST /v1/chat/completions` (plain
JSON and SSE streaming), `GET /v1/models`, and OpenAI's error bodies, and it can misbehave on demand
(rate limits, server errors, cut streams, stalls).

`Server` makes it behave as a whole like the local servers HALO meets — llama.cpp's llama-server,
llama-cpp-python, vLLM, Ollama — with a context window enforced the way each enforces it (an error
in its own words, an empty stream, or silent truncation), the endpoints each answers about itself
(`/props`, `/api/ps`, `/api/show`, `max_model_len`), tool definitions dropped or refused, and no
usage reported:

    ScriptedLLM(responder, server=Server("llama-server", context_window=8192, drops_tools=True))

    with ScriptedLLM(Script({"Find the bug": [ToolCalls([Call("grep", {"q": "x"})]), Text("Done")]})) as llm:
        client = openai.OpenAI(base_url=llm.base_url, api_key="test")

Replies are chosen by a responder: any callable taking a `ChatRequest`, or a `Script` holding one
queue of replies per conversation (root agent and each sub-agent get their own queue). Test modules
may import the `scripted_llm` fixture, a factory that closes its servers at teardown.
"""

from __future__ import annotations

import re
import socket
import socketserver
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import zip_longest
from typing import Any, Literal, TypeAlias

import orjson
import pytest

# --------------------------------------------------------------------------------------------------
# Replies


@dataclass(frozen=True)
class Usage:
    """Token counts reported for one completion (OpenAI's `usage` object)."""

    prompt: int
    completion: int
    cached: int = 0
    reasoning: int = 0


@dataclass(frozen=True)
class Text:
    """An assistant text message.

    `content` given as a list of strings fixes the exact stream deltas; a plain string is streamed
    one word per delta, like a tokenizer would. Without `usage`, token counts are estimated.
    """

    content: str | Sequence[str]
    usage: Usage | None = None
    finish_reason: str = "stop"


@dataclass(frozen=True)
class Call:
    """One function call. `arguments` as a string is sent verbatim, so it may be malformed JSON."""

    name: str
    arguments: Mapping[str, Any] | str = field(default_factory=dict)
    id: str | None = None  # None: a unique `call_<completion>_<index>` id is assigned


@dataclass(frozen=True)
class ToolCalls:
    """An assistant message with tool calls; several calls are parallel tool calls.

    When streamed, each call's arguments are split across several chunks. With `interleave`, all
    calls are opened first and their argument pieces then alternate between calls (the hardest case
    for a delta accumulator); otherwise calls are streamed one after the other, as OpenAI does.
    """

    calls: Sequence[Call]
    content: str | None = None
    usage: Usage | None = None
    finish_reason: str = "tool_calls"
    interleave: bool = True


@dataclass(frozen=True)
class Refusal:
    """An assistant message whose `refusal` field is set and `content` is null, as OpenAI sends it."""

    text: str
    usage: Usage | None = None


@dataclass(frozen=True)
class HTTPError:
    """Any HTTP error with OpenAI's error body: `{"error": {"message", "type", "param", "code"}}`."""

    status: int
    code: str | None
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)  # more fields of the error object, or
    # replacements: llama-server and vLLM send the HTTP status as the numeric `code`

    @classmethod
    def invalid_api_key(cls) -> HTTPError:
        return cls(
            401,
            "invalid_api_key",
            "Incorrect API key provided: test. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
        )

    @classmethod
    def permission_denied(cls) -> HTTPError:
        return cls(
            403,
            "unsupported_country_region_territory",
            "Country, region, or territory not supported",
            type="request_forbidden",
        )

    @classmethod
    def model_not_found(cls, model: str = "scripted-model") -> HTTPError:
        return cls(
            404, "model_not_found", f"The model `{model}` does not exist or you do not have access to it."
        )

    @classmethod
    def context_length_exceeded(cls) -> HTTPError:
        return cls(
            400,
            "context_length_exceeded",
            "This model's maximum context length is 128000 tokens. However, "
            "your messages resulted in 131072 tokens. Please reduce the length of the messages.",
            param="messages",
        )

    @classmethod
    def llama_server_overflow(cls, prompt_tokens: int, window: int) -> HTTPError:
        """llama-server's answer to a prompt longer than its context (`-c`)."""
        return cls(
            400,
            None,
            f"request ({prompt_tokens} tokens) exceeds the available context size ({window} tokens), "
            "try increasing it",
            type="exceed_context_size_error",
            extra={"code": 400, "n_prompt_tokens": prompt_tokens, "n_ctx": window},
        )

    @classmethod
    def requested_too_many_tokens(cls, prompt_tokens: int, completion_tokens: int, window: int) -> HTTPError:
        """llama-cpp-python's (non-streamed) answer to a request that does not fit its `n_ctx`."""
        return cls(
            400,
            "context_length_exceeded",
            f"This model's maximum context length is {window} tokens. However, you requested "
            f"{prompt_tokens + completion_tokens} tokens ({prompt_tokens} in the messages, "
            f"{completion_tokens} in the completion). Please reduce the length of the messages or completion.",
            param="messages",
        )

    @classmethod
    def vllm_overflow(cls, prompt_tokens: int, completion_tokens: int, window: int) -> HTTPError:
        """vLLM's answer to a request longer than `max_model_len` (its code is the HTTP status)."""
        return cls(
            400,
            None,
            f"This model's maximum context length is {window} tokens. However, you requested "
            f"{prompt_tokens + completion_tokens} tokens ({prompt_tokens} in the messages, "
            f"{completion_tokens} in the completion). Please reduce the length of the messages or completion.",
            type="BadRequestError",
            extra={"code": 400},
        )

    @classmethod
    def tools_refused(cls, kind: str, model: str = "scripted-model") -> HTTPError:
        """How each server refuses the `tools` field when tool calling is off."""
        if kind == "llama-server":  # started without --jinja: a 500, not a 400
            return cls(
                500, None, "tools param requires --jinja flag", type="server_error", extra={"code": 500}
            )
        if kind == "ollama":
            return cls(
                400, None, f"registry.ollama.ai/library/{model} does not support tools", type="api_error"
            )
        if kind == "vllm":
            return cls(
                400,
                None,
                '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set',
                type="BadRequestError",
                extra={"code": 400},
            )
        return cls(400, "tools_not_supported", "tools are not supported by this model")


@dataclass(frozen=True)
class RateLimited:
    """HTTP 429. `retry_after` becomes `Retry-After` (seconds), `retry_after_ms` becomes `retry-after-ms`."""

    retry_after: float | None = None
    retry_after_ms: float | None = None

    def as_http_error(self) -> HTTPError:
        headers = {}
        if self.retry_after is not None:
            headers["retry-after"] = _header_number(self.retry_after)
        if self.retry_after_ms is not None:
            headers["retry-after-ms"] = _header_number(self.retry_after_ms)
        return HTTPError(
            429,
            "rate_limit_exceeded",
            "Rate limit reached for requests. Please try again later.",
            type="requests",
            headers=headers,
        )


@dataclass(frozen=True)
class ServerError:
    """HTTP 5xx with the body OpenAI sends for its own failures."""

    status: int = 500

    def as_http_error(self) -> HTTPError:
        return HTTPError(
            self.status,
            None,
            "The server had an error while processing your request. Sorry about that!",
            type="server_error",
        )


@dataclass(frozen=True)
class CutStream:
    """Sends the first `after_chunks` SSE chunks of `reply`, then ends the stream without `[DONE]`.

    `abrupt=True` drops the TCP connection mid-body (what a crashed proxy does); `abrupt=False` ends
    the HTTP body cleanly, which the SDK cannot tell from a finished stream. A non-streaming request
    gets the first half of its JSON body before the connection drops.
    """

    after_chunks: int = 1
    reply: Text | ToolCalls | Refusal = Text("This reply is cut off before it ends.")
    abrupt: bool = True


@dataclass(frozen=True)
class Delay:
    """Waits `seconds` before sending `then`; for timeout tests."""

    seconds: float
    then: Reply


@dataclass(frozen=True)
class Hang:
    """Never answers; the connection is dropped when the server closes."""


@dataclass(frozen=True)
class RawChunks:
    """Streams exactly these values as SSE `data:` events, then `[DONE]`: for malformed or hostile
    provider output (wrong types, missing fields) that no well-behaved reply produces."""

    chunks: Sequence[Any]


@dataclass(frozen=True)
class EmptyStream:
    """A 200 stream that carries nothing but (with `role_chunk`) an opening chunk, then ends without
    `[DONE]`: what llama-cpp-python sends when a streamed request fails inside the model (an
    over-long prompt). A non-streamed request gets a 200 JSON body without choices."""

    role_chunk: bool = True


@dataclass(frozen=True)
class StreamError:
    """A 200 stream whose first event is `data: {"error": {...}}`: how llama-server reports an error
    that happens once the stream has begun."""

    error: HTTPError


Reply: TypeAlias = (
    Text
    | ToolCalls
    | Refusal
    | HTTPError
    | RateLimited
    | ServerError
    | CutStream
    | Delay
    | Hang
    | RawChunks
    | EmptyStream
    | StreamError
)
# A responder may also answer with a plain string (a Text) or with a list of message parts: strings
# (joined into the content) and Calls (made parallel tool calls).
ResponderResult: TypeAlias = Reply | str | Sequence[str | Call]


def as_reply(result: ResponderResult) -> Reply:
    """Normalizes the shorthand forms a responder may return."""
    if isinstance(result, str):
        return Text(result)
    if isinstance(result, Sequence):
        if not result or not all(isinstance(part, str | Call) for part in result):
            raise TypeError(f"a reply given as a list must hold strings and Calls, got {result!r}")
        text = "".join(part for part in result if isinstance(part, str))
        calls = [part for part in result if isinstance(part, Call)]
        return ToolCalls(calls, content=text or None) if calls else Text(text)
    return result


def text_call(
    name: str, arguments: Mapping[str, Any] | str, *, style: str = "fenced", prose: str = "", **text: Any
) -> Text:
    """A tool call written as text, the way small models write one when their chat template has no
    tool support (or they ignore it): `fenced` in a ```json block, `bare` JSON after some prose, or
    `qwen`/Hermes `<tool_call>` tags. `arguments` as a string is sent verbatim (malformed on purpose)."""
    args = arguments if isinstance(arguments, str) else orjson.dumps(dict(arguments)).decode()
    call = f'{{"name": "{name}", "arguments": {args}}}'
    body = {
        "fenced": f"```json\n{call}\n```",
        "bare": call,
        "qwen": f"<tool_call>\n{call}\n</tool_call>",
    }[style]
    return Text(f"{prose}\n{body}" if prose else body, **text)


def _header_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


# --------------------------------------------------------------------------------------------------
# Requests


def content_text(content: Any) -> str:
    """The text of a message's `content`: a string, or a list of parts of which the text parts count."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


@dataclass(frozen=True)
class ChatRequest:
    """A parsed `POST /v1/chat/completions` request, as a responder sees it."""

    body: Mapping[str, Any]
    headers: Mapping[str, str]  # lower-cased names

    @property
    def model(self) -> str:
        return self.body.get("model", "")

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.body.get("messages") or []

    @property
    def tools(self) -> list[dict[str, Any]]:
        return self.body.get("tools") or []

    @property
    def tool_names(self) -> list[str]:
        return [tool.get("function", {}).get("name", "") for tool in self.tools]

    def has_tool(self, name: str) -> bool:
        return name in self.tool_names

    @property
    def tool_choice(self) -> Any:
        return self.body.get("tool_choice")

    @property
    def parallel_tool_calls(self) -> bool | None:
        return self.body.get("parallel_tool_calls")

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))

    @property
    def include_usage(self) -> bool:
        return bool((self.body.get("stream_options") or {}).get("include_usage"))

    @property
    def max_tokens(self) -> int | None:
        """`max_completion_tokens`, or the older `max_tokens`."""
        return self.body.get("max_completion_tokens", self.body.get("max_tokens"))

    @property
    def temperature(self) -> float | None:
        return self.body.get("temperature")

    @property
    def reasoning_effort(self) -> str | None:
        return self.body.get("reasoning_effort")

    def _texts(self, *roles: str) -> list[str]:
        return [content_text(m.get("content")) for m in self.messages if m.get("role") in roles]

    @property
    def system_text(self) -> str:
        """System and developer messages joined by blank lines."""
        return "\n\n".join(self._texts("system", "developer"))

    @property
    def first_user_text(self) -> str:
        return next(iter(self._texts("user")), "")

    @property
    def last_user_text(self) -> str:
        return next(reversed(self._texts("user")), "")

    @property
    def tool_results(self) -> list[dict[str, Any]]:
        """The `role: "tool"` messages, oldest first."""
        return [m for m in self.messages if m.get("role") == "tool"]

    @property
    def turn(self) -> int:
        """How many assistant messages the conversation already holds."""
        return sum(1 for m in self.messages if m.get("role") == "assistant")


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str  # without the query string
    headers: Mapping[str, str]  # lower-cased names
    body: Any  # parsed JSON, or None when there was no (valid) JSON body
    timestamp: float  # time.monotonic() on arrival


# --------------------------------------------------------------------------------------------------
# Scripts


class ScriptError(Exception):
    """A script cannot answer a request; the server turns it into a loud HTTP 500."""


class Script:
    """Ordered replies per conversation, popped one per request.

    `replies` maps a conversation key to its replies, or is a single list (kept under the key "")
    shared by every request. The key of a request is `key(request)`, by default its first user
    message, so a root agent and each sub-agent (each started with its own task) draw from their
    own queue. A request matches the queue whose key equals its own, else the only queue whose key
    occurs in its own. Safe to call from many server threads at once.
    """

    def __init__(
        self,
        replies: Mapping[str, Sequence[ResponderResult]] | Sequence[ResponderResult],
        *,
        key: Callable[[ChatRequest], str] = lambda request: request.first_user_text,
    ) -> None:
        if isinstance(replies, Mapping):
            queues, self._key = replies, key
        else:  # one queue, under the empty key, that every request draws from
            queues, self._key = {"": replies}, lambda request: ""
        self._queues = {name: deque(queue) for name, queue in queues.items()}
        self._used = dict.fromkeys(self._queues, 0)
        self._lock = threading.Lock()

    def add(self, key: str, *replies: ResponderResult) -> None:
        """Appends replies to a conversation's queue, creating it if needed."""
        with self._lock:
            self._queues.setdefault(key, deque()).extend(replies)
            self._used.setdefault(key, 0)

    def remaining(self) -> dict[str, int]:
        """Unused replies per conversation key; all zero once the script has been played out."""
        with self._lock:
            return {name: len(queue) for name, queue in self._queues.items()}

    def __call__(self, request: ChatRequest) -> ResponderResult:
        conversation = self._key(request)
        with self._lock:
            name = self._queue_name(conversation)
            if not self._queues[name]:
                raise ScriptError(
                    f"script for conversation {name!r} ran dry after {self._used[name]} replies "
                    f"(request with {len(request.messages)} messages, last user text "
                    f"{request.last_user_text[:200]!r})"
                )
            self._used[name] += 1
            return self._queues[name].popleft()

    def _queue_name(self, conversation: str) -> str:
        if conversation in self._queues:
            return conversation
        candidates = [name for name in self._queues if name and name in conversation]
        if len(candidates) == 1:
            return candidates[0]
        problem = (
            "matches several scripted conversations" if candidates else "matches no scripted conversation"
        )
        raise ScriptError(f"conversation {conversation[:200]!r} {problem}; scripted: {list(self._queues)}")


# --------------------------------------------------------------------------------------------------
# Servers: the whole server's behaviour, as the local servers HALO meets behave


ServerKind = Literal["openai", "llama-server", "llama-cpp-python", "vllm", "ollama"]
_OWNERS = {
    "openai": "scripted",
    "llama-server": "llamacpp",
    "llama-cpp-python": "me",
    "vllm": "vllm",
    "ollama": "library",
}


@dataclass(frozen=True)
class Server:
    """How the scripted server behaves beyond each reply.

    `context_window` (tokens, counted as four characters each) is enforced as `kind` enforces it,
    before the responder is asked (an over-long request uses no scripted reply): llama-server answers
    400 `exceed_context_size_error` when the prompt is longer; llama-cpp-python and vLLM count the
    prompt plus `max_tokens`, llama-cpp-python answering a streamed request with an `EmptyStream`
    and a plain one with 400 `context_length_exceeded`; Ollama truncates the prompt silently (the
    reported `prompt_tokens` never exceed the window); OpenAI answers 400 `context_length_exceeded`.

    The server also describes itself as `kind` does: llama-server's `GET /props` (`n_ctx`), vLLM's
    `max_model_len` in `/v1/models`, Ollama's `GET /api/ps` (the loaded model's `context_length`,
    when `loaded`) and `POST /api/show` (`num_ctx` among the parameters when `num_ctx_set`).

    `drops_tools`: the chat template has no place for tools, so they are left out of the prompt (and
    of the reported `prompt_tokens`) without a word. `refuses_tools`: a request with tools fails the
    way `kind` fails it (llama-server without `--jinja`, an Ollama model without tool support, vLLM
    without `--enable-auto-tool-choice`). `reports_usage=False`: no usage, streamed or not.
    `honours_max_tokens`: replies longer than the request's `max_tokens` are cut there
    (`finish_reason: length`).
    """

    kind: ServerKind = "openai"
    context_window: int | None = None
    drops_tools: bool = False
    refuses_tools: bool = False
    reports_usage: bool = True
    honours_max_tokens: bool = True
    loaded: bool = True
    num_ctx_set: bool = False

    def prompt_tokens(self, request: ChatRequest) -> int:
        """The prompt as this server counts it: four characters a token, tools included unless dropped."""
        chars = sum(len(content_text(m.get("content"))) for m in request.messages)
        chars += sum(len(orjson.dumps(m["tool_calls"])) for m in request.messages if m.get("tool_calls"))
        if request.tools and not self.drops_tools:
            chars += len(orjson.dumps(request.tools))
        tokens = max(1, chars // 4)
        if self.kind == "ollama" and self.context_window:
            return min(tokens, self.context_window)  # Ollama keeps the tail and says nothing
        return tokens

    def refusal(self, request: ChatRequest) -> Reply | None:
        """The error this server answers `request` with before any reply is scripted, if any."""
        if self.refuses_tools and request.tools:
            return HTTPError.tools_refused(self.kind, request.model)
        window = self.context_window
        if window is None or self.kind == "ollama":
            return None
        prompt, completion = self.prompt_tokens(request), request.max_tokens or 0
        match self.kind:
            case "llama-server" if prompt > window:
                return HTTPError.llama_server_overflow(prompt, window)
            case "llama-cpp-python" if prompt + completion > window:
                return (
                    EmptyStream()
                    if request.stream
                    else HTTPError.requested_too_many_tokens(prompt, completion, window)
                )
            case "vllm" if prompt + completion > window:
                return HTTPError.vllm_overflow(prompt, completion, window)
            case "openai" if prompt > window:
                return HTTPError(
                    400,
                    "context_length_exceeded",
                    f"This model's maximum context length is {window} tokens. However, your messages "
                    f"resulted in {prompt} tokens. Please reduce the length of the messages.",
                    param="messages",
                )
        return None

    def model_entry(self, model: str) -> dict[str, Any]:
        entry: dict[str, Any] = {"id": model, "object": "model", "created": 0, "owned_by": _OWNERS[self.kind]}
        if self.kind == "vllm" and self.context_window:
            entry["max_model_len"] = self.context_window
        if self.kind == "llama-server":
            entry["meta"] = {"n_ctx_train": 32_768, "n_params": 494_032_768}
        return entry

    def about(self, method: str, path: str, body: Any, models: Sequence[str]) -> Any:
        """The answer to a request about the server itself (None: this server has no such endpoint)."""
        window = self.context_window or 4_096
        match (self.kind, method, path):
            case ("llama-server", "GET", "/props"):
                return {
                    "default_generation_settings": {"id": 0, "n_ctx": window, "params": {"n_predict": -1}},
                    "total_slots": 1,
                    "model_path": f"/models/{models[0]}.gguf",
                    "chat_template": "{% for message in messages %}...{% endfor %}",
                }
            case ("ollama", "GET", "/api/ps"):
                loaded = [{"name": m, "model": m, "context_length": window} for m in models]
                return {"models": loaded if self.loaded else []}
            case ("ollama", "POST", "/api/show"):
                parameters = (
                    f'num_ctx                        {window}\nstop "<|im_end|>"'
                    if self.num_ctx_set
                    else 'stop "<|im_end|>"'
                )
                name = body.get("model") if isinstance(body, dict) else None
                return {
                    "modelfile": f"FROM {name}",
                    "parameters": parameters,
                    "model_info": {"general.architecture": "qwen2", "qwen2.context_length": 32_768},
                }
        return None


# --------------------------------------------------------------------------------------------------
# Wire format: replies rendered as OpenAI's JSON objects


def _usage_json(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt,
        "completion_tokens": usage.completion,
        "total_tokens": usage.prompt + usage.completion,
        "prompt_tokens_details": {"cached_tokens": usage.cached},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning},
    }


def _output_text(reply: Text | ToolCalls | Refusal) -> str:
    match reply:
        case Text():
            return "".join(reply.content)
        case Refusal():
            return reply.text
        case ToolCalls():
            return (reply.content or "") + "".join(c.name + _arguments_json(c) for c in reply.calls)


def _reported_usage(server: Server, request: ChatRequest, reply: Text | ToolCalls | Refusal) -> Usage | None:
    """The usage the server reports for `reply`: as scripted, else estimated at about four characters
    a token (so usage-tracking code sees plausible non-zero counts); None when it reports none."""
    if not server.reports_usage:
        return None
    if reply.usage is not None:
        window = server.context_window
        if server.kind == "ollama" and window and reply.usage.prompt > window:
            return replace(reply.usage, prompt=window)
        return reply.usage
    return Usage(prompt=server.prompt_tokens(request), completion=max(1, len(_output_text(reply)) // 4))


def _within_max_tokens(reply: Text | ToolCalls | Refusal, request: ChatRequest) -> Text | ToolCalls | Refusal:
    """`reply` as a server sends it when the request caps the reply at `max_tokens`: text cut at the
    cap (four characters a token) with `finish_reason: length`, and the usage capped."""
    cap = request.max_tokens
    if not isinstance(cap, int) or cap <= 0:
        return reply
    scripted = reply.usage.completion if reply.usage is not None else len(_output_text(reply)) // 4
    if scripted <= cap:
        return reply
    usage = replace(reply.usage, completion=cap) if reply.usage is not None else None
    if isinstance(reply, Text):
        return replace(reply, content="".join(reply.content)[: cap * 4], finish_reason="length", usage=usage)
    if isinstance(reply, ToolCalls):
        return replace(reply, usage=usage, finish_reason="length")
    return replace(reply, usage=usage)


def _arguments_json(call: Call) -> str:
    if isinstance(call.arguments, str):
        return call.arguments
    return orjson.dumps(dict(call.arguments)).decode()


def _call_ids(reply: ToolCalls, completion_number: int) -> list[str]:
    return [call.id or f"call_{completion_number}_{index}" for index, call in enumerate(reply.calls)]


def _completion_json(
    reply: Text | ToolCalls | Refusal, *, request: ChatRequest, number: int, usage: Usage | None
) -> dict[str, Any]:
    """A non-streamed `chat.completion` object."""
    message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None, "annotations": []}
    match reply:
        case Text():
            message["content"] = "".join(reply.content)
            finish_reason = reply.finish_reason
        case Refusal():
            message["refusal"] = reply.text
            finish_reason = "stop"
        case ToolCalls():
            message["content"] = reply.content
            message["tool_calls"] = [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": _arguments_json(call)},
                }
                for call, call_id in zip(reply.calls, _call_ids(reply, number), strict=True)
            ]
            finish_reason = reply.finish_reason
    completion = {
        "id": f"chatcmpl-scripted-{number}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
    }
    if usage is not None:
        completion["usage"] = _usage_json(usage)
    return completion


def _words(text: str) -> list[str]:
    """Splits text into word-sized deltas whose concatenation is the text."""
    return re.findall(r"\S+\s*|\s+", text)


def _pieces(text: str, count: int = 4) -> list[str]:
    """Splits text into at most `count` pieces, cutting through JSON tokens and escapes on purpose."""
    size = max(1, -(-len(text) // count))
    return [text[start : start + size] for start in range(0, len(text), size)]


def _tool_call_deltas(reply: ToolCalls, call_ids: list[str]) -> list[dict[str, Any]]:
    """Deltas as OpenAI sends them: id, type and name once when a call opens (with empty
    arguments), then only argument pieces. The SDK concatenates every string field of a delta, so
    repeating the id would corrupt it."""
    openings = [
        {
            "tool_calls": [
                {
                    "index": index,
                    "id": call_id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": ""},
                }
            ]
        }
        for index, (call, call_id) in enumerate(zip(reply.calls, call_ids, strict=True))
    ]
    argument_deltas = [
        [
            {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}
            for piece in _pieces(_arguments_json(call))
        ]
        for index, call in enumerate(reply.calls)
    ]
    if not reply.interleave:
        return [
            delta
            for opening, rest in zip(openings, argument_deltas, strict=True)
            for delta in (opening, *rest)
        ]
    # Open calls in index order (the SDK's accumulator inserts by index), then alternate pieces.
    alternating = [delta for round_ in zip_longest(*argument_deltas) for delta in round_ if delta is not None]
    return openings + alternating


def _stream_chunks(
    reply: Text | ToolCalls | Refusal, *, request: ChatRequest, number: int, usage: Usage | None
) -> list[dict[str, Any]]:
    """The `chat.completion.chunk` objects of a streamed reply, usage chunk included when asked for
    (and the server reports usage)."""
    match reply:
        case Text():
            pieces = _words(reply.content) if isinstance(reply.content, str) else reply.content
            deltas = [{"role": "assistant", "content": "", "refusal": None}]
            deltas += [{"content": piece} for piece in pieces]
            finish_reason = reply.finish_reason
        case Refusal():
            deltas = [{"role": "assistant", "content": None, "refusal": ""}]
            deltas += [{"refusal": word} for word in _words(reply.text)]
            finish_reason = "stop"
        case ToolCalls():
            deltas = [{"role": "assistant", "content": "" if reply.content else None, "refusal": None}]
            deltas += [{"content": word} for word in _words(reply.content or "")]
            deltas += _tool_call_deltas(reply, _call_ids(reply, number))
            finish_reason = reply.finish_reason

    envelope = {
        "id": f"chatcmpl-scripted-{number}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": request.model,
        "system_fingerprint": None,
    }
    with_usage = request.include_usage and usage is not None
    if with_usage:
        envelope["usage"] = None  # OpenAI sends null usage on every chunk but the last

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            **envelope,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }

    chunks = [chunk(delta) for delta in deltas] + [chunk({}, finish_reason)]
    if with_usage and usage is not None:
        chunks.append({**envelope, "choices": [], "usage": _usage_json(usage)})
    return chunks


def _error_json(error: HTTPError) -> dict[str, Any]:
    body = {"message": error.message, "type": error.type, "param": error.param, "code": error.code}
    return {"error": {**body, **error.extra}}


# --------------------------------------------------------------------------------------------------
# Server


def _sse(chunk: Any) -> bytes:
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


_SSE_DONE = b"data: [DONE]\n\n"
_LAST_HTTP_CHUNK = b"0\r\n\r\n"


def _http_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDK's connection pool expects
    # Headers and body go out in separate writes when chunks are delayed; without TCP_NODELAY the
    # Nagle algorithm meets the client's delayed ACK and adds ~40 ms.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # requests are recorded on the ScriptedLLM instead of printed

    def setup(self) -> None:
        super().setup()
        self.server.llm._track_connection(self.connection, open=True)

    def finish(self) -> None:
        self.server.llm._track_connection(self.connection, open=False)
        super().finish()

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        llm = self.server.llm
        path = self.path.split("?", 1)[0]
        headers = {name.lower(): value for name, value in self.headers.items()}
        raw = self.rfile.read(int(self.headers.get("content-length") or 0))
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        number = llm._record(RecordedRequest(self.command, path, headers, body, time.monotonic()))
        self._request_id = f"req_scripted_{number}"

        if (self.command, path) == ("POST", "/v1/chat/completions"):
            if not isinstance(body, dict):
                return self._send_error(
                    HTTPError(400, None, "We could not parse the JSON body of your request.")
                )
            self._answer_chat(ChatRequest(body, headers), number)
        elif (self.command, path) == ("GET", "/v1/models"):
            models = [llm.server.model_entry(model) for model in llm.models]
            self._send_json(200, {"object": "list", "data": models}, headers={})
        elif (about := llm.server.about(self.command, path, body, llm.models)) is not None:
            self._send_json(200, about, headers={})
        else:
            self._send_error(HTTPError(404, None, f"Invalid URL ({self.command} {path})"))

    def _answer_chat(self, request: ChatRequest, number: int) -> None:
        llm = self.server.llm
        server = llm.server
        try:
            reply = server.refusal(request) or as_reply(llm._responder(request))
        except Exception as error:
            problem = (
                str(error)
                if isinstance(error, ScriptError)
                else "responder raised " + "".join(traceback.format_exception_only(error)).strip()
            )
            return self._fail(problem)

        while isinstance(reply, Delay):
            if llm._closing.wait(reply.seconds):
                return self._drop_connection()
            reply = as_reply(reply.then)

        match reply:
            case Hang():
                llm._closing.wait()
                self._drop_connection()
            case HTTPError():
                self._send_error(reply)
            case RateLimited() | ServerError():
                self._send_error(reply.as_http_error())
            case CutStream() if request.stream:
                usage = _reported_usage(server, request, reply.reply)
                events = [
                    _sse(chunk)
                    for chunk in _stream_chunks(reply.reply, request=request, number=number, usage=usage)
                ]
                self._send_stream(events[: reply.after_chunks], end_body=not reply.abrupt)
                if reply.abrupt:
                    self._drop_connection()
            case CutStream():
                usage = _reported_usage(server, request, reply.reply)
                body = orjson.dumps(
                    _completion_json(reply.reply, request=request, number=number, usage=usage)
                )
                self.wfile.write(
                    self._head(200, "application/json", {"content-length": str(len(body))})
                    + body[: len(body) // 2]
                )
                self._drop_connection()
            case RawChunks():
                self._send_stream([*(_sse(chunk) for chunk in reply.chunks), _SSE_DONE], end_body=True)
            case EmptyStream() if request.stream:
                opening = {
                    "id": f"chatcmpl-scripted-{number}",
                    "object": "chat.completion.chunk",
                    "created": int(time.time()),
                    "model": request.model,
                    "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}],
                }
                self._send_stream([_sse(opening)] if reply.role_chunk else [], end_body=True)
            case EmptyStream():
                self._send_json(
                    200, {"id": f"chatcmpl-scripted-{number}", "object": "chat.completion"}, headers={}
                )
            case StreamError():
                self._send_stream([_sse(_error_json(reply.error)), _SSE_DONE], end_body=True)
            case Text() | ToolCalls() | Refusal():
                if server.honours_max_tokens:
                    reply = _within_max_tokens(reply, request)
                usage = _reported_usage(server, request, reply)
                if request.stream:
                    chunks = _stream_chunks(reply, request=request, number=number, usage=usage)
                    self._send_stream([*(_sse(chunk) for chunk in chunks), _SSE_DONE], end_body=True)
                else:
                    self._send_json(
                        200, _completion_json(reply, request=request, number=number, usage=usage), headers={}
                    )
            case _:
                self._fail(f"responder returned {reply!r}, which is not a reply")

    def _fail(self, problem: str) -> None:
        """Answers a request the responder could not answer, loudly, and records why."""
        self.server.llm._add_error(problem)
        # x-should-retry: false stops the SDK from retrying, so the failure shows up once.
        self._send_error(
            HTTPError(
                500,
                "script_error",
                f"ScriptedLLM: {problem}",
                type="scripted_llm_error",
                headers={"x-should-retry": "false"},
            )
        )

    def _head(self, status: int, content_type: str, headers: Mapping[str, str]) -> bytes:
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = ""  # a status Python has no name for; clients only read the number
        lines = [
            f"HTTP/1.1 {status} {reason}",
            f"content-type: {content_type}",
            f"x-request-id: {self._request_id}",
            *(f"{name}: {value}" for name, value in headers.items()),
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _send_json(self, status: int, payload: Any, *, headers: Mapping[str, str]) -> None:
        body = orjson.dumps(payload)
        self.wfile.write(
            self._head(status, "application/json", {**headers, "content-length": str(len(body))}) + body
        )

    def _send_error(self, error: HTTPError) -> None:
        self._send_json(error.status, _error_json(error), headers=error.headers)

    def _send_stream(self, events: list[bytes], *, end_body: bool) -> None:
        head = self._head(
            200,
            "text/event-stream; charset=utf-8",
            {"transfer-encoding": "chunked", "cache-control": "no-cache"},
        )
        delay = self.server.llm.chunk_delay
        ending = _LAST_HTTP_CHUNK if end_body else b""
        if not delay:
            # One write per response keeps the per-request cost to a single syscall.
            body = _http_chunk(b"".join(events)) if events else b""
            self.wfile.write(head + body + ending)
            return
        self.wfile.write(head)
        for event in events:
            if self.server.llm._closing.wait(delay):
                return self._drop_connection()
            self.wfile.write(_http_chunk(event))
        self.wfile.write(ending)

    def _drop_connection(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # the client already went away


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # With socketserver's default listen backlog of 5, 50 clients connecting at once overflow the
    # accept queue and some connections get reset (the SDK raises APIConnectionError).
    request_queue_size = 1024

    def __init__(self, llm: ScriptedLLM) -> None:
        self.llm = llm
        super().__init__(("127.0.0.1", 0), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name, which stalls on machines without DNS.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError) or self.llm._closing.is_set():
            return  # clients hang up mid-stream (cancelled sub-agents, timeouts); that is their right
        self.llm._add_error("server failed: " + "".join(traceback.format_exc()))


class ScriptedLLM:
    """An OpenAI-compatible server on 127.0.0.1 (OS-assigned port), serving from a background thread.

    `responder` decides each chat completion reply: a callable taking a `ChatRequest` (a `Script` is
    one), or a fixed reply sent to every request. `chunk_delay` seconds are waited before each SSE
    chunk (default none). `server` makes it behave as a local server does (see `Server`). With
    `strict`, leaving the `with` block raises if any request could not be answered as scripted (dry
    script, responder exception), even if the code under test swallowed the HTTP 500 it got.
    """

    def __init__(
        self,
        responder: Callable[[ChatRequest], ResponderResult] | Reply,
        *,
        chunk_delay: float = 0.0,
        models: Sequence[str] = ("scripted-model",),
        strict: bool = True,
        server: Server | None = None,
    ) -> None:
        self._responder = responder if callable(responder) else lambda request: responder
        self.server = server or Server()
        self.chunk_delay = chunk_delay
        self.models = list(models)
        self.strict = strict
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._errors: list[str] = []
        self._connections: set[socket.socket] = set()
        self._closing = threading.Event()
        self._server = _Server(self)
        host, port = self._server.server_address[:2]
        self.base_url = f"http://{host}:{port}/v1"
        # A short poll interval only makes close() quick; new connections wake the loop immediately.
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.01},
            name=f"ScriptedLLM:{port}",
            daemon=True,
        )
        self._thread.start()

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, in arrival order."""
        with self._lock:
            return list(self._requests)

    @property
    def chat_requests(self) -> list[ChatRequest]:
        """The chat completion requests received so far, parsed, in arrival order."""
        return [
            ChatRequest(r.body, r.headers)
            for r in self.requests
            if r.path == "/v1/chat/completions" and isinstance(r.body, dict)
        ]

    @property
    def errors(self) -> list[str]:
        """Why requests could not be answered as scripted."""
        with self._lock:
            return list(self._errors)

    def close(self) -> None:
        """Stops serving and drops every open connection, releasing hung and delayed replies."""
        if self._closing.is_set():
            return
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by its handler
        self._thread.join()

    def __enter__(self) -> ScriptedLLM:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close()
        if exc_type is None:
            self._raise_for_errors()

    def _raise_for_errors(self) -> None:
        if self.strict and self.errors:
            raise AssertionError("ScriptedLLM could not answer as scripted:\n" + "\n".join(self.errors))

    def _record(self, request: RecordedRequest) -> int:
        with self._lock:
            self._requests.append(request)
            return len(self._requests)

    def _add_error(self, problem: str) -> None:
        with self._lock:
            self._errors.append(problem)

    def _track_connection(self, connection: socket.socket, *, open: bool) -> None:
        with self._lock:
            if open:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)


@pytest.fixture
def scripted_llm() -> Iterator[Callable[..., ScriptedLLM]]:
    """Starts ScriptedLLM servers for a test: `llm = scripted_llm(responder, **options)`.

    Every server is closed at teardown, which fails (strict servers) if a request went unanswered.
    Import it into a test module (`from scripted_llm import scripted_llm`) to use it.
    """
    servers: list[ScriptedLLM] = []

    def start(responder: Callable[[ChatRequest], ResponderResult] | Reply, **options: Any) -> ScriptedLLM:
        servers.append(ScriptedLLM(responder, **options))
        return servers[-1]

    yield start
    for server in servers:
        server.close()
    for server in servers:
        server._raise_for_errors()
