"""OpenAI models, and any OpenAI-compatible server, through the official ``openai`` SDK.

Chat Completions with one function tool, ``propose_change``. With ``base_url`` (or
``OPENAI_BASE_URL``) it drives Ollama, vLLM, the llama.cpp server or LM Studio: no key is
needed there, ``max_tokens`` is sent instead of ``max_completion_tokens``, the tool is
offered rather than forced, and a reply that writes the tool's arguments as JSON text is
accepted. OpenAI caches long prompt prefixes by itself; the prompt puts the stable part
first so the cache is hit.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import openai
from openai.types.chat import ChatCompletion

from autoresearch.agents._base import Proposal, Usage
from autoresearch.agents._chat import UNKNOWN_USAGE, ChatAgent, token_count, transient_status
from autoresearch.agents.prompt import (
    DEFAULT_HISTORY_TOKENS,
    TOOL_DESCRIPTION,
    TOOL_NAME,
    TOOL_SCHEMA,
    Prompt,
    parse_proposal,
    parse_text_reply,
    secret_values,
)
from autoresearch.cost import TokenCounts
from autoresearch.errors import ConfigError, ProposalError

DEFAULT_MODEL = "gpt-5.4"
NO_KEY = "no-key-needed"  # sent to local servers, which ignore it


class OpenAIAgent(ChatAgent):
    """Proposes experiments with an OpenAI model or an OpenAI-compatible server."""

    name = "openai"
    default_model = DEFAULT_MODEL
    tool_choices = ("auto", "required", "function", "none")
    sdk_error = openai.OpenAIError

    def __init__(
        self,
        model: str | None = None,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        max_tokens: int = 16_000,
        max_retries: int = 3,
        timeout: float = 300.0,
        max_failures: int = 5,
        backoff: float = 60.0,
        tool_choice: str | None = None,
        temperature: float | None = None,
        history_tokens: int = DEFAULT_HISTORY_TOKENS,
        prices: Mapping[str, Mapping[str, float]] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        compatible: bool | None = None,
    ) -> None:
        base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        if compatible is None:  # a server of another kind than api.openai.com
            compatible = base_url is not None and "api.openai.com" not in base_url
        self.compatible = compatible
        super().__init__(
            model, max_tokens=max_tokens, max_failures=max_failures, backoff=backoff,
            tool_choice=tool_choice or ("auto" if compatible else "required"),
            temperature=temperature, history_tokens=history_tokens, prices=prices,
            extra_body=extra_body,
        )  # fmt: skip
        key = api_key or os.environ.get("OPENAI_API_KEY") or (NO_KEY if self.compatible else None)
        if key is None:
            raise ConfigError(
                "openai: no API key: set OPENAI_API_KEY, or give --base-url for a local OpenAI-compatible server"
            )
        self.client = openai.OpenAI(
            api_key=key, base_url=base_url, max_retries=max_retries, timeout=timeout
        )
        self._secrets = secret_values(extra=[api_key, key if key != NO_KEY else None])

    def _reply_meta(self, completion: ChatCompletion) -> dict[str, Any]:
        finish = completion.choices[0].finish_reason if completion.choices else None
        return {"finish_reason": finish, "completion_id": completion.id}

    def _transient(self, exc: Exception) -> bool:
        status = exc.status_code if isinstance(exc, openai.APIStatusError) else None
        return transient_status(status, isinstance(exc, openai.APIConnectionError))

    def _create(self, prompt: Prompt) -> ChatCompletion:
        options: dict[str, Any] = {}
        if self.temperature is not None:
            options["temperature"] = self.temperature
        if self.compatible:
            options["max_tokens"] = self.max_tokens
        else:
            options["max_completion_tokens"] = self.max_tokens
            options["parallel_tool_calls"] = False
            options["prompt_cache_key"] = (
                "autoresearch-" + hashlib.sha256(prompt.system.encode()).hexdigest()[:16]
            )
        tool_choice: Any = self.tool_choice
        if tool_choice == "function":
            tool_choice = {"type": "function", "function": {"name": TOOL_NAME}}
        completion: ChatCompletion = self.client.chat.completions.create(
            model=self.model,
            messages=[
                {"role": "system", "content": prompt.system},
                {"role": "user", "content": prompt.user},
            ],
            tools=[
                {
                    "type": "function",
                    "function": {
                        "name": TOOL_NAME,
                        "description": TOOL_DESCRIPTION,
                        "parameters": TOOL_SCHEMA,
                    },
                }
            ],
            tool_choice=tool_choice,
            extra_body=self.extra_body or None,
            **options,
        )
        return completion

    def _parse(self, completion: ChatCompletion) -> Proposal:
        if not completion.choices:
            raise ProposalError("the reply had no choices")
        choice = completion.choices[0]
        if choice.finish_reason == "length":
            raise self.cut_off()
        message = choice.message
        if message.refusal:
            raise ProposalError(f"the model refused: {message.refusal}")
        # Some compatible servers leave out the call's "type": look for the function itself.
        functions = [getattr(c, "function", None) for c in message.tool_calls or []]
        calls = [f for f in functions if f is not None and getattr(f, "name", "") == TOOL_NAME]
        text = (message.content or "").strip()
        if not calls:
            return parse_text_reply(text)
        proposal = parse_proposal(getattr(calls[0], "arguments", None))
        return proposal if proposal.rationale or not text else replace(proposal, rationale=text)

    def _usage(self, completion: ChatCompletion) -> Usage:
        u = getattr(completion, "usage", None)
        inp, out = token_count(u, "prompt_tokens"), token_count(u, "completion_tokens")
        cached = token_count(getattr(u, "prompt_tokens_details", None), "cached_tokens", optional=True)
        if inp is None or out is None or cached is None:
            return UNKNOWN_USAGE
        counts = TokenCounts(input=inp, output=out, cached=cached)
        return Usage(inp, cached, out, self.prices.cost(self.model, counts))


__all__ = ["DEFAULT_MODEL", "OpenAIAgent"]
