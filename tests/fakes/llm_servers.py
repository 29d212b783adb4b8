"""Fake Anthropic Messages and OpenAI Chat Completions servers on 127.0.0.1, for the real SDKs.

Each server answers from a script (``queue``), then from ``default`` (a function of the
request body), and records every request. A ``Reply`` can be a success, an error with
headers (429 + ``retry-after``), or a hang (no answer until the client gives up).
"""

from __future__ import annotations

import itertools
import json
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

_ids = itertools.count(1)


@dataclass
class Reply:
    """One HTTP answer. ``hang`` > 0: wait that long (or until the server stops) first."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    hang: float = 0.0


@dataclass
class Request:
    """One request the fake received."""

    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: Any

    @property
    def retry_count(self) -> int:
        """The SDK's own retry number (``x-stainless-retry-count``), 0 for a first try."""
        return int(self.headers.get("x-stainless-retry-count", "0") or 0)


class FakeServer:
    """An HTTP server in a thread that answers POSTs from a script."""

    route = "/"

    def __init__(
        self, default: Callable[[Any], Reply] | None = None, *, key: str | None = None
    ) -> None:
        self.script: deque[Reply] = deque()
        self.default = default
        self.key = key  # when set, requests without it are refused with 401
        self.requests: list[Request] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def queue(self, *replies: Reply) -> Self:
        self.script.extend(replies)
        return self

    def close(self) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- to override ---------------------------------------------------------------------

    def authorized(self, headers: Mapping[str, str]) -> bool:
        return True

    def unauthorized(self) -> Reply:
        return Reply(401, {"error": "unauthorized"})

    def not_found(self, path: str) -> Reply:
        return Reply(404, {"error": f"no route {path}"})

    # --- serving -------------------------------------------------------------------------------

    def answer(self, request: Request) -> Reply:
        if request.path.split("?")[0] != self.route:
            return self.not_found(request.path)
        if self.key is not None and not self.authorized(request.headers):
            return self.unauthorized()
        with self._lock:
            if self.script:
                return self.script.popleft()
        if self.default is None:
            return Reply(500, {"error": "the fake server has no reply scripted"})
        return self.default(request.body)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw) if raw else None
                except json.JSONDecodeError:
                    body = raw.decode("utf-8", "replace")
                headers = {k.lower(): v for k, v in self.headers.items()}
                request = Request("POST", self.path, headers, body)
                with server._lock:
                    server.requests.append(request)
                reply = server.answer(request)
                if reply.hang:
                    server._stop.wait(reply.hang)
                    self.close_connection = True
                    return
                data = json.dumps(reply.body).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        return Handler


# --- Anthropic Messages --------------------------------------------------------------------------


class FakeAnthropic(FakeServer):
    """``POST /v1/messages``; the client's base_url is ``url``."""

    route = "/v1/messages"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def authorized(self, headers: Mapping[str, str]) -> bool:
        # SDKs send the key as x-api-key or, in newer versions, as a bearer token
        return self.key in (
            headers.get("x-api-key"),
            headers.get("authorization", "").removeprefix("Bearer "),
        )

    def unauthorized(self) -> Reply:
        return self.error(401, "authentication_error", "invalid x-api-key")

    @staticmethod
    def message(
        content: list[dict[str, Any]],
        *,
        stop_reason: str = "tool_use",
        input_tokens: int = 1000,
        output_tokens: int = 100,
        cache_read: int = 0,
        cache_write: int = 0,
        model: str = "claude-sonnet-5-5",
    ) -> Reply:
        return Reply(
            200,
            {
                "id": f"msg_{next(_ids):08d}",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": content,
                "stop_reason": stop_reason,
                "stop_sequence": None,
                "usage": {
                    "input_tokens": input_tokens,
                    "output_tokens": output_tokens,
                    "cache_creation_input_tokens": cache_write,
                    "cache_read_input_tokens": cache_read,
                },
            },
            {"request-id": f"req_{next(_ids):08d}"},
        )

    @classmethod
    def tool(cls, arguments: Any, *, text: str = "", **usage: Any) -> Reply:
        """A reply that calls ``propose_change`` with ``arguments`` (any JSON value)."""
        content: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
        content.append(
            {
                "type": "tool_use",
                "id": f"toolu_{next(_ids):08d}",
                "name": "propose_change",
                "input": arguments,
            }
        )
        return cls.message(content, **usage)

    @classmethod
    def text(cls, text: str, **usage: Any) -> Reply:
        return cls.message([{"type": "text", "text": text}], stop_reason="end_turn", **usage)

    @staticmethod
    def error(
        status: int, kind: str, message: str = "", headers: dict[str, str] | None = None
    ) -> Reply:
        body = {"type": "error", "error": {"type": kind, "message": message or kind}}
        return Reply(status, body, dict(headers or {}))


# --- OpenAI Chat Completions --------------------------------------------------------------------------


class FakeOpenAI(FakeServer):
    """``POST /v1/chat/completions``; the client's base_url is ``url``."""

    route = "/v1/chat/completions"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def authorized(self, headers: Mapping[str, str]) -> bool:
        return headers.get("authorization") == f"Bearer {self.key}"

    def unauthorized(self) -> Reply:
        return self.error(
            401, "invalid_request_error", "Incorrect API key provided", code="invalid_api_key"
        )

    @staticmethod
    def completion(
        message: dict[str, Any],
        *,
        finish_reason: str = "tool_calls",
        prompt_tokens: int = 1000,
        completion_tokens: int = 100,
        cached_tokens: int = 0,
        model: str = "gpt-5.4",
    ) -> Reply:
        return Reply(
            200,
            {
                "id": f"chatcmpl-{next(_ids):08d}",
                "object": "chat.completion",
                "created": 1_790_000_000,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "finish_reason": finish_reason,
                        "logprobs": None,
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                    "prompt_tokens_details": {"cached_tokens": cached_tokens, "audio_tokens": 0},
                    "completion_tokens_details": {"reasoning_tokens": 0},
                },
            },
            {"x-request-id": f"req_{next(_ids):08d}"},
        )

    @classmethod
    def tool(cls, arguments: Any, *, text: str | None = None, **usage: Any) -> Reply:
        """A reply that calls ``propose_change``; a str ``arguments`` is sent verbatim (malformed JSON too)."""
        raw = arguments if isinstance(arguments, str) else json.dumps(arguments)
        call = {
            "id": f"call_{next(_ids):08d}",
            "type": "function",
            "function": {"name": "propose_change", "arguments": raw},
        }
        message = {"role": "assistant", "content": text, "tool_calls": [call], "refusal": None}
        return cls.completion(message, **usage)

    @classmethod
    def text(cls, text: str, **usage: Any) -> Reply:
        message = {"role": "assistant", "content": text, "refusal": None}
        return cls.completion(message, finish_reason="stop", **usage)

    @staticmethod
    def error(
        status: int,
        kind: str,
        message: str = "",
        headers: dict[str, str] | None = None,
        code: str | None = None,
    ) -> Reply:
        body = {"error": {"message": message or kind, "type": kind, "param": None, "code": code}}
        return Reply(status, body, dict(headers or {}))


def edit_args(
    description: str = "set X to 3.0",
    search: str = "X = 1.0",
    replace: str = "X = 3.0",
    path: str = "params.py",
) -> dict[str, Any]:
    """``propose_change`` arguments with one search/replace edit."""
    return {
        "description": description,
        "rationale": "the score is smallest at X = 3",
        "edits": [{"path": path, "search": search, "replace": replace}],
    }
