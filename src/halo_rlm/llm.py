"""The one place HALO talks to LLM providers: any OpenAI-compatible Chat Completions endpoint through
the `openai` SDK, streaming, with tool calls.

The SDK's own retries are off: retries here honour `Retry-After`, back off with full jitter, count
against the run's wall clock, and also cover a stream cut mid-way (the SDK never retries those).
Terminal errors name the provider URL and model.

Local servers fail in their own ways, and each is recognised: an over-long request comes back as
llama-server's `exceed_context_size_error`, as OpenAI's `context_length_exceeded`, as vLLM's
"maximum context length" or — from llama-cpp-python while streaming — as an empty 200 stream (asked
again without streaming, it says what went wrong); a server that cannot take tools says so in words
that name its fix. `discover` asks the server for the model's context window, and `estimate` sizes a
request before it is sent, calibrated on the token counts the server reports. A server that reports
no usage gets estimated counts, so token budgets still hold.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import itertools
import json
import math
import re
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import httpx2
import openai
import orjson

from halo_rlm.pricing import Prices
from halo_rlm.providers import ModelConfig, Provider
from halo_rlm.usage import Usage
from halo_rlm.utils import RetryPolicy, retry_after

__all__ = [
    "CHARS_PER_TOKEN",
    "LLM",
    "Completion",
    "ContextOverflow",
    "LLMError",
    "MessageMemo",
    "ServerInfo",
    "Timeout",
    "ToolChoiceRejected",
    "ToolsUnsupported",
    "request_chars",
    "tool_calling_fix",
]

KEYLESS = "halo-no-key"  # the SDK insists on a key; for keyless servers the Authorization header is dropped
CHARS_PER_TOKEN = 3.3  # tool schemas and JSON run about 3.3 characters a token; prose about 4
TOKENS_PER_CHAR_RANGE = (1 / 4.5, 1 / 2.5)  # how far calibration on reported counts may move the rate
PROBE_SECONDS = 5.0  # for each question `discover` asks the server
OLLAMA_DEFAULT_CONTEXT = 4_096  # Ollama's context on machines under 24 GiB of VRAM, unless configured


class LLMError(Exception):
    """A provider error that retrying will not fix; the message says what to change."""


class ContextOverflow(LLMError):
    """The request does not fit the model's context window. `window` and `prompt_tokens` are the
    server's own numbers when its error gave them."""

    def __init__(self, message: str, *, window: int | None = None, prompt_tokens: int | None = None) -> None:
        super().__init__(message)
        self.window = window
        self.prompt_tokens = prompt_tokens


class ToolsUnsupported(LLMError):
    """The server (or its chat template) will not take the `tools` field; `fix` says which server
    option turns tool calling on."""

    def __init__(self, message: str, *, fix: str) -> None:
        super().__init__(message)
        self.fix = fix


class ToolChoiceRejected(LLMError):
    """The server refused the `tool_choice` value sent (some accept only "auto")."""


class Timeout(LLMError):
    """The call did not finish before the run's deadline."""


@dataclass
class Completion:
    content: str
    tool_calls: list[dict[str, str]]  # {id, name, arguments}
    refusal: str | None
    finish_reason: str | None
    usage: Usage
    model: str
    retries: int = 0
    seconds: float = 0.0
    usage_estimated: bool = False  # the server reported no usage: the counts are HALO's estimate
    request_tokens: int = 0  # HALO's estimate of the request, tools included, before it was sent
    tool_tokens: int = 0  # the part of that estimate that is tool definitions
    max_tokens: int | None = None  # the reply's cap as sent

    def message(self) -> dict[str, Any]:
        """The assistant message to append to the conversation."""
        message: dict[str, Any] = {"role": "assistant", "content": self.content or None}
        if self.tool_calls:
            message["tool_calls"] = [
                {
                    "id": c["id"],
                    "type": "function",
                    "function": {"name": c["name"], "arguments": c["arguments"]},
                }
                for c in self.tool_calls
            ]
        return message


