"""An engine run's configuration: everything it needs, mirroring `halo`'s flags."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from halo_rlm.defaults import DEFAULT_MODEL, DEFAULT_PROMPT
from halo_rlm.pricing import Price
from halo_rlm.providers import ModelConfig, Provider, ReasoningEffort, check_url
from halo_rlm.utils import RetryPolicy

__all__ = ["DEFAULT_MODEL", "DEFAULT_PROMPT", "EngineConfig"]


class EngineConfig(BaseModel):
    """Everything a run needs; mirrors `halo`'s flags."""

    model_config = ConfigDict(extra="forbid")

    model: str = DEFAULT_MODEL
    synthesis_model: str | None = Field(
        None, description="Cheaper model for synthesize_traces (default: model)"
    )
    compaction_model: str | None = Field(
        None, description="Cheaper model for compacting context (default: model)"
    )
    max_depth: int = Field(2, ge=0, description="How deep sub-agents may recurse")
    max_turns: int = Field(20, ge=1, description="Model turns per agent")
    max_parallel: int = Field(4, ge=1, description="Sub-agents running at once, per depth")
    base_url: str | None = None
    api_key: SecretStr | None = None
    headers: dict[str, SecretStr] = {}
    temperature: float | None = Field(None, ge=0, le=2)
    max_output_tokens: int | None = Field(
        None,
        ge=1,
        description="Tokens one reply may take (default: 16,384, 32,768 with high reasoning effort; at "
        "most a quarter of a known window)",
    )
    parallel_tool_calls: bool = True
    refusal_retries: int = Field(1, ge=0)
    reasoning_effort: ReasoningEffort | None = None
    telemetry: bool = False
    max_cost: float | None = Field(None, gt=0, description="USD for the whole run")
    max_tokens: int | None = Field(None, gt=0, description="Tokens (in + out) for the whole run")
    timeout: float | None = Field(None, gt=0, description="Seconds for the whole run")
    dataset_context: str | None = None
    out_dir: Path | None = Field(None, description="Write report.json/.md/.html here")
    prices: dict[str, Price] = {}
    context_window: int | None = Field(
        None,
        ge=1_024,
        description="The model's context window in tokens (default: asked of the server; unknown if it "
        "does not say)",
    )
    compact: bool | None = Field(
        None,
        description="Compact tools and prompts for small windows (default: when the full ones would take "
        "over a fifth of the window)",
    )
    context_tokens: int | None = Field(
        None,
        ge=1_000,
        description="Conversation tokens per agent before old turns are compacted (default: what the "
        "window leaves, at most 96,000)",
    )
    tool_result_bytes: int = Field(24_000, ge=1_000, description="Most bytes one tool result may take")
    tool_timeout: float = Field(30.0, gt=0)
    code_timeout: float = Field(60.0, gt=0, description="Seconds for one run_code call")
    max_code_llm_calls: int = Field(
        300, ge=0, description="LLM calls code may make (llm_query...), whole run"
    )
    repo_path: Path | None = None
    keep_secrets: bool = Field(
        False,
        description="Send trace text to the model and write it to reports with its credentials; by "
        "default API keys, tokens and passwords are replaced by [REDACTED]",
    )
    retry: RetryPolicy = Field(
        default_factory=RetryPolicy, exclude=True, description="How provider errors are retried"
    )

    @field_validator("base_url")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        return None if value is None else check_url(value)

    def model_for(self, role: Literal["agent", "synthesis", "compaction"]) -> ModelConfig:
        name = {
            "agent": self.model,
            "synthesis": self.synthesis_model or self.model,
            "compaction": self.compaction_model or self.model,
        }[role]
        return ModelConfig(
            name=name,
            temperature=self.temperature,
            max_output_tokens=self.max_output_tokens,
            reasoning_effort=self.reasoning_effort if role == "agent" else None,
            parallel_tool_calls=self.parallel_tool_calls,
        )

    @property
    def provider(self) -> Provider:
        return Provider(base_url=self.base_url, api_key=self.api_key, headers=self.headers)
