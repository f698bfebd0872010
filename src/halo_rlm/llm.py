"""The one place HALO talks to LLM providers: any OpenAI-compatible Chat Completions endpoint through
the `openai` SDK, streaming, with tool calls.

The SDK's own retries are off: retries here honour `Retry-After`, back off with full jitter, count
against the run's wall clock, and also cover a stream cut mid-way (the SDK never retries those).
Terminal errors name the provider URL and model.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx2
import openai
import orjson

from halo_rlm.pricing import Prices
from halo_rlm.providers import ModelConfig, Provider
from halo_rlm.usage import Usage
from halo_rlm.utils import RetryPolicy, retry_after

__all__ = ["LLM", "Completion", "ContextOverflow", "LLMError", "Timeout"]

KEYLESS = "halo-no-key"  # the SDK insists on a key; for keyless servers the Authorization header is dropped


class LLMError(Exception):
    """A provider error that retrying will not fix; the message says what to change."""


class ContextOverflow(LLMError):
    """The request does not fit the model's context window."""


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


CONNECTION_POOLS = 8


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
        key = provider.key
        # A keyless local server: send no Authorization header at all, not a placeholder key.
        self._request_options: dict[str, Any] = (
            {"headers": {"Authorization": openai.Omit()}} if key is None else {}
        )
        # Several connection pools: on every request and response the HTTP client checks each
        # connection in its pool, which with dozens of agents streaming at once held up the event
        # loop. One TLS context serves them all (making one takes tens of milliseconds).
        tls = httpx2.create_ssl_context()
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

    async def complete(
        self,
        model: ModelConfig,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: Any = None,
        on_delta: Callable[[str, int], None] | None = None,
        deadline: float | None = None,
    ) -> Completion:
        """One model turn, streamed. `on_delta(text, attempt)` sees text as it arrives; a retried
        attempt streams again under a new attempt number. Retries end at `deadline` (monotonic)."""
        params = self._params(model, messages, tools, tool_choice)
        started = time.monotonic()
        for attempt in range(self.retry.attempts):
            try:
                completion = await self._stream(params, model.name, on_delta, attempt, deadline)
                completion.retries, completion.seconds = attempt, time.monotonic() - started
                return completion
            except openai.APIStatusError as exc:
                wait = self._retriable(exc, model.name, attempt)
            except (openai.APIConnectionError, _CutStream) as exc:  # includes timeouts and cut streams
                wait = self.retry.backoff(attempt)
                if attempt == self.retry.attempts - 1:
                    raise LLMError(
                        f"{self.provider.url}: the connection failed {attempt + 1} times for model "
                        f"{model.name!r} ({_describe(exc)})"
                    ) from exc
            if deadline is not None and time.monotonic() + wait >= deadline:
                raise Timeout(
                    f"{self.provider.url}: gave up retrying model {model.name!r}: the run's time is up"
                )
            waited = (self.retry.sleep or asyncio.sleep)(wait)
            if inspect.isawaitable(waited):
                await waited
        raise LLMError(
            f"{self.provider.url}: model {model.name!r} failed after {self.retry.attempts} attempts"
        )

    def _params(
        self,
        model: ModelConfig,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        tool_choice: Any,
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
        if model.max_output_tokens is not None:
            # OpenAI wants max_completion_tokens (reasoning models reject max_tokens); most other
            # OpenAI-compatible servers know only max_tokens.
            key = "max_completion_tokens" if "api.openai.com" in self.provider.url else "max_tokens"
            params[key] = model.max_output_tokens
        if model.reasoning_effort is not None:
            params["reasoning_effort"] = model.reasoning_effort
        return params

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
        usage = Usage(calls=1)
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

        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise Timeout(
                f"{self.provider.url}: the run's time budget ran out before calling model {model!r}"
            )
        try:
            await asyncio.wait_for(consume(), remaining)
        except TimeoutError as exc:
            raise Timeout(
                f"{self.provider.url}: model {model!r} did not answer before the run's time budget ran out"
            ) from exc
        if finish is None:
            raise _CutStream("the stream ended before the model finished")
        tool_calls = [
            {"id": c["id"] or f"call_{attempt}_{i}", "name": c["name"], "arguments": c["arguments"]}
            for i, c in sorted(calls.items())
        ]
        if usage.cost_usd is None:
            usage.cost_usd = self.prices.cost(
                reported_model,
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cached_tokens=usage.cached_tokens,
            )
            if usage.cost_usd is None and reported_model != model:
                usage.cost_usd = self.prices.cost(
                    model,
                    input_tokens=usage.input_tokens,
                    output_tokens=usage.output_tokens,
                    cached_tokens=usage.cached_tokens,
                )
        return Completion(
            "".join(content), tool_calls, "".join(refusal) or None, finish, usage, reported_model
        )

    def _retriable(self, exc: openai.APIStatusError, model: str, attempt: int) -> float:
        """Seconds to wait before retrying, or raise a clear terminal error."""
        status, url = exc.status_code, self.provider.url
        detail = _error_message(exc)
        if status in (401, 403):
            raise LLMError(
                f"{url}: the API key was refused ({status}: {detail}). Check --api-key / OPENAI_API_KEY "
                f"(or drop them for a keyless local server)."
            ) from exc
        if status == 404:
            raise LLMError(
                f"{url}: model {model!r} was not found ({detail}). Check --model and --base-url."
            ) from exc
        code = getattr(exc, "code", None)
        if (
            code == "context_length_exceeded"
            or "context length" in detail.lower()
            or "context_length" in detail
        ):
            raise ContextOverflow(
                f"{url}: the request exceeds {model!r}'s context window ({detail})"
            ) from exc
        if status in (408, 409, 429) or status >= 500:
            if attempt == self.retry.attempts - 1:
                raise LLMError(
                    f"{url}: model {model!r} still failing after {attempt + 1} attempts ({status}: {detail})"
                ) from exc
            headers = exc.response.headers if exc.response is not None else {}
            wait = self.retry.wait(attempt, headers)
            if wait is None:
                raise LLMError(
                    f"{url}: rate limited for {retry_after(headers):.0f}s by the provider ({detail})"
                ) from exc
            return wait
        raise LLMError(f"{url}: the request to model {model!r} was rejected ({status}: {detail})") from exc


class _CutStream(Exception):
    pass


def _error_message(exc: openai.APIStatusError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error", body) if isinstance(body, dict) else {}
    message = error.get("message") if isinstance(error, dict) else None
    return str(message or exc.message or exc.status_code)[:500]


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
