"""Exchange: one request as a behaviour sees it, and the primitives to answer it.

Runs on: the fake plugin's connection thread that received the request.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.fakeplugin.driver import VolumeDriver

__all__ = ["Exchange"]

NOT_FOUND = b"404 page not found\n"  # what Go's net/http mux answers


class Exchange:
    """A received request (``method``, ``path``, ``body``) plus ways to answer it."""

    def __init__(self, handler: BaseHTTPRequestHandler, body: bytes, driver: VolumeDriver,
                 content_type: str, stopping: threading.Event) -> None:
        self.method = handler.command
        self.path = handler.path
        self.body = body
        self.driver = driver
        self.content_type = content_type
        self.stopping = stopping  # set by FakePlugin.stop(): waiting behaviours give up
        self._handler = handler

    def normal_answer(self) -> tuple[int, bytes, str]:
        """(status, body, content type) of the in-memory driver's answer."""
        if self.method != "POST":
            return 405, b"method not allowed\n", "text/plain; charset=utf-8"
        answer = self.driver.answer(self.path, self.body)
        if answer is None:
            return 404, NOT_FOUND, "text/plain; charset=utf-8"
        status, obj = answer
        return status, json.dumps(obj).encode(), self.content_type

    def send_json(self, obj: Any, status: int = 200) -> None:
        self.send(status, json.dumps(obj).encode())

    def send(self, status: int, body: bytes = b"", content_type: str | None = None) -> None:
        """A complete answer with a Content-Length."""
        self.send_head(status, len(body), content_type)
        self.write(body)

    def send_head(self, status: int, length: int, content_type: str | None = None,
                  headers: Iterable[tuple[str, str]] = ()) -> None:
        """Status line and headers announcing ``length`` body bytes."""
        self._handler.send_response(status)
        self._handler.send_header("Content-Type", content_type or self.content_type)
        self._handler.send_header("Content-Length", str(length))
        for key, value in headers:
            self._handler.send_header(key, value)
        self._handler.end_headers()

    def write(self, data: bytes) -> None:
        self._handler.wfile.write(data)

    def close(self) -> None:
        """Drop the connection after this exchange, whatever was (not) sent."""
        self._handler.close_connection = True
