"""Blocking keep-alive connections to one plugin, driving an ``Exchange`` each: the
blocking driver behind ``PluginClient``.

Every socket wait (connect, TLS handshake, send, receive — the head and the body alike)
is bounded by the time left until the call's deadline, so one deadline covers the whole
call however slowly a plugin drips its answer. Unix sockets, TCP, and TLS (an ssl-wrapped
socket, with the context ``tls_context`` makes from the plugin's TLSConfig).

Runs on: the threads that call PluginClient methods; any number at once (a lock guards
the idle connections; a connection serves one call at a time).
"""

from __future__ import annotations

import select
import socket
import ssl
import threading
import time
from typing import Any

from volplugd.plugin.address import PluginAddress, TLSConfig
from volplugd.plugin.exchange import CHUNK, Exchange

__all__ = ["Connections", "tls_context"]


def tls_context(tls: TLSConfig | None) -> ssl.SSLContext:
    """The context for an https plugin. Raises OSError/ssl.SSLError on bad files.

    No TLSConfig: verify against the system's CAs. A TLSConfig without a CA file, or
    with InsecureSkipVerify: no verification (Docker's rule).
    """
    if tls is not None and (tls.insecure_skip_verify or not tls.ca_file):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context = ssl.create_default_context(cafile=tls.ca_file if tls else None)
    if tls is not None and tls.cert_file:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    return context


class Connections:
    """Up to ``keep`` idle keep-alive connections to the plugin at ``address``."""

    def __init__(self, address: PluginAddress, tls: ssl.SSLContext | None, *,
                 keep: int = 4) -> None:
        self._address = address
        self._tls = tls
        self._keep = keep
        self._idle: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False

    def run(self, exchange: Exchange[Any]) -> None:
        """Send the request and read the answer until ``exchange`` is finished."""
        sock = None
        try:
            sock = self._idle_one()
            if sock is not None and not self._send(sock, exchange, reused=True):
                sock.close()  # the plugin closed it before any of the request arrived
                sock = None
            if sock is None:
                sock = self._connect(exchange)
                self._send(sock, exchange, reused=False)
            while not exchange.finished:
                _arm(sock, exchange)
                data = sock.recv(CHUNK)
                if data:
                    exchange.receive(data)
                else:
                    exchange.closed()
        except Exception as err:  # noqa: BLE001 - every failure is the call's PluginError
            exchange.fail(err, time.monotonic())
        if sock is not None:
            self._release(sock, keep=exchange.keep)

    def close(self) -> None:
        """Close the idle connections; busy ones close when their call ends."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for sock in idle:
            sock.close()

    def _idle_one(self) -> socket.socket | None:
        """A kept-alive connection still open (a readable idle one ended, or misbehaves)."""
        while True:
            with self._lock:
                if not self._idle:
                    return None
                sock = self._idle.pop()
            poll = select.poll()  # not select(): a daemon's fds pass 1024
            poll.register(sock, select.POLLIN)
            if not poll.poll(0):
                return sock
            sock.close()

    def _release(self, sock: socket.socket, *, keep: bool) -> None:
        with self._lock:
            if keep and not self._closed and len(self._idle) < self._keep:
                self._idle.append(sock)
                return
        sock.close()

    def _connect(self, exchange: Exchange[Any]) -> socket.socket:
        address = self._address
        if address.is_unix:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                _arm(sock, exchange)
                sock.connect(address.target)
            except BaseException:
                sock.close()
                raise
            return sock
        host, _, port = address.target.rpartition(":")
        host = host.strip("[]")  # an IPv6 literal
        sock = socket.create_connection((host, int(port)), _left(exchange))
        if self._tls is None:
            return sock
        try:
            _arm(sock, exchange)
            tls = self._tls.wrap_socket(sock, server_hostname=host,
                                        do_handshake_on_connect=False)
            sock = tls
            _arm(tls, exchange)
            tls.do_handshake()
        except BaseException:
            sock.close()
            raise
        return tls

    @staticmethod
    def _send(sock: socket.socket, exchange: Exchange[Any], *, reused: bool) -> bool:
        """Send the whole request; False if a ``reused`` connection was closed before any
        of it was sent (only then may the request go on another connection)."""
        pending = memoryview(exchange.request)
        while pending:
            _arm(sock, exchange)
            try:
                sent = sock.send(pending)
            except (BrokenPipeError, ConnectionResetError):
                if reused and len(pending) == len(exchange.request):
                    return False
                raise
            pending = pending[sent:]
        return True


def _left(exchange: Exchange[Any]) -> float:
    left = exchange.left(time.monotonic())
    if left <= 0:
        raise TimeoutError("deadline passed")
    return left


def _arm(sock: socket.socket, exchange: Exchange[Any]) -> None:
    """The next wait on ``sock`` ends by the call's deadline."""
    sock.settimeout(_left(exchange))
