"""A loopback server that speaks the OpenAI chat-completions protocol, for tests.

It answers `POST /v1/chat/completions` (and `GET /v1/models`) on 127.0.0.1. What it answers is scripted:

- `responder(request_json) -> str` gives the assistant's text for a normal answer;
- `rules` is a list of `(substring, actions)`: when the last user message contains `substring`, the
  n-th request carrying that exact prompt is answered with `actions[n]` (and normally once the list
  runs out);
- `sequence` maps the n-th request received overall (0-based) to an action (checked after `rules`).

Actions:

  ``"ok"``          a normal answer;
  ``"429"``         rate limited, with a ``Retry-After`` header;
  ``"500"``         internal server error;
  ``"timeout"``     wait `timeout_delay` seconds before answering (longer than the client's timeout);
  ``"malformed"``   HTTP 200 whose body is not JSON;
  ``"no_choices"``  HTTP 200, valid JSON, but without ``choices``;
  ``"401"``         invalid API key.

Every request is recorded in `requests` (prompt, action, authorization header), so tests can count
what reached the "API".

    with FakeOpenAI(responder=lambda req: "Yes") as server:
        client = OpenAI(base_url=server.base_url, api_key="test")
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def last_user_message(request: dict) -> str:
    """The content of the last user message of a chat-completions request."""
    for message in reversed(request.get("messages", [])):
        if message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else json.dumps(content)
    return ""


class FakeOpenAI:
    """Scripted OpenAI-compatible chat server on a free loopback port (see the module docstring)."""

    def __init__(
        self,
        responder: Callable[[dict], str] | None = None,
        rules: Sequence[tuple[str, Sequence[str]]] = (),
        sequence: dict[int, str] | None = None,
        timeout_delay: float = 2.0,
        retry_after: float = 0.01,
    ):
        self.responder = responder or (lambda request: "Yes")
        self.rules = [(pattern, list(actions)) for pattern, actions in rules]
        self.sequence = dict(sequence or {})
        self._received = 0
        self.timeout_delay = timeout_delay
        self.retry_after = retry_after
        self.requests: list[dict] = []
        self._seen: Counter = Counter()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------
    def __enter__(self) -> "FakeOpenAI":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, {"object": "list", "data": [{"id": "fake-model", "object": "model"}]})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                action = fake._action(body)
                with fake._lock:
                    fake.requests.append(
                        {"prompt": last_user_message(body), "action": action, "body": body,
                         "authorization": self.headers.get("Authorization")}
                    )
                if action == "429":
                    self._send(429, {"error": {"message": "rate limited", "type": "rate_limit"}},
                               {"Retry-After": str(fake.retry_after)})
                elif action == "401":
                    self._send(401, {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}})
                elif action == "500":
                    self._send(500, {"error": {"message": "internal error", "type": "server_error"}})
                elif action == "malformed":
                    self._send_raw(200, b"this is not json {", "application/json")
                elif action == "no_choices":
                    self._send(200, {"id": "x", "object": "chat.completion", "created": 0, "model": body.get("model")})
                else:
                    if action == "timeout":
                        time.sleep(fake.timeout_delay)
                    text = fake.responder(body)
                    prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
                    self._send(200, {
                        "id": f"chatcmpl-{len(fake.requests)}",
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": body.get("model", "fake-model"),
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": text}}],
                        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(text.split()),
                                  "total_tokens": prompt_tokens + len(text.split())},
                    })

            def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
                self._send_raw(status, json.dumps(payload).encode(), "application/json", headers)

            def _send_raw(self, status: int, data: bytes, content_type: str, headers: dict | None = None) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(data)))
                    for key, value in (headers or {}).items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # -- scripting ------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def _action(self, body: dict) -> str:
        prompt = last_user_message(body)
        with self._lock:
            n = self._seen[prompt]
            self._seen[prompt] += 1
            overall = self._received
            self._received += 1
        for pattern, actions in self.rules:
            if pattern in prompt:
                return actions[n] if n < len(actions) else "ok"
        return self.sequence.get(overall, "ok")

    def count(self, action: str | None = None) -> int:
        """Number of requests received (with the given action, if any)."""
        with self._lock:
            return sum(1 for r in self.requests if action is None or r["action"] == action)
