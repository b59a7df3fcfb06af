"""Many fake plugins from one process: the *responder* (bench and tests that need 1000s).

``tests.fakeplugin.FakePlugin`` is one plugin with scriptable behaviours, one thread
per connection; this is the cheap one for counts: ONE helper process binds N plugin
sockets and answers ``/Plugin.Activate``, ``/VolumeDriver.Capabilities``,
``/VolumeDriver.List`` (anything else: ``{"Err": ""}``) as a real HTTP/1.1 keep-alive
server on real unix sockets, from one ``selectors`` loop. It records when each request
arrived (``time.monotonic()``: CLOCK_MONOTONIC is the same clock in every process),
adopts listening sockets passed to it (SCM_RIGHTS), binds more on request, and can be
told to hang a plugin (read requests, never answer).

* ``Responder`` -- the caller's side of that process (commands over a SOCK_SEQPACKET pair).
* ``serve_main`` -- the process itself (``python many.py serve CTL_FD DIR PREFIX COUNT``:
  run by file, standard library only, so it starts fast and imports nothing of the tests).

Runs on: the caller's thread (``Responder``); ``serve_main`` on the responder process's
only thread.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

_BODIES = {
    b"/Plugin.Activate": b'{"Implements": ["VolumeDriver"]}',
    b"/VolumeDriver.Capabilities": b'{"Capabilities": {"Scope": "local"}}',
    b"/VolumeDriver.List": b'{"Volumes": [], "Err": ""}',
}
_DEFAULT_BODY = b'{"Err": ""}'
_PATH_CODES = {b"/Plugin.Activate": "A", b"/VolumeDriver.Capabilities": "C",
               b"/VolumeDriver.List": "L"}


def content_length(head: bytes, required: bool = False) -> int:
    """Content-Length of a lower-cased header block (0 when absent and not required)."""
    at = head.find(b"content-length:")
    if at < 0:
        if required:
            raise RuntimeError(f"no Content-Length in {head[:200]!r}")
        return 0
    stop = head.find(b"\r\n", at)
    return int(head[at + 15:stop if stop >= 0 else None])


# --- the responder process --------------------------------------------------------


def _answer(body: bytes, close: bool) -> bytes:
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.docker.plugins.v1.1+json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n")
    return head + (b"Connection: close\r\n\r\n" if close else b"\r\n") + body


_ANSWERS = {(path, close): _answer(body, close) for path, body in _BODIES.items()
            for close in (False, True)}


@dataclass(eq=False)  # identity hash: kept in a set
class _Conn:
    name: str
    sock: socket.socket
    buf: bytes = b""


@dataclass
class _Plugin:
    name: str
    listener: socket.socket
    path: str | None  # unlinked on exit when we bound it
    hung: bool = False
    seen: list[tuple[float, str]] = field(default_factory=list)
    conns: set[_Conn] = field(default_factory=set)


class _Server:
    """The responder's state and its one selectors loop."""

    def __init__(self, ctl: socket.socket):
        self.sel = selectors.DefaultSelector()
        self.ctl = ctl
        self.plugins: dict[str, _Plugin] = {}
        self.directory = ""
        self.served = 0
        self.sel.register(ctl, selectors.EVENT_READ, None)

    def add(self, name: str, listener: socket.socket, path: str | None) -> None:
        listener.setblocking(False)
        plugin = _Plugin(name, listener, path)
        self.plugins[name] = plugin
        self.sel.register(listener, selectors.EVENT_READ, plugin)

    def bind(self, directory: str, prefix: str, count: int) -> None:
        self.directory = directory
        for i in range(count):
            name = f"{prefix}{i:05d}"
            path = os.path.join(directory, f"{name}.sock")
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(path)
            sock.listen(128)
            self.add(name, sock, path)

    def run(self) -> None:
        while True:
            for key, _ in self.sel.select():
                data = key.data
                if key.fileobj.fileno() < 0:  # type: ignore[union-attr]
                    continue  # closed by an earlier event of this batch ("close NAME")
                if data is None:
                    if not self._command():
                        return
                elif isinstance(data, _Plugin):
                    self._accept(data)
                else:
                    self._read(data)

    def _accept(self, plugin: _Plugin) -> None:
        try:
            sock, _ = plugin.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        sock.setblocking(True)  # answers are < 100 bytes: send never waits in practice
        conn = _Conn(plugin.name, sock)
        plugin.conns.add(conn)
        self.sel.register(sock, selectors.EVENT_READ, conn)

    def _drop(self, conn: _Conn) -> None:
        self.sel.unregister(conn.sock)
        conn.sock.close()
        plugin = self.plugins.get(conn.name)
        if plugin is not None:
            plugin.conns.discard(conn)

    def _read(self, conn: _Conn) -> None:
        try:
            chunk = conn.sock.recv(65536)
        except OSError:
            chunk = b""
        if not chunk:
            self._drop(conn)
            return
        now = time.monotonic()
        conn.buf += chunk
        while (end := conn.buf.find(b"\r\n\r\n")) >= 0:
            head = conn.buf[:end]
            length = content_length(head.lower())
            if len(conn.buf) < end + 4 + length:
                return
            conn.buf = conn.buf[end + 4 + length:]
            self._respond(conn, head, now)

    def _respond(self, conn: _Conn, head: bytes, now: float) -> None:
        parts = head.split(b"\r\n", 1)[0].split(b" ")
        path = parts[1] if len(parts) > 1 else b"/"
        plugin = self.plugins.get(conn.name)
        if plugin is not None:
            plugin.seen.append((now, _PATH_CODES.get(path, "?")))
            if plugin.hung:
                return
        close = b"connection: close" in head.lower()
        answer = _ANSWERS.get((path, close)) or _answer(_DEFAULT_BODY, close)
        try:
            conn.sock.sendall(answer)
        except OSError:
            self._drop(conn)
            return
        self.served += 1
        if close:
            self._drop(conn)

    def _command(self) -> bool:
        msg, fds, _, _ = socket.recv_fds(self.ctl, 65536, 4)
        if not msg:
            return False
        cmd, _, arg = msg.decode().partition(" ")
        if cmd == "adopt":
            self.add(arg, socket.socket(fileno=fds[0]), None)
        elif cmd == "close":
            self._close(arg)
        elif cmd == "hang":
            self.plugins[arg].hung = True
        elif cmd == "dump":
            with open(arg, "w") as out:
                json.dump({n: p.seen for n, p in self.plugins.items()}, out)
            self.ctl.send(b"ok")
        elif cmd == "bind":  # "bind PREFIX COUNT": more plugins, in the first folder
            prefix, count = arg.split()
            self.bind(self.directory, prefix, int(count))
            self.ctl.send(b"ok")
        elif cmd == "served":
            self.ctl.send(str(self.served).encode())
        elif cmd == "quit":
            return False
        return True

    def _close(self, name: str) -> None:
        plugin = self.plugins.pop(name, None)
        if plugin is None:
            return
        self.sel.unregister(plugin.listener)
        plugin.listener.close()
        for conn in list(plugin.conns):
            self._drop(conn)

    def shutdown(self) -> None:
        for name, plugin in list(self.plugins.items()):
            path = plugin.path
            self._close(name)
            if path is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)


