"""Plugins on TCP: tcp:// and http:// (plain, as Docker does) and https:// with TLSConfig."""

from __future__ import annotations

import shutil
import socket
import socketserver
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.waiting import wait_until
from volplugd.plugin import (
    PluginAddress,
    PluginClient,
    PluginError,
    PluginTimeout,
    PluginUnreachable,
    TLSConfig,
)
from volplugd.plugin.protocol import user_agent

ANSWERS = {
    "/Plugin.Activate": b'{"Implements": ["VolumeDriver"]}',
    "/VolumeDriver.Capabilities": b'{"Capabilities": {"Scope": "global"}}',
    "/VolumeDriver.Create": b'{"Err": ""}',
    "/VolumeDriver.Mount": b'{"Mountpoint": "/tcp/v1", "Err": ""}',
}


class TCPPlugin:
    """A tiny keep-alive HTTP/1.1 plugin on 127.0.0.1 (TLS when given a context).

    Records each raw request; endpoints in ``drip`` send headers, then a byte every 50 ms.
    """

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.raw: list[bytes] = []
        self.drip: set[str] = set()
        self.accepted = 0  # connections the plugin took, and those that ended
        self.ended = 0
        self.count_lock = threading.Lock()
        self.stopping = threading.Event()
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.plugin = self
        self.server.tls = tls
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,))
        self._thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()  # joins the connection threads
        self._thread.join()


class _Server(socketserver.ThreadingTCPServer):
    plugin: TCPPlugin
    tls: ssl.SSLContext | None
    block_on_close = True

    def get_request(self) -> tuple[Any, Any]:
        sock, peer = super().get_request()
        if self.tls is not None:  # the handshake happens on the connection's thread
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, peer

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that rejects our certificate or goes away is not a test failure."""


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        plugin = self.server.plugin
        with plugin.count_lock:
            plugin.accepted += 1
        try:
            self._handle()
        finally:
            with plugin.count_lock:
                plugin.ended += 1

    def _handle(self) -> None:
        self.request.settimeout(0.05)  # so stop() is never stuck behind a keep-alive read
        pending = b""
        while not self.server.plugin.stopping.is_set():
            try:
                data = self.request.recv(65536)
            except TimeoutError:
                continue
            if not data:
                return
            pending += data
            pending = self._serve(pending)

    def _serve(self, pending: bytes) -> bytes:
        while b"\r\n\r\n" in pending:
            head, _, rest = pending.partition(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            if len(rest) < length:
                return pending
            self.server.plugin.raw.append(head + b"\r\n\r\n" + rest[:length])
            self._answer(head.split(b" ")[1].decode())
            pending = rest[length:]
        return pending

    def _answer(self, endpoint: str) -> None:
        body = ANSWERS[endpoint]
        self.request.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                             b"Content-Length: %d\r\n\r\n" % len(body))
        if endpoint not in self.server.plugin.drip:
            self.request.sendall(body)
            return
        for byte in body:
            if self.server.plugin.stopping.wait(0.05):
                return
            self.request.sendall(bytes([byte]))


@pytest.fixture
def plugin() -> Iterator[TCPPlugin]:
    server = TCPPlugin()
    yield server
    server.stop()


@pytest.fixture
def clients() -> Iterator[Callable[..., PluginClient]]:
    made: list[PluginClient] = []

    def make(address: PluginAddress, **kwargs: Any) -> PluginClient:
        made.append(PluginClient("foo", address, **kwargs))
        return made[-1]

    yield make
    for client in made:
        client.close()


def wire(host: str, endpoint: str, body: bytes = b"") -> bytes:
    return (
        f"POST {endpoint} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {user_agent()}\r\n"
        f"Content-Length: {len(body)}\r\nContent-Type: application/vnd.docker.plugins.v1.1+json"
        "\r\nAccept: application/vnd.docker.plugins.v1.2+json\r\n\r\n").encode() + body


@pytest.mark.parametrize("scheme", ["tcp", "http"])
def test_tcp_plugin_gets_the_same_requests(plugin: TCPPlugin, scheme: str,
                                           clients: Callable[..., PluginClient]) -> None:
    """tcp:// and http:// speak plain HTTP with the same headers; Host is the real host:port."""
    host = f"127.0.0.1:{plugin.port}"
    client = clients(PluginAddress(scheme, host))  # type: ignore[arg-type]
    assert client.activate().implements == ("VolumeDriver",)
    client.create("v1", {"size": "1G"})
    assert client.mount("v1", "c1") == "/tcp/v1"
    assert plugin.raw == [
        wire(host, "/Plugin.Activate"),
        wire(host, "/VolumeDriver.Create", b'{"Name":"v1","Opts":{"size":"1G"}}'),
        wire(host, "/VolumeDriver.Mount", b'{"Name":"v1","ID":"c1"}'),
    ]


def test_tcp_calls_share_one_connection_that_close_ends(
        plugin: TCPPlugin, clients: Callable[..., PluginClient]) -> None:
    """Calls to several endpoints reuse one keep-alive TCP connection; close() ends it."""
    client = clients(PluginAddress("tcp", f"127.0.0.1:{plugin.port}"))
    client.activate()
    client.create("v1")
    client.mount("v1", "c1")
    assert (len(plugin.raw), plugin.accepted, plugin.ended) == (3, 1, 0)
    client.close()
    wait_until(lambda: plugin.ended == 1, message="the plugin to see the connection end")


