"""Self-telemetry (`halo --telemetry`): HALO traces its own engine runs as OpenInference spans, so
`halo` can analyse its own runs. One run is one trace:

    halo.run                      CHAIN   the prompt, the config, the report's answer
      halo.agent root             AGENT   one per agent: its task, answer and how it ended
        halo.llm <model>          LLM     one per model call: messages, tool calls, tokens, cost
        halo.tool <name>          TOOL    one per tool call: arguments, result (cut), ERROR results
          halo.agent sub1         AGENT   sub-agents nest under the call_subagent (or run_code) call
          halo.llm <model>        LLM     synthesize_traces, and llm_query from run_code
        halo.llm <model>          LLM     compaction

Where spans go: over OTLP/HTTP when OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT
is set (the SDK reads the other standard variables: headers, timeout, compression, certificates);
otherwise into a JSONL file `halo` ingests: $HALO_TELEMETRY_PATH (appended to, so it can gather many
runs), else halo-telemetry-<run id>.jsonl in the report folder (`out_dir`), else in the working
directory.

Each run gets a private TracerProvider, never the global one (the user's own instrumentation may own
that), shut down when the run ends, however it ends. No credential is put into an attribute, and
every span passes through `tracing.ScrubbingExporter` on its way out, which also redacts the run's own
API key and header values word for word. With telemetry off the engine's hooks are `OFF`'s, which
hand the work back untouched: nothing is created.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import orjson
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from halo_rlm.__about__ import __version__
from halo_rlm.engine.config import EngineConfig
from halo_rlm.engine.events import FAILED, AgentStatus, EngineError, ToolOutcome
from halo_rlm.llm import LLM, Completion, ModelConfig
from halo_rlm.report import Report
from halo_rlm.scrub import REDACTED, scrub_text
from halo_rlm.tracing import JsonlSpanExporter, ScrubbingExporter
from halo_rlm.utils import clip

__all__ = ["OFF", "Off", "RunTotals", "Telemetry", "TracedAgent", "start_telemetry"]

T = TypeVar("T")
PATH_VARIABLE = "HALO_TELEMETRY_PATH"
OTLP_ENDPOINTS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
OTLP_PROTOCOLS = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
MESSAGE_CHARS = 2_000  # each message's content, and each tool call's arguments, in an LLM span
VALUE_CHARS = 4_000  # input.value and output.value
ERROR_CHARS = 1_000  # status messages
MIN_SECRET_CHARS = 6  # shorter "secrets" would redact ordinary words
KIND = "openinference.span.kind"
CONFIG_FIELDS = (
    "model",
    "max_depth",
    "max_turns",
    "max_parallel",
    "max_cost",
    "max_tokens",
    "timeout",
    "context_tokens",
    "temperature",
    "reasoning_effort",
)


class TracedAgent(Protocol):
    """What an agent span shows of the agent."""

    id: str
    name: str
    depth: int
    status: AgentStatus
    turns: int
    tool_calls: int

    @property
    def parent_id(self) -> str | None: ...

    @property
    def final_answer(self) -> str | None: ...


@dataclass(frozen=True)
class RunTotals:
    """What the run span shows at the end, read when the run is over."""

    tokens: int
    cost: float
    agents: int


def start_telemetry(config: EngineConfig, run_id: str, llm: LLM) -> tuple[Telemetry | Off, LLM]:
    """Start tracing a run when its config asks for it (else `OFF`), and the LLM client to use:
    with telemetry on, one whose every model call is an LLM span. Raises `EngineError` when the
    spans cannot go where the environment says."""
    if not config.telemetry:
        return OFF, llm
    exporter, destination = _exporter(config, run_id)
    telemetry = Telemetry(config, run_id, exporter, destination)
    return telemetry, TracedLLM(llm, telemetry)  # type: ignore[return-value]


class Off:
    """Telemetry switched off: every hook hands the work back untouched."""

    destination: str | None = None

    def traced_run(self, prompt: str, work: Awaitable[T], totals: Callable[[], RunTotals]) -> Awaitable[T]:
        return work

    def traced_agent(self, agent: TracedAgent, task: str, work: Awaitable[T]) -> Awaitable[T]:
        return work

    def traced_tool(self, call: dict[str, str], work: Awaitable[T]) -> Awaitable[T]:
        return work

    async def aclose(self) -> None:
        return None


OFF = Off()


class Telemetry:
    """The spans of one run. The hooks take the work to trace (an awaitable) and return it traced;
    spans nest through OpenTelemetry's context, which asyncio tasks inherit."""

    def __init__(self, config: EngineConfig, run_id: str, exporter: SpanExporter, destination: str) -> None:
        self.config = config
        self.run_id = run_id
        self.destination: str | None = destination
        resource = Resource.create(
            {"service.name": "halo", "service.version": __version__, "halo.run.id": run_id}
        )
        # Always sampled (the user asked for this trace); no cap on attributes, as each message of a
        # conversation is several and the default cap (128) would drop the usage set at the end.
        self.provider = TracerProvider(
            resource=resource,
            sampler=ALWAYS_ON,
            shutdown_on_exit=False,
            span_limits=SpanLimits(max_span_attributes=SpanLimits.UNSET),
        )
        self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("halo_rlm.telemetry", __version__)
        self.llm_provider = (
            urlsplit(config.provider.url).hostname or "unknown"
        )  # never the URL: it may hold a key
        self._tool_schemas: dict[tuple[str, ...], dict[str, str]] = {}

    async def traced_run(
        self, prompt: str, work: Awaitable[Report], totals: Callable[[], RunTotals]
    ) -> Report:
        config = self.config
        attributes: dict[str, Any] = {
            KIND: "CHAIN",
            "input.value": clip(prompt, VALUE_CHARS),
            "session.id": self.run_id,
            "halo.run.id": self.run_id,
            "halo.config.synthesis_model": config.model_for("synthesis").name,
            "halo.config.compaction_model": config.model_for("compaction").name,
        }
        attributes |= {
            f"halo.config.{name}": value
            for name in CONFIG_FIELDS
            if (value := getattr(config, name)) is not None
        }
        # A trace of its own, even inside a span of the caller's: that span goes elsewhere, so here it
        # would be a parent that never arrives.
        with self._span("halo.run", attributes, parent=Context()) as span:
            try:
                report = await work
            finally:
                used = totals()
                span.set_attributes(
                    {
                        "halo.run.tokens": used.tokens,
                        "halo.run.cost_usd": round(used.cost, 6),
                        "halo.run.agents": used.agents,
                    }
                )
            span.set_attributes(
                {
                    "output.value": clip(report.answer or "", VALUE_CHARS),
                    "halo.report.findings": len(report.findings),
                }
            )
            span.set_status(StatusCode.OK)
        return report

    async def traced_agent(self, agent: TracedAgent, task: str, work: Awaitable[str]) -> str:
        attributes: dict[str, Any] = {
            KIND: "AGENT",
            "agent.name": agent.name,
            "halo.agent.id": agent.id,
            "halo.agent.depth": agent.depth,
            "input.value": clip(task, VALUE_CHARS),
        }
        if agent.parent_id is not None:
            attributes["halo.agent.parent_id"] = agent.parent_id
        with self._span(f"halo.agent {agent.name}", attributes) as span:
            try:
                answer = await work
            finally:
                span.set_attributes(
                    {
                        "halo.agent.status": agent.status,
                        "halo.agent.turns": agent.turns,
                        "halo.agent.tool_calls": agent.tool_calls,
                    }
                )
            final = agent.final_answer if agent.final_answer is not None else answer
            span.set_attribute("output.value", clip(final or "", VALUE_CHARS))
            if agent.status == "done":
                span.set_status(StatusCode.OK)
            elif agent.status in FAILED:
                span.set_status(Status(StatusCode.ERROR, f"{agent.name} ended: {agent.status}"))
        return answer

    async def traced_tool(self, call: dict[str, str], work: Awaitable[ToolOutcome]) -> ToolOutcome:
        attributes = {
            KIND: "TOOL",
            "tool.name": call["name"],
            "tool_call.id": call["id"],
            "input.value": clip(call["arguments"], VALUE_CHARS),
            "input.mime_type": "application/json",
        }
        with self._span(f"halo.tool {call['name']}", attributes) as span:
            outcome = await work
            span.set_attributes(
                {
                    "output.value": clip(outcome.text, VALUE_CHARS),
                    "halo.tool.result_chars": len(outcome.text),
                }
            )
            if outcome.failed:
                span.set_status(Status(StatusCode.ERROR, clip(outcome.content, ERROR_CHARS)))
            else:
                span.set_status(StatusCode.OK)
        return outcome

    async def traced_completion(
        self,
        model: ModelConfig,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        tool_choice: Any,
        work: Awaitable[Completion],
    ) -> Completion:
        attributes = {
            KIND: "LLM",
            "llm.model_name": model.name,
            "llm.provider": self.llm_provider,
            "llm.invocation_parameters": _invocation_parameters(model, tools, tool_choice),
            **_messages("llm.input_messages", messages),
        }
        if tools:
            attributes |= self._tools(tools)
        with self._span(f"halo.llm {model.name}", attributes, kind=SpanKind.CLIENT) as span:
            completion = await work
            span.set_attributes(_completion(completion))
            span.set_status(StatusCode.OK)
        return completion

    async def aclose(self) -> None:
        """Export what is left and stop. In a thread: an OTLP export may wait on the network."""
        await asyncio.to_thread(self.provider.shutdown)

    @contextmanager
    def _span(
        self,
        name: str,
        attributes: dict[str, Any],
        kind: SpanKind = SpanKind.INTERNAL,
        parent: Context | None = None,
    ) -> Iterator[Span]:
        span = self.tracer.start_span(name, context=parent, kind=kind, attributes=attributes)
        with trace.use_span(span, end_on_exit=True, record_exception=False, set_status_on_exception=False):
            try:
                yield span
            except asyncio.CancelledError:
                span.set_status(Status(StatusCode.ERROR, "cancelled"))
                raise
            except Exception as exc:
                span.record_exception(exc, escaped=True)
                span.set_status(Status(StatusCode.ERROR, clip(f"{type(exc).__name__}: {exc}", ERROR_CHARS)))
                raise

    def _tools(self, tools: list[dict[str, Any]]) -> dict[str, str]:
        """The offered tools' schemas, encoded once per tool set (an agent offers the same set each turn)."""
        names = tuple(tool["function"]["name"] for tool in tools)
        encoded = self._tool_schemas.get(names)
        if encoded is None:
            encoded = self._tool_schemas[names] = {
                f"llm.tools.{i}.tool.json_schema": orjson.dumps(tool).decode() for i, tool in enumerate(tools)
            }
        return encoded


