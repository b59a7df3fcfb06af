"""How the supervisor calls plugins for activations and probes, whatever the transport.

Unix-socket plugins (nearly all) are called on a ``Multiplexer`` that the loop itself
drives through ``poll``: no thread per call and no hand-off per probe. TCP and TLS
plugins go through the blocking ``PluginClient`` on a pool of daemon threads. Either
way the outcome comes back as one ``Done``: to ``on_done`` on the loop thread
(multiplexed), or as a message through ``put`` (pool).

An activation is Activate then, if it answered, Capabilities for the scope; a probe is
one call to the configured endpoint. Capabilities never fails an activation: an odd
answer (an unknown scope, garbage, a timeout) makes the scope "local", as Docker does,
with a warning for the plugin's view; an error answer is "local" without one (the
endpoint is optional). Both transports share ``scope_of`` for this.

Runs on: the supervisor thread (every method but ``wake``); pool threads (TCP jobs);
``wake`` from any thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from volplugd.config import ProbeSettings
from volplugd.plugin.client import PluginClient
from volplugd.plugin.errors import PluginBadResponse, PluginError
from volplugd.plugin.models import Capabilities, Manifest, UnknownScope
from volplugd.plugin.multiplex import Multiplexer
from volplugd.plugin.protocol import ACTIVATE, CAPABILITIES, LIST
from volplugd.scheduling import WorkerPool

__all__ = ["Activated", "Calls", "Done", "scope_of"]


@dataclass(frozen=True, slots=True)
class Done:
    """An activation or probe finished."""

    kind: str  # "activate" | "probe"
    name: str
    token: int
    result: Any  # Activated | True | an exception
    seconds: float


@dataclass(frozen=True, slots=True)
class Activated:
    """An activation's success: what the plugin implements, its scope, and a warning
    when Capabilities answered oddly (the scope is then "local")."""

    implements: tuple[str, ...]
    scope: str
    warning: str | None = None


@dataclass(frozen=True, slots=True)
class _Job:
    """A multiplexed activation or probe: whose, and when it started."""

    name: str
    token: int
    started: float


class Calls:
    """Activations and probes in flight, at most one per registration token."""

    def __init__(self, on_done: Callable[[Done], None], put: Callable[[object], None], *,
                 workers: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._on_done = on_done
        self._put = put
        self._clock = clock
        self._mux = Multiplexer()
        self._workers = workers
        self._pool: WorkerPool | None = None  # started for the first TCP/TLS plugin

    def activate(self, name: str, token: int, client: PluginClient,
                 capabilities_timeout: float | None) -> None:
        if client.address.is_unix:
            job = _Job(name, token, self._clock())
            self._mux.call(token, client, ACTIVATE,
                           partial(self._activated, job, client, capabilities_timeout))
        else:
            self._submit("activate", name, token,
                         partial(_activate_job, client, capabilities_timeout))

    def probe(self, name: str, token: int, client: PluginClient,
              settings: ProbeSettings) -> None:
        if client.address.is_unix:
            self._mux.call(token, client, settings.endpoint,
                           partial(self._probed, _Job(name, token, self._clock())),
                           settings.timeout)
        else:
            self._submit("probe", name, token, partial(_probe_job, client, settings))

    def forget(self, token: int) -> None:
        """Drop the token's multiplexed call and connection: no Done will come for it.
        (A TCP job still running reports; its token no longer matches anything.)"""
        self._mux.forget(token)

    def poll(self, timeout: float) -> None:
        """Wait up to ``timeout`` for answers or ``wake``; hand each result to on_done."""
        self._mux.poll(timeout)

    def wake(self) -> None:
        """Make ``poll`` return now (any thread)."""
        self._mux.wake()

    def close(self) -> None:
        self._mux.close()
        if self._pool is not None:
            self._pool.stop()

    # -- multiplexed: the loop's thread ---------------------------------------------
    def _activated(self, job: _Job, client: PluginClient, timeout: float | None,
                   result: object, _: float) -> None:
        """Activate answered: ask for the scope, as ``_activate_job`` does."""
        if isinstance(result, Manifest):
            self._mux.call(job.token, client, CAPABILITIES,
                           partial(self._scoped, job, result.implements), timeout)
        else:
            self._finish(job, "activate", result)

    def _scoped(self, job: _Job, implements: tuple[str, ...], result: object, _: float) -> None:
        if isinstance(result, Capabilities | PluginError):
            self._finish(job, "activate", Activated(implements, *scope_of(result)))
        else:  # not a plugin's answer but a bug: the activation fails and is retried
            self._finish(job, "activate", result)

    def _probed(self, job: _Job, result: object, _: float) -> None:
        self._finish(job, "probe", True if answered(result) else result)

    def _finish(self, job: _Job, kind: str, result: object) -> None:
        self._on_done(Done(kind, job.name, job.token, result, self._clock() - job.started))

    # -- TCP and TLS: the pool's threads ----------------------------------------------
    def _submit(self, kind: str, name: str, token: int, job: Callable[[], object]) -> None:
        if self._pool is None:
            self._pool = WorkerPool(self._workers, "volplugd-tcp")
        self._pool.submit(partial(self._run, kind, name, token, job))

    def _run(self, kind: str, name: str, token: int, job: Callable[[], object]) -> None:
        started = time.monotonic()
        try:
            result: object = job()
        except Exception as err:  # noqa: BLE001 - every failure becomes a fact for the loop
            result = err
        self._put(Done(kind, name, token, result, time.monotonic() - started))


def scope_of(result: Capabilities | PluginError) -> tuple[str, str | None]:
    """(scope, warning) from Capabilities' answer or failure: never a failed activation."""
    if isinstance(result, Capabilities):
        return result.scope, None
    cause = result.__cause__
    if isinstance(cause, UnknownScope):
        return "local", f"Capabilities: unknown scope {cause.scope!r}; treated as local"
    return "local", f"Capabilities failed ({result}); treated as local"


def answered(result: object) -> bool:
    """A probe's success: any answer but an error, and an unknown scope is an answer."""
    if isinstance(result, PluginBadResponse):
        return isinstance(result.__cause__, UnknownScope)
    return not isinstance(result, BaseException)


def _activate_job(client: PluginClient, capabilities_timeout: float | None) -> Activated:
    manifest = client.activate()
    try:
        caps: Capabilities | PluginError = client.capabilities(timeout=capabilities_timeout)
    except PluginError as err:
        caps = err
    return Activated(manifest.implements, *scope_of(caps))


def _probe_job(client: PluginClient, settings: ProbeSettings) -> bool:
    call: Callable[..., object] = {
        CAPABILITIES: client.capabilities,
        LIST: client.list,
    }.get(settings.endpoint, client.activate)
    try:
        call(timeout=settings.timeout)
    except PluginBadResponse as err:
        if not answered(err):
            raise
    return True