@dataclass(frozen=True)
class ServerInfo:
    """What `discover` learnt about the server: which kind it is, the model's context window (None
    when the server does not say) and where that number came from."""

    kind: str  # llama-server, vllm, ollama, llama-cpp-python, openai, or unknown
    context_window: int | None = None
    source: str = ""
    advice: str | None = None  # what to set when the window is a guess


V = TypeVar("V")


class MessageMemo(Generic[V]):
    """A value computed from a chat message (or a tool definition), kept while the message is
    unchanged. A conversation grows by a message or two a turn while every turn sends all of it
    again (scrubbed of credentials, its tools sized), so without this a long run does quadratic
    work. A message is unchanged while it is the same dict holding the same content and tool calls:
    the engine replaces a shortened result's content with a new string and never edits one in
    place. The memo holds the messages it has seen (so their ids stay theirs) and forgets the oldest
    past `size`."""

    def __init__(self, compute: Callable[[dict[str, Any]], V], size: int = 65_536) -> None:
        self._compute = compute
        self._size = size
        self._seen: OrderedDict[int, tuple[dict[str, Any], Any, Any, V]] = OrderedDict()

    def __call__(self, message: dict[str, Any]) -> V:
        content, calls = message.get("content"), message.get("tool_calls")
        seen = self._seen.get(id(message))
        if seen is not None and seen[0] is message and seen[1] is content and seen[2] is calls:
            return seen[3]
        value = self._compute(message)
        self._seen[id(message)] = (message, content, calls, value)
        if len(self._seen) > self._size:
            self._seen.popitem(last=False)
        return value


