"""A plugin process that hands its listening socket to a child, then exits (for tests).

    python -m tests.handoff SOCKET [--relisten]
    python -m tests.handoff --activated      # under systemd: serve the socket it passes

It listens on SOCKET and answers Docker's v1 plugin protocol itself (Activate names
VolumeDriver; every other endpoint answers ``{}``, HTTP/1.0, one request per
connection), printing ``listening PID``. A line on its stdin makes it fork: the child
keeps the socket and serves on, printing ``child PID``; the parent exits. With
``--relisten`` the child calls ``listen()`` again first, so the kernel names the child
as the listener (``SO_PEERCRED`` reports whoever called ``listen()`` last); without it,
the kernel still names the exited parent. With ``--activated`` it serves the one socket
systemd passed (``LISTEN_FDS=1``, fd 3) until it is killed: a socket-activated plugin.

Runs on: one thread per process (no threads: it forks).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import sys

MANIFEST = json.dumps({"Implements": ["VolumeDriver"]}).encode()


def answer(conn: socket.socket) -> None:
    """Read one request (head and Content-Length body) and answer it."""
    conn.settimeout(5.0)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return
        body += chunk
    path = head.split(b" ")[1]
    reply = MANIFEST if path == b"/Plugin.Activate" else b"{}"
    conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: application/vnd.docker.plugins.v1+json\r\n"
                 b"Content-Length: " + str(len(reply)).encode() + b"\r\n\r\n" + reply)


def serve(listener: socket.socket, stdin: int | None) -> bool:
    """Serve until a line arrives on ``stdin`` (True) or forever (``stdin`` None)."""
    watched = [listener.fileno()] + ([] if stdin is None else [stdin])
    while True:
        ready, _, _ = select.select(watched, [], [])
        if stdin is not None and stdin in ready:
            return True
        conn, _ = listener.accept()
        with conn, contextlib.suppress(OSError):
            answer(conn)


def main(argv: list[str]) -> int:
    if argv == ["--activated"]:
        if os.environ.get("LISTEN_FDS") != "1":
            raise SystemExit("--activated: systemd passed no socket (LISTEN_FDS)")
        serve(socket.socket(fileno=3), None)
        return 0
    path, relisten = argv[0], "--relisten" in argv[1:]
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    print(f"listening {os.getpid()}", flush=True)
    serve(listener, sys.stdin.fileno())
    child = os.fork()
    if child == 0:
        if relisten:
            listener.listen(16)  # the kernel now names this process as the listener
        print(f"child {os.getpid()}", flush=True)
        sys.stdout.close()
        os.close(1)
        serve(listener, None)
        return 0
    os._exit(0)  # the parent leaves; the child keeps the socket


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
