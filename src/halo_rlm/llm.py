"""The one place HALO talks to LLM providers: any OpenAI-compatible Chat Completions endpoint through
the `openai` SDK, streaming, with tool calls.

The SDK's own retries are off: retries here honour `Retry-After`, back off with full jitter, count
against the run's wall clock, and also cover a stream cut mid-way (the SDK never retries those).
Terminal errors name the provider URL and model.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Literal

import openai
from pydantic import BaseModel, ConfigDict, SecretStr

from halo_rlm.pricing import Prices

ReasoningEffort = Literal["none", "minimal", "low", "medium", "high", "xhigh"]
OPENAI_URL = "https://api.openai.com/v1"
KEYLESS = "halo-no-key"  # the SDK insists on a key; for keyless servers the Authorization header is dropped


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    temperature: float | None = None
    max_output_tokens: int | None = None
    reasoning_effort: ReasoningEffort | None = None
    parallel_tool_calls: bool = True


class Provider(BaseModel):
    """Where to send requests. `None` fields fall back to OPENAI_BASE_URL / OPENAI_API_KEY."""

    model_config = ConfigDict(extra="forbid")

    base_url: str | None = None
    api_key: SecretStr | None = None
    headers: dict[str, SecretStr] = {}

    @property
    def url(self) -> str:
        return (self.base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_URL).rstrip("/")

    @property
    def key(self) -> str | None:
        return self.api_key.get_secret_value() if self.api_key else os.environ.get("OPENAI_API_KEY") or None

    @property
    def configured(self) -> bool:
        return bool(self.key or self.base_url or os.environ.get("OPENAI_BASE_URL"))


class LLMError(Exception):
    """A provider error that retrying will not fix; the message says what to change."""


class ContextOverflow(LLMError):
    """The request does not fit the model's context window."""


class Timeout(LLMError):
    """The call did not finish before the run's deadline."""


@dataclass
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cost: float | None = None


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
            message["tool_calls"] = [{"id": c["id"], "type": "function",
                                      "function": {"name": c["name"], "arguments": c["arguments"]}}
                                     for c in self.tool_calls]
        return message


@dataclass
class RetryPolicy:
    attempts: int = 6
    base_seconds: float = 0.5
    cap_seconds: float = 30.0
    max_retry_after: float = 120.0


async def _sleep(seconds: float) -> None:
    """Every wait between attempts goes through here (tests record the waits)."""
    await asyncio.sleep(seconds)


