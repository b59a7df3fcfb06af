"""PluginClient: Podman's ``libpod/plugin/volume_api.go`` (the seed) ported to Python,
for one plugin, and hardened.

Same endpoints, headers, request bodies and error wording as the seed; and then:
a total deadline per call and a cap on the answer's size (``transport``), a
non-empty ``Err`` on a 200 is an error, a non-JSON error answer keeps its text, JSON
keys match case-insensitively (as Go's decoder does), Capabilities, TCP and TLS.

The client neither logs nor touches metrics: it returns results, raises PluginError
subclasses, and calls the optional ``on_request(endpoint, outcome, seconds)`` hook.
Wire format: ``protocol``; sockets and limits: ``transport``; what broke: ``failures``.

Runs on: any thread; calls may run concurrently (one keep-alive pool per client).
"""

from __future__ import annotations

import contextlib
import functools
import os
import stat
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from types import MappingProxyType, TracebackType
from typing import Any, TypeVar

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
from volplugd.plugin.failures import Failure, classify, strerror
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
from volplugd.plugin.protocol import (
    ACTIVATE,
    CAPABILITIES,
    CREATE,
    GET,
    KEYS,
    LIST,
    MOUNT,
    PATH,
    REMOVE,
    UNMOUNT,
    VOLUME_DRIVER,
    encode_json,
    encode_options,
    error_text,
    headers_for,
    positive_seconds,
    request_bytes,
    resolve_timeouts,
)

__all__ = ["OnRequest", "PluginClient"]

OnRequest = Callable[[str, str, float], None]
T = TypeVar("T")

