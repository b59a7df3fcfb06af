"""What an over-long request line costs the gateway: peak memory while one connection
sends a 16 MiB path (``--mib``), and the answer it gets.

One gateway connection (``volplugd.gateway.connection.serve``) is served on a thread over
a socketpair; the client sends ``POST /VolumeDriver.<16 MiB of a> HTTP/1.1`` and reads
the answer; ``tracemalloc`` gives the peak of what Python allocated meanwhile (the
request's own bytes are made before tracing starts). The baseline, in the same run, is a
request of the same size whose path is short and whose body carries the bytes: what
reading that much costs without the line. With ``--tree DIR`` the code under DIR is
measured (e.g. a ``git archive`` of an older commit), so two trees compare in one run.
Goal: the peak of the long line at most that of one 64 KiB read (a few hundred KiB).
Usage: .venv/bin/python bench/gateway_head.py [--mib N] [--tree DIR]
Runs on: the main thread and one serving thread.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import socket
import sys
import threading
import tracemalloc
from pathlib import Path
from typing import Any

GOAL_BYTES = 512 * 1024


def measure(connection: Any, answer: Any, request: bytes) -> tuple[int, bytes]:
    """Peak bytes allocated while ``request`` is served, and the answer's first line."""
    ours, theirs = socket.socketpair()

    def handle(req: Any) -> Any:
        return answer.error_reply("not served in this bench", "bad_request", 404)

    server = threading.Thread(target=connection.serve,
                              args=(theirs, handle, lambda *_: None), daemon=True)
    tracemalloc.start()
    tracemalloc.reset_peak()
    server.start()
    sender = threading.Thread(target=_send, args=(ours, request), daemon=True)
    sender.start()
    data = b""
    ours.settimeout(60)
    while b"\r\n" not in data:
        chunk = ours.recv(65536)
        if not chunk:
            break
        data += chunk
    sender.join(60)
    ours.close()
    server.join(60)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak, data.split(b"\r\n", 1)[0]


def _send(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):  # the gateway may answer and close first
        sock.sendall(data)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=16)
    parser.add_argument("--tree", type=Path, default=Path(__file__).resolve().parent.parent)
    args = parser.parse_args()
    sys.path.insert(0, str(args.tree))
    connection = importlib.import_module("volplugd.gateway.connection")
    answer = importlib.import_module("volplugd.gateway.answer")
    size = args.mib * 1024 * 1024
    line = b"POST /VolumeDriver." + b"a" * size + b" HTTP/1.1\r\nContent-Length: 0\r\n\r\n"
    # the baseline: as many bytes as a body, on a connection that allows that much
    connection.MAX_BODY = size
    body = (b"POST /VolumeDriver.List HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % size
            + b"a" * size)
    base_peak, base_answer = measure(connection, answer, body)
    peak, first = measure(connection, answer, line)
    print(f"tree: {args.tree}")
    print(f"{args.mib} MiB in a body (baseline): peak {base_peak / 2**20:.2f} MiB, "
          f"{base_answer.decode()}")
    print(f"{args.mib} MiB request line:        peak {peak / 2**20:.2f} MiB, {first.decode()}"
          f"  (x{peak / base_peak:.3f} the baseline)")
    ok = peak <= GOAL_BYTES
    print(f"goal: peak <= {GOAL_BYTES // 1024} KiB: {'PASS' if ok else 'MISS'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
