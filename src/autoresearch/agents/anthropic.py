"""Claude through the official ``anthropic`` SDK (Messages API, one tool call a proposal).

The stable prefix (rules, brief, read-only files) and the editable files carry
``cache_control`` breakpoints, so a night of experiments reads them from the prompt cache
instead of paying for them every time. Rate limits, 5xx and timeouts are retried by the
SDK (``max_retries``, honouring ``retry-after``); ``max_failures`` failed calls in a row
stop the session (``AgentUnavailable``). An unusable reply is a ``ProposalError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import anthropic
from anthropic.types import CacheControlEphemeralParam, Message, TextBlockParam, UserMessageParam

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

DEFAULT_MODEL = "claude-sonnet-5-5"
MAX_NONSTREAMING_TOKENS = 21_000  # above this the SDK insists on streaming
_TOOL_CHOICES = ("auto", "any", "tool")
_CACHE: CacheControlEphemeralParam = {"type": "ephemeral"}


class AnthropicAgent:
    """Proposes experiments with a Claude model."""

    name = "anthropic"

    def __init__(
        self,
        model: str | None = None,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        max_tokens: int = 16_000,
        max_retries: int = 3,
        timeout: float = 300.0,
        max_failures: int = 5,
        backoff: float = 60.0,
        tool_choice: str = "auto",
        temperature: float | None = None,
        history_tokens: int = DEFAULT_HISTORY_TOKENS,
        prices: Mapping[str, Mapping[str, float]] | None = None,
        extra_body: Mapping[str, Any] | None = None,
    ) -> None:
        if not 0 < max_tokens <= MAX_NONSTREAMING_TOKENS:
            raise ConfigError(
                f"anthropic: max_tokens must be between 1 and {MAX_NONSTREAMING_TOKENS}, got {max_tokens}"
            )
        if tool_choice not in _TOOL_CHOICES:
            raise ConfigError(
                f"anthropic: tool_choice must be one of {', '.join(_TOOL_CHOICES)}, got {tool_choice!r}"
            )
        self.model = model or DEFAULT_MODEL
        self.max_tokens, self.max_failures, self.backoff = max_tokens, max_failures, backoff
        self.tool_choice, self.temperature = tool_choice, temperature
        self.history_tokens = history_tokens
        self.extra_body = dict(extra_body or {})
        self.prices = PriceTable(prices)
        self.client = _client(api_key, base_url, max_retries, timeout)
        self._secrets = secret_values(extra=[api_key, self.client.api_key, self.client.auth_token])

    def propose(self, context: Context) -> Proposal:
        prompt = render(context, history_tokens=self.history_tokens)
        message = call_with_retries(
            lambda: self._create(prompt),
            agent=self.name,
            errors=(anthropic.AnthropicError,),
            transient=_transient,
            max_failures=self.max_failures,
            backoff=self.backoff,
            secrets=self._secrets,
        )
        usage = self._usage(message)
        try:
            proposal = self._parse(message)
        except ProposalError as exc:
            raise ProposalError(redact(str(exc), self._secrets), usage=usage) from exc
        meta = {"model": self.model, "stop_reason": message.stop_reason, "message_id": message.id}
        return replace(proposal, usage=usage, meta=meta)

    def _create(self, prompt: Prompt) -> Message:
        blocks: list[TextBlockParam] = []
        if prompt.code:  # the editable files change only on a keep: a second cache breakpoint
            blocks.append({"type": "text", "text": prompt.code, "cache_control": _CACHE})
        blocks.append({"type": "text", "text": prompt.variable})
        user: UserMessageParam = {"role": "user", "content": blocks}
        tool_choice: Any = {"type": self.tool_choice}
        if self.tool_choice == "tool":
            tool_choice["name"] = TOOL_NAME
        extra = dict(self.extra_body)  # fields this SDK version has no argument for
        if self.temperature is not None:
            extra["temperature"] = self.temperature
        message: Message = self.client.messages.create(
            model=self.model,
            max_tokens=self.max_tokens,
            system=[{"type": "text", "text": prompt.system, "cache_control": _CACHE}],
            tools=[
                {"name": TOOL_NAME, "description": TOOL_DESCRIPTION, "input_schema": TOOL_SCHEMA}
            ],
            tool_choice=tool_choice,
            messages=[user],
            extra_body=extra or None,
        )
        return message

    def _parse(self, message: Message) -> Proposal:
        if message.stop_reason == "max_tokens":
            raise ProposalError(
                f"the reply was cut off at max_tokens ({self.max_tokens}); propose a smaller change"
            )
        if message.stop_reason == "refusal":
            raise ProposalError("the model refused to answer")
        text = "\n".join(b.text for b in message.content if b.type == "text").strip()
        calls = [b for b in message.content if b.type == "tool_use" and b.name == TOOL_NAME]
        if not calls:
            return parse_text_reply(text)
        proposal = parse_proposal(calls[0].input)
        return proposal if proposal.rationale or not text else replace(proposal, rationale=text)

    def _usage(self, message: Message) -> Usage:
        u = message.usage
        read, write = u.cache_read_input_tokens or 0, u.cache_creation_input_tokens or 0
        counts = TokenCounts(
            input=u.input_tokens + read + write,
            output=u.output_tokens,
            cached=read,
            cache_write=write,
        )
        cost = self.prices.cost(self.model, counts)
        return Usage(
            input_tokens=counts.input,
            cached_tokens=read,
            output_tokens=u.output_tokens,
            cost_usd=cost,
        )


def _client(
    api_key: str | None, base_url: str | None, max_retries: int, timeout: float
) -> anthropic.Anthropic:
    """The SDK client; the key from ``api_key`` or ANTHROPIC_API_KEY, as the SDK resolves it."""
    try:
        client = anthropic.Anthropic(
            api_key=api_key, base_url=base_url, max_retries=max_retries, timeout=timeout
        )
    except anthropic.AnthropicError as exc:
        raise ConfigError(
            f"anthropic: no usable credentials ({exc}); set ANTHROPIC_API_KEY"
        ) from exc
    if not (client.api_key or client.auth_token or getattr(client, "credentials", None)):
        raise ConfigError("anthropic: no API key: set ANTHROPIC_API_KEY (or pass api_key)")
    return client


def _transient(exc: Exception) -> bool:
    """Worth trying again: a connection error, a timeout, 408/409/429 or a 5xx."""
    if isinstance(exc, anthropic.APIStatusError):
        return exc.status_code in (408, 409, 429) or exc.status_code >= 500
    return isinstance(exc, anthropic.APIConnectionError)


__all__ = ["DEFAULT_MODEL", "AnthropicAgent"]
