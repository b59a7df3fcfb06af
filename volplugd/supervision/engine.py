"""Restart a container through its engine's HTTP API on a unix socket: Docker's
(``/run/docker.sock``) or Podman's Docker-compatible one (``/run/podman/podman.sock``),
both ``POST /containers/{id}/restart?t=N`` (stop, waiting up to N s before SIGKILL, then
start).

Outcomes (``restart_container``): ``204`` → returns; ``404`` → ``ContainerGone``;
any other status → ``EngineError`` with the engine's ``message`` (safe text); no socket,
refused, closed → ``EngineUnreachable``; no answer within the deadline (``stop_timeout``
plus ``margin`` seconds, per wait on the socket) → ``EngineTimeout``. All are
``EngineError``s with ``engine`` and ``container``.

Runs on: a worker thread (blocking, bounded); no state.
"""

from __future__ import annotations

import http.client
import json
import re
import socket

from volplugd.plugin.text import from_bytes, safe_text

__all__ = ["ENGINE_SOCKETS", "ContainerGone", "EngineError", "EngineTimeout",
           "EngineUnreachable", "restart_container"]

#: Where each engine serves its API by default (rootful).
ENGINE_SOCKETS = {"docker": "/run/docker.sock", "podman": "/run/podman/podman.sock"}
MAX_ANSWER = 64 * 1024
_ID = re.compile(r"^[0-9a-zA-Z][0-9a-zA-Z_.-]{0,127}$")  # an id or a name, nothing to escape


class EngineError(Exception):
    """The container engine did not restart ``container`` (``status``: HTTP, if any)."""

    def __init__(self, engine: str, container: str, message: str,
                 status: int | None = None) -> None:
        super().__init__(f"{engine} container {container}: {message}")
        self.engine = engine
        self.container = container
        self.status = status


class ContainerGone(EngineError):
    """The engine has no such container (404)."""


class EngineUnreachable(EngineError):
    """The engine's socket cannot be reached."""


class EngineTimeout(EngineError):
    """The engine gave no answer in time."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def restart_container(engine: str, container: str, socket_path: str | None = None, *,
                      stop_timeout: int = 10, margin: float = 20.0) -> None:
    """Restart ``container`` (an id) of ``engine`` (``"docker"``/``"podman"``) through
    the API at ``socket_path`` (the engine's default when None)."""
    if _ID.match(container) is None:
        raise EngineError(engine, safe_text(container, 256), "not a container id")
    path = socket_path or ENGINE_SOCKETS[engine]
    conn = _UnixConnection(path, stop_timeout + margin)
    try:
        conn.request("POST", f"/containers/{container}/restart?t={int(stop_timeout)}",
                     headers={"Content-Length": "0"})
        answer = conn.getresponse()
        status, body = answer.status, answer.read(MAX_ANSWER)
    except TimeoutError:
        raise EngineTimeout(engine, container, f"no answer from {path} in time") from None
    except (OSError, http.client.HTTPException) as err:
        reason = getattr(err, "strerror", None) or type(err).__name__
        raise EngineUnreachable(engine, container, f"{path}: {reason}") from None
    finally:
        conn.close()
    if status == 204:
        return
    message = _message(body)
    if status == 404:
        raise ContainerGone(engine, container, f"no such container: {message}", status)
    raise EngineError(engine, container, f"restart failed ({status}): {message}", status)


def _message(body: bytes) -> str:
    """The engine's ``{"message": ...}``, else the body, as short safe text."""
    try:
        value = json.loads(body)
    except ValueError:
        return from_bytes(body, 1024)
    if isinstance(value, dict) and isinstance(value.get("message"), str):
        return safe_text(value["message"], 1024)
    return from_bytes(body, 1024)
