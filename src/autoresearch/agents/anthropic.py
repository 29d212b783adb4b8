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

DEFAULT_MODEL = "claude-sonnet-5-5"
MAX_NONSTREAMING_TOKENS = 21_000  # above this the SDK insists on streaming
_CACHE: CacheControlEphemeralParam = {"type": "ephemeral"}


class AnthropicAgent(ChatAgent):
    """Proposes experiments with a Claude model."""

    name = "anthropic"
    default_model = DEFAULT_MODEL
    tool_choices = ("auto", "any", "tool")
    sdk_error = anthropic.AnthropicError

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
        super().__init__(
            model, max_tokens=max_tokens, max_failures=max_failures, backoff=backoff,
            tool_choice=tool_choice, temperature=temperature, history_tokens=history_tokens,
            prices=prices, extra_body=extra_body,
        )  # fmt: skip
        self.client = _client(api_key, base_url, max_retries, timeout)
        self._secrets = secret_values(extra=[api_key, self.client.api_key, self.client.auth_token])

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

    def _transient(self, exc: Exception) -> bool:
        status = exc.status_code if isinstance(exc, anthropic.APIStatusError) else None
        return transient_status(status, isinstance(exc, anthropic.APIConnectionError))

    def _reply_meta(self, message: Message) -> dict[str, Any]:
        return {"stop_reason": message.stop_reason, "message_id": message.id}

    def _parse(self, message: Message) -> Proposal:
        if message.stop_reason == "max_tokens":
            raise self.cut_off()
        if message.stop_reason == "refusal":
            raise ProposalError("the model refused to answer")
        text = "\n".join(b.text for b in message.content if b.type == "text").strip()
        calls = [b for b in message.content if b.type == "tool_use" and b.name == TOOL_NAME]
        if not calls:
            return parse_text_reply(text)
        proposal = parse_proposal(calls[0].input)
        return proposal if proposal.rationale or not text else replace(proposal, rationale=text)

    def _usage(self, message: Message) -> Usage:
        u = getattr(message, "usage", None)
        inp, out = token_count(u, "input_tokens"), token_count(u, "output_tokens")
        read = token_count(u, "cache_read_input_tokens", optional=True)
        write = token_count(u, "cache_creation_input_tokens", optional=True)
        if inp is None or out is None or read is None or write is None:
            return UNKNOWN_USAGE
        counts = TokenCounts(input=inp + read + write, output=out, cached=read, cache_write=write)
        cost = self.prices.cost(self.model, counts)
        return Usage(input_tokens=counts.input, cached_tokens=read, output_tokens=out, cost_usd=cost)


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


__all__ = ["DEFAULT_MODEL", "AnthropicAgent"]