def request_chars(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> int:
    """Characters a request sends to the model: message contents, tool calls and tool definitions,
    plus a little per message for the chat template's role markers."""
    chars = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif content:
            chars += len(orjson.dumps(content))
        if message.get("tool_calls"):
            chars += len(orjson.dumps(message["tool_calls"]))
        chars += 16
    return chars + (len(orjson.dumps(tools)) if tools else 0)


CONNECTION_POOLS = 8


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The process's one TLS context for model servers. Making one loads the CA bundle (0.1-0.25 s
    here), which held up the event loop at the start of every run; contexts are safe to share."""
    return httpx2.create_ssl_context()


class LLM:
    """An async client for one provider, shared by every agent of a run."""

    def __init__(
        self,
        provider: Provider,
        *,
        prices: Prices | None = None,
        retry: RetryPolicy | None = None,
        request_timeout: float = 180.0,
    ) -> None:
        self.provider = provider
        self.prices = prices or Prices()
        self.retry = retry or RetryPolicy()
        self.tokens_per_char = 1 / CHARS_PER_TOKEN
        # Tool definitions are the same dicts every turn; serialising them to count their size was
        # a tenth of a turn's own work.
        self._tool_chars = MessageMemo(lambda tool: len(orjson.dumps(tool)))
        key = provider.key
        # A keyless local server: send no Authorization header at all, not a placeholder key.
        self._request_options: dict[str, Any] = (
            {"headers": {"Authorization": openai.Omit()}} if key is None else {}
        )
        # Several connection pools: on every request and response the HTTP client checks each
        # connection in its pool, which with dozens of agents streaming at once held up the event
        # loop. One TLS context serves them all.
        tls = tls_context()
        self._clients = [
            openai.AsyncOpenAI(
                base_url=provider.url,
                api_key=key or KEYLESS,
                max_retries=0,
                timeout=request_timeout,
                default_headers={k: v.get_secret_value() for k, v in provider.headers.items()} or None,
                http_client=openai.DefaultAsyncHttpxClient(verify=tls),
            )
            for _ in range(CONNECTION_POOLS)
        ]
        self._next_client = itertools.cycle(self._clients)

    async def aclose(self) -> None:
        for client in self._clients:
            await client.close()

    # --- sizes ---------------------------------------------------------------------------------

    def estimate(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> int:
        """Tokens this request will take, at the rate the server's own counts have shown so far."""
        return math.ceil((request_chars(messages) + self._chars_of_tools(tools)) * self.tokens_per_char)

    def _chars_of_tools(self, tools: list[dict[str, Any]] | None) -> int:
        """`len(orjson.dumps(tools))`, from each definition's size: "[", the definitions, commas, "]"."""
        return sum(map(self._tool_chars, tools)) + len(tools) + 1 if tools else 0

    def estimate_text(self, text: str) -> int:
        return math.ceil(len(text) * self.tokens_per_char)

    def _calibrate(self, chars: int, reported: int) -> None:
        """Move the rate towards what the server counted. Counts far below the estimate are not a
        rate but a server that dropped part of the request (the engine reports those)."""
        if chars < 2_000 or reported <= 0:
            return
        observed = reported / chars
        if observed < 0.6 * self.tokens_per_char:
            return
        low, high = TOKENS_PER_CHAR_RANGE
        self.tokens_per_char = min(high, max(low, 0.5 * self.tokens_per_char + 0.5 * observed))

    # --- what the server says about itself -------------------------------------------------------

    async def discover(self, model: str) -> ServerInfo:
        """Ask the server for `model`'s context window: vLLM's `max_model_len` (and gateways'
        `context_length`) in /v1/models, llama-server's `n_ctx` in /props, Ollama's loaded context
        in /api/ps or `num_ctx` in /api/show. Never raises: a server that says nothing gives
        `context_window=None`."""
        if "api.openai.com" in self.provider.url:
            return ServerInfo("openai")
        root = re.sub(r"/v1$", "", self.provider.url)
        listing = await self._probe("models")
        entry = _model_entry(listing, model)
        owner = str(entry.get("owned_by") or "")
        for key in ("max_model_len", "context_length", "context_window", "max_context_length"):
            window = _positive_int(entry.get(key))
            if window:
                kind = "vllm" if key == "max_model_len" else (owner or "unknown")
                return ServerInfo(kind, window, f"/v1/models ({key})")
        if owner in ("", "llamacpp") or "meta" in entry:
            props = await self._probe(f"{root}/props")
            if isinstance(props, dict):
                settings = props.get("default_generation_settings")
                window = _positive_int(props.get("n_ctx")) or (
                    _positive_int(settings.get("n_ctx")) if isinstance(settings, dict) else None
                )
                if window:
                    return ServerInfo("llama-server", window, "llama-server /props (n_ctx)")
        if owner in ("", "library", "ollama") or owner.startswith("ollama"):
            info = await self._ollama_window(root, model)
            if info is not None:
                return info
        return ServerInfo("llama-cpp-python" if owner == "me" else (owner or "unknown"))

    async def _ollama_window(self, root: str, model: str) -> ServerInfo | None:
        running = await self._probe(f"{root}/api/ps")
        if not isinstance(running, dict) or not isinstance(running.get("models"), list):
            return None
        wanted = {model, f"{model}:latest"}
        for loaded in running["models"]:
            if isinstance(loaded, dict) and wanted & {loaded.get("name"), loaded.get("model")}:
                window = _positive_int(loaded.get("context_length"))
                if window:
                    return ServerInfo("ollama", window, "Ollama /api/ps (the loaded model's context)")
        shown = await self._probe(f"{root}/api/show", body={"model": model})
        if isinstance(shown, dict):
            match = re.search(r"(?m)^\s*num_ctx\s+(\d+)", str(shown.get("parameters") or ""))
            if match and int(match.group(1)) > 0:
                return ServerInfo("ollama", int(match.group(1)), "Ollama /api/show (num_ctx)")
        return ServerInfo(
            "ollama",
            OLLAMA_DEFAULT_CONTEXT,
            f"Ollama's default context ({OLLAMA_DEFAULT_CONTEXT:,} tokens): the model is not loaded and "
            "sets no num_ctx",
            advice="set OLLAMA_CONTEXT_LENGTH (or num_ctx) on the server, or pass --context-window",
        )

    async def _probe(self, path: str, *, body: dict[str, Any] | None = None) -> Any:
        """JSON from a GET (or, with `body`, a POST) on the server; None when it fails."""
        client = self._clients[0]
        options: dict[str, Any] = {**self._request_options, "timeout": PROBE_SECONDS, "max_retries": 0}
        try:
            if body is None:
                return await client.get(path, cast_to=object, options=options)  # type: ignore[call-overload]
            return await client.post(path, body=body, cast_to=object, options=options)  # type: ignore[call-overload]
        except (openai.APIError, ValueError, TypeError):
            return None

    # --- completions ---------------------------------------------------------------------------

    async def complete(
        self,
        model: ModelConfig,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: Any = None,
        max_tokens: int | None = None,
        on_delta: Callable[[str, int], None] | None = None,
        deadline: float | None = None,
    ) -> Completion:
        """One model turn, streamed. `on_delta(text, attempt)` sees text as it arrives; a retried
        attempt streams again under a new attempt number. Retries end at `deadline` (monotonic).
        `max_tokens` caps the reply (else the model's `max_output_tokens`, else the server's default)."""
        params = self._params(model, messages, tools, tool_choice, max_tokens)
        tool_chars = self._chars_of_tools(tools)
        chars = request_chars(messages) + tool_chars
        estimate = math.ceil(chars * self.tokens_per_char)
        started = time.monotonic()
        asked_plainly = False
        attempt = 0
        while True:
            try:
                if asked_plainly:
                    completion = await self._plain(params, model.name, deadline)
                else:
                    completion = await self._stream(params, model.name, on_delta, attempt, deadline)
                break
            except _EmptyStream:
                if asked_plainly:  # pragma: no cover - a plain answer is never a stream
                    raise
                # llama-cpp-python answers an over-long streamed request with an empty 200 stream;
                # the same request without streaming says what went wrong.
                asked_plainly = True
                continue
            except openai.APIStatusError as exc:
                wait = self._retriable(exc.status_code, _error_body(exc), exc, model.name, attempt)
            except openai.APIConnectionError as exc:  # includes timeouts
                wait = self._connection_failed(exc, model.name, attempt)
            except _CutStream as exc:
                wait = self._connection_failed(exc, model.name, attempt)
            except openai.APIError as exc:  # an error event inside a 200 stream (llama-server)
                wait = self._retriable(500, _error_body(exc), exc, model.name, attempt)
            if deadline is not None and time.monotonic() + wait >= deadline:
                raise Timeout(
                    f"{self.provider.url}: gave up retrying model {model.name!r}: the run's time is up"
                )
            waited = (self.retry.sleep or asyncio.sleep)(wait)
            if inspect.isawaitable(waited):
                await waited
            attempt += 1
        completion.retries, completion.seconds = attempt, time.monotonic() - started
        completion.request_tokens = estimate
        completion.max_tokens = params.get("max_tokens", params.get("max_completion_tokens"))
        completion.tool_tokens = math.ceil(tool_chars * self.tokens_per_char) if tools else 0
        if completion.usage.input_tokens == 0 and completion.usage.output_tokens == 0:
            completion.usage = self._estimated_usage(estimate, completion)
            completion.usage_estimated = True
        else:
            self._calibrate(chars, completion.usage.input_tokens)
        completion.usage.cost_usd = self._cost(completion, model.name)
        return completion

    def _connection_failed(self, exc: Exception, model: str, attempt: int) -> float:
        if attempt >= self.retry.attempts - 1:
            raise LLMError(
                f"{self.provider.url}: the connection failed {attempt + 1} times for model "
                f"{model!r} ({_describe(exc)})"
            ) from exc
        return self.retry.backoff(attempt)

    def _estimated_usage(self, estimate: int, completion: Completion) -> Usage:
        output = completion.content + "".join(c["name"] + c["arguments"] for c in completion.tool_calls)
        return Usage(calls=1, input_tokens=estimate, output_tokens=self.estimate_text(output), cost_usd=None)

    def _cost(self, completion: Completion, model: str) -> float | None:
        usage = completion.usage
        if usage.cost_usd is not None:
            return usage.cost_usd
        for name in dict.fromkeys((completion.model, model)):
            cost = self.prices.cost(
                name,
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cached_tokens=usage.cached_tokens,
            )
            if cost is not None:
                return cost
        return None

    def _params(
        self,
        model: ModelConfig,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        tool_choice: Any,
        max_tokens: int | None,
    ) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": model.name,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if tools:
            params["tools"] = tools
            params["parallel_tool_calls"] = model.parallel_tool_calls
            if tool_choice is not None:
                params["tool_choice"] = tool_choice
        if model.temperature is not None:
            params["temperature"] = model.temperature
        limit = max_tokens if max_tokens is not None else model.max_output_tokens
        if limit is not None:
            # OpenAI wants max_completion_tokens (reasoning models reject max_tokens); most other
            # OpenAI-compatible servers know only max_tokens.
            key = "max_completion_tokens" if "api.openai.com" in self.provider.url else "max_tokens"
            params[key] = limit
        if model.reasoning_effort is not None:
            params["reasoning_effort"] = model.reasoning_effort
        return params

    def _remaining(self, model: str, deadline: float | None) -> float | None:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise Timeout(
                f"{self.provider.url}: the run's time budget ran out before calling model {model!r}"
            )
        return remaining

    async def _stream(
        self,
        params: dict[str, Any],
        model: str,
        on_delta: Callable[[str, int], None] | None,
        attempt: int,
        deadline: float | None,
    ) -> Completion:
        content: list[str] = []
        refusal: list[str] = []
        calls: dict[int, dict[str, str]] = {}
        finish: str | None = None
        usage = Usage(calls=1, cost_usd=None)
        reported_model = model

        async def consume() -> None:
            nonlocal finish, usage, reported_model
            # Chunks come as plain JSON (`AsyncStream[object]`): building the SDK's models for every
            # chunk cost more than the rest of a turn. Provider output is untrusted, hence the checks.
            stream = await next(self._next_client).post(  # type: ignore[call-overload]
                "/chat/completions",
                content=orjson.dumps(params),
                cast_to=object,
                stream=True,
                stream_cls=openai.AsyncStream[object],
                options=self._request_options,
            )
            async for chunk in stream:
                if not isinstance(chunk, dict):
                    continue
                reported_model = _text(chunk.get("model")) or reported_model
                if isinstance(chunk.get("usage"), dict):
                    usage = _usage(chunk["usage"])
                choices = chunk.get("choices")
                if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
                    continue
                choice = choices[0]
                delta = choice.get("delta")
                if isinstance(delta, dict):
                    if text := _text(delta.get("content")):
                        content.append(text)
                        if on_delta:
                            on_delta(text, attempt)
                    if text := _text(delta.get("refusal")):
                        refusal.append(text)
                    for tc in delta.get("tool_calls") or ():
                        if not isinstance(tc, dict) or not isinstance(tc.get("index", 0), int):
                            continue
                        entry = calls.setdefault(tc.get("index", 0), {"id": "", "name": "", "arguments": ""})
                        if call_id := _text(tc.get("id")):
                            entry["id"] = call_id
                        function = tc.get("function")
                        if isinstance(function, dict):
                            name = _text(function.get("name"))
                            if name and name != entry["name"]:
                                entry["name"] += name
                            entry["arguments"] += _text(function.get("arguments"))
                if reason := _text(choice.get("finish_reason")):
                    finish = reason

        try:
            await asyncio.wait_for(consume(), self._remaining(model, deadline))
        except TimeoutError as exc:
            raise Timeout(
                f"{self.provider.url}: model {model!r} did not answer before the run's time budget ran out"
            ) from exc
        if finish is None:
            if not content and not calls and not refusal:
                raise _EmptyStream
            raise _CutStream("the stream ended before the model finished")
        tool_calls = [
            {"id": c["id"] or f"call_{attempt}_{i}", "name": c["name"], "arguments": c["arguments"]}
            for i, c in sorted(calls.items())
        ]
        return Completion(
            "".join(content), tool_calls, "".join(refusal) or None, finish, usage, reported_model
        )

    async def _plain(self, params: dict[str, Any], model: str, deadline: float | None) -> Completion:
        """The same request without streaming (to read the error an empty stream hid)."""
        plain = {k: v for k, v in params.items() if k not in ("stream", "stream_options")}
        try:
            body = await asyncio.wait_for(
                next(self._next_client).post(  # type: ignore[call-overload]
                    "/chat/completions",
                    content=orjson.dumps(plain),
                    cast_to=object,
                    options=self._request_options,
                ),
                self._remaining(model, deadline),
            )
        except TimeoutError as exc:
            raise Timeout(
                f"{self.provider.url}: model {model!r} did not answer before the run's time budget ran out"
            ) from exc
        if not isinstance(body, dict):
            raise _CutStream("the server sent an empty stream, and no answer without streaming")
        choices = body.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise _CutStream("the server sent an empty stream, and no answer without streaming")
        choice = choices[0]
        message = choice.get("message")
        if not isinstance(message, dict):
            message = {}
        tool_calls = []
        for i, call in enumerate(message.get("tool_calls") or ()):
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                tool_calls.append(
                    {
                        "id": _text(call.get("id")) or f"call_plain_{i}",
                        "name": _text(function.get("name")),
                        "arguments": _text(function.get("arguments")),
                    }
                )
        raw_usage = body.get("usage")
        return Completion(
            _text(message.get("content")),
            tool_calls,
            _text(message.get("refusal")) or None,
            _text(choice.get("finish_reason")) or "stop",
            _usage(raw_usage) if isinstance(raw_usage, dict) else Usage(calls=1, cost_usd=None),
            _text(body.get("model")) or model,
        )

    def _retriable(
        self, status: int, body: dict[str, Any], exc: openai.APIError, model: str, attempt: int
    ) -> float:
        """Seconds to wait before retrying, or raise a clear terminal error."""
        url = self.provider.url
        detail = _message(body, exc)
        if status in (401, 403):
            raise LLMError(
                f"{url}: the API key was refused ({status}: {detail}). Check --api-key / OPENAI_API_KEY "
                f"(or drop them for a keyless local server)."
            ) from exc
        if status == 404:
            raise LLMError(
                f"{url}: model {model!r} was not found ({detail}). Check --model and --base-url."
            ) from exc
        overflow = _overflow(body, detail)
        if overflow is not None:
            window, prompt_tokens = overflow
            raise ContextOverflow(
                f"{url}: the request exceeds {model!r}'s context window ({detail})",
                window=window,
                prompt_tokens=prompt_tokens,
            ) from exc
        fix = _tools_fix(detail)
        if fix is not None:
            raise ToolsUnsupported(f"{url}: the server refused the tools ({detail})", fix=fix) from exc
        if status in (400, 422) and "tool_choice" in detail.lower():
            raise ToolChoiceRejected(f"{url}: the server refused tool_choice ({detail})") from exc
        if status in (408, 409, 429) or status >= 500:
            if attempt >= self.retry.attempts - 1:
                raise LLMError(
                    f"{url}: model {model!r} still failing after {attempt + 1} attempts ({status}: {detail})"
                ) from exc
            response = getattr(exc, "response", None)
            headers = response.headers if response is not None else {}
            wait = self.retry.wait(attempt, headers)
            if wait is None:
                raise LLMError(
                    f"{url}: rate limited for {retry_after(headers):.0f}s by the provider ({detail})"
                ) from exc
            return wait
        raise LLMError(f"{url}: the request to model {model!r} was rejected ({status}: {detail})") from exc


