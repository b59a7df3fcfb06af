"""PluginClient: Podman's ``libpod/plugin/volume_api.go`` (the seed) ported to Python,
for one plugin, and hardened.

Same endpoints, headers, request bodies and error wording as the seed; and then:
a total deadline per call and a cap on the answer's size (see ``transport``), a
non-empty ``Err`` on a 200 is an error, a non-JSON error answer keeps its text, JSON
keys match case-insensitively (as Go's decoder does), Capabilities, TCP and TLS.

The client neither logs nor touches metrics: it returns results, raises PluginError
subclasses, and calls the optional ``on_request(endpoint, outcome, seconds)`` hook.

Runs on: any thread; calls may run concurrently (one keep-alive pool per client).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import stat
import time
import warnings
from collections.abc import Callable, Mapping
from types import MappingProxyType, TracebackType
from typing import Any, TypeVar

from urllib3.util import SKIP_HEADER

from volplugd.plugin import transport
from volplugd.plugin.address import PluginAddress
from volplugd.plugin.errors import (
    NotAPlugin,
    NotAVolumePlugin,
    PluginBadResponse,
    PluginError,
    PluginRemoved,
    PluginReportedError,
    PluginTimeout,
    PluginUnreachable,
)
from volplugd.plugin.models import (
    Capabilities,
    JsonObject,
    Manifest,
    ResponseError,
    Volume,
    decode_object,
    parse_capabilities,
    parse_err,
    parse_manifest,
    parse_mountpoint,
    parse_volume,
    parse_volumes,
)

__all__ = [
    "ACCEPT",
    "ACTIVATE",
    "CAPABILITIES",
    "CONTENT_TYPE",
    "CREATE",
    "DEFAULT_TIMEOUTS",
    "ENDPOINTS",
    "GET",
    "LIST",
    "MOUNT",
    "PATH",
    "REMOVE",
    "UNMOUNT",
    "OnRequest",
    "PluginClient",
]

OnRequest = Callable[[str, str, float], None]
T = TypeVar("T")

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
_KEYS = {endpoint: endpoint.rsplit(".", 1)[1].lower() for endpoint in ENDPOINTS}
_FAILURES: Mapping[str, type[PluginError]] = MappingProxyType({
    transport.Failure.REFUSED: PluginUnreachable,  # a stale socket file: nobody listens
    transport.Failure.BROKEN: PluginUnreachable,
    transport.Failure.OS: PluginUnreachable,
    transport.Failure.PROTOCOL: PluginBadResponse,
})
ERROR_TEXT_BYTES = 1024  # a non-JSON error answer is cut to this
VOLUME_DRIVER = "VolumeDriver"
# Go's encoder escapes these (HTML safety); Podman's bodies carry them escaped.
_GO_ESCAPES = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
                             "\u2028": "\\u2028", "\u2029": "\\u2029"})


class PluginClient:
    """A client for one volume plugin at ``address``, called ``name`` in errors."""

    def __init__(self, name: str, address: PluginAddress, *,
                 timeouts: Mapping[str, float] | None = None,
                 max_response_bytes: int = 16 * 1024 * 1024,
                 on_request: OnRequest | None = None) -> None:
        if max_response_bytes < 1:
            raise ValueError(f"max_response_bytes must be positive, not {max_response_bytes}")
        self.name = name
        self.address = address
        self._timeouts = resolve_timeouts(timeouts)
        self._limit = max_response_bytes
        self._on_request = on_request
        self._closed = False
        self._setup_error: OSError | None = None
        self._transport: transport.Transport | None = None
        try:
            self._transport = transport.Transport(address, _headers(address))
        except OSError as err:  # unreadable TLS files (ssl.SSLError too): every call says so
            self._setup_error = err

    # -- the endpoints ------------------------------------------------------------------
    def activate(self, *, timeout: float | None = None) -> Manifest:
        """The handshake; NotAPlugin / NotAVolumePlugin unless a volume driver answers."""
        return self._call(ACTIVATE, None, "", timeout, self._manifest)

    def capabilities(self, *, timeout: float | None = None) -> Capabilities:
        """The driver's scope; a plugin that errors or gives none is "local" (Docker)."""
        return self._call(CAPABILITIES, None, "", timeout, self._capabilities)

    def create(self, volume: str, options: Mapping[str, str] | None = None, *,
               timeout: float | None = None) -> None:
        request: dict[str, Any] = {"Name": volume}
        if options:  # omitted when empty, as Podman does
            request["Opts"] = _options(options)
        self._call(CREATE, request, volume, timeout, self._checked(CREATE, volume, _nothing))

    def remove(self, volume: str, *, timeout: float | None = None) -> None:
        self._call(REMOVE, {"Name": volume}, volume, timeout,
                   self._checked(REMOVE, volume, _nothing))

    def get(self, volume: str, *, timeout: float | None = None) -> Volume:
        return self._call(GET, {"Name": volume}, volume, timeout,
                          self._checked(GET, volume, parse_volume))

    def list(self, *, timeout: float | None = None) -> list[Volume]:
        return self._call(LIST, None, "", timeout, self._checked(LIST, "", parse_volumes))

    def path(self, volume: str, *, timeout: float | None = None) -> str:
        """Where the volume is mounted; "" when the plugin says it is not."""
        return self._call(PATH, {"Name": volume}, volume, timeout,
                          self._checked(PATH, volume, _mountpoint(required=False)))

    def mount(self, volume: str, id: str, *, timeout: float | None = None) -> str:
        """Mount for the user ``id``; the answer must name a mountpoint."""
        return self._call(MOUNT, {"Name": volume, "ID": id}, volume, timeout,
                          self._checked(MOUNT, volume, _mountpoint(required=True)))

    def unmount(self, volume: str, id: str, *, timeout: float | None = None) -> None:
        self._call(UNMOUNT, {"Name": volume, "ID": id}, volume, timeout,
                   self._checked(UNMOUNT, volume, _nothing))

    def close(self) -> None:
        """Close the keep-alive connections; later calls raise PluginError. Idempotent."""
        self._closed = True
        if self._transport is not None:
            self._transport.close()

    def __enter__(self) -> PluginClient:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PluginClient({self.name!r}, {self.address.url!r})"

    # -- one call: deadline, exchange, interpretation, hook --------------------------------
    def _call(self, endpoint: str, request: dict[str, Any] | None, volume: str,
              timeout: float | None, interpret: Callable[[int, bytes], T]) -> T:
        seconds = self._seconds(endpoint, timeout)
        started = time.monotonic()
        outcome = PluginError.outcome
        try:
            status, body = self._exchange(endpoint, request, volume, seconds, started)
            result = interpret(status, body)
            outcome = "success"
            return result
        except PluginError as err:
            outcome = err.outcome
            raise
        finally:
            self._report(endpoint, outcome, time.monotonic() - started)

    def _exchange(self, endpoint: str, request: dict[str, Any] | None, volume: str,
                  seconds: float, started: float) -> tuple[int, bytes]:
        """(status, body) of one POST, all of it within ``seconds`` of ``started``."""
        link = self._check_usable(endpoint, volume)
        body = b"" if request is None else _encode(request)
        with transport.deadline(started + seconds):
            try:
                response = link.post(endpoint, body, seconds)
            except Exception as err:
                raise self._transport_error(err, "send", endpoint, volume, seconds) from err
            try:
                return response.status_code, transport.read_body(response, self._limit)
            except transport.BodyTooLarge as err:
                raise PluginBadResponse(self._too_large(endpoint, err), **self._ctx(
                    endpoint, volume)) from err
            except Exception as err:
                raise self._transport_error(err, "read", endpoint, volume, seconds) from err

    def _check_usable(self, endpoint: str, volume: str) -> transport.Transport:
        """The seed's verifyReachable (the socket file still exists), and our own state."""
        if self._closed:
            raise PluginError(f"client for plugin {self.name} is closed",
                              **self._ctx(endpoint, volume))
        if self._transport is None:
            raise PluginError(f"setting up TLS for plugin {self.name}: {self._setup_error}",
                              **self._ctx(endpoint, volume)) from self._setup_error
        if self.address.is_unix:
            self._verify_reachable(endpoint, volume)
        return self._transport

    def _verify_reachable(self, endpoint: str, volume: str) -> None:
        try:
            mode = os.stat(self.address.target).st_mode
        except FileNotFoundError as err:
            raise self._removed(endpoint, volume) from err
        except OSError as err:
            raise PluginUnreachable(f"accessing plugin {self.name}: {transport.strerror(err)}",
                                    **self._ctx(endpoint, volume)) from err
        if not stat.S_ISSOCK(mode):
            raise NotAPlugin(f'volume {self.name} path "{self.address.target}" is not a unix '
                             "socket: target does not appear to be a valid plugin",
                             **self._ctx(endpoint, volume))

    # -- interpreting answers ---------------------------------------------------------
    def _manifest(self, status: int, body: bytes) -> Manifest:
        ctx = self._ctx(ACTIVATE, "")
        if status != 200:  # the seed: anything else means "not a plugin"
            raise NotAPlugin(f"got status code {status} from activation endpoint for plugin "
                             f"{self.name}: target does not appear to be a valid plugin", **ctx)
        try:
            obj = decode_object(body)
            err = parse_err(obj)
            manifest = parse_manifest(obj)
        except ResponseError as bad:
            raise NotAPlugin(f"unmarshalling plugin {self.name} activation response: {bad}",
                             **ctx) from bad
        if err:
            raise self._reported(ACTIVATE, "", err)
        if VOLUME_DRIVER not in manifest.implements:
            raise NotAVolumePlugin(
                f"plugin {self.name} does not implement volume plugin, instead provides "
                f"{', '.join(manifest.implements)}: plugin is not a volume plugin",
                implements=manifest.implements, **ctx)
        return manifest

    def _capabilities(self, status: int, body: bytes) -> Capabilities:
        try:
            return self._checked(CAPABILITIES, "", parse_capabilities)(status, body)
        except PluginReportedError:  # Capabilities is optional: Docker assumes "local"
            return Capabilities("local")

    def _checked(self, endpoint: str, volume: str,
                 parse: Callable[[JsonObject], T]) -> Callable[[int, bytes], T]:
        """An interpreter: non-200 or a non-empty Err is reported; else ``parse`` the 200."""
        def interpret(status: int, body: bytes) -> T:
            if status != 200:
                raise self._reported(endpoint, volume, _error_text(body))
            try:
                obj = decode_object(body)
                err = parse_err(obj)
                if not err:
                    return parse(obj)
            except ResponseError as bad:
                raise PluginBadResponse(
                    f"unmarshalling volume plugin {self.name} {_KEYS[endpoint]} response: "
                    f"{bad}", **self._ctx(endpoint, volume)) from bad
            raise self._reported(endpoint, volume, err)
        return interpret

    # -- errors, worded like the seed ---------------------------------------------------------
    def _ctx(self, endpoint: str, volume: str) -> dict[str, str]:
        return {"plugin": self.name, "endpoint": endpoint, "volume": volume}

    def _reported(self, endpoint: str, volume: str, err: str) -> PluginReportedError:
        err = err or "empty error from plugin"
        where = f" on volume {volume}" if volume else ""
        return PluginReportedError(f"on {endpoint}{where} in volume plugin {self.name}: {err}",
                                   err=err, **self._ctx(endpoint, volume))

    def _removed(self, endpoint: str, volume: str) -> PluginRemoved:
        return PluginRemoved(f"{self.name}: plugin is no longer available (shut down?)",
                             **self._ctx(endpoint, volume))

    def _prefix(self, phase: str, endpoint: str) -> str:
        if endpoint == ACTIVATE:
            return (f"sending request to plugin {self.name} activation endpoint"
                    if phase == "send" else
                    f"reading activation response body from plugin {self.name}")
        return (f"sending request to volume plugin {self.name} endpoint {endpoint}"
                if phase == "send" else f"reading response body from volume plugin {self.name}")

    def _too_large(self, endpoint: str, err: transport.BodyTooLarge) -> str:
        size = "" if err.declared is None else f" of {err.declared} bytes"
        return (f"{self._prefix('read', endpoint)}: answer{size} is larger than the limit "
                f"of {err.limit} bytes")

    def _transport_error(self, err: Exception, phase: str, endpoint: str, volume: str,
                         seconds: float) -> PluginError:
        kind, detail = transport.classify(err)
        ctx = self._ctx(endpoint, volume)
        prefix = self._prefix(phase, endpoint)
        if kind == transport.Failure.TIMEOUT or transport.deadline_passed():
            return PluginTimeout(f"{prefix}: timed out: no complete answer within {seconds:g} s",
                                 **ctx)
        if kind == transport.Failure.GONE:
            return self._removed(endpoint, volume)
        if kind == transport.Failure.REFUSED:
            detail = f"{self._dial()}: connect: {detail}"
        return _FAILURES.get(kind, PluginError)(f"{prefix}: {detail}", **ctx)

    def _dial(self) -> str:
        network = "unix" if self.address.is_unix else "tcp"
        return f"dial {network} {self.address.target}"

    # -- settings and the hook ----------------------------------------------------------
    def _seconds(self, endpoint: str, timeout: float | None) -> float:
        if timeout is None:
            return self._timeouts[_KEYS[endpoint]]
        return _positive(timeout, "timeout")

    def _report(self, endpoint: str, outcome: str, seconds: float) -> None:
        """Call on_request; what it raises never changes the call's result or error.

        A failing hook is reported as a RuntimeWarning (route warnings to your log with
        ``logging.captureWarnings``); with warnings turned into errors it is dropped.
        """
        if self._on_request is None:
            return
        try:
            self._on_request(endpoint, outcome, seconds)
        except Exception as err:  # noqa: BLE001 — a hook's bug must not fail the call
            # With warnings turned into errors, warn() raises: still not the caller's problem.
            with contextlib.suppress(Exception):
                warnings.warn(f"volplugd.plugin: on_request({endpoint!r}, {outcome!r}) raised "
                              f"{err!r}; ignored", RuntimeWarning, stacklevel=4)


