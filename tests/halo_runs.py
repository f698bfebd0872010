"""Small agent runs in HALO's flat span format, in the shape of HALO's real trace files (ISO times with
nanoseconds, `SPAN_KIND_*` and `STATUS_CODE_*` codes, resource and scope, OpenInference attributes with
HALO's `inference.*` copies, the cost only as HALO's decimal string). Tests build their corpora from
them, so no format's or command's coverage depends on the files in ../shared/fixtures. A `Run` says
what its spans hold, so a test derives what the store must make of them instead of hard-coding it.

A run: an AGENT root; an LLM call; a tool call (failing in every fourth run); a second LLM call in
every other run. Models, agents, tools, tokens and durations vary with the run's number."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

__all__ = ["Run", "Step", "jsonl", "runs", "write_runs"]

MODELS = (("claude-sonnet-4-5", "anthropic"), ("gpt-5.4", "openai"), ("claude-haiku-4-5", "anthropic"))
TOOLS = ("list_files", "read_file")
BASE_NS = int(datetime(2026, 4, 23, 5, 32, tzinfo=UTC).timestamp()) * 10**9
ROOT_NAME = "agent.run"


@dataclass(frozen=True)
class Step:
    """One span of a run: where it sits and when it ran, in milliseconds from the run's start."""

    span_id: str
    parent: str | None
    name: str
    kind: str  # the OpenInference span kind
    otel_kind: str  # the OpenTelemetry span kind, without the SPAN_KIND_ prefix
    start_ms: int
    end_ms: int
    error: str | None = None

    @property
    def duration_ns(self) -> int:
        return (self.end_ms - self.start_ms) * 10**6


@dataclass(frozen=True)
class Run:
    trace_id: str
    agent: str
    service: str
    model: str
    provider: str
    llm_calls: int  # 1 or 2, each with the token counts and cost below
    input_tokens: int
    output_tokens: int
    cost: str  # USD per call, as HALO's exporter writes it
    tool: str
    tool_args: str
    tool_output: str
    tool_error: str | None  # the failing tool call's status message
    start_ns: int
    duration_ms: int

    @property
    def steps(self) -> list[Step]:
        """The run's spans in start order (which is also their tree order)."""
        t = self.trace_id
        steps = [
            Step(f"{t}.root", None, ROOT_NAME, "AGENT", "INTERNAL", 0, self.duration_ms),
            Step(f"{t}.llm1", f"{t}.root", self.llm_name, "LLM", "CLIENT", 10, 400),
            Step(
                f"{t}.tool",
                f"{t}.root",
                f"function.{self.tool}",
                "TOOL",
                "INTERNAL",
                410,
                600,
                self.tool_error,
            ),
        ]
        if self.llm_calls == 2:
            steps.append(
                Step(f"{t}.llm2", f"{t}.root", self.llm_name, "LLM", "CLIENT", 610, self.duration_ms - 10)
            )
        return steps

    @property
    def span_ids(self) -> list[str]:
        return [step.span_id for step in self.steps]

    @property
    def llm_name(self) -> str:
        return (
            "anthropic.messages.create" if self.provider == "anthropic" else "openai.chat.completions.create"
        )

    @property
    def spans(self) -> list[dict[str, Any]]:
        return [self._span(step) for step in self.steps]

    def _span(self, step: Step) -> dict[str, Any]:
        attributes: dict[str, Any] = {
            "openinference.span.kind": step.kind,
            "inference.export.schema_version": 1,
            "inference.project_id": "prj_test",
            "inference.observation_kind": step.kind,
            "inference.agent_name": self.agent,
        }
        if step.kind == "LLM":
            attributes |= {
                "llm.provider": self.provider,
                "llm.model_name": self.model,
                "llm.token_count.prompt": self.input_tokens,
                "llm.token_count.completion": self.output_tokens,
                "inference.llm.provider": self.provider,
                "inference.llm.model_name": self.model,
                "inference.llm.input_tokens": self.input_tokens,
                "inference.llm.output_tokens": self.output_tokens,
                "inference.llm.cost.total": self.cost,
            }
        elif step.kind == "TOOL":
            attributes |= {
                "tool.name": self.tool,
                "input.value": self.tool_args,
                "output.value": self.tool_output,
            }
        start_ns = self.start_ns + step.start_ms * 10**6
        return {
            "trace_id": self.trace_id,
            "span_id": step.span_id,
            "parent_span_id": step.parent or "",
            "trace_state": "",
            "name": step.name,
            "kind": f"SPAN_KIND_{step.otel_kind}",
            "start_time": iso(start_ns),
            "end_time": iso(start_ns + step.duration_ns),
            "status": {
                "code": "STATUS_CODE_ERROR" if step.error else "STATUS_CODE_OK",
                "message": step.error or "",
            },
            "resource": {
                "attributes": {
                    "service.name": self.service,
                    "service.version": "0.1.0",
                    "deployment.environment": "test",
                }
            },
            "scope": {"name": "@test/scope", "version": "0.0.1"},
            "attributes": attributes,
        }


def iso(ns: int) -> str:
    """A time as HALO's exporter writes it: UTC, nanoseconds, a Z."""
    seconds, fraction = divmod(ns, 10**9)
    return f"{datetime.fromtimestamp(seconds, UTC):%Y-%m-%dT%H:%M:%S}.{fraction:09d}Z"


def runs(count: int, *, first: int = 0, prefix: str = "t") -> list[Run]:
    """Runs number `first` to `first + count - 1`; the same number always makes the same run."""
    made = []
    for n in range(first, first + count):
        model, provider = MODELS[n % 3]
        agent = f"agent-{'ab'[n % 2]}"
        tool = TOOLS[n // 2 % 2]
        error = f"FileNotFoundError: [Errno 2] No such file or directory: 'data/run-{n}.csv'"
        made.append(
            Run(
                trace_id=f"{prefix}-{n:04d}",
                agent=agent,
                service=f"{agent}-service",
                model=model,
                provider=provider,
                llm_calls=1 + n % 2,
                input_tokens=100 + 10 * n,
                output_tokens=20 + n,
                cost=f"{(n + 1) / 10_000:.4f}",
                tool=tool,
                tool_args=orjson.dumps({"path": f"data/run-{n}.csv"}).decode(),
                tool_output=error if n % 4 == 1 else f"{tool}: {n + 3} lines",
                tool_error=error if n % 4 == 1 else None,
                start_ns=BASE_NS + n * 3600 * 10**9,
                duration_ms=1_000 + 250 * (n * 5 % 8),  # not in the order of the runs' starts
            )
        )
    return made


def jsonl(made: list[Run]) -> bytes:
    """The runs' spans as JSON lines."""
    return b"".join(orjson.dumps(span) + b"\n" for run in made for span in run.spans)


def write_runs(path: Path, made: list[Run]) -> Path:
    path.write_bytes(jsonl(made))
    return path
