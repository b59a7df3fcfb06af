"""HTTP transport to one plugin: a keep-alive connection pool, set up by ``requests``'
(or ``requests-unixsocket``'s) adapter, whose sockets obey a total deadline per call,
plus a body reader with a size cap. Internal to the client.

``requests``' ``timeout=`` bounds each socket wait, not the call (requests #4276): a
plugin that drips one byte a second never times out. So every socket this transport
opens is a *deadline socket*: before each wait (connect, send, receive — headers and
body alike) it sets its own timeout to the time left until the calling thread's
deadline, and fails with ``TimeoutError`` once none is left. The deadline travels in a
thread-local set around the call; a connection serves one call at a time, on the
calling thread, so the thread-local is always the right one.

Unix sockets go through ``requests-unixsocket``'s adapter, pool and connection classes;
TCP and TLS through ``requests``' own ``HTTPAdapter``; both with deadline sockets.

Runs on: the threads that call PluginClient methods.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import requests
import requests_unixsocket
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.response import BaseHTTPResponse
from urllib3.util import Retry, Timeout

from volplugd.plugin.address import PluginAddress, TLSConfig

__all__ = ["BodyTooLarge", "Transport", "deadline", "deadline_passed", "read_body"]

CHUNK = 64 * 1024
_NO_RETRIES = Retry(0, read=False)  # what requests' adapter passes: fail at once
_local = threading.local()


class BodyTooLarge(Exception):
    """The answer's body is larger than the cap; ``declared`` when Content-Length said so."""

    def __init__(self, limit: int, declared: int | None = None) -> None:
        super().__init__(limit, declared)
        self.limit = limit
        self.declared = declared


@contextmanager
def deadline(at: float) -> Iterator[None]:
    """Every socket wait on this thread ends by ``at`` (``time.monotonic()``)."""
    _local.deadline = at
    try:
        yield
    finally:
        _local.deadline = None


def deadline_passed() -> bool:
    """Whether this thread's deadline (if any) is over."""
    at = getattr(_local, "deadline", None)
    return at is not None and time.monotonic() >= at


def _arm(sock: socket.socket) -> None:
    """Set ``sock``'s timeout to the time left, or fail if there is none."""
    at = getattr(_local, "deadline", None)
    if at is None:
        return
    left = at - time.monotonic()
    if left <= 0:
        raise TimeoutError("deadline passed")
    sock.settimeout(left)


class DeadlineSocket(socket.socket):
    """A socket whose every wait is bounded by the calling thread's deadline."""

    __slots__ = ()

    def connect(self, address: Any) -> None:
        _arm(self)
        super().connect(address)

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        _arm(self)
        return super().recv(bufsize, flags)

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        _arm(self)
        return super().recv_into(buffer, nbytes, flags)

    def send(self, data: Any, flags: int = 0) -> int:
        _arm(self)
        return super().send(data, flags)

    def sendall(self, data: Any, flags: int = 0) -> None:
        _arm(self)  # sendall's timeout covers the whole send since Python 3.5
        super().sendall(data, flags)


class DeadlineSSLSocket(ssl.SSLSocket):
    """The TLS twin of DeadlineSocket (``sendall`` goes through ``send``)."""

    def do_handshake(self, block: bool = False) -> None:
        _arm(self)
        super().do_handshake(block)

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        _arm(self)
        return super().recv(buflen, flags)

    def recv_into(self, buffer: Any, nbytes: int | None = None, flags: int = 0) -> int:
        _arm(self)
        return super().recv_into(buffer, nbytes, flags)

    def send(self, data: Any, flags: int = 0) -> int:
        _arm(self)
        return super().send(data, flags)


def _adopt(sock: socket.socket) -> DeadlineSocket:
    """The same connected socket as a DeadlineSocket (urllib3 creates plain ones)."""
    timeout = sock.gettimeout()
    adopted = DeadlineSocket(sock.family, sock.type, sock.proto, fileno=sock.detach())
    adopted.settimeout(timeout)
    return adopted


# -- unix sockets: requests-unixsocket, with deadline sockets and one pool per socket ----

class _UnixConnection(requests_unixsocket.adapters.UnixHTTPConnection):  # type: ignore[misc]
    """requests-unixsocket's connection, connecting a DeadlineSocket (closed on failure)."""

    def __init__(self, socket_path: str, timeout: float | None) -> None:
        super().__init__("http+unix://" + quote(socket_path, safe=""), timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        sock = DeadlineSocket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.socket_path)
        except BaseException:
            sock.close()  # requests-unixsocket leaks it here
            raise
        self.sock = sock


class _UnixPool(requests_unixsocket.adapters.UnixHTTPConnectionPool):  # type: ignore[misc]
    """A pool of keep-alive connections to one socket path, ``maxsize`` kept idle."""

    def __init__(self, socket_path: str, maxsize: int) -> None:
        # Skip UnixHTTPConnectionPool.__init__: it fixes maxsize at 1 and replaces the
        # pool's Timeout object with a number.
        HTTPConnectionPool.__init__(self, "localhost", maxsize=maxsize)
        self.socket_path = socket_path

    def _new_conn(self) -> _UnixConnection:
        return _UnixConnection(self.socket_path, None)  # urlopen sets the timeout per call


class _UnixAdapter(requests_unixsocket.UnixAdapter):  # type: ignore[misc]
    """Pools keyed by socket path: requests-unixsocket keys them by the whole URL, so
    every endpoint got its own pool and its own connection."""

    def __init__(self, socket_path: str, maxsize: int) -> None:
        super().__init__(pool_connections=1)
        self._pool = _UnixPool(socket_path, maxsize)

    def get_connection(self, url: str, proxies: Mapping[str, str] | None = None) -> _UnixPool:
        return self._pool

    def close(self) -> None:
        self._pool.close()
        super().close()


