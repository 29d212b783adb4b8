"""What the chat-API agents (``anthropic``, ``openai``) share: settings and one ``propose``.

A backend supplies four small methods — send the rendered prompt (``_create``), read the
tokens (``_usage``), turn the reply into a ``Proposal`` (``_parse``) and describe the
reply for the ledger (``_reply_meta``) — plus the SDK's error class and which errors are
worth retrying. Retries, secret redaction and usage on failed replies live here once.
"""

from __future__ import annotations

import math
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, ClassVar

from autoresearch.agents._base import Agent, Context, Proposal, Usage
from autoresearch.agents.prompt import (
    DEFAULT_HISTORY_TOKENS,
    Prompt,
    call_with_retries,
    redact,
    render,
)
from autoresearch.cost import PriceTable
from autoresearch.errors import AgentUnavailable, ConfigError, ProposalError


class ChatAgent(Agent, ABC):
    """A model behind a chat API that answers with one ``propose_change`` tool call."""

    name: str
    default_model: ClassVar[str]
    tool_choices: ClassVar[tuple[str, ...]]
    sdk_error: ClassVar[type[Exception]]

    def __init__(
        self,
        model: str | None,
        *,
        max_tokens: int,
        max_failures: int,
        backoff: float,
        tool_choice: str,
        temperature: float | None,
        history_tokens: int = DEFAULT_HISTORY_TOKENS,
        prices: Mapping[str, Mapping[str, float]] | None = None,
        extra_body: Mapping[str, Any] | None = None,
    ) -> None:
        if tool_choice not in self.tool_choices:
            choices = ", ".join(self.tool_choices)
            raise ConfigError(
                f"{self.name}: tool_choice must be one of {choices}, got {tool_choice!r}"
            )
        self.model = model or self.default_model
        self.max_tokens, self.max_failures, self.backoff = max_tokens, max_failures, backoff
        self.tool_choice, self.temperature = tool_choice, temperature
        self.history_tokens = history_tokens
        self.extra_body = dict(extra_body or {})
        self.prices = PriceTable(prices)
        self._secrets: list[str] = []
        self._cancelled = threading.Event()
        self._answered = False  # a server has answered this agent (with a reply or a status)

    def propose(self, context: Context) -> Proposal:
        prompt = render(context, history_tokens=self.history_tokens)
        try:
            reply = call_with_retries(
                lambda: self._create(prompt),
                agent=self.name,
                errors=(self.sdk_error,),
                transient=self._worth_retrying,
                max_failures=self.max_failures,
                backoff=self.backoff,
                secrets=self._secrets,
                cancelled=self._cancelled,
            )
        except AgentUnavailable as exc:
            if self._answered:
                raise
            raise AgentUnavailable(f"{exc} (no server has answered yet: check the address, "
                                   "--base-url, and the network)") from exc.__cause__  # fmt: skip
        self._answered = True
        usage = self._usage(reply)
        try:
            proposal = self._parse(reply)
        except ProposalError as exc:  # the tokens were spent all the same
            raise ProposalError(redact(str(exc), self._secrets), usage=usage) from exc
        return replace(proposal, usage=usage, meta={"model": self.model, **self._reply_meta(reply)})

    def _worth_retrying(self, exc: Exception) -> bool:
        """A transient error, once a server has answered: before that, an error with no status
        (nothing listens there, no such host, a timeout) is a wrong address more often than a
        blip, and waiting up to an hour on it helps nobody (the SDK has tried it again)."""
        self._answered = self._answered or getattr(exc, "status_code", None) is not None
        return self._transient(exc) and self._answered

    def cancel(self) -> None:
        self._cancelled.set()  # a call under way still ends (and is paid for); no wait after it

    def cut_off(self) -> ProposalError:
        return ProposalError(
            f"the reply was cut off at max_tokens ({self.max_tokens}); propose a smaller change"
        )

    # --- the backend's part ------------------------------------------------------------

    @abstractmethod
    def _create(self, prompt: Prompt) -> Any:
        """Send ``prompt``; return the SDK's reply object."""

    @abstractmethod
    def _usage(self, reply: Any) -> Usage:
        """Tokens and dollars of ``reply``."""

    @abstractmethod
    def _parse(self, reply: Any) -> Proposal:
        """The proposal in ``reply``, or ``ProposalError``."""

    @abstractmethod
    def _reply_meta(self, reply: Any) -> dict[str, Any]:
        """What the ledger keeps of ``reply`` besides the proposal (ids, stop reason)."""

    @abstractmethod
    def _transient(self, exc: Exception) -> bool:
        """Whether ``exc`` is worth another try (rate limits, 5xx, timeouts)."""


UNKNOWN_USAGE = Usage(cost_usd=None)  # a reply whose usage block is missing or malformed


def token_count(block: Any, name: str, *, optional: bool = False) -> int | None:
    """Field ``name`` of a usage block as a token count; None when null, missing or not a count.

    SDK models of a reply are built without validation, so a server's usage block can hold
    anything (``null``, ``"12"``, ``-1``): a bad count makes the usage unknown, never an error.
    An ``optional`` field (cache counts) that is absent or null counts 0.
    """
    value = getattr(block, name, None) if block is not None else None
    if value is None and optional:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value) or value < 0 or value != int(value):
        return None
    return int(value)


def transient_status(status: int | None, connection_error: bool) -> bool:
    """Worth trying again: a connection error, a timeout, 408/409/429 or a 5xx."""
    if status is not None:
        return status in (408, 409, 429) or status >= 500
    return connection_error
