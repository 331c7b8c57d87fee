"""A local OpenAI-compatible chat completions server for tests: each request's body is kept, and the reply is
what ``reply(body)`` returns (the ``choices`` and ``usage`` of a chat completion)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class OpenAIStandIn:
    """``with OpenAIStandIn(reply) as server:`` serves ``server.url`` (up to /v1); ``server.bodies`` are the requests."""

    def __init__(self, reply: Callable[[dict[str, Any]], dict[str, Any]]):
        self.bodies: list[dict[str, Any]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.bodies.append(body)
                data = json.dumps(reply(body)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> OpenAIStandIn:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def completion(text: str, finish_reason: str = "stop", **choice: Any) -> dict[str, Any]:
    """A one-choice chat completion saying ``text`` (``choice`` adds fields such as ``logprobs``)."""
    return {"choices": [{"index": 0, "finish_reason": finish_reason, "message": {"role": "assistant", "content": text},
                         **choice}], "usage": {"completion_tokens": 1}}
