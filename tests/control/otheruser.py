"""Acting as another local user in tests: ``peer_client.py`` run with ``setpriv`` under
the system python3, from a world-readable copy (the checkout may sit in a 0700 folder).
The fixtures ``peer_script`` and ``peers`` (tests/control/conftest.py) provide both."""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
from pathlib import Path
from typing import Any

__all__ = ["CAN_SWITCH_USER", "NOBODY", "Peer"]

NOBODY = 65534

CAN_SWITCH_USER = os.geteuid() == 0 and shutil.which("setpriv") is not None
SCRIPT = Path(__file__).with_name("peer_client.py")


class Peer:
    """peer_client.py running as ``uid``; its stdout read line by line with a deadline."""

    def __init__(self, script: Path, uid: int, *args: str):
        self.proc = subprocess.Popen(
            ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
             "/usr/bin/python3", "-I", str(script), *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        self._buffer = b""

    def line(self, timeout: float = 60.0) -> str:
        """The next line (unbuffered reads: select must see what is not yet read)."""
        assert self.proc.stdout is not None
        while b"\n" not in self._buffer:
            ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
            assert ready, f"no line from the peer client within {timeout} s"
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            assert chunk, "the peer client ended"
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    def report(self) -> list[Any]:
        result: list[Any] = json.loads(self.line())
        return result

    def tell(self, text: str = "") -> None:
        """A line to the peer client (``text``: what ``repeat`` reads)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode() + b"\n")
        self.proc.stdin.flush()

    def end(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
