"""What the gateway answers to one v1-protocol request for one plugin (no sockets here).

A ``ready`` plugin gets the request forwarded byte for byte through ``Commands.call`` (so
the per-plugin bound on operations in flight applies, and a timeout or a refusal counts
toward the plugin's health exactly as a volume operation of the control API does); its
status, Content-Type and body come back unchanged. Anything else is answered at once,
without touching the plugin: ``500 {"Err": "volplugd: …"}`` — never a 200, which Podman
would take as success. ``/Plugin.Activate`` is answered from the manifest of the
plugin's last successful activation while it is ``ready`` or ``unhealthy``: Podman
drops the Err of a failed activation, so the user sees why only on the operation.

Runs on: the gateway's connection threads (any thread).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import NamedTuple

from volplugd.contracts import Commands, PluginBusy, PluginNotReady, UnknownPlugin
from volplugd.model import PluginState
from volplugd.plugin.client import PluginClient
from volplugd.plugin.errors import PluginError
from volplugd.plugin.protocol import ACTIVATE, KEYS

__all__ = ["ERR_TYPE", "Reply", "Request", "answer", "endpoint_label", "error_reply"]

ERR_TYPE = "application/vnd.docker.plugins.v1+json"  # what Docker's plugin helpers send
_ENDPOINT = re.compile(r"/VolumeDriver\.[A-Za-z][A-Za-z0-9.]{0,63}")
_MANIFEST_STATES = (PluginState.READY, PluginState.UNHEALTHY)


class Request(NamedTuple):
    method: str
    path: str
    body: bytes


@dataclass(frozen=True, slots=True)
class Reply:
    """One answer: ``outcome`` is the metrics label of what happened."""

    status: int
    content_type: str | None
    body: bytes
    outcome: str


def error_reply(message: str, outcome: str, status: int = 500) -> Reply:
    """``status {"Err": "volplugd: message"}``, JSON as Go's encoder writes it."""
    body = json.dumps({"Err": f"volplugd: {message}"}, separators=(",", ":"))
    return Reply(status, ERR_TYPE, body.encode(), outcome)


def endpoint_label(path: str) -> str:
    """The bounded metrics label of a request path: "create", …, or "other"."""
    return KEYS.get(path, "other")


def answer(commands: Commands, name: str, request: Request) -> Reply:
    """The gateway's answer to ``request`` on plugin ``name``'s socket."""
    if request.method != "POST":
        return error_reply(f"{request.method} is not allowed here: the plugin protocol "
                           "is POST only", "bad_request", 405)
    if request.path == ACTIVATE:
        return _activate(commands, name)
    if not _ENDPOINT.fullmatch(request.path):
        return error_reply(f"{_quoted(request.path)} is not a volume plugin endpoint",
                           "bad_request", 404)
    return _forward(commands, name, request)


def _forward(commands: Commands, name: str, request: Request) -> Reply:
    def forward(client: PluginClient) -> tuple[int, str | None, bytes]:
        return client.forward(request.path, request.body)

    try:
        status, content_type, body = commands.call(name, forward)
    except PluginNotReady as err:
        return error_reply(str(err), "not_ready")
    except PluginBusy as err:
        return error_reply(f"{err}; try again in {err.retry_after} s", "busy")
    except UnknownPlugin:
        return error_reply(f"plugin {name} is gone", "not_ready")
    except PluginError as err:
        return error_reply(str(err), err.outcome)
    return Reply(status, content_type, body, "answered")


def _activate(commands: Commands, name: str) -> Reply:
    view = commands.snapshot().plugins.get(name)
    if view is None:
        return error_reply(f"plugin {name} is gone", "not_ready")
    if view.state in _MANIFEST_STATES and view.implements:
        body = json.dumps({"Implements": list(view.implements)}, separators=(",", ":"))
        return Reply(200, ERR_TYPE, body.encode(), "manifest")
    return error_reply(str(PluginNotReady(view)), "not_ready")


def _quoted(path: str) -> str:
    """A client's path, short and printable, for an error message."""
    text = path[:80].encode("ascii", "backslashreplace").decode("ascii")
    return json.dumps(text + ("…" if len(path) > 80 else ""), ensure_ascii=True)
