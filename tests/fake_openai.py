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

The Batch API is served too (`POST /v1/files`, `POST /v1/batches`, `GET /v1/batches/{id}`,
`GET /v1/files/{id}/content`): a batch is `validating`, then `in_progress`, and finishes at its
`batch_polls`-th retrieval; each of its lines is answered like a chat request (the same `rules`, so a
scripted "500" becomes an error line) and recorded in `requests` with `"batch": id`. `batch_outcomes[n]`
scripts the n-th batch: ``"completed"`` (default), ``"failed"`` (validation errors, no output),
``"expired"`` (only its first half answered), ``"stuck"`` (never finishes). `batch_http_errors`, e.g.
``{"retrieve": [500, 500], "files": [401]}``, answers the next calls of those Batch API routes (``files``,
``batches``, ``retrieve``, ``content``) with those statuses.

    with FakeOpenAI(responder=lambda req: "Yes") as server:
        client = OpenAI(base_url=server.base_url, api_key="test")
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from email.parser import BytesParser
from email.policy import default
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
        batch_polls: int = 2,
        batch_outcomes: Sequence[str] = (),
        batch_http_errors: dict[str, Sequence[int]] | None = None,
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
        self.batch_polls = batch_polls
        self.batch_outcomes = list(batch_outcomes)
        self.batch_http_errors = {route: list(codes) for route, codes in (batch_http_errors or {}).items()}
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
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
                path = self.path.split("?")[0].rstrip("/")
                parts = path.split("/")
                if path.endswith("/models"):
                    self._send(200, {"object": "list", "data": [{"id": "fake-model", "object": "model"}]})
                elif len(parts) >= 2 and parts[-2] == "batches" and parts[-1] in fake.batches:
                    if not self._scripted_error("retrieve"):
                        self._send(200, fake._retrieve_batch(parts[-1]))
                elif path.endswith("/content") and parts[-2] in fake.files:
                    if not self._scripted_error("content"):
                        self._send_raw(200, fake.files[parts[-2]], "application/octet-stream")
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                path = self.path.rstrip("/")
                if path.endswith("/files"):
                    if not self._scripted_error("files"):
                        self._send(200, fake._store_file(raw, self.headers.get("Content-Type", "")))
                    return
                body = json.loads(raw or b"{}")
                if path.endswith("/batches"):
                    if not self._scripted_error("batches"):
                        self._send(200, fake._create_batch(body))
                    return
                if not path.endswith("/chat/completions"):
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
                    self._send(200, fake._completion(body))

            def _scripted_error(self, route: str) -> bool:
                with fake._lock:
                    codes = fake.batch_http_errors.get(route)
                    status = codes.pop(0) if codes else None
                if status is None:
                    return False
                self._send(status, {"error": {"message": f"scripted {status}", "type": "server_error"}})
                return True

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

    # -- answers ----------------------------------------------------------------------------------
    def _completion(self, body: dict) -> dict:
        text = self.responder(body)
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
        return {
            "id": f"chatcmpl-{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fake-model"),
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(text.split()),
                      "total_tokens": prompt_tokens + len(text.split())},
        }

    # -- the Batch API ------------------------------------------------------------------------------
    def _store_file(self, raw: bytes, content_type: str) -> dict:
        message = BytesParser(policy=default).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + raw)
        data = next(part.get_payload(decode=True) for part in message.iter_parts()
                    if part.get_param("name", header="content-disposition") == "file")
        with self._lock:
            file_id = f"file-{len(self.files) + 1}"
            self.files[file_id] = data
        return {"id": file_id, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                "filename": "input.jsonl", "purpose": "batch", "status": "processed"}

    def _create_batch(self, body: dict) -> dict:
        with self._lock:
            n = len(self.batches)
            batch = {"id": f"batch_{n + 1}", "object": "batch", "endpoint": body["endpoint"],
                     "input_file_id": body["input_file_id"], "completion_window": body["completion_window"],
                     "status": "validating", "created_at": int(time.time()), "metadata": body.get("metadata"),
                     "request_counts": {"completed": 0, "failed": 0, "total": 0}, "_polls": 0,
                     "_outcome": self.batch_outcomes[n] if n < len(self.batch_outcomes) else "completed"}
            self.batches[batch["id"]] = batch
        return {k: v for k, v in batch.items() if not k.startswith("_")}

    def _retrieve_batch(self, batch_id: str) -> dict:
        with self._lock:
            batch = self.batches[batch_id]
            batch["_polls"] += 1
            finishing = batch["status"] in ("validating", "in_progress") and batch["_polls"] >= self.batch_polls
            if batch["status"] == "validating" and not finishing:
                batch["status"] = "in_progress"
        if finishing and batch["_outcome"] != "stuck":
            self._finish_batch(batch)
        return {k: v for k, v in batch.items() if not k.startswith("_")}

    def _finish_batch(self, batch: dict) -> None:
        lines = [json.loads(line) for line in self.files[batch["input_file_id"]].decode().splitlines() if line.strip()]
        if batch["_outcome"] == "failed":
            batch.update(status="failed", errors={"object": "list", "data": [
                {"code": "invalid_request", "message": "scripted validation failure", "line": 1}]})
            return
        answered = lines[: len(lines) // 2] if batch["_outcome"] == "expired" else lines
        out, errors = [], []
        for line in answered:
            body = line["body"]
            action = self._action(body)
            with self._lock:
                self.requests.append({"prompt": last_user_message(body), "action": action, "body": body,
                                      "authorization": None, "batch": batch["id"]})
            status = {"429": 429, "500": 500, "401": 401}.get(action, 200)
            if status != 200:
                errors.append({"id": f"req_{len(errors)}", "custom_id": line["custom_id"],
                               "response": {"status_code": status, "body": {"error": {"message": f"scripted {action}"}}},
                               "error": None})
            else:
                response = ({"id": "x", "object": "chat.completion"} if action in ("malformed", "no_choices")
                            else self._completion(body))
                out.append({"id": f"req_{len(out)}", "custom_id": line["custom_id"],
                            "response": {"status_code": 200, "request_id": "r", "body": response}, "error": None})
        with self._lock:
            for name, rows in (("output_file_id", out), ("error_file_id", errors)):
                if rows:
                    file_id = f"file-{len(self.files) + 1}"
                    self.files[file_id] = "".join(json.dumps(r) + "\n" for r in rows).encode()
                    batch[name] = file_id
            batch.update(status="expired" if batch["_outcome"] == "expired" else "completed",
                         request_counts={"completed": len(out), "failed": len(errors), "total": len(lines)})

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
