"""Shared parts of the daemon benchmarks (discovery, scale, failfast).

* ``serve_main`` -- the *responder*: ONE helper process that binds N plugin sockets
  and answers ``/Plugin.Activate``, ``/VolumeDriver.Capabilities``, ``/VolumeDriver.List``
  (anything else: ``{"Err": ""}``) as a real HTTP/1.1 keep-alive server on real unix
  sockets, from one ``selectors`` loop -- far cheaper than N FakePlugin threads. It
  records when each request arrived (``time.monotonic()``: CLOCK_MONOTONIC is the same
  clock in every process), adopts listening sockets passed to it (SCM_RIGHTS), and can
  be told to hang a plugin (read requests, never answer).
* ``Responder`` -- the bench side of that process (commands over a SOCK_SEQPACKET pair).
* ``Daemon`` -- the real ``python -m volplugd`` as a child, with CPU and RSS readers.
* ``RawClient`` -- a minimal keep-alive HTTP/1.1 client over AF_UNIX (little client cost,
  so the figures are the daemon's).
* ``Inotify`` -- a raw inotify reader (ctypes), the floor for discovery latency.
* ``workdir``, ``percentile``, ``machine_line``, ``verdict`` -- small helpers.

Runs on: the bench's main thread (and its client threads for RawClient); ``serve_main``
on the responder process's only thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import json
import math
import os
import platform
import resource
import select
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
TMPFS = "/dev/shm"  # /tmp and /run are ext4 on these machines: bind() there is slow and noisy

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
    """``_common.py serve CTL_FD DIR PREFIX COUNT``: bind, say "ready", serve until quit."""
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


# --- the bench side ---------------------------------------------------------------


def proc_cpu_split(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process, in seconds (from /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    return sum(proc_cpu_split(pid))


def proc_threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def proc_rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


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

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self._ctl.send(b"quit")
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._ctl.close()


class RawClient:
    """Keep-alive HTTP/1.1 over AF_UNIX with the least client work: one prepared
    request, a read to Content-Length. Reconnects when the server closes."""

    def __init__(self, path: str, timeout: float = 10.0):
        self.path = path
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buf = b""

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self._buf = b""
        return sock

    def request(self, method: str, target: str, body: bytes = b"") -> tuple[int, bytes]:
        data = (f"{method} {target} HTTP/1.1\r\nHost: localhost\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode() + body
        for attempt in (0, 1):
            if self._sock is None:
                self._sock = self._connect()
            try:
                self._sock.sendall(data)
                return self._response(self._sock)
            except (ConnectionError, _Closed):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def get(self, target: str) -> tuple[int, bytes]:
        return self.request("GET", target)

    def _response(self, sock: socket.socket) -> tuple[int, bytes]:
        buf = self._buf
        while (end := buf.find(b"\r\n\r\n")) < 0:
            buf += self._recv(sock)
        head = buf[:end].lower()
        status = int(head[9:12])
        length = content_length(head, required=True)
        body_end = end + 4 + length
        chunks = [buf]
        have = len(buf)
        while have < body_end:
            chunk = self._recv(sock)
            chunks.append(chunk)
            have += len(chunk)
        buf = b"".join(chunks)
        self._buf = buf[body_end:]
        if b"connection: close" in head:
            self.close()
        return status, buf[end + 4:body_end]

    @staticmethod
    def _recv(sock: socket.socket) -> bytes:
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise _Closed
        return chunk

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._buf = b""


class _Closed(Exception):
    """The server closed a keep-alive connection."""


class Daemon:
    """``python -m volplugd`` as a child: its own config, plugin dir, control socket, log."""

    def __init__(self, work: Path, plugin_dir: Path, config: str = "",
                 log_level: str = "info", cprofile: Path | None = None):
        """``cprofile``: run under ``python -m cProfile -o FILE`` (it sees the main
        thread only: the supervisor loop); the file is written when the daemon stops."""
        self.socket = str(work / "control.sock")
        self.log_path = work / "volplugd.log"
        config_path = work / "volplugd.toml"
        config_path.write_text(config)
        wrap = [] if cprofile is None else ["-m", "cProfile", "-o", str(cprofile)]
        argv = [sys.executable, *wrap, "-m", "volplugd", "--config", str(config_path),
                "--plugin-dir", str(plugin_dir), "--control-socket", self.socket,
                "--no-metrics", "--log-format", "json", "--log-level", log_level]
        # The tree under test is REPO; a PYTHONPATH you set comes first (to try a patch).
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (os.environ.get("PYTHONPATH"), str(REPO)) if p)}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log, cwd=work, env=env)
        self.client = RawClient(self.socket)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_serving(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"volplugd exited {self.proc.returncode}: {self.tail()}")
            with contextlib.suppress(OSError):
                if self.client.get("/v1/health")[0] == 200:
                    return
            time.sleep(0.02)
        raise RuntimeError(f"volplugd did not serve in {timeout} s: {self.tail()}")

    def counts(self) -> dict[str, int]:
        status, body = self.client.get("/v1/health")
        if status != 200:
            raise RuntimeError(f"/v1/health answered {status}: {body[:200]!r}")
        counts: dict[str, int] = json.loads(body)["plugins"]
        return counts

    def wait_ready(self, count: int, timeout: float) -> float:
        """Wait until ``count`` plugins are ready; returns the seconds it took."""
        start = time.monotonic()
        deadline = start + timeout
        while (counts := self.counts()).get("ready", 0) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {counts} after {timeout} s (want {count} ready)")
            time.sleep(0.05)
        return time.monotonic() - start

    def wait_ready_by(self, count: int, deadline: float) -> float | None:
        """Seconds until ``count`` plugins were ready, or None at ``deadline``."""
        start = time.monotonic()
        while self.counts().get("ready", 0) < count:
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)
        return time.monotonic() - start

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.proc.pid)

    def rss_bytes(self) -> int:
        return proc_rss_bytes(self.proc.pid)

    def tail(self, lines: int = 5) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --- raw inotify: the floor for discovery latency ----------------------------------

IN_CREATE = 0x100
IN_DELETE = 0x200
_EVENT = struct.Struct("iIII")


class Inotify:
    """inotify on one directory, read straight from the fd (no watchdog)."""

    def __init__(self, directory: Path, mask: int = IN_CREATE | IN_DELETE):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0 or libc.inotify_add_watch(self.fd, bytes(directory), mask) < 0:
            raise OSError(ctypes.get_errno(), "inotify setup failed")

    def wait_for(self, name: str, mask: int, timeout: float) -> float | None:
        """monotonic time at which an event ``mask`` on ``name`` was read, else None."""
        want = os.fsencode(name)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([self.fd], [], [], left)[0]:
                return None
            seen = time.monotonic()
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                continue
            offset = 0
            while offset < len(data):
                _, event_mask, _, length = _EVENT.unpack_from(data, offset)
                raw = data[offset + 16:offset + 16 + length].rstrip(b"\0")
                offset += 16 + length
                if event_mask & mask and raw == want:
                    return seen
        return None

    def close(self) -> None:
        os.close(self.fd)


# --- profiling the daemon (optional: py-spy installed in the venv by hand) ----------


class Profiler:
    """``py-spy record`` on a pid while a phase runs (GIL holders only, non-blocking so
    the daemon is not paused), then a summary of where the GIL time went."""

    def __init__(self, pid: int, out: Path):
        spy = Path(sys.executable).parent / "py-spy"
        if not spy.exists():
            raise SystemExit(f"--profile needs py-spy: {spy.parent}/pip install py-spy")
        self.out = out
        self.proc = subprocess.Popen(
            [str(spy), "record", "--pid", str(pid), "--format", "raw", "--gil", "--nolineno",
             "--nonblocking", "--rate", "200", "--output", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self, top: int = 22) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self.out.exists():
            print("  profile: py-spy wrote nothing")
            return
        print(summarize_collapsed(self.out.read_text(), top))


_GENERIC_FRAMES = ("<module>", "_run_code", "_run_module_as_main", "Thread._bootstrap",
                   "Thread.run", "main (volplugd/cli.py)", "_run (volplugd/cli.py)",
                   "run (volplugd/daemon.py)", "Supervisor.run ", "WorkerPool._work")


def summarize_collapsed(text: str, top: int) -> str:
    """Inclusive and self share of samples per function from py-spy's raw format."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [f.strip() for f in stack.split(";")]
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
        own[frames[-1]] = own.get(frames[-1], 0) + count
    if not total:
        return "  profile: no samples"
    lines = [f"profile: {total} GIL-holding samples (py-spy --gil)",
             "  self %  function"]
    lines += [f"  {n * 100 / total:6.1f}  {f}" for f, n in
              sorted(own.items(), key=lambda kv: -kv[1])[:top]]
    lines.append("  incl %  function (entry points and thread bootstrap left out)")
    lines += [f"  {n * 100 / total:6.1f}  {f}" for f, n in
              sorted(inclusive.items(), key=lambda kv: -kv[1])
              if not any(g in f for g in _GENERIC_FRAMES)][:top]
    return "\n".join(lines)