_FAILURES: Mapping[str, type[PluginError]] = MappingProxyType({
    Failure.REFUSED: PluginUnreachable,  # a stale socket file: nobody listens
    Failure.BROKEN: PluginUnreachable,
    Failure.OS: PluginUnreachable,
    Failure.PROTOCOL: PluginBadResponse,
})


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
        self.max_response_bytes = max_response_bytes
        self._timeouts = resolve_timeouts(timeouts)
        self._on_request = on_request
        self._closed = False
        self._headers = headers_for(address)
        self._requests: dict[str, bytes] = {}  # body-less requests' bytes, by endpoint
        self._transport: transport.Transport | None = None  # set up on the first call
        self._transport_lock = threading.Lock()

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
            request["Opts"] = encode_options(options)
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

    def forward(self, endpoint: str, body: bytes, *, timeout: float | None = None
                ) -> tuple[int, str | None, bytes]:
        """POST ``body`` to ``endpoint`` as it is and return the answer uninterpreted:
        (status, Content-Type, body), under the endpoint's deadline (``timeouts``
        "default" for an endpoint this client does not know) and the size cap.

        Raises PluginError only when no whole answer came back (timeout, refusal, gone,
        a broken or oversized answer); a plugin's own error answer is returned."""
        seconds = self._seconds(endpoint, timeout)
        started = time.monotonic()
        outcome = PluginError.outcome
        try:
            answer = self._exchange(endpoint, body, "", seconds, started)
            outcome = "success"
            return answer
        except PluginError as err:
            outcome = err.outcome
            raise
        finally:
            self._report(endpoint, outcome, time.monotonic() - started)

    def close(self) -> None:
        """Close the keep-alive connections; later calls raise PluginError. Idempotent."""
        self._closed = True
        with self._transport_lock:
            if self._transport is not None:
                self._transport.close()

    def __enter__(self) -> PluginClient:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PluginClient({self.name!r}, {self.address.url!r})"

    # -- the same calls, with the I/O driven by a volplugd.plugin.multiplex.Multiplexer ---
    def begin(self, endpoint: str, timeout: float | None = None, *,
              connected: bool = False) -> tuple[bytes, float]:
        """(request bytes, seconds allowed) for a call without a body — Activate,
        Capabilities or List — after the checks a call makes before sending. With
        ``connected`` (a kept-alive connection will carry it) the socket file is not
        checked: the open connection already shows the plugin is there.

        Raises PluginError as the call would (closed client, socket file gone...)."""
        request = self._requests.get(endpoint)
        if request is None:
            if endpoint not in self._answers:
                raise ValueError(f"{endpoint} cannot be driven from outside; "
                                 f"only {sorted(self._answers)}")
            request = self._requests[endpoint] = request_bytes(endpoint, self._headers, b"")
        seconds = self._seconds(endpoint, timeout)
        self._check_open(endpoint, "")
        if self.address.is_unix and not connected:
            self._verify_reachable(endpoint, "")
        return request, seconds

    def conclude(self, endpoint: str, status: int, body: bytes) -> object:
        """What the call returns for this answer; raises PluginError as the call would."""
        return self._answers[endpoint](status, body)

    def failure(self, error: Exception, phase: str, endpoint: str,
                seconds: float) -> PluginError:
        """The call's PluginError for an I/O failure: ``phase`` "send" until the answer's
        head is in, "read" after; BodyTooLarge for an answer over the cap."""
        if isinstance(error, transport.BodyTooLarge):
            failure: PluginError = PluginBadResponse(self._too_large(endpoint, error),
                                                     **self._ctx(endpoint, ""))
        else:
            failure = self._transport_error(error, phase, endpoint, "", seconds)
        failure.__cause__ = error  # as ``raise ... from error`` would set it
        return failure

    def report(self, endpoint: str, outcome: str, seconds: float) -> None:
        """Call the ``on_request`` hook, as every call does."""
        self._report(endpoint, outcome, seconds)

    @functools.cached_property
    def _answers(self) -> dict[str, Callable[[int, bytes], object]]:
        """The interpreters of the calls ``begin`` allows (built once, read per answer)."""
        return {ACTIVATE: self._manifest, CAPABILITIES: self._capabilities,
                LIST: self._checked(LIST, "", parse_volumes)}

    # -- one call: deadline, exchange, interpretation, hook --------------------------------
    def _call(self, endpoint: str, request: dict[str, Any] | None, volume: str,
              timeout: float | None, interpret: Callable[[int, bytes], T]) -> T:
        seconds = self._seconds(endpoint, timeout)
        started = time.monotonic()
        outcome = PluginError.outcome
        try:
            data = b"" if request is None else encode_json(request)
            status, _, body = self._exchange(endpoint, data, volume, seconds, started)
            result = interpret(status, body)
            outcome = "success"
            return result
        except PluginError as err:
            outcome = err.outcome
            raise
        finally:
            self._report(endpoint, outcome, time.monotonic() - started)

    def _exchange(self, endpoint: str, body: bytes, volume: str, seconds: float,
                  started: float) -> tuple[int, str | None, bytes]:
        """(status, Content-Type, body) of one POST, all within ``seconds`` of ``started``."""
        link = self._check_usable(endpoint, volume)
        with transport.deadline(started + seconds):
            try:
                response = link.post(endpoint, body, seconds)
            except Exception as err:
                raise self._transport_error(err, "send", endpoint, volume, seconds) from err
            try:
                return (response.status, response.headers.get("Content-Type"),
                        transport.read_body(response, self.max_response_bytes))
            except transport.BodyTooLarge as err:
                raise PluginBadResponse(self._too_large(endpoint, err), **self._ctx(
                    endpoint, volume)) from err
            except Exception as err:
                raise self._transport_error(err, "read", endpoint, volume, seconds) from err

    def _check_usable(self, endpoint: str, volume: str) -> transport.Transport:
        """The seed's verifyReachable (the socket file still exists), and our own state."""
        self._check_open(endpoint, volume)
        link = self._transport or self._set_up(endpoint, volume)
        if self.address.is_unix:
            self._verify_reachable(endpoint, volume)
        return link

    def _check_open(self, endpoint: str, volume: str) -> None:
        if self._closed:
            raise PluginError(f"client for plugin {self.name} is closed",
                              **self._ctx(endpoint, volume))

    def _set_up(self, endpoint: str, volume: str) -> transport.Transport:
        """The keep-alive pool, made on the first call: a client that is only ever driven
        by a Multiplexer (the daemon's probes) never pays for requests' set-up."""
        with self._transport_lock:
            if self._transport is None:
                try:
                    self._transport = transport.Transport(self.address, self._headers)
                except OSError as err:  # unreadable TLS files (ssl.SSLError too)
                    raise PluginError(f"setting up TLS for plugin {self.name}: {err}",
                                      **self._ctx(endpoint, volume)) from err
            return self._transport

    def _verify_reachable(self, endpoint: str, volume: str) -> None:
        try:
            mode = os.stat(self.address.target).st_mode
        except FileNotFoundError as err:
            raise self._removed(endpoint, volume) from err
        except OSError as err:
            raise PluginUnreachable(f"accessing plugin {self.name}: {strerror(err)}",
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
                raise self._reported(endpoint, volume, error_text(body))
            try:
                obj = decode_object(body)
                err = parse_err(obj)
                if not err:
                    return parse(obj)
            except ResponseError as bad:
                raise PluginBadResponse(
                    f"unmarshalling volume plugin {self.name} {KEYS[endpoint]} response: "
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
        kind, detail = classify(err)
        ctx = self._ctx(endpoint, volume)
        prefix = self._prefix(phase, endpoint)
        if kind == Failure.TIMEOUT or transport.deadline_passed():
            return PluginTimeout(f"{prefix}: timed out: no complete answer within {seconds:g} s",
                                 **ctx)
        if kind == Failure.GONE:
            return self._removed(endpoint, volume)
        if kind == Failure.REFUSED:
            detail = f"{self._dial()}: connect: {detail}"
        return _FAILURES.get(kind, PluginError)(f"{prefix}: {detail}", **ctx)

    def _dial(self) -> str:
        network = "unix" if self.address.is_unix else "tcp"
        return f"dial {network} {self.address.target}"

    # -- settings and the hook ----------------------------------------------------------
    def _seconds(self, endpoint: str, timeout: float | None) -> float:
        if timeout is None:
            return self._timeouts[KEYS.get(endpoint, "default")]
        return positive_seconds(timeout, "timeout")

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


def _mountpoint(*, required: bool) -> Callable[[JsonObject], str]:
    return functools.partial(parse_mountpoint, required=required)


def _nothing(_: JsonObject) -> None:
    return None