def resolve_timeouts(given: Mapping[str, float] | None) -> dict[str, float]:
    """Seconds per timeout key; keys missing from ``given`` use its "default", if any."""
    given = dict(given or {})
    unknown = sorted(set(given) - set(DEFAULT_TIMEOUTS))
    if unknown:
        raise ValueError(f"unknown timeout keys {unknown} (known: {sorted(DEFAULT_TIMEOUTS)})")
    checked = {key: _positive(value, f"timeouts[{key!r}]") for key, value in given.items()}
    fallback = checked.get("default")
    return {key: checked.get(key, default if fallback is None else fallback)
            for key, default in DEFAULT_TIMEOUTS.items()}


def _positive(value: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{what} must be a number of seconds, not {value!r}")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{what} must be a positive number of seconds, not {value!r}")
    return float(value)


def _options(options: Mapping[str, str]) -> dict[str, str]:
    """Create's Opts, sorted by key as Go's encoder writes a map."""
    for key, value in options.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"volume options must map str to str, not {key!r}: {value!r}")
    return dict(sorted(options.items()))


def _encode(request: dict[str, Any]) -> bytes:
    """Compact JSON, byte for byte what Go's encoding/json writes for these requests."""
    text = json.dumps(request, separators=(",", ":"), ensure_ascii=False)
    return text.translate(_GO_ESCAPES).encode("utf-8", errors="replace")