def serve_main(argv: Sequence[str]) -> int:
    """``many.py serve CTL_FD DIR PREFIX COUNT``: bind, say "ready", serve until quit."""
    ctl_fd, directory, prefix, count = int(argv[0]), argv[1], argv[2], int(argv[3])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the bench stops us with "quit" or EOF
    ctl = socket.socket(fileno=ctl_fd)
    server = _Server(ctl)
    try:
        server.bind(directory, prefix, count)
        ctl.send(b"ready")
        server.run()
    finally:
        server.shutdown()
    return 0


# --- the caller's side ------------------------------------------------------------


class Responder:
    """The responder process: ``count`` plugins ``{prefix}{i:05d}.sock`` in ``directory``."""

    def __init__(self, directory: Path, count: int, prefix: str = "p"):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._ctl = ours
        self.names = [f"{prefix}{i:05d}" for i in range(count)]
        argv = [sys.executable, __file__, "serve", str(theirs.fileno()), str(directory),
                prefix, str(count)]
        self.proc = subprocess.Popen(argv, pass_fds=(theirs.fileno(),))
        theirs.close()
        self._ctl.settimeout(120.0)
        if self._ctl.recv(64) != b"ready":
            raise RuntimeError("responder did not start")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def adopt(self, name: str, listener: socket.socket) -> None:
        """Serve an already listening socket (we keep no copy's ownership: close yours)."""
        socket.send_fds(self._ctl, [f"adopt {name}".encode()], [listener.fileno()])

    def bind(self, prefix: str, count: int) -> None:
        """Bind ``count`` more plugins ``{prefix}{i:05d}.sock`` (returns once bound)."""
        self._ctl.send(f"bind {prefix} {count}".encode())
        if self._ctl.recv(64) != b"ok":
            raise RuntimeError("responder bind failed")
        self.names += [f"{prefix}{i:05d}" for i in range(count)]

    def close(self, name: str) -> None:
        self._ctl.send(f"close {name}".encode())

    def hang(self, name: str) -> None:
        self._ctl.send(f"hang {name}".encode())

    def served(self) -> int:
        self._ctl.send(b"served")
        return int(self._ctl.recv(64))

    def requests(self, scratch: Path) -> dict[str, list[tuple[float, str]]]:
        """Every request seen so far: plugin -> [(monotonic time, A|C|L|?)]."""
        out = scratch / "requests.json"
        self._ctl.send(f"dump {out}".encode())
        if self._ctl.recv(64) != b"ok":
            raise RuntimeError("responder dump failed")
        seen: dict[str, list[tuple[float, str]]] = json.loads(out.read_text())
        out.unlink()
        return seen

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self._ctl.send(b"quit")
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._ctl.close()


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "serve":
    sys.exit(serve_main(sys.argv[2:]))
