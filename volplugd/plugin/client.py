"""PluginClient: Podman's ``libpod/plugin/volume_api.go`` (the seed) ported to Python,
for one plugin, and hardened.

Same endpoints, headers, request bodies and error wording as the seed; and then:
a total deadline per call and a cap on the answer's size (``exchange``), a
non-empty ``Err`` on a 200 is an error, a non-JSON error answer keeps its text, JSON
keys match case-insensitively (as Go's decoder does), Capabilities, TCP and TLS.

The client neither logs nor touches metrics: it returns results, raises PluginError
subclasses, and calls the optional ``on_request(endpoint, outcome, seconds)`` hook.
Wire format: ``protocol``; one call on the wire: ``exchange``, driven here by
``connections`` (blocking) and by ``multiplex`` (many calls on one thread).

Runs on: any thread; calls may run concurrently (up to 4 idle keep-alive connections).
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
from types import TracebackType
from typing import Any, TypeVar

from volplugd.plugin.address import PluginAddress
from volplugd.plugin.connections import Connections, tls_context
from volplugd.plugin.errors import (
    NotAPlugin,
    NotAVolumePlugin,
    PluginBadResponse,
    PluginError,
    PluginReportedError,
    PluginUnreachable,
)
from volplugd.plugin.exchange import Exchange, removed, request_bytes, strerror
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
    positive_seconds,
    resolve_timeouts,
)

__all__ = ["OnRequest", "PluginClient"]

OnRequest = Callable[[str, str, float], None]
T = TypeVar("T")

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
        self._connections: Connections | None = None  # set up on the first call
        self._connections_lock = threading.Lock()

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
        return self._call(endpoint, body, "", timeout, _raw)

    def close(self) -> None:
        """Close the keep-alive connections; later calls raise PluginError. Idempotent."""
        self._closed = True
        self.__dict__.pop("_answers", None)  # they refer back to it: freed without gc
        with self._connections_lock:
            if self._connections is not None:
                self._connections.close()

    def __enter__(self) -> PluginClient:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PluginClient({self.name!r}, {self.address.url!r})"

    # -- the same calls, with the I/O driven by a volplugd.plugin.multiplex.Multiplexer ---
    def begin(self, endpoint: str, started: float, timeout: float | None = None, *,
              connected: bool = False) -> Exchange[object]:
        """The exchange of a call without a body — Activate, Capabilities or List —
        starting at ``started``, after the checks a call makes before sending. With
        ``connected`` (a kept-alive connection will carry it) the socket file is not
        checked: the open connection already shows the plugin is there.

        Raises PluginError as the call would (closed client, socket file gone...)."""
        self._check_open(endpoint, "")  # before _answers, which close() dropped
        interpret = self._answers.get(endpoint)
        if interpret is None:
            raise ValueError(f"{endpoint} cannot be driven from outside; "
                             f"only {sorted(self._answers)}")
        seconds = self._seconds(endpoint, timeout)
        if self.address.is_unix and not connected:
            self._verify_reachable(endpoint, "")
        return self._exchange(endpoint, None, "", interpret, seconds=seconds, started=started)

    @functools.cached_property
    def _answers(self) -> dict[str, Callable[[Exchange[Any]], object]]:
        """The interpreters of the calls ``begin`` allows (built once, read per answer)."""
        return {ACTIVATE: self._manifest, CAPABILITIES: self._capabilities,
                LIST: self._checked(LIST, "", parse_volumes)}

    # -- one call: deadline, exchange, interpretation, hook --------------------------------
    def _call(self, endpoint: str, request: dict[str, Any] | bytes | None, volume: str,
              timeout: float | None, interpret: Callable[[Exchange[Any]], T]) -> T:
        seconds = self._seconds(endpoint, timeout)
        started = time.monotonic()
        outcome = PluginError.outcome
        try:
            exchange = self._exchange(endpoint, request, volume, interpret, seconds=seconds,
                                      started=started)
            self._connections_for(endpoint, volume).run(exchange)
            result = exchange.result()  # data, not raised: no cycle exchange <-> its error
            if isinstance(result, PluginError):
                try:
                    raise result
                finally:  # nor this frame (in the traceback) <-> its error
                    del result, exchange
            outcome = "success"
            return result
        except PluginError as err:
            outcome = err.outcome
            raise
        finally:
            self.report(endpoint, outcome, time.monotonic() - started)

    def _exchange(self, endpoint: str, request: dict[str, Any] | bytes | None, volume: str,
                  interpret: Callable[[Exchange[Any]], T], *, seconds: float,
                  started: float) -> Exchange[T]:
        body = request if isinstance(request, bytes) else encode_json(request) if request else b""
        data = request_bytes(endpoint, self.address, body)
        return Exchange(self.name, self.address, endpoint, volume, data, seconds=seconds,
                        started=started, limit=self.max_response_bytes, interpret=interpret)

    def _connections_for(self, endpoint: str, volume: str) -> Connections:
        """The seed's verifyReachable (the socket file still exists), our own state, and
        the keep-alive connections, made on the first call."""
        self._check_open(endpoint, volume)
        if self.address.is_unix:
            self._verify_reachable(endpoint, volume)
        if self._connections is not None:
            return self._connections
        with self._connections_lock:
            if self._connections is None:
                try:
                    tls = tls_context(self.address.tls) if self.address.scheme == "https" else None
                except OSError as err:  # unreadable TLS files (ssl.SSLError too)
                    raise PluginError(f"setting up TLS for plugin {self.name}: {err}",
                                      **self._ctx(endpoint, volume)) from err
                self._connections = Connections(self.address, tls)
            return self._connections

    def _check_open(self, endpoint: str, volume: str) -> None:
        if self._closed:
            raise PluginError(f"client for plugin {self.name} is closed",
                              **self._ctx(endpoint, volume))

    def _verify_reachable(self, endpoint: str, volume: str) -> None:
        try:
            mode = os.stat(self.address.target).st_mode
        except FileNotFoundError as err:
            raise removed(self.name, endpoint, volume) from err
        except OSError as err:
            raise PluginUnreachable(f"accessing plugin {self.name}: {strerror(err)}",
                                    **self._ctx(endpoint, volume)) from err
        if not stat.S_ISSOCK(mode):
            raise NotAPlugin(f'volume {self.name} path "{self.address.target}" is not a unix '
                             "socket: target does not appear to be a valid plugin",
                             **self._ctx(endpoint, volume))

    # -- interpreting answers ---------------------------------------------------------
    def _manifest(self, answer: Exchange[Any]) -> Manifest:
        ctx = self._ctx(ACTIVATE, "")
        if answer.status != 200:  # the seed: anything else means "not a plugin"
            raise NotAPlugin(f"got status code {answer.status} from activation endpoint for "
                             f"plugin {self.name}: target does not appear to be a valid plugin",
                             **ctx)
        try:
            obj = decode_object(answer.body)
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

    def _capabilities(self, answer: Exchange[Any]) -> Capabilities:
        try:
            return self._checked(CAPABILITIES, "", parse_capabilities)(answer)
        except PluginReportedError:  # Capabilities is optional: Docker assumes "local"
            return Capabilities("local")

    def _checked(self, endpoint: str, volume: str,
                 parse: Callable[[JsonObject], T]) -> Callable[[Exchange[Any]], T]:
        """An interpreter: non-200 or a non-empty Err is reported; else ``parse`` the 200."""
        def interpret(answer: Exchange[Any]) -> T:
            if answer.status != 200:
                raise self._reported(endpoint, volume, error_text(answer.body))
            try:
                obj = decode_object(answer.body)
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

    # -- settings and the hook ----------------------------------------------------------
    def _seconds(self, endpoint: str, timeout: float | None) -> float:
        if timeout is None:
            return self._timeouts[KEYS.get(endpoint, "default")]
        return positive_seconds(timeout, "timeout")

    def report(self, endpoint: str, outcome: str, seconds: float) -> None:
        """Call on_request, as every call does (the Multiplexer too); what it raises never
        changes the call's result or error.

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


def _raw(answer: Exchange[Any]) -> tuple[int, str | None, bytes]:
    return answer.status, answer.content_type, answer.body
