"""What the client puts on the wire: Podman's exact bytes (plus Docker's Accept), keep-alive."""

from __future__ import annotations

import os
from collections.abc import Callable
from importlib import metadata

import pytest

from tests.fakeplugin import FakePlugin
from tests.waiting import wait_until
from volplugd.plugin import PluginClient, Volume

UA = f"volplugd/{metadata.version('volplugd')}"
PODMAN_MOUNT_ID = "2f73349cfc4630255319c6c8dfc1b46a8996ace9d14d8e07563b165915918ec2"


def wire(endpoint: str, body: bytes = b"") -> bytes:
    """The exact request the client must send to a unix-socket plugin."""
    return (
        f"POST {endpoint} HTTP/1.1\r\nHost: plugin\r\nUser-Agent: {UA}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Content-Type: application/vnd.docker.plugins.v1.1+json\r\n"
        "Accept: application/vnd.docker.plugins.v1.2+json\r\n\r\n"
    ).encode() + body


CALLS: list[tuple[str, Callable[[PluginClient], object], bytes]] = [
    ("/Plugin.Activate", lambda c: c.activate(), b""),
    ("/VolumeDriver.Capabilities", lambda c: c.capabilities(), b""),
    ("/VolumeDriver.List", lambda c: c.list(), b""),
    ("/VolumeDriver.Create", lambda c: c.create("vol1"), b'{"Name":"vol1"}'),
    ("/VolumeDriver.Create", lambda c: c.create("vol1", {}), b'{"Name":"vol1"}'),
    ("/VolumeDriver.Create", lambda c: c.create("vol2", {"type": "xfs", "size": "10M"}),
     b'{"Name":"vol2","Opts":{"size":"10M","type":"xfs"}}'),
    ("/VolumeDriver.Get", lambda c: c.get("mv"), b'{"Name":"mv"}'),
    ("/VolumeDriver.Path", lambda c: c.path("mv"), b'{"Name":"mv"}'),
    ("/VolumeDriver.Mount", lambda c: c.mount("mv", PODMAN_MOUNT_ID),
     b'{"Name":"mv","ID":"' + PODMAN_MOUNT_ID.encode() + b'"}'),
    ("/VolumeDriver.Unmount", lambda c: c.unmount("mv", "c1"), b'{"Name":"mv","ID":"c1"}'),
    ("/VolumeDriver.Remove", lambda c: c.remove("mv"), b'{"Name":"mv"}'),
]


@pytest.mark.parametrize(("endpoint", "call", "body"), CALLS,
                         ids=[f"{e}-{b.decode()}" for e, _, b in CALLS])
def test_each_endpoint_sends_exact_bytes(fake: FakePlugin, client: PluginClient, endpoint: str,
                                         call: Callable[[PluginClient], object],
                                         body: bytes) -> None:
    """Every endpoint sends exactly Podman's request line, headers and compact JSON body."""
    client.create("mv")
    fake.clear_requests()
    call(client)
    assert [r.raw for r in fake.requests] == [wire(endpoint, body)]


# Captured from Podman 4.3.1 by a logging plugin (shared/peers/README.md section 5.1).
PODMAN = [
    b"POST /Plugin.Activate HTTP/1.1\r\nHost: plugin\r\nUser-Agent: Go-http-client/1.1\r\n"
    b"Content-Length: 0\r\nContent-Type: application/vnd.docker.plugins.v1.1+json\r\n\r\n",
    b"POST /VolumeDriver.Create HTTP/1.1\r\nHost: plugin\r\nUser-Agent: Go-http-client/1.1\r\n"
    b"Content-Length: 15\r\nContent-Type: application/vnd.docker.plugins.v1.1+json\r\n\r\n"
    b'{"Name":"vol1"}',
    b"POST /VolumeDriver.List HTTP/1.1\r\nHost: plugin\r\nUser-Agent: Go-http-client/1.1\r\n"
    b"Content-Length: 0\r\nContent-Type: application/vnd.docker.plugins.v1.1+json\r\n\r\n",
    b"POST /VolumeDriver.Mount HTTP/1.1\r\nHost: plugin\r\nUser-Agent: Go-http-client/1.1\r\n"
    b"Content-Length: 85\r\nContent-Type: application/vnd.docker.plugins.v1.1+json\r\n\r\n"
    b'{"Name":"mv","ID":"' + PODMAN_MOUNT_ID.encode() + b'"}',
]


