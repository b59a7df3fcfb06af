"""Hostile plugins for the soak (``soak.py``), each in its own process.

* ``Hostile`` -- one ``python -m tests.fakeplugin`` per bad behaviour (hang, drip, a
  64 MiB answer, garbage, half an answer then close, a garbage activation); SIGTERM stops
  one and it removes its socket.
* ``Killer`` -- a thread that, again and again, starts a tiny plugin process, waits until
  volplugd lists it ready, sends a volume call through volplugd, and SIGKILLs the plugin
  the moment the call reaches it (the process says so on stdout); the dead plugin's
  socket file is then removed and a new process binds the same path.

Runs on: the soak's main thread (``Hostile``); ``Killer`` on its own thread, with one
more short-lived thread per call.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import _common as c

# name -> the fake plugin's --behave arguments
BEHAVIOURS = {
    "hang": ["*=hang"],  # never answers: every activation times out, retried with back-off
    "drip": ["/VolumeDriver.List=drip:10:100000"],  # 10 bytes a second
    "huge": [f"/VolumeDriver.List=huge:{64 << 20}"],  # 64 MiB, over any sane cap
    "garbage": ["/VolumeDriver.List=garbage"],
    "closemid": ["/VolumeDriver.List=close-mid"],
    "badactivate": ["/Plugin.Activate=garbage"],  # never activated, retried with back-off
}
# Those that answer their activation (and so become ready before the volume calls start).
ACTIVATED = {"drip", "huge", "garbage", "closemid"}

# Answers Activate and Capabilities (one request a connection, then close); on any other
# request it prints "call" and keeps the connection open, waiting to be killed.
KILLABLE = r"""
import socket, sys
srv = socket.socket(socket.AF_UNIX)
srv.bind(sys.argv[1])
srv.listen(64)
print("listening", flush=True)
BODIES = {b"/Plugin.Activate": b'{"Implements": ["VolumeDriver"]}',
          b"/VolumeDriver.Capabilities": b'{"Capabilities": {"Scope": "local"}}'}
held = []
while True:
    conn, _ = srv.accept()
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    path = data.split(b" ", 2)[1] if data.count(b" ") >= 2 else b""
    body = BODIES.get(path)
    if body is None:
        print("call", flush=True)
        held.append(conn)
        continue
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close"
                 b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    conn.close()
"""


class Hostile:
    """The fake plugins of ``BEHAVIOURS`` in ``folder``, one process each."""

    def __init__(self, folder: Path):
        env = {**os.environ, "PYTHONPATH": str(c.REPO)}
        self.procs = {}
        for name, specs in BEHAVIOURS.items():
            argv = [sys.executable, "-m", "tests.fakeplugin", str(folder / f"{name}.sock")]
            for spec in specs:
                argv += ["--behave", spec]
            self.procs[name] = subprocess.Popen(argv, cwd=c.REPO, env=env,
                                                stdout=subprocess.DEVNULL)

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class Killer(threading.Thread):
    """Kills a plugin in the middle of a volume call through volplugd, until stopped."""

    def __init__(self, folder: Path, control: str):
        super().__init__(name="soak killer")
        self.path = str(folder / "killed.sock")
        self.control = control
        self.stopping = threading.Event()
        self.kills = 0  # plugins killed while volplugd waited on them
        self.statuses: Counter[int] = Counter()  # volplugd's answers to those calls
        self.bad: list[str] = []  # 500s, with their bodies
        self._last: object = None  # registered_at of the plugin killed last

    def run(self) -> None:
        client = c.RawClient(self.control, timeout=30.0)
        try:
            while not self.stopping.is_set():
                self._once(client)
        finally:
            client.close()

    def stop(self) -> None:
        self.stopping.set()
        self.join()

    def _once(self, client: c.RawClient) -> None:
        child = subprocess.Popen([sys.executable, "-c", KILLABLE, self.path],
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None
        try:
            if _line(child, 10.0) != "listening" or not self._ready(client):
                return
            answer: list[tuple[int, bytes]] = []
            call = threading.Thread(target=self._call, args=(answer,), name="soak kill call")
            call.start()
            reached, deadline = False, time.monotonic() + 10.0
            while not reached and call.is_alive() and time.monotonic() < deadline:
                reached = _line(child, 0.05) == "call"
            child.kill()  # mid-call: volplugd waits on this connection now
            call.join()
            self.kills += reached
            for status, body in answer:
                self.statuses[status] += 1
                if status >= 500 and b"internal" in body:
                    self.bad.append(f"{status} {body[:300]!r}")
        finally:
            if child.poll() is None:
                child.kill()
            child.wait()
            child.stdout.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    def _ready(self, client: c.RawClient) -> bool:
        deadline = time.monotonic() + 10.0
        while not self.stopping.is_set() and time.monotonic() < deadline:
            status, body = client.get("/v1/plugins/killed")
            view = json.loads(body) if status == 200 else {}
            if view.get("state") == "ready" and view["registered_at"] != self._last:
                self._last = view["registered_at"]  # this process's registration
                return True
            time.sleep(0.02)
        return False

    def _call(self, answer: list[tuple[int, bytes]]) -> None:
        client = c.RawClient(self.control, timeout=30.0)
        try:
            answer.append(client.get("/v1/plugins/killed/volumes"))
        except OSError as err:
            self.bad.append(f"no answer: {err!r}")
        finally:
            client.close()


def _line(child: subprocess.Popen[str], timeout: float) -> str:
    """The child's next stdout line, or "" after ``timeout`` s or at its exit."""
    assert child.stdout is not None
    if not select.select([child.stdout], [], [], timeout)[0]:
        return ""
    return child.stdout.readline().strip()