class LLM:
    """An async client for one provider, shared by every agent of a run."""

    def __init__(self, provider: Provider, *, prices: Prices | None = None, retry: RetryPolicy | None = None,
                 request_timeout: float = 180.0) -> None:
        self.provider = provider
        self.prices = prices or Prices()
        self.retry = retry or RetryPolicy()
        key = provider.key
        self._keyless = key is None
        self.client = openai.AsyncOpenAI(
            base_url=provider.url, api_key=key or KEYLESS, max_retries=0, timeout=request_timeout,
            default_headers={k: v.get_secret_value() for k, v in provider.headers.items()} or None,
        )

    async def aclose(self) -> None:
        await self.client.close()

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
                wait = _backoff(self.retry, attempt)
                if attempt == self.retry.attempts - 1:
                    raise LLMError(f"{self.provider.url}: the connection failed {attempt + 1} times for model "
                                   f"{model.name!r} ({_describe(exc)})") from exc
            if deadline is not None and time.monotonic() + wait >= deadline:
                raise Timeout(f"{self.provider.url}: gave up retrying model {model.name!r}: the run's time is up")
            await _sleep(wait)
        raise LLMError(f"{self.provider.url}: model {model.name!r} failed after {self.retry.attempts} attempts")

    def _params(self, model: ModelConfig, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                tool_choice: Any) -> dict[str, Any]:
        params: dict[str, Any] = {"model": model.name, "messages": messages, "stream": True,
                                  "stream_options": {"include_usage": True}}
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
        if self._keyless:
            params["extra_headers"] = {"Authorization": openai.Omit()}
        return params

    async def _stream(self, params: dict[str, Any], model: str, on_delta: Callable[[str, int], None] | None,
                      attempt: int, deadline: float | None) -> Completion:
        content: list[str] = []
        refusal: list[str] = []
        calls: dict[int, dict[str, str]] = {}
        finish: str | None = None
        usage = Usage()
        reported_model = model

        async def consume() -> None:
            nonlocal finish, usage, reported_model
            stream = await self.client.chat.completions.create(**params)
            async for chunk in stream:
                reported_model = getattr(chunk, "model", None) or reported_model
                if chunk.usage is not None:
                    usage = _usage(chunk.usage)
                if not chunk.choices:
                    continue
                choice = chunk.choices[0]
                delta = choice.delta
                if delta is not None:
                    if delta.content:
                        content.append(delta.content)
                        if on_delta:
                            on_delta(delta.content, attempt)
                    if getattr(delta, "refusal", None):
                        refusal.append(delta.refusal)  # type: ignore[arg-type]
                    for tc in delta.tool_calls or ():
                        entry = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
                        if tc.id:
                            entry["id"] = tc.id
                        if tc.function is not None:
                            if tc.function.name and tc.function.name != entry["name"]:
                                entry["name"] += tc.function.name
                            if tc.function.arguments:
                                entry["arguments"] += tc.function.arguments
                if choice.finish_reason:
                    finish = choice.finish_reason

        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise Timeout(f"{self.provider.url}: the run's time budget ran out before calling model {model!r}")
        try:
            await asyncio.wait_for(consume(), remaining)
        except asyncio.TimeoutError as exc:
            raise Timeout(f"{self.provider.url}: model {model!r} did not answer before the run's time budget ran "
                          f"out") from exc
        if finish is None:
            raise _CutStream("the stream ended before the model finished")
        tool_calls = [{"id": c["id"] or f"call_{attempt}_{i}", "name": c["name"], "arguments": c["arguments"]}
                      for i, c in sorted(calls.items())]
        if usage.cost is None:
            usage.cost = self.prices.cost(reported_model, input_tokens=usage.input_tokens,
                                          output_tokens=usage.output_tokens, cached_tokens=usage.cached_tokens)
            if usage.cost is None and reported_model != model:
                usage.cost = self.prices.cost(model, input_tokens=usage.input_tokens,
                                              output_tokens=usage.output_tokens, cached_tokens=usage.cached_tokens)
        return Completion("".join(content), tool_calls, "".join(refusal) or None, finish, usage, reported_model)

    def _retriable(self, exc: openai.APIStatusError, model: str, attempt: int) -> float:
        """Seconds to wait before retrying, or raise a clear terminal error."""
        status, url = exc.status_code, self.provider.url
        detail = _error_message(exc)
        if status in (401, 403):
            raise LLMError(f"{url}: the API key was refused ({status}: {detail}). Check --api-key / OPENAI_API_KEY "
                           f"(or drop them for a keyless local server).") from exc
        if status == 404:
            raise LLMError(f"{url}: model {model!r} was not found ({detail}). Check --model and --base-url.") from exc
        code = getattr(exc, "code", None)
        if code == "context_length_exceeded" or "context length" in detail.lower() or "context_length" in detail:
            raise ContextOverflow(f"{url}: the request exceeds {model!r}'s context window ({detail})") from exc
        if status in (408, 409, 429) or status >= 500:
            if attempt == self.retry.attempts - 1:
                raise LLMError(f"{url}: model {model!r} still failing after {attempt + 1} attempts "
                               f"({status}: {detail})") from exc
            retry_after = _retry_after(exc)
            if retry_after is not None:
                if retry_after > self.retry.max_retry_after:
                    raise LLMError(f"{url}: rate limited for {retry_after:.0f}s by the provider ({detail})") from exc
                return retry_after + random.uniform(0, 0.1 * retry_after + 0.05)
            return _backoff(self.retry, attempt)
        raise LLMError(f"{url}: the request to model {model!r} was rejected ({status}: {detail})") from exc


class _CutStream(Exception):
    pass


def _backoff(policy: RetryPolicy, attempt: int) -> float:
    """Full jitter: a uniform wait up to an exponentially growing cap."""
    return random.uniform(0, min(policy.cap_seconds, policy.base_seconds * 2**attempt))


def _retry_after(exc: openai.APIStatusError) -> float | None:
    headers = exc.response.headers if exc.response is not None else {}
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return float(millis) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def _error_message(exc: openai.APIStatusError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error", body) if isinstance(body, dict) else {}
    message = error.get("message") if isinstance(error, dict) else None
    return str(message or exc.message or exc.status_code)[:500]


def _describe(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    return f"{type(exc).__name__}: {exc}" + (f" ({type(cause).__name__}: {cause})" if cause else "")


def _usage(raw: Any) -> Usage:
    prompt_details = getattr(raw, "prompt_tokens_details", None)
    completion_details = getattr(raw, "completion_tokens_details", None)
    extra = getattr(raw, "model_extra", None) or {}
    cost = extra.get("cost")
    return Usage(
        input_tokens=raw.prompt_tokens or 0, output_tokens=raw.completion_tokens or 0,
        cached_tokens=(getattr(prompt_details, "cached_tokens", 0) or 0) if prompt_details else 0,
        reasoning_tokens=(getattr(completion_details, "reasoning_tokens", 0) or 0) if completion_details else 0,
        cost=float(cost) if isinstance(cost, int | float) else None,
    )
