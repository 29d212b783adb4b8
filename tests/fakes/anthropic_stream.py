"""A scripted model behind the Anthropic Messages API with streaming, for the real Claude Code.

Each experiment's conversation follows a script: a list of assistant turns, each a list of
content blocks (``{"text": ...}`` or ``{"tool": NAME, "input": {...}}``); the turn played is
the number of tool results already in the request. Paths in tool inputs may use
``{cwd}`` (Claude Code's working directory, read from its system prompt) and
``{description_file}`` (read from our brief); one turn per tool call, since Claude Code merges
the turns of one conversation into few messages. Requests without tools (Claude Code's side
queries) get a one-word text answer. Every request is kept in ``requests``.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

Turn = Sequence[Mapping[str, Any]]


class ScriptedAnthropic:
    """``with ScriptedAnthropic({1: [turn, ...], 2: [...]}) as server: ... server.url``."""

    def __init__(self, scripts: Mapping[int, Sequence[Turn]], *, model: str = "claude-x") -> None:
        self.scripts, self.model = scripts, model
        self.requests: list[dict[str, Any]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def answer(self, body: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
        """(content blocks, stop reason) for one request."""
        self.requests.append(body)
        if not body.get("tools"):
            return [{"type": "text", "text": "ok"}], "end_turn"
        text = json.dumps(body)
        experiment = re.search(r"# Research experiment #(\d+)", text)
        script = self.scripts.get(int(experiment.group(1)) if experiment else 0, [])
        turn = text.count('"type": "tool_result"')  # Claude Code merges consecutive turns
        if turn >= len(script):
            return [{"type": "text", "text": "Done."}], "end_turn"
        values = {
            "cwd": _found(r"[Ww]orking directory: ([^\s\\]+)", text),
            "description_file": _found(r"line of the file (\S+?),", text),
        }
        blocks = [
            _block(b, len(self.requests) * 10 + i, values) for i, b in enumerate(script[turn])
        ]
        return blocks, "tool_use" if any(b["type"] == "tool_use" for b in blocks) else "end_turn"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                blocks, stop = server.answer(body)
                if body.get("stream"):
                    self._send("text/event-stream", _events(blocks, stop, server.model))
                else:
                    self._send(
                        "application/json",
                        json.dumps(_message(blocks, stop, server.model)).encode(),
                    )

            def _send(self, kind: str, data: bytes) -> None:
                self.send_response(200)
                self.send_header("content-type", kind)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler


def _found(pattern: str, text: str) -> str:
    match = re.search(pattern, text)
    return match.group(1) if match else ""


def _block(spec: Mapping[str, Any], index: int, values: Mapping[str, str]) -> dict[str, Any]:
    if "text" in spec:
        return {"type": "text", "text": spec["text"]}
    given = {k: v.format(**values) if isinstance(v, str) else v for k, v in spec["input"].items()}
    return {"type": "tool_use", "id": f"toolu_{index:04d}", "name": spec["tool"], "input": given}


USAGE = {"input_tokens": 120, "output_tokens": 30, "cache_read_input_tokens": 40,
         "cache_creation_input_tokens": 0}  # fmt: skip


def _message(blocks: list[dict[str, Any]], stop: str, model: str) -> dict[str, Any]:
    return {"id": "msg_01", "type": "message", "role": "assistant", "model": model,
            "content": blocks, "stop_reason": stop, "stop_sequence": None, "usage": USAGE}  # fmt: skip


def _events(blocks: list[dict[str, Any]], stop: str, model: str) -> bytes:
    """The server-sent events of one streamed message."""
    out: list[str] = []

    def event(name: str, data: dict[str, Any]) -> None:
        out.append(f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n")

    start = {
        **_message([], stop, model),
        "stop_reason": None,
        "usage": {**USAGE, "output_tokens": 1},
    }
    event("message_start", {"message": start})
    for i, block in enumerate(blocks):
        if block["type"] == "text":
            event(
                "content_block_start", {"index": i, "content_block": {"type": "text", "text": ""}}
            )
            delta = {"type": "text_delta", "text": block["text"]}
        else:
            opened = {**block, "input": {}}
            event("content_block_start", {"index": i, "content_block": opened})
            delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
        event("content_block_delta", {"index": i, "delta": delta})
        event("content_block_stop", {"index": i})
    event("message_delta", {"delta": {"stop_reason": stop, "stop_sequence": None},
                            "usage": {"output_tokens": USAGE["output_tokens"]}})  # fmt: skip
    event("message_stop", {})
    return "".join(out).encode()