class _CutStream(Exception):
    pass


class _EmptyStream(Exception):
    pass


# Words servers use for a request longer than the context: OpenAI and llama-cpp-python ("maximum
# context length"), vLLM ("maximum context length", "too long"), llama-server ("exceeds the available
# context size", "Context size has been exceeded"), Anthropic-style gateways ("prompt is too long").
_OVERFLOW_WORDS = re.compile(
    r"context[ _](length|size|window)|exceeds? (the )?(available )?context|maximum context|"
    r"prompt is too long|input is too long|too many (input )?tokens",
    re.IGNORECASE,
)
_WINDOW_NUMBERS = (
    re.compile(r"maximum context length is (\d+)", re.IGNORECASE),
    re.compile(r"available context size \((\d+) tokens\)", re.IGNORECASE),
    re.compile(r"context (?:window|length|size) of (\d+)", re.IGNORECASE),
)
_PROMPT_NUMBERS = (
    re.compile(r"request \((\d+) tokens\)", re.IGNORECASE),
    re.compile(r"\((\d+) in the messages", re.IGNORECASE),
)


def _overflow(body: dict[str, Any], detail: str) -> tuple[int | None, int | None] | None:
    """(window, prompt tokens) when the error says the request does not fit; None otherwise."""
    kind = f"{body.get('type') or ''} {body.get('code') or ''}"
    if not (
        "exceed_context_size" in kind or "context_length_exceeded" in kind or _OVERFLOW_WORDS.search(detail)
    ):
        return None
    window = _positive_int(body.get("n_ctx")) or _first_number(_WINDOW_NUMBERS, detail)
    prompt = _positive_int(body.get("n_prompt_tokens")) or _first_number(_PROMPT_NUMBERS, detail)
    return window, prompt


