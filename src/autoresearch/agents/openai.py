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

from autoresearch.agents._base import Context, Proposal, Usage
from autoresearch.agents.prompt import (
    DEFAULT_HISTORY_TOKENS,
    TOOL_DESCRIPTION,
    TOOL_NAME,
    TOOL_SCHEMA,
    Prompt,
    call_with_retries,
    parse_proposal,
    parse_text_reply,
    redact,
    render,
    secret_values,
)
from autoresearch.cost import PriceTable, TokenCounts
from autoresearch.errors import ConfigError, ProposalError

DEFAULT_MODEL = "gpt-5.4"
NO_KEY = "no-key-needed"  # sent to local servers, which ignore it
_TOOL_CHOICES = ("auto", "required", "function", "none")


class OpenAIAgent:
    """Proposes experiments with an OpenAI model or an OpenAI-compatible server."""

    name = "openai"

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
        if tool_choice is None:
            tool_choice = "auto" if self.compatible else "required"
        if tool_choice not in _TOOL_CHOICES:
            raise ConfigError(
                f"openai: tool_choice must be one of {', '.join(_TOOL_CHOICES)}, got {tool_choice!r}"
            )
        key = api_key or os.environ.get("OPENAI_API_KEY") or (NO_KEY if self.compatible else None)
        if key is None:
            raise ConfigError(
                "openai: no API key: set OPENAI_API_KEY, or give --base-url for a local OpenAI-compatible server"
            )
        self.model = model or DEFAULT_MODEL
        self.max_tokens, self.max_failures, self.backoff = max_tokens, max_failures, backoff
        self.tool_choice, self.temperature = tool_choice, temperature
        self.history_tokens = history_tokens
        self.extra_body = dict(extra_body or {})
        self.prices = PriceTable(prices)
        self.client = openai.OpenAI(
            api_key=key, base_url=base_url, max_retries=max_retries, timeout=timeout
        )
        self._secrets = secret_values(extra=[api_key, key if key != NO_KEY else None])

    def propose(self, context: Context) -> Proposal:
        prompt = render(context, history_tokens=self.history_tokens)
        completion = call_with_retries(
            lambda: self._create(prompt),
            agent=self.name,
            errors=(openai.OpenAIError,),
            transient=_transient,
            max_failures=self.max_failures,
            backoff=self.backoff,
            secrets=self._secrets,
        )
        usage = self._usage(completion)
        try:
            proposal = self._parse(completion)
        except ProposalError as exc:
            raise ProposalError(redact(str(exc), self._secrets), usage=usage) from exc
        finish = completion.choices[0].finish_reason if completion.choices else None
        meta = {"model": self.model, "finish_reason": finish, "completion_id": completion.id}
        return replace(proposal, usage=usage, meta=meta)

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
            raise ProposalError(
                f"the reply was cut off at max_tokens ({self.max_tokens}); propose a smaller change"
            )
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
        u = completion.usage
        if u is None:
            counts = TokenCounts()
        else:
            details = u.prompt_tokens_details
            cached = (details.cached_tokens or 0) if details else 0
            counts = TokenCounts(input=u.prompt_tokens, output=u.completion_tokens, cached=cached)
        cost = self.prices.cost(self.model, counts)
        return Usage(counts.input, counts.cached, counts.output, cost)


def _transient(exc: Exception) -> bool:
    """Worth trying again: a connection error, a timeout, 408/409/429 or a 5xx."""
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in (408, 409, 429) or exc.status_code >= 500
    return isinstance(exc, openai.APIConnectionError)


__all__ = ["DEFAULT_MODEL", "OpenAIAgent"]