def test_requests_are_podmans_bytes_but_for_user_agent_and_accept(
        fake: FakePlugin, client: PluginClient) -> None:
    """Podman's captured requests, with our User-Agent and Docker's Accept, are ours exactly."""
    client.activate()
    client.create("vol1")
    client.list()
    client.create("mv")
    client.mount("mv", PODMAN_MOUNT_ID)
    ours = [r.raw for r in fake.requests if b'"Name":"mv"}' not in r.raw]
    expected = [
        raw.replace(b"User-Agent: Go-http-client/1.1", f"User-Agent: {UA}".encode()).replace(
            b"+json\r\n\r\n", b"+json\r\nAccept: application/vnd.docker.plugins.v1.2+json\r\n\r\n")
        for raw in PODMAN
    ]
    assert ours == expected


def test_json_is_escaped_like_gos_encoder(fake: FakePlugin, client: PluginClient) -> None:
    """<, > and & are \\u-escaped as Go writes them; other non-ASCII stays raw UTF-8."""
    client.create("a<b>&c", {"label": "vé\u2028"})
    assert fake.requests[-1].body == (
        b'{"Name":"a\\u003cb\\u003e\\u0026c","Opts":{"label":"v\xc3\xa9\\u2028"}}')


def test_options_must_be_strings(client: PluginClient) -> None:
    """Opts is a map of strings in the protocol: anything else is refused before sending."""
    with pytest.raises(TypeError, match=r"volume options must map str to str, not 'size': 10"):
        client.create("v", {"size": 10})  # type: ignore[dict-item]


def test_one_keep_alive_connection_serves_every_endpoint(fake: FakePlugin,
                                                         client: PluginClient) -> None:
    """Nine calls to nine endpoints travel on a single connection (pools are per socket)."""
    client.activate()
    client.capabilities()
    client.create("v")
    client.list()
    client.get("v")
    client.path("v")
    client.mount("v", "c1")
    client.unmount("v", "c1")
    client.remove("v")
    assert len(fake.requests) == 9
    assert _server_connections(fake.socket_path) == 1


def test_http10_plugin_that_closes_after_each_answer_works(sock_path: str,
                                                          make_client: Callable[..., PluginClient]
                                                          ) -> None:
    """An HTTP/1.0 plugin closing every connection still serves a whole volume lifecycle."""
    with FakePlugin(sock_path, http10=True) as fake:
        client = make_client()
        assert client.activate().implements == ("VolumeDriver",)
        client.create("v")
        assert client.mount("v", "c1") == "/fake/volumes/v"
        assert [v.name for v in client.list()] == ["v"]
        client.unmount("v", "c1")
        client.remove("v")
        assert len(fake.requests) == 6
        wait_until(lambda: _server_connections(fake.socket_path) == 0,
                   message="the plugin to close every connection")


def test_results_are_parsed_from_the_answers(fake: FakePlugin, client: PluginClient) -> None:
    """The in-memory driver's answers come back as the documented types."""
    assert client.activate().implements == ("VolumeDriver",)
    assert client.capabilities().scope == "local"
    client.create("v")
    created = fake.volumes["v"]["CreatedAt"]
    assert client.get("v") == Volume("v", "/fake/volumes/v", created, {})
    assert client.list() == [Volume("v", "/fake/volumes/v", created, None)]
    assert client.path("v") == "/fake/volumes/v"
    assert client.mount("v", "c1") == "/fake/volumes/v"
    assert client.unmount("v", "c1") is None
    assert client.remove("v") is None
    assert fake.volumes == {}


def _server_connections(path: str) -> int:
    """Connections the plugin has accepted and not yet closed (the kernel's own table;
    read as bytes: other tests bind sockets whose names are not UTF-8)."""
    suffix = b" " + os.fsencode(path)
    with open("/proc/net/unix", "rb") as table:
        bound = sum(1 for line in table if line.rstrip().endswith(suffix))
    return bound - 1  # the listening socket


def test_keep_alive_works_with_descriptors_past_1024(fake: FakePlugin,
                                                     client: PluginClient) -> None:
    """A daemon with a thousand plugins holds fds past 1024: the check that an idle
    connection is still open must work there too (select() cannot watch such an fd)."""
    spare = [os.dup(0) for _ in range(1100)]
    try:
        client.activate()
        client.list()
    finally:
        for fd in spare:
            os.close(fd)
    assert [r.path for r in fake.requests] == ["/Plugin.Activate", "/VolumeDriver.List"]
    assert _server_connections(fake.socket_path) == 1
