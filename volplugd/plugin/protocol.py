"""The wire protocol of legacy volume plugins: endpoints, header values, request bodies as
Go writes them, error texts, and per-endpoint timeouts (pure).

Runs on: whichever thread calls the client; no state but a cached User-Agent.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from volplugd.plugin.models import ResponseError, decode_object, parse_err

__all__ = [
    "ACCEPT",
    "ACTIVATE",
    "CAPABILITIES",
    "CONTENT_TYPE",
    "CREATE",
    "DEFAULT_TIMEOUTS",
    "ENDPOINTS",
    "ERROR_TEXT_BYTES",
    "GET",
    "KEYS",
    "LIST",
    "MOUNT",
    "PATH",
    "REMOVE",
    "UNMOUNT",
    "VOLUME_DRIVER",
    "encode_json",
    "encode_options",
    "error_text",
    "positive_seconds",
    "resolve_timeouts",
    "user_agent",
]

ACTIVATE = "/Plugin.Activate"
CAPABILITIES = "/VolumeDriver.Capabilities"
CREATE = "/VolumeDriver.Create"
REMOVE = "/VolumeDriver.Remove"
GET = "/VolumeDriver.Get"
LIST = "/VolumeDriver.List"
PATH = "/VolumeDriver.Path"
MOUNT = "/VolumeDriver.Mount"
UNMOUNT = "/VolumeDriver.Unmount"
ENDPOINTS = (ACTIVATE, CAPABILITIES, CREATE, REMOVE, GET, LIST, PATH, MOUNT, UNMOUNT)

CONTENT_TYPE = "application/vnd.docker.plugins.v1.1+json"  # what Podman sends
ACCEPT = "application/vnd.docker.plugins.v1.2+json"  # what Docker sends

#: Seconds per call, after Docker's; a ``timeouts`` key missing falls back to "default".
DEFAULT_TIMEOUTS: Mapping[str, float] = MappingProxyType({
    "activate": 5.0, "capabilities": 60.0, "create": 120.0, "remove": 60.0, "get": 60.0,
    "list": 60.0, "path": 60.0, "mount": 120.0, "unmount": 60.0, "default": 60.0,
})
#: The timeouts key and short name of each endpoint: "/VolumeDriver.Create" -> "create".
KEYS: Mapping[str, str] = MappingProxyType(
    {endpoint: endpoint.rsplit(".", 1)[1].lower() for endpoint in ENDPOINTS})
ERROR_TEXT_BYTES = 1024  # a non-JSON error answer is cut to this
VOLUME_DRIVER = "VolumeDriver"
# Go's encoder escapes these (HTML safety); Podman's bodies carry them escaped.
_GO_ESCAPES = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
                             "\u2028": "\\u2028", "\u2029": "\\u2029"})



def resolve_timeouts(given: Mapping[str, float] | None) -> dict[str, float]:
    """Seconds per timeout key; keys missing from ``given`` use its "default", if any."""
    given = dict(given or {})
    unknown = sorted(set(given) - set(DEFAULT_TIMEOUTS))
    if unknown:
        raise ValueError(f"unknown timeout keys {unknown} (known: {sorted(DEFAULT_TIMEOUTS)})")
    checked = {key: positive_seconds(value, f"timeouts[{key!r}]") for key, value in given.items()}
    fallback = checked.get("default")
    return {key: checked.get(key, default if fallback is None else fallback)
            for key, default in DEFAULT_TIMEOUTS.items()}


def positive_seconds(value: float, what: str) -> float:
    """``value`` as float seconds; TypeError/ValueError naming ``what`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{what} must be a number of seconds, not {value!r}")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{what} must be a positive number of seconds, not {value!r}")
    return float(value)


def encode_options(options: Mapping[str, str]) -> dict[str, str]:
    """Create's Opts, sorted by key as Go's encoder writes a map."""
    for key, value in options.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"volume options must map str to str, not {key!r}: {value!r}")
    return dict(sorted(options.items()))


def encode_json(request: dict[str, Any]) -> bytes:
    """Compact JSON, byte for byte what Go's encoding/json writes for these requests."""
    text = json.dumps(request, separators=(",", ":"), ensure_ascii=False)
    return text.translate(_GO_ESCAPES).encode("utf-8", errors="replace")


def error_text(body: bytes) -> str:
    """A non-200 answer's error: its ``Err`` if it is a JSON object, else its text."""
    try:
        return parse_err(decode_object(body))
    except ResponseError:
        text = body[:ERROR_TEXT_BYTES].decode("utf-8", errors="backslashreplace").strip()
        return text + "…" if len(body) > ERROR_TEXT_BYTES else text


@functools.cache
def user_agent() -> str:
    """``volplugd/<installed version>``; plain ``volplugd`` when run from a source tree."""
    from importlib import metadata
    try:
        return f"volplugd/{metadata.version('volplugd')}"
    except metadata.PackageNotFoundError:
        return "volplugd"
