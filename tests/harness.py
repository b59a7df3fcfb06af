"""Drive the real volplugd process: start it, talk HTTP over its control socket, stop it.

Used by every system test; nothing here is mocked.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests import tiers
from tests.waiting import wait_until

PACKAGE = Path(__file__).resolve().parents[1] / "volplugd"
SYSTEM_PYTHON = "/usr/bin/python3"
NOBODY = 65534


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over AF_UNIX (the control socket)."""

    def __init__(self, path: str, timeout: float = 10.0, host: str = "localhost"):
        super().__init__(host, timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def call(sock_path: str, method: str, path: str, body: Any = None,
         timeout: float = 30.0) -> tuple[int, Any]:
    """One request; returns (status, decoded JSON or raw bytes for non-JSON answers)."""
    conn = UnixHTTPConnection(sock_path, timeout=timeout)
    try:
        data = None if body is None else json.dumps(body).encode()
        headers = {} if data is None else {"Content-Type": "application/json"}
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        if resp.getheader("Content-Type", "").startswith("application/json"):
            return resp.status, json.loads(raw)
        return resp.status, raw
    finally:
        conn.close()


@contextlib.contextmanager
def readable_package() -> Iterator[Path]:
    """A world-readable temp folder holding a copy of the ``volplugd`` package.

    Another uid cannot import the checkout when it sits in a 0700 folder (root's home,
    ``mktemp -d``); it imports this copy instead (``PYTHONPATH``), with the system Python.
    """
    root = Path(tempfile.mkdtemp(prefix="vp-pkg-", dir="/tmp"))
    try:
        shutil.copytree(PACKAGE, root / "volplugd", ignore=shutil.ignore_patterns("__pycache__"))
        for path in [root, *root.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def skip_unless_switching_to(uid: int) -> None:
    """Skip the test, saying why, where ``run_as(uid, ...)`` cannot work (call it on the
    test's own thread: a skip raised on another thread is lost)."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    if os.geteuid() != 0:
        pytest.skip(f"switching to uid {uid} needs root")


def run_as(uid: int, argv: Sequence[str], *, pythonpath: Path | None = None,
           timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as ``uid`` (its gid the same number, no supplementary groups).

    It starts in ``/`` with a bare environment, so nothing of the checkout (the working
    directory, the venv, ``sys.path``) has to be readable by that uid. Skips the test
    where switching users is impossible (no ``setpriv``, not root).
    """
    skip_unless_switching_to(uid)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *argv],
        capture_output=True, text=True, timeout=timeout, check=False, cwd="/", env=env)


class Daemon:
    """A volplugd child process with its own plugin dirs and control socket."""

    def __init__(self, workdir: Path, *, plugin_dirs: Sequence[Path] | None = None,
                 args: Sequence[str] = (), config: str = "", env: dict[str, str] | None = None,
                 log_level: str = "debug", python_args: Sequence[str] = (),
                 wrapper: Sequence[str] = ()):
        """``python_args`` go between the interpreter and ``-m volplugd`` (the benchmarks
        pass ``-m cProfile -o FILE``); ``env`` is laid over this process's environment;
        ``wrapper`` runs the daemon (e.g. ``prlimit --nofile=256:256 --``)."""
        self.workdir = workdir
        self.plugin_dirs = list(plugin_dirs) if plugin_dirs is not None else [workdir / "plugins"]
        self.socket = str(workdir / "control.sock")
        self.log_path = workdir / "volplugd.log"
        self.config_path = workdir / "volplugd.toml"
        self.config_path.write_text(config)
        self.args = list(args)
        self.env = {**os.environ, **(env or {})}
        self.log_level = log_level
        self.python_args = list(python_args)
        self.wrapper = list(wrapper)
        self.proc: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        argv = [*self.wrapper, sys.executable, *self.python_args, "-m", "volplugd",
                "--config", str(self.config_path), "--control-socket", self.socket,
                "--log-format", "json", "--log-level", self.log_level]
        for d in self.plugin_dirs:
            argv += ["--plugin-dir", str(d)]
        if not any(a.startswith("--metrics-listen") or a == "--no-metrics" for a in self.args):
            argv.append("--no-metrics")
        return argv + self.args

    def start(self, wait: bool = True) -> Daemon:
        tiers.require("system", "starts the volplugd process")
        for d in self.plugin_dirs:
            d.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=log, env=self.env,
                                         cwd=self.workdir)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        wait_until(self._answers, timeout, message=f"volplugd to serve; log:\n{self.log()}")

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"volplugd exited {self.proc.returncode}; log:\n{self.log()}")
        try:
            return call(self.socket, "GET", "/v1/health", timeout=2.0)[0] == 200
        except OSError:
            return False

    def get(self, path: str) -> Any:
        status, body = call(self.socket, "GET", path)
        assert status == 200, (status, body)
        return body

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return call(self.socket, method, path, body)

    def plugins(self) -> dict[str, dict[str, Any]]:
        return {p["name"]: p for p in self.get("/v1/plugins")["plugins"]}

    def wait_state(self, name: str, state: str | None, timeout: float = 15.0) -> dict[str, Any]:
        """Wait until plugin ``name`` is in ``state`` (None: until it is gone)."""
        def check() -> Any:
            plugin = self.plugins().get(name)
            if state is None:
                return plugin is None
            return plugin if plugin is not None and plugin["state"] == state else None
        return wait_until(check, timeout, message=f"{name} -> {state}")  # type: ignore[no-any-return,unused-ignore]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def wait_log(self, event: str, timeout: float = 15.0, nth: int = 1) -> dict[str, Any]:
        """Wait for the ``nth`` JSON log line whose event is ``event``; return it."""
        def found() -> dict[str, Any] | None:
            hits = [e for e in self.log_events() if e.get("event") == event]
            return hits[nth - 1] if len(hits) >= nth else None
        hit = wait_until(found, timeout, message=f"log event {event}")
        assert hit is not None
        return hit

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait; returns the exit code (kills and fails after ``timeout``)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"volplugd ignored SIGTERM; log:\n{self.log()}") from None
        return self.proc.returncode
