"""A test KSYS webhook: a real HTTP server on loopback that records every event it is sent."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class KsysSink:
    def __init__(self, fail: bool = False) -> None:
        self.events: list[dict] = []
        self.fail = fail
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if sink.fail:
                    self.send_response(503)
                    self.end_headers()
                    return
                sink.events.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/ksys"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def kinds(self) -> list[str]:
        return [e["event"] for e in self.events]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