def _tools_fix(detail: str) -> str | None:
    """The server option that turns tool calling on, when an error says the tools were refused."""
    text = detail.lower()
    if "--jinja" in text:
        return "start llama-server with --jinja (and a chat template with tool calls: --chat-template-file)"
    if "enable-auto-tool-choice" in text or "tool-call-parser" in text:
        return "start vLLM with --enable-auto-tool-choice --tool-call-parser <the model's parser>"
    if "does not support tools" in text:
        return "use an Ollama model whose template supports tools (tagged 'tools' in Ollama's library)"
    if (
        "support tool use" in text
        or "tool calling is not supported" in text
        or "tools are not supported" in text
    ):
        return "pick a model (or provider route) that supports tool calling"
    return None


def tool_calling_fix(kind: str) -> str:
    """The server option that lets the model see tool definitions, for a server of `kind`."""
    fixes = {
        "llama-server": "start llama-server with --jinja (and, if the model's own template has no tool "
        "calls, --chat-template-file with one that has)",
        "ollama": "use a model whose Ollama template supports tools (tagged 'tools' in Ollama's library)",
        "llama-cpp-python": "start llama-cpp-python's server with --chat_format chatml-function-calling",
        "vllm": "start vLLM with --enable-auto-tool-choice --tool-call-parser <the model's parser>",
    }
    return fixes.get(
        kind,
        "turn on the server's tool calling (llama-server: --jinja; llama-cpp-python: --chat_format "
        "chatml-function-calling; vLLM: --enable-auto-tool-choice; Ollama: a model with tool support)",
    )