# -- TCP and TLS: requests' HTTPAdapter, with deadline sockets ------------------------

class _HTTPConnection(HTTPConnection):
    def _new_conn(self) -> socket.socket:
        return _adopt(super()._new_conn())


class _HTTPSConnection(HTTPSConnection):
    def _new_conn(self) -> socket.socket:
        return _adopt(super()._new_conn())


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection

    def _validate_conn(self, conn: Any) -> None:
        # urllib3 warns (InsecureRequestWarning) on every unverified request. A plugin's
        # TLSConfig without a CA file *means* "do not verify" (Docker's rule): an
        # operator's choice, not an accident worth a warning per call.
        if conn.is_closed:
            conn.connect()


class _TCPAdapter(HTTPAdapter):
    """requests' adapter with deadline sockets and this plugin's TLS context."""

    def __init__(self, ssl_context: ssl.SSLContext | None, maxsize: int) -> None:
        self._ssl_context = ssl_context
        super().__init__(pool_connections=1, pool_maxsize=maxsize)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False,
                         **pool_kwargs: Any) -> None:
        if self._ssl_context is not None:
            pool_kwargs["ssl_context"] = self._ssl_context
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}


def tls_context(tls: TLSConfig | None) -> tuple[ssl.SSLContext, bool]:
    """(context, verify) for an https plugin. Raises OSError/ssl.SSLError on bad files.

    No TLSConfig: verify against the system's CAs. A TLSConfig without a CA file, or
    with InsecureSkipVerify: no verification (Docker's rule).
    """
    if tls is not None and (tls.insecure_skip_verify or not tls.ca_file):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        verify = False
    else:
        context = ssl.create_default_context(cafile=tls.ca_file if tls else None)
        verify = True
    if tls is not None and tls.cert_file:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    context.sslsocket_class = DeadlineSSLSocket
    return context, verify


class Transport:
    """One keep-alive connection pool to one plugin; ``post`` then ``read_body`` in
    ``deadline``.

    Requests go straight to the urllib3 pool that requests' (or requests-unixsocket's)
    adapter set up: none of the Session's or the adapter's per-request work (cookies,
    redirects, hooks, environment, PreparedRequest copies, Response objects) applies to
    a plugin, and skipping it more than halves the CPU per call. The pool gets what the
    adapter would pass it: no retries, no redirects, the body unread.
    """

    def __init__(self, address: PluginAddress, headers: Mapping[str, str], *,
                 pool_size: int = 4) -> None:
        self.verify = True
        self._headers = dict(headers)  # ordered: the wire order of the headers
        self._timeouts: dict[float, Timeout] = {}
        self._pool: HTTPConnectionPool | None = None
        self._adapter: HTTPAdapter
        if address.is_unix:
            self.base_url = "http+unix://" + quote(address.target, safe="")
            unix = _UnixAdapter(address.target, pool_size)
            self._adapter, self._pool = unix, unix._pool
        else:
            scheme = "https" if address.scheme == "https" else "http"  # tcp:// is plain
            context = None
            if scheme == "https":
                context, self.verify = tls_context(address.tls)
            self.base_url = f"{scheme}://{address.target}"
            self._adapter = _TCPAdapter(context, pool_size)

    def post(self, endpoint: str, body: bytes, timeout: float) -> BaseHTTPResponse:
        """Send; return once the status line and headers are in (the body unread)."""
        headers = self._headers.copy()
        headers["Content-Length"] = str(len(body))  # keeps its place in the order
        return self._connection_pool().urlopen(
            "POST", endpoint, body=body or None, headers=headers, retries=_NO_RETRIES,
            redirect=False, assert_same_host=False, timeout=self._timeout(timeout),
            preload_content=False, decode_content=False, chunked=False)

    def _timeout(self, seconds: float) -> Timeout:
        # urllib3 clones the Timeout it is given, so one per value can be shared.
        timeout = self._timeouts.get(seconds)
        if timeout is None:
            timeout = self._timeouts[seconds] = Timeout(connect=seconds, read=seconds)
        return timeout

    def _connection_pool(self) -> HTTPConnectionPool:
        """The pool requests' adapter would pick for this plugin (one host: one pool)."""
        pool = self._pool
        if pool is None:  # a race here only looks the same pool up twice
            request = requests.PreparedRequest()
            request.prepare(method="POST", url=self.base_url + "/", headers=self._headers)
            found = self._adapter.get_connection_with_tls_context(
                request, self.verify, proxies={}, cert=None)
            assert isinstance(found, HTTPConnectionPool)  # http(s) URLs always give one
            self._adapter.cert_verify(found, request.url, self.verify, None)  # type: ignore[no-untyped-call]
            self._pool = pool = found
        return pool

    def close(self) -> None:
        # urllib3 closes a pool's connections when the pool is collected, and this
        # object holds the pool: close it here.
        if self._pool is not None:
            self._pool.close()
        self._adapter.close()


def read_body(response: BaseHTTPResponse, limit: int) -> bytes:
    """The whole body, or BodyTooLarge without holding more than ``limit`` + 1 bytes.

    On success the connection goes back to the pool; on any failure it is closed, as a
    half-read connection cannot carry another request.
    """
    raw = response
    try:
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > limit:
            raise BodyTooLarge(limit, int(declared))
        body = bytearray()
        while chunk := raw.read(min(CHUNK, limit + 1 - len(body)), decode_content=False):
            body += chunk
            if len(body) > limit:
                raise BodyTooLarge(limit)
    except BaseException:
        raw.close()
        raw.release_conn()
        raise
    raw.release_conn()
    return bytes(body)