def test_tcp_refused_is_unreachable(clients: Callable[..., PluginClient]) -> None:
    """Nothing listening on the port: PluginUnreachable, worded like Go's dial error."""
    with socket.socket() as probe:  # a port that was free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = clients(PluginAddress("tcp", f"127.0.0.1:{port}"))
    with pytest.raises(PluginUnreachable) as caught:
        client.activate()
    assert str(caught.value) == (f"sending request to plugin foo activation endpoint: "
                                 f"dial tcp 127.0.0.1:{port}: connect: connection refused")


def test_tcp_drip_ends_at_the_deadline(plugin: TCPPlugin,
                                       clients: Callable[..., PluginClient]) -> None:
    """The total deadline holds on TCP sockets too."""
    plugin.drip.add("/Plugin.Activate")
    client = clients(PluginAddress("tcp", f"127.0.0.1:{plugin.port}"))
    with pytest.raises(PluginTimeout, match=r"^reading activation response body from plugin foo:"
                       r" timed out: no complete answer within 0\.3 s$"):
        client.activate(timeout=0.3)


# -- TLS --------------------------------------------------------------------------------

@pytest.fixture
def cert(short_tmp: Path) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1: (cert file, key file)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: cannot make a test certificate")
    crt, key = str(short_tmp / "plugin.crt"), str(short_tmp / "plugin.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", key, "-out", crt], check=True, capture_output=True)
    return crt, key


def _server_tls(cert: tuple[str, str], client_ca: str | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*cert)
    if client_ca:
        context.load_verify_locations(client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


@pytest.fixture
def tls_plugin(cert: tuple[str, str]) -> Iterator[TCPPlugin]:
    server = TCPPlugin(_server_tls(cert))
    yield server
    server.stop()


def test_https_verifies_against_the_ca_file(tls_plugin: TCPPlugin, cert: tuple[str, str],
                                            clients: Callable[..., PluginClient]) -> None:
    """TLSConfig with a CAFile verifies the plugin's certificate and talks HTTP inside TLS."""
    host = f"127.0.0.1:{tls_plugin.port}"
    client = clients(PluginAddress("https", host, TLSConfig(ca_file=cert[0])))
    assert client.activate().implements == ("VolumeDriver",)
    assert tls_plugin.raw == [wire(host, "/Plugin.Activate")]


@pytest.mark.parametrize("tls", [TLSConfig(), TLSConfig(ca_file="/nonexistent",
                                                        insecure_skip_verify=True)],
                         ids=["no-CAFile", "InsecureSkipVerify"])
def test_https_without_verification_when_configured(tls_plugin: TCPPlugin, tls: TLSConfig,
                                                     clients: Callable[..., PluginClient]) -> None:
    """No CAFile, or InsecureSkipVerify, connects unverified (Docker's rule) and warns nothing."""
    client = clients(PluginAddress("https", f"127.0.0.1:{tls_plugin.port}", tls))
    assert client.activate().implements == ("VolumeDriver",)  # warnings are errors here


def test_https_without_tlsconfig_verifies_with_system_cas(
        tls_plugin: TCPPlugin, clients: Callable[..., PluginClient]) -> None:
    """No TLSConfig at all: the system's CAs, which do not know a self-signed plugin."""
    client = clients(PluginAddress("https", f"127.0.0.1:{tls_plugin.port}"))
    with pytest.raises(PluginUnreachable) as caught:
        client.activate()
    assert str(caught.value).startswith(
        "sending request to plugin foo activation endpoint: [SSL: CERTIFICATE_VERIFY_FAILED] "
        "certificate verify failed: self-signed certificate (_ssl.c:")
    assert tls_plugin.raw == []


def test_https_client_certificate(cert: tuple[str, str],
                                  clients: Callable[..., PluginClient]) -> None:
    """CertFile and KeyFile are presented to a plugin that requires a client certificate."""
    server = TCPPlugin(_server_tls(cert, client_ca=cert[0]))
    try:
        address = f"127.0.0.1:{server.port}"
        with_cert = clients(PluginAddress("https", address, TLSConfig(cert[0], *cert)))
        assert with_cert.activate().implements == ("VolumeDriver",)
        without = clients(PluginAddress("https", address, TLSConfig(cert[0])))
        with pytest.raises(PluginUnreachable):
            without.activate()
        with_cert.close()
        without.close()
    finally:
        server.stop()


def test_https_drip_ends_at_the_deadline(tls_plugin: TCPPlugin,
                                         clients: Callable[..., PluginClient]) -> None:
    """The total deadline holds inside TLS as well."""
    tls_plugin.drip.add("/Plugin.Activate")
    client = clients(PluginAddress("https", f"127.0.0.1:{tls_plugin.port}", TLSConfig()))
    with pytest.raises(PluginTimeout, match=r"within 0\.3 s$"):
        client.activate(timeout=0.3)


def test_unreadable_tls_files_fail_every_call(clients: Callable[..., PluginClient]) -> None:
    """A CA file that cannot be read makes each call fail with the reason, not the constructor."""
    client = clients(PluginAddress("https", "127.0.0.1:1", TLSConfig(ca_file="/nonexistent/ca")))
    with pytest.raises(PluginError) as caught:
        client.activate()
    assert str(caught.value) == ("setting up TLS for plugin foo: "
                                 "[Errno 2] No such file or directory")
    assert isinstance(caught.value.__cause__, FileNotFoundError)
