"""Calling the control app two ways: straight, with a ``Request`` as our server builds
it, and over a real unix socket with http.client (no third-party client in the loop)."""

from __future__ import annotations

import io
import json
import socket
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import requests
from requests_unixsocket.adapters import UnixAdapter

from tests.harness import UnixHTTPConnection
from volplugd.control.routing import Application, Request
from volplugd.serving import Peer

ROOT = Peer(pid=4242, uid=0, gid=0)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error(self) -> tuple[str, str]:
        doc = self.json()["error"]
        return doc["code"], doc["message"]


def _payload(body: bytes | Mapping[str, Any] | None) -> bytes:
    if body is None:
        return b""
    return body if isinstance(body, bytes) else json.dumps(body).encode()


def call(app: Application, method: str, target: str, *,
         body: bytes | Mapping[str, Any] | None = None, peer: Peer | None = ROOT,
         groups: frozenset[int] | None = None, **hooks: Any) -> Answer:
    """One request straight into the app, as our server builds it (``hooks``: more
    ``Request`` fields, e.g. ``follow_slot``), a stream read to its end."""
    path, _, query = target.partition("?")
    data = _payload(body)
    if groups is None:
        groups = frozenset() if peer is None else frozenset({peer.gid})
    reply = app(Request(method, path, query, len(data), io.BytesIO(data), peer, groups,
                        **hooks))
    content = reply.body
    try:
        out = content if isinstance(content, bytes) else b"".join(content)
    finally:
        close = getattr(content, "close", None)
        if close is not None:
            close()
    headers = dict(reply.headers)
    if reply.content_type is not None:
        headers["Content-Type"] = reply.content_type
    return Answer(reply.status, headers, out)


def fetch(sock_path: str, method: str, target: str, *,
          body: bytes | Mapping[str, Any] | None = None,
          headers: Mapping[str, str] | None = None, timeout: float = 10.0) -> Answer:
    """One request on a fresh connection through the real server."""
    conn = UnixHTTPConnection(sock_path, timeout)
    try:
        conn.request(method, target, body=_payload(body) if body is not None else None,
                     headers=dict(headers or {}))
        resp = conn.getresponse()
        return Answer(resp.status, dict(resp.getheaders()), resp.read())
    finally:
        conn.close()


def raw_exchange(sock_path: str, data: bytes, timeout: float = 10.0, *,
                 half_close: bool = False) -> bytes:
    """Send raw bytes, read until the server closes: for protocol-level cases.
    ``half_close``: shut our sending side after the bytes (the server sees the end)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(sock_path)
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


def json_of(raw: bytes) -> Any:
    return json.loads(raw.split(b"\r\n\r\n", 1)[1])


class _OneSocketAdapter(UnixAdapter):  # type: ignore[misc]
    """Sends every request of the session to one unix socket, whatever the URL's host."""

    def __init__(self, path: str):
        super().__init__(timeout=30)
        self._socket_url = "http+unix://" + urllib.parse.quote(path, safe="")

    def get_connection(self, url: str, proxies: Any = None) -> Any:
        return super().get_connection(self._socket_url, proxies)


def unix_session(path: str) -> requests.Session:
    """A requests Session whose http://localhost/... requests go to ``path``: lets
    tools that want a base URL (schemathesis) talk to the control socket."""
    session = requests.Session()
    session.trust_env = False
    session.mount("http://localhost", _OneSocketAdapter(path))
    return session