class TracedLLM:
    """`run.llm` while telemetry is on: every `complete` call is an LLM span, under whatever span is
    current (the agent, or the tool call that asked for a summary or ran code)."""

    def __init__(self, llm: LLM, telemetry: Telemetry) -> None:
        self.llm = llm
        self.telemetry = telemetry

    async def complete(
        self,
        model: ModelConfig,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: Any = None,
        **options: Any,
    ) -> Completion:
        return await self.telemetry.traced_completion(
            model,
            messages,
            tools,
            tool_choice,
            self.llm.complete(model, messages, tools=tools, tool_choice=tool_choice, **options),
        )

    def __getattr__(self, name: str) -> Any:  # the rest of LLM, untraced
        return getattr(self.llm, name)


# --- attributes -----------------------------------------------------------------------------------


def _messages(prefix: str, messages: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Chat messages as OpenInference's flattened `<prefix>.N.message.*` attributes."""
    attributes: dict[str, Any] = {}
    for i, message in enumerate(messages):
        key = f"{prefix}.{i}.message."
        attributes[key + "role"] = message.get("role") or "unknown"
        content = message.get("content")
        if content:
            attributes[key + "content"] = clip(
                content if isinstance(content, str) else orjson.dumps(content).decode(), MESSAGE_CHARS
            )
        if message.get("tool_call_id"):
            attributes[key + "tool_call_id"] = message["tool_call_id"]
        for j, call in enumerate(message.get("tool_calls") or ()):
            function = call.get("function") or call  # chat-format calls, or Completion's flat ones
            call_key = f"{key}tool_calls.{j}.tool_call."
            attributes[call_key + "id"] = call.get("id") or ""
            attributes[call_key + "function.name"] = function.get("name") or ""
            attributes[call_key + "function.arguments"] = clip(function.get("arguments") or "", MESSAGE_CHARS)
    return attributes


def _completion(completion: Completion) -> dict[str, Any]:
    usage = completion.usage
    attributes: dict[str, Any] = {
        "llm.model_name": completion.model,  # as the provider reported it
        **_messages(
            "llm.output_messages",
            [{"role": "assistant", "content": completion.content, "tool_calls": completion.tool_calls}],
        ),
        "llm.token_count.prompt": usage.input_tokens,
        "llm.token_count.completion": usage.output_tokens,
        "llm.token_count.total": usage.input_tokens + usage.output_tokens,
        "llm.token_count.prompt_details.cache_read": usage.cached_tokens,
        "llm.token_count.completion_details.reasoning": usage.reasoning_tokens,
        "halo.llm.retries": completion.retries,
    }
    if usage.cost_usd is not None:
        attributes["llm.cost.total"] = usage.cost_usd
    if completion.finish_reason:
        attributes["llm.finish_reason"] = completion.finish_reason
    if completion.refusal:
        attributes["halo.llm.refusal"] = clip(completion.refusal, MESSAGE_CHARS)
    return attributes


def _invocation_parameters(model: ModelConfig, tools: list[dict[str, Any]] | None, tool_choice: Any) -> str:
    parameters = model.model_dump(exclude={"name"}, exclude_none=True)
    if not tools:
        parameters.pop("parallel_tool_calls", None)
    elif tool_choice is not None:
        parameters["tool_choice"] = tool_choice
    return orjson.dumps(parameters).decode()


# --- routing --------------------------------------------------------------------------------------


def _exporter(config: EngineConfig, run_id: str) -> tuple[SpanExporter, str]:
    """Where the spans go (see the module docstring), as an exporter and the words that say where."""
    endpoint = next(
        (os.environ[name].strip() for name in OTLP_ENDPOINTS if os.environ.get(name, "").strip()), None
    )
    if endpoint is not None:
        protocol = next(
            (os.environ[name].strip() for name in OTLP_PROTOCOLS if os.environ.get(name, "").strip()),
            "http/protobuf",
        )
        if protocol != "http/protobuf":
            raise EngineError(
                f"--telemetry exports OTLP over HTTP (http/protobuf), not {protocol}: set "
                f"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=http/protobuf and an HTTP endpoint (port 4318)"
            )
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        inner: SpanExporter = OTLPSpanExporter()  # endpoint, headers and the rest from the standard variables
        if not os.environ.get(OTLP_ENDPOINTS[0], "").strip():
            endpoint = endpoint.rstrip("/") + "/v1/traces"  # as the SDK does for the generic variable
        destination = f"OTLP endpoint {_shown(endpoint)}"
    else:
        path = (
            Path(
                os.environ.get(PATH_VARIABLE, "").strip()
                or Path(config.out_dir or ".") / f"halo-telemetry-{run_id}.jsonl"
            )
            .expanduser()
            .absolute()
        )
        try:
            inner = JsonlSpanExporter(path)
        except OSError as exc:
            raise EngineError(f"--telemetry: cannot write {path}: {exc.strerror or exc}") from exc
        destination = str(path)
    secrets = [config.provider.key, *(value.get_secret_value() for value in config.headers.values())]
    return ScrubbingExporter(
        inner, _scrubber([s for s in secrets if s and len(s) >= MIN_SECRET_CHARS])
    ), destination


def _scrubber(secrets: list[str]) -> Callable[[str], str]:
    """`scrub.scrub_text`, after redacting `secrets` word for word (longest first, so a secret that
    holds another goes whole). Memoised: an agent resends its whole conversation with every model
    call, so most texts recur, and they are already cut to a few KB."""
    known = re.compile("|".join(map(re.escape, sorted(secrets, key=len, reverse=True)))) if secrets else None

    @lru_cache(maxsize=2_048)
    def scrub(text: str) -> str:
        return scrub_text(known.sub(REDACTED, text) if known else text)

    return scrub


def _shown(url: str) -> str:
    """A URL without what may be secret in it (user info, query)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{host}{parts.path}"
