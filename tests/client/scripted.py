"""A loopback HTTP server that answers from a script, for the SDK's units:
what real servers and proxies send only now and then (429, 503 from a proxy,
a lost connection) on demand."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Answer:
    status: int
    body: object = None
    headers: dict = field(default_factory=dict)
    content_type: str = "application/json"


@dataclass
class Seen:
    method: str
    path: str
    headers: dict
    body: bytes


class Scripted:
    def __init__(self) -> None:
        self.answers: list[Answer] = []
        self.seen: list[Seen] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                owner.seen.append(
                    Seen(
                        self.command,
                        self.path,
                        dict(self.headers),
                        self.rfile.read(length),
                    )
                )
                answer = owner.answers.pop(0) if owner.answers else Answer(500)
                text = (
                    answer.body
                    if isinstance(answer.body, str)
                    else json.dumps(answer.body)
                )
                data = text.encode()
                self.send_response(answer.status)
                self.send_header("Content-Type", answer.content_type)
                self.send_header("Content-Length", str(len(data)))
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _answer

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, args=(0.05,), daemon=True
        )
        self.thread.start()

    def then(self, *answers: Answer) -> Scripted:
        self.answers.extend(answers)
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
