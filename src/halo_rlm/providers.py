"""Where LLM requests go and how: the provider (an OpenAI-compatible endpoint, its key and headers)
and a model's settings. Plain settings, so configuring a run imports no HTTP client."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, SecretStr, field_validator

from halo_rlm.defaults import ReasoningEffort

__all__ = ["OPENAI_URL", "ModelConfig", "Provider", "ReasoningEffort", "check_url"]

OPENAI_URL = "https://api.openai.com/v1"


def check_url(url: str) -> str:
    """An endpoint's URL, or ValueError saying how to write it: a request to a URL without a scheme
    or host fails only after every retry, so it is refused before the first."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(
            f"{url!r} is not an endpoint URL: it needs http:// or https:// and a host, "
            "e.g. http://localhost:8080/v1"
        )
    return url.strip()


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

    @field_validator("base_url")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        return None if value is None else check_url(value)

    @property
    def url(self) -> str:
        return (self.base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_URL).rstrip("/")

    @property
    def key(self) -> str | None:
        return self.api_key.get_secret_value() if self.api_key else os.environ.get("OPENAI_API_KEY") or None

    @property
    def configured(self) -> bool:
        return bool(self.key or self.base_url or os.environ.get("OPENAI_BASE_URL"))
