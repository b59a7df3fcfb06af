"""How the supervisor calls plugins for activations and probes, whatever the transport.

Unix-socket plugins (nearly all) are called on a ``Multiplexer`` that the loop itself
drives through ``poll``: no thread per call and no hand-off per probe. TCP and TLS
plugins go through the blocking ``PluginClient`` on a pool of daemon threads. Either
way the outcome is one ``Result`` (``Activated | Probed | Failed``), and results reach
the loop one way: ``poll`` returns them, the multiplexed ones and the pool's alike (a
pool thread puts its result in a ``Mailbox`` the poll waits on). Nothing is applied
inside the poll. The poll can wait on other descriptors of the loop too (``watch``).

An activation is Activate then, if it answered, Capabilities for the scope; a probe is
one call to the configured endpoint. Capabilities never fails an activation: an odd
answer (an unknown scope, garbage, a timeout) makes the scope "local", as Docker does,
with a warning for the plugin's view; an error answer is "local" without one (the
endpoint is optional). Both transports share ``scope_of`` for this.

Runs on: the supervisor thread (every method of ``Calls``); pool threads (TCP jobs).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

from volplugd.config import ProbeSettings
from volplugd.mailbox import Mailbox
from volplugd.plugin.client import PluginClient
from volplugd.plugin.errors import PluginBadResponse, PluginError, detached
from volplugd.plugin.models import Capabilities, Manifest, UnknownScope
from volplugd.plugin.multiplex import Multiplexer
from volplugd.plugin.protocol import ACTIVATE, CAPABILITIES, LIST

__all__ = ["Activated", "Activation", "Calls", "Failed", "Probed", "Result", "WorkerPool",
           "scope_of"]


class Activation(NamedTuple):
    """What an activation found: what the plugin implements, its scope, and a warning
    when Capabilities answered oddly (the scope is then "local")."""

    implements: tuple[str, ...]
    scope: str
    warning: str | None = None


@dataclass(frozen=True, slots=True)
class Activated:
    """An activation succeeded."""

    name: str
    token: int
    seconds: float
    found: Activation


@dataclass(frozen=True, slots=True)
class Probed:
    """A probe was answered."""

    name: str
    token: int
    seconds: float


@dataclass(frozen=True, slots=True)
class Failed:
    """An activation or a probe failed."""

    kind: str  # "activate" | "probe"
    name: str
    token: int
    seconds: float
    error: BaseException


Result = Activated | Probed | Failed


@dataclass(frozen=True, slots=True)
class _Job:
    """A multiplexed activation or probe: whose, and when it started."""

    name: str
    token: int
    started: float


class WorkerPool:
    """A fixed set of daemon threads for the blocking TCP/TLS calls: a call hung in a
    plugin never holds up exit. A job reports its own outcome (``Calls._run`` queues a
    ``Result`` for every end, a raised one too); the pool hands nothing back."""

    def __init__(self, size: int, name: str):
        self.name = name
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
                         for i in range(size)]
        for thread in self._threads:
            thread.start()

    def submit(self, job: Callable[[], None]) -> None:
        self._jobs.put(job)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            job()

    def stop(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)

    def join(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))


class Calls:
    """Activations and probes in flight, at most one per registration token."""

    def __init__(self, *, workers: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._mux = Multiplexer()
        self._workers = workers
        self._pool: WorkerPool | None = None  # started for the first TCP/TLS plugin
        self._ended: list[Result] = []  # multiplexed results of the current poll
        self._pooled: Mailbox[Result] = Mailbox()  # the pool's
        self.watch(self._pooled.fileno())  # ``poll`` takes them

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
        """Drop the token's multiplexed call and connection: no result comes for it.
        (A TCP job still running reports; its token no longer matches anything.)"""
        self._mux.forget(token)

    def watch(self, fd: int, on_ready: Callable[[], None] | None = None) -> None:
        """Wait for ``fd`` in ``poll`` too (``Multiplexer.watch``: its owner reads it).
        Without ``on_ready`` the poll only returns: right for a ``Mailbox`` its owner
        takes from after every poll."""
        self._mux.watch(fd, on_ready or _nothing)

    def unwatch(self, fd: int) -> None:
        self._mux.unwatch(fd)

    def poll(self, timeout: float) -> list[Result]:
        """Wait up to ``timeout`` for answers or a watched descriptor; the results that
        came, both the multiplexer's and the pool's, for the caller to apply."""
        self._mux.poll(timeout)
        ended, self._ended = self._ended, []
        ended.extend(self._pooled.take())
        return ended

    def close(self) -> None:
        self._mux.close()
        self._pooled.close()
        if self._pool is not None:
            self._pool.stop()

    # -- multiplexed: the loop's thread, inside the multiplexer's poll -----------------
    def _activated(self, job: _Job, client: PluginClient, timeout: float | None,
                   result: object, _: float) -> None:
        """Activate answered: ask for the scope, as ``_activate_job`` does."""
        if isinstance(result, Manifest):
            self._mux.call(job.token, client, CAPABILITIES,
                           partial(self._scoped, job, result.implements), timeout)
        else:
            self._ended.append(_failed("activate", job, self._clock(), result))

    def _scoped(self, job: _Job, implements: tuple[str, ...], result: object, _: float) -> None:
        seconds = self._clock() - job.started
        if isinstance(result, Capabilities | PluginError):
            found = Activation(implements, *scope_of(result))
            self._ended.append(Activated(job.name, job.token, seconds, found))
        else:  # not a plugin's answer but a bug: the activation fails and is retried
            self._ended.append(_failed("activate", job, self._clock(), result))

    def _probed(self, job: _Job, result: object, _: float) -> None:
        if answered(result):
            self._ended.append(Probed(job.name, job.token, self._clock() - job.started))
        else:
            self._ended.append(_failed("probe", job, self._clock(), result))

    # -- TCP and TLS: the pool's threads ----------------------------------------------
    def _submit(self, kind: str, name: str, token: int, job: Callable[[], object]) -> None:
        if self._pool is None:
            self._pool = WorkerPool(self._workers, "volplugd-tcp")
        self._pool.submit(partial(self._run, kind, name, token, job))

    def _run(self, kind: str, name: str, token: int, job: Callable[[], object]) -> None:
        started = time.monotonic()
        result: Result
        try:
            value = job()
        except Exception as err:  # noqa: BLE001 - every failure becomes a fact for the loop
            result = Failed(kind, name, token, time.monotonic() - started, detached(err))
        else:
            seconds = time.monotonic() - started
            result = (Activated(name, token, seconds, value)
                      if isinstance(value, Activation) else Probed(name, token, seconds))
        self._pooled.put(result)


def _nothing() -> None:
    """What a watched mailbox needs when it wakes the poll: its owner takes from it."""


def _failed(kind: str, job: _Job, now: float, result: object) -> Failed:
    error = result if isinstance(result, BaseException) else RuntimeError(
        f"unexpected result {result!r}")
    return Failed(kind, job.name, job.token, now - job.started, error)


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


def _activate_job(client: PluginClient, capabilities_timeout: float | None) -> Activation:
    manifest = client.activate()
    try:
        caps: Capabilities | PluginError = client.capabilities(timeout=capabilities_timeout)
    except PluginError as err:
        caps = err
    return Activation(manifest.implements, *scope_of(caps))


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
