"""A real HTTP server on 127.0.0.1 that must never be contacted: it serves an entity / an empty schema
and counts every request, so hostile-XML tests can assert that nothing was fetched."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Loopback:
    url: str
    hits: list[str] = field(default_factory=list)


@contextmanager
def serve_loopback() -> Iterator[Loopback]:
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            body = b'<!ENTITY leak "LEAKED-FROM-NETWORK">'
            if self.path.endswith(".xsd"):
                body = b'<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema"/>'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield Loopback(f"http://127.0.0.1:{server.server_address[1]}", hits)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