def _first_number(patterns: tuple[re.Pattern[str], ...], text: str) -> int | None:
    for pattern in patterns:
        match = pattern.search(text)
        if match:
            return int(match.group(1))
    return None


def _positive_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _model_entry(listing: Any, model: str) -> dict[str, Any]:
    """The /v1/models entry for `model`, else the only entry; {} when there is none."""
    data = listing.get("data") if isinstance(listing, dict) else None
    if not isinstance(data, list):
        return {}
    entries = [e for e in data if isinstance(e, dict)]
    named = [e for e in entries if e.get("id") == model]
    if named:
        return named[0]
    return entries[0] if len(entries) == 1 else {}


def _error_body(exc: openai.APIError) -> dict[str, Any]:
    body = exc.body
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            return {}
    if not isinstance(body, dict):
        return {}
    error = body.get("error", body)
    return error if isinstance(error, dict) else body


def _message(body: dict[str, Any], exc: openai.APIError) -> str:
    status = getattr(exc, "status_code", None)
    return str(body.get("message") or exc.message or status or type(exc).__name__)[:500]


def _describe(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    return f"{type(exc).__name__}: {exc}" + (f" ({type(cause).__name__}: {cause})" if cause else "")


def _usage(raw: dict[str, Any]) -> Usage:
    def count(value: Any) -> int:
        return value if isinstance(value, int) and value > 0 else 0

    prompt_details = raw.get("prompt_tokens_details") or {}
    completion_details = raw.get("completion_tokens_details") or {}
    cost = raw.get("cost")  # OpenRouter and some gateways report the charge
    return Usage(
        calls=1,
        input_tokens=count(raw.get("prompt_tokens")),
        output_tokens=count(raw.get("completion_tokens")),
        cached_tokens=count(prompt_details.get("cached_tokens")) if isinstance(prompt_details, dict) else 0,
        reasoning_tokens=(
            count(completion_details.get("reasoning_tokens")) if isinstance(completion_details, dict) else 0
        ),
        cost_usd=float(cost) if isinstance(cost, int | float) and not isinstance(cost, bool) else None,
    )


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""
