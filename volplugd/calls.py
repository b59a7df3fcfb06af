"""How the supervisor calls plugins for activations and probes, whatever the transport.

Unix-socket plugins (nearly all) are called on a ``Multiplexer`` that the loop itself
drives through ``poll``: no thread per call and no hand-off per probe. TCP and TLS
plugins go through the blocking ``PluginClient`` on a pool of daemon threads. Either
way the outcome comes back as one ``Done``: to ``on_done`` on the loop thread
(multiplexed), or as a message through ``put`` (pool).

An activation is Activate then, if it answered, Capabilities for the scope; a probe is
one call to the configured endpoint.

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
from volplugd.plugin.models import Capabilities, Manifest
from volplugd.plugin.multiplex import Multiplexer
from volplugd.plugin.protocol import ACTIVATE, CAPABILITIES, LIST
from volplugd.scheduling import WorkerPool

__all__ = ["Calls", "Done"]


@dataclass(frozen=True, slots=True)
class Done:
    """An activation or probe finished."""

    kind: str  # "activate" | "probe"
    name: str
    token: int
    result: Any  # (implements, scope) | True | an exception
    seconds: float


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
        scope = result.scope if isinstance(result, Capabilities) else None
        self._finish(job, "activate", result if scope is None else (implements, scope))

    def _probed(self, job: _Job, result: object, _: float) -> None:
        self._finish(job, "probe", result if isinstance(result, BaseException) else True)

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


def _activate_job(client: PluginClient,
                  capabilities_timeout: float | None) -> tuple[tuple[str, ...], str]:
    manifest = client.activate()
    return manifest.implements, client.capabilities(timeout=capabilities_timeout).scope


def _probe_job(client: PluginClient, settings: ProbeSettings) -> bool:
    call: Callable[..., object] = {
        CAPABILITIES: client.capabilities,
        LIST: client.list,
    }.get(settings.endpoint, client.activate)
    call(timeout=settings.timeout)
    return True
