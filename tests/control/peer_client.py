"""A control-socket client run as another uid (``setpriv``) by the lockout tests.

Standard library only: it runs under the system python3 from a world-readable copy,
so the checkout may sit in a folder other users cannot read.

    peer_client.py PATH hold N         connect N times, say "connected", wait for a
                                       line, report each connection, wait for a line
    peer_client.py PATH busy N         send N requests whose bodies never come, read
                                       each answer's head, say "busy", connect once
                                       more and report that answer, wait for a line
    peer_client.py PATH get            one GET /v1/health; report the answer
    peer_client.py PATH raw            the same, reporting the answer's bytes (latin-1)
    peer_client.py PATH follow N       open N follow streams (GET /v1/events?follow=1),
                                       read each answer's head (and a refusal's body) and
                                       nothing more, report them, wait for a line
    peer_client.py PATH repeat         for each line N read: N GET /v1/plugins, one
                                       connection each; report the answers

A report is one JSON line: per connection "open", "closed", "reset", or
{"status": N, "code": "..."} for an answer (the control API's error code; a gateway's
answer has "err", its Err, instead); ``follow`` adds its error's "message".
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys

BUSY = b"POST /v1/rescan HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n"


def connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)  # blocking: with a timeout a full backlog is EAGAIN, not a wait
    sock.settimeout(60)
    return sock


def answer(data: bytes, *, message: bool = False) -> dict[str, object]:
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    doc = json.loads(body) if body.startswith(b"{") else {}
    if "Err" in doc:
        return {"status": status, "err": doc["Err"]}
    error = doc.get("error")
    code = error["code"] if error else None
    if message:
        return {"status": status, "code": code, "message": error and error["message"]}
    return {"status": status, "code": code}


def read_answer_head(sock: socket.socket) -> bytes:
    """An answer's head, and its body if it has a length (a stream's is not read)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(1)  # byte by byte: nothing after the head is taken from the kernel
        if not chunk:
            return data
        data += chunk
    head = data.lower()
    if b"content-length:" in head:
        length = int(head.split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
        while len(data) - data.index(b"\r\n\r\n") - 4 < length:
            data += sock.recv(65536)
    return data


def follow(path: str, count: int) -> None:
    held, answers = [], []
    for _ in range(count):
        sock = connect(path)
        sock.sendall(b"GET /v1/events?follow=1 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        answers.append(answer(read_answer_head(sock), message=True))
        held.append(sock)
    say(json.dumps(answers))
    sys.stdin.readline()


def repeat(path: str) -> None:
    for line in sys.stdin:
        answers = []
        for _ in range(int(line)):
            sock = connect(path)
            sock.sendall(b"GET /v1/plugins HTTP/1.1\r\nHost: localhost\r\n"
                         b"Connection: close\r\n\r\n")
            answers.append(answer(read_all(sock)))
            sock.close()
        say(json.dumps(answers))


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def peek_state(sock: socket.socket) -> object:
    sock.setblocking(False)
    try:
        data = sock.recv(65536)
    except BlockingIOError:
        return "open"
    except ConnectionResetError:
        return "reset"
    return answer(data) if data else "closed"


def say(text: str) -> None:
    print(text, flush=True)


def main() -> None:
    path, mode = sys.argv[1], sys.argv[2]
    if mode in ("get", "raw"):
        sock = connect(path)
        with contextlib.suppress(BrokenPipeError):  # refused at accept: the answer waits
            sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: localhost\r\n"
                         b"Connection: close\r\n\r\n")
        data = read_all(sock)
        say(json.dumps([answer(data) if mode == "get" else data.decode("latin-1")]))
        return
    if mode == "repeat":
        repeat(path)
        return
    count = int(sys.argv[3])
    if mode == "follow":
        follow(path, count)
        return
    held: list[socket.socket] = []
    for _ in range(count):
        held.append(connect(path))
        if mode == "busy":
            held[-1].sendall(BUSY)
    if mode == "busy":
        for sock in held:
            data = b""
            while b"\r\n\r\n" not in data:
                data += sock.recv(65536)
        say("busy")
        extra = connect(path)
        say(json.dumps([answer(read_all(extra))]))
        extra.close()
    else:
        say("connected")
        sys.stdin.readline()
        say(json.dumps([peek_state(sock) for sock in held]))
    sys.stdin.readline()


if __name__ == "__main__":
    main()