def _error_text(body: bytes) -> str:
    """A non-200 answer's error: its ``Err`` if it is a JSON object, else its text."""
    try:
        return parse_err(decode_object(body))
    except ResponseError:
        text = body[:ERROR_TEXT_BYTES].decode("utf-8", errors="replace").strip()
        return text + "…" if len(body) > ERROR_TEXT_BYTES else text


def _mountpoint(*, required: bool) -> Callable[[JsonObject], str]:
    return functools.partial(parse_mountpoint, required=required)


def _nothing(_: JsonObject) -> None:
    return None


def _headers(address: PluginAddress) -> dict[str, str]:
    """Podman's headers in Podman's order, plus Docker's Accept; nothing requests adds."""
    headers = {"Host": "plugin"} if address.is_unix else {}  # TCP: the real host:port
    headers.update({
        "User-Agent": user_agent(),
        "Content-Length": "0",  # placeholder: set per request, keeps this position
        "Content-Type": CONTENT_TYPE,
        "Accept": ACCEPT,
        "Accept-Encoding": SKIP_HEADER,  # else http.client adds "Accept-Encoding: identity"
    })
    return headers


@functools.cache
def user_agent() -> str:
    """``volplugd/<installed version>``; plain ``volplugd`` when run from a source tree."""
    from importlib import metadata
    try:
        return f"volplugd/{metadata.version('volplugd')}"
    except metadata.PackageNotFoundError:
        return "volplugd"