# --- small helpers ----------------------------------------------------------------


def exit_cleanly_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so every ``finally``/ExitStack stops what it
    started (the daemon, the responder) and removes the scratch folder."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


@contextlib.contextmanager
def workdir(prefix: str) -> Iterator[Path]:
    """A short-named scratch folder on tmpfs, removed afterwards whatever happened."""
    path = Path(tempfile.mkdtemp(dir=TMPFS, prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (p99 of 200 samples is the 198th smallest)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1e3:.2f}"


def machine_line() -> str:
    """CPU, cores, load, Python: what the figures depend on."""
    model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f
                      if line.startswith("model name")), "?")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{time.strftime('%Y-%m-%d %H:%M %Z')}  {model}  {os.cpu_count()} vCPU  "
            f"load {load}  Python {platform.python_version()}")


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def fd_limit_for(sockets: int) -> None:
    """Raise our soft RLIMIT_NOFILE so we (and children) can hold ``sockets`` fds."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, sockets + 256))
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want < sockets:
        raise OSError(errno.EMFILE, f"need {sockets} fds, hard limit is {hard}")


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """Left-aligned first column, right-aligned others."""
    cells = [list(map(str, header))] + [list(map(str, r)) for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = []
    for row in cells:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths, strict=True))))
    return "\n".join(lines)


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "serve":
    sys.exit(serve_main(sys.argv[2:]))


@dataclass
class Setup:
    """A work dir, one responder serving ``count`` plugin sockets in ``work/plugins``, and
    a daemon watching them; the exit stack stops both and removes the dir."""

    work: Path
    responder: Responder
    daemon: Daemon

    @property
    def plugins(self) -> Path:
        return self.work / "plugins"

    @classmethod
    def start(cls, stack: contextlib.ExitStack, count: int, config: str = "",
              prefix: str = "vps") -> Setup:
        work = stack.enter_context(workdir(prefix))
        (work / "plugins").mkdir()
        responder = Responder(work / "plugins", count)
        stack.callback(responder.stop)
        daemon = Daemon(work, work / "plugins", config)
        stack.callback(daemon.stop)
        daemon.wait_serving()
        return cls(work, responder, daemon)
