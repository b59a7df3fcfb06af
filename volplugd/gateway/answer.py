"""What the gateway answers to one v1-protocol request for one plugin (no sockets here).

A ``ready`` plugin gets the request forwarded byte for byte through ``Commands.call`` (so
the per-plugin bound on operations in flight applies, and a timeout or a refusal counts
toward the plugin's health exactly as a volume operation of the control API does); its
status, Content-Type and body come back unchanged. Anything else is answered at once,
without touching the plugin: ``500 {"Err": "volplugd: …"}`` — never a 200, which Podman
would take as success. ``/Plugin.Activate`` is answered from the manifest of the
plugin's last successful activation while it is ``ready`` or ``unhealthy``: Podman
drops the Err of a failed activation, so the user sees why only on the operation.

The gateway's app (``GatewayApp``) is what its ``serving.Server`` calls for each request:
the body is bounded (``MAX_BODY``, 413) and read here, on the connection's thread.

Runs on: the gateway's connection threads (any thread).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import NamedTuple

from volplugd.contracts import Commands, PluginBusy, PluginNotReady, UnknownPlugin
from volplugd.limits import MAX_HEAD_BYTES, MAX_REQUEST_LINE
from volplugd.model import PluginState
from volplugd.plugin.client import PluginClient
from volplugd.plugin.errors import PluginError
from volplugd.plugin.protocol import ACTIVATE, KEYS
from volplugd.serving import HEAD_TOO_LARGE, Reply, Request, RequestTimeout

__all__ = ["ERR_TYPE", "MAX_BODY", "Answer", "GatewayApp", "OnGatewayRequest", "answer",
           "endpoint_label", "error_reply", "protocol_error"]

ERR_TYPE = "application/vnd.docker.plugins.v1+json"  # what Docker's plugin helpers send
MAX_BODY = 1024 * 1024  # v1 request bodies are a name and a few options
_ENDPOINT = re.compile(r"/VolumeDriver\.[A-Za-z][A-Za-z0-9.]{0,63}")
# Once a volume driver, answered from its manifest: the call behind Activate then fails
# fast with the state and last error (or, restarting, is held: ``restart.hold``).
_MANIFEST_STATES = (PluginState.READY, PluginState.UNHEALTHY, PluginState.RESTARTING)
_MALFORMED = (400, 411, 413, 414, 431, 505)  # what the server's head parser answers
OnGatewayRequest = Callable[[str, str, str, float], None]  # plugin, endpoint, outcome, s


class Answer(NamedTuple):
    """One answer and the metrics label of what happened (``outcome``)."""

    reply: Reply
    outcome: str


def error_reply(message: str, outcome: str, status: int = 500) -> Answer:
    """``status {"Err": "volplugd: message"}``, JSON as Go's encoder writes it."""
    body = json.dumps({"Err": f"volplugd: {message}"}, separators=(",", ":"))
    return Answer(Reply(status, body.encode(), ERR_TYPE), outcome)


def protocol_error(status: int, message: str) -> Reply:
    """The gateway's answer to a request its server refuses by itself."""
    if status == 414:
        message = f"request line longer than {MAX_REQUEST_LINE} bytes"
    elif status == 431 and message == HEAD_TOO_LARGE:
        message = f"request head larger than {MAX_HEAD_BYTES} bytes"
    elif status in _MALFORMED:
        message = f"malformed request: {message}"
    return error_reply(message, "bad_request", status).reply


class GatewayApp:
    """What the gateway's server calls: the plugin is the listening socket's name
    (``Request.listener``); ``on_request(plugin, endpoint, outcome, seconds)`` is told
    each answer before it goes out (metrics only: a refusal is a hot path, no log line
    per request)."""

    def __init__(self, commands: Commands, on_request: OnGatewayRequest | None,
                 read_timeout: float):
        self._commands = commands
        self._on_request = on_request
        self._read_timeout = read_timeout

    def __call__(self, request: Request) -> Reply:
        started = time.monotonic()
        body = self._body(request)
        if isinstance(body, Answer):
            result = body
        else:
            result = answer(self._commands, request.listener, request.method, request.path,
                            body)
        if self._on_request is not None:
            self._on_request(request.listener, endpoint_label(request.path), result.outcome,
                             time.monotonic() - started)
        return result.reply

    def _body(self, request: Request) -> bytes | Answer:
        """The request's body, or why it cannot be had (413, 408)."""
        if request.content_length > MAX_BODY:
            return error_reply(f"request body larger than {MAX_BODY} bytes", "bad_request", 413)
        if not request.content_length or request.body is None:
            return b""
        try:
            return request.body.read(request.content_length) or b""
        except RequestTimeout:
            return error_reply(f"the request did not arrive within {self._read_timeout:g} s",
                               "bad_request", 408)


def endpoint_label(path: str) -> str:
    """The bounded metrics label of a request path: "create", …, or "other"."""
    return KEYS.get(path, "other")


def answer(commands: Commands, name: str, method: str, path: str, body: bytes) -> Answer:
    """The gateway's answer to ``method path`` with ``body`` on plugin ``name``'s socket."""
    if method != "POST":
        return error_reply(f"{method} is not allowed here: the plugin protocol is POST only",
                           "bad_request", 405)
    if path == ACTIVATE:
        return _activate(commands, name)
    if not _ENDPOINT.fullmatch(path):
        return error_reply(f"{_quoted(path)} is not a volume plugin endpoint",
                           "bad_request", 404)
    return _forward(commands, name, path, body)


def _forward(commands: Commands, name: str, path: str, body: bytes) -> Answer:
    def forward(client: PluginClient) -> tuple[int, str | None, bytes]:
        return client.forward(path, body)

    try:
        status, content_type, answered = commands.call(name, forward)
    except PluginNotReady as err:
        return error_reply(str(err), "not_ready")
    except PluginBusy as err:
        return error_reply(f"{err}; try again in {err.retry_after} s", "busy")
    except UnknownPlugin:
        return error_reply(f"plugin {name} is gone", "not_ready")
    except PluginError as err:
        return error_reply(str(err), err.outcome)
    return Answer(Reply(status, answered, content_type), "answered")


def _activate(commands: Commands, name: str) -> Answer:
    view = commands.snapshot().plugins.get(name)
    if view is None:
        return error_reply(f"plugin {name} is gone", "not_ready")
    if view.state in _MANIFEST_STATES and view.implements:
        body = json.dumps({"Implements": list(view.implements)}, separators=(",", ":"))
        return Answer(Reply(200, body.encode(), ERR_TYPE), "manifest")
    return error_reply(str(PluginNotReady(view)), "not_ready")


def _quoted(path: str) -> str:
    """A client's path, short and printable, for an error message."""
    text = path[:80].encode("ascii", "backslashreplace").decode("ascii")
    return json.dumps(text + ("…" if len(path) > 80 else ""), ensure_ascii=True)
