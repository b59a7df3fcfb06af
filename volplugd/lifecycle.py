"""The lifecycle of plugin registrations: what the loop does to its ``Book``.

Reconciling a scan (``scanning`` decides when) registers, evicts and replaces plugins
(``policy.plan``); due work starts an activation or a probe through ``Calls`` (at most
one in flight per registration); each ``Result`` the loop hands back moves its
registration through the pure transitions of ``policy``; volume operations run on API
threads within the plugin's fair-share ``Slots``. Every timing decision is a ``policy``
function.

Who serves each ready unix-socket plugin is looked up and its process watched
(``watching``): when it exits, a probe at once tells whether the socket was handed on
(the process is looked up again) or the plugin is unhealthy at once. An operation still
running after ``probe.timeout`` makes its plugin *suspect*: probed at once, then every
second (``policy.SUSPECT_EVERY``) until a probe succeeds or it is unhealthy.

A ``restarting`` plugin whose socket file goes (a restarted process may remove it as it
stops or starts, before it binds a new one) is *kept*: not evicted, so its gateway socket
and the calls held for it stay, and not called (a call could reach the new socket before
the registration for it exists). The loop resolves each kept plugin again on every turn
(``kept``): a new file replaces it, as any changed file does; the same file back lets it
be activated again; its file still gone once its restart has ended evicts it.

Runs on: the supervisor thread; ``call`` (and the client's ``on_request``) on API
threads.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import TypeVar

from volplugd import policy
from volplugd.calls import Activated, Calls, Failed, Probed, Result
from volplugd.config import Settings
from volplugd.contracts import (
    Observer,
    OperationFailed,
    PluginBusy,
    PluginNotReady,
    ProbeNow,
    UnknownPlugin,
)
from volplugd.discovery import ScanResult
from volplugd.log import get_logger
from volplugd.model import DesiredPlugin, EventType, PluginState, PluginView, RescanResult
from volplugd.plugin.client import PluginClient
from volplugd.plugin.errors import (
    NotAVolumePlugin,
    PluginError,
    PluginRemoved,
    PluginTimeout,
    PluginUnreachable,
)
from volplugd.plugin.failures import Failure, classify
from volplugd.processes import Processes
from volplugd.registrations import Book, Registration, Slots
from volplugd.registry import PendingEvent
from volplugd.watching import Watching, exit_error

__all__ = ["BUSY_RETRY_AFTER", "SLOT_WAIT", "Lifecycle"]

T = TypeVar("T")
log = get_logger(__name__)

SLOT_WAIT = 1.0  # an operation waits this long at most for one of its plugin's slots
BUSY_RETRY_AFTER = 1  # seconds, the Retry-After of a 503 plugin_busy

_operation = threading.local()  # .active: this thread runs a volume operation now


class Lifecycle:
    """Registers, evicts, calls and updates the registrations of one ``Book``."""

    def __init__(self, settings: Settings, book: Book, calls: Calls, observer: Observer,
                 wall: Callable[[], float], *, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.settings = settings  # replaced by ``reload``
        self._book = book
        self._calls = calls
        self._observer = observer
        self._wall = wall
        self._tokens = itertools.count(1)
        self._kept: set[str] = set()  # restarting plugins whose socket file went
        self._watching = Watching(book, Processes(calls), lambda: self.settings.probe,
                                  self._probe_at_once, clock)

    # --- a scan's desired state -> plan ---------------------------------------------------
    def reconcile(self, found: ScanResult, now: float, only: str | None = None
                  ) -> RescanResult:
        """Reconcile a scan: of everything, or (``only``) of one plugin name."""
        records = self._book.records
        if only is not None:
            records = {only: records[only]} if only in records else {}
        actual = {name: record.tracked for name, record in records.items()}
        plan = policy.plan(found.desired, actual)
        removed = []
        for name in plan.remove:
            if records[name].state is PluginState.RESTARTING:
                self._keep(name)
                continue
            self.evict(name, "removed")
            removed.append(name)
        for want in plan.replace:
            self.evict(want.name, "replaced")
            self.register(want, now)
        for want in plan.add:
            self.register(want, now)
        for name in self._kept & found.desired.keys():  # back unchanged: activate it again
            self._kept.discard(name)
            self._book.at(self._book.records[name], now)
        for want in plan.rewarn:
            record = self._book.records[want.name]
            _log_warnings(want, known=record.tracked.desired.warnings)
            self._book.update(record, policy.rewarned(record.tracked, want), urgent=True)
        if plan:
            self._book.urgent = True
        return RescanResult(tuple(w.name for w in plan.add), tuple(removed),
                            tuple(w.name for w in plan.replace))

    def _keep(self, name: str) -> None:
        if name not in self._kept:
            self._kept.add(name)
            log.info("plugin_kept_while_restarting", plugin=name,
                     reason="its socket file went while it restarts")

    def kept(self) -> list[str]:
        """The plugins kept while restarting, for the loop to resolve again."""
        return sorted(self._kept)

    def register(self, want: DesiredPlugin, now: float) -> None:
        tracked = policy.register(want, next(self._tokens), self._wall())
        record = Registration(tracked, self._make_client(want),
                              Slots(self.settings.plugin.max_in_flight))
        self._book.add(record)
        self._book.event(PendingEvent(EventType.DISCOVERED, want.name, None,
                                      PluginState.ACTIVATING, want.source))
        self._observer.discovery("added")
        _log_warnings(want)
        log.info("plugin_discovered", plugin=want.name, address=want.address.url,
                 source=want.source)
        self._book.at(record, now)

    def evict(self, name: str, reason: str) -> None:
        self._kept.discard(name)
        record = self._book.pop(name)
        self._calls.forget(record.token)  # its call, if any, never reports
        self._watching.forget(record)
        record.client.close()
        self._book.event(PendingEvent(EventType.EVICTED, name, record.state, None, reason))
        self._observer.evicted(name, reason)
        self._observer.discovery("removed" if reason == "removed" else "changed")
        log.info("plugin_evicted", plugin=name, reason=reason, state=record.state.value)
        record.fail_waiters(UnknownPlugin(name))
        self._book.urgent = True

    def _make_client(self, want: DesiredPlugin) -> PluginClient:
        settings = self.settings.plugin
        return PluginClient(want.name, want.address, timeouts=settings.timeouts,
                            max_response_bytes=settings.max_response_bytes,
                            on_request=partial(self._on_request, want.name))

    def _on_request(self, name: str, endpoint: str, outcome: str, seconds: float) -> None:
        """Count volume operations only: probes and activations have their own metrics."""
        if getattr(_operation, "active", False):
            self._observer.request(name, endpoint, outcome, seconds)

    def reload(self, new: Settings) -> None:
        """New settings; new plugin settings give every registration a new client."""
        old, self.settings = self.settings, new
        if new.plugin != old.plugin:
            for record in self._book:
                record.client.close()
                record.slots.resize(new.plugin.max_in_flight)
                record.client = self._make_client(record.tracked.desired)

    # --- activations and probes ----------------------------------------------------------
    def dispatch_due(self, now: float) -> None:
        """Start the work due now, and probes due within the early window."""
        limit = now + policy.early_window(self.settings.probe.interval)
        for when, record in self._book.pop_due(limit):
            if policy.starts_now(when, now, record.probing):
                self.dispatch(record, when, now)
            else:
                self._book.at(record, when)  # activation retries keep their time

    def dispatch(self, record: Registration, due: float, now: float) -> None:
        """Start the work a registration needs; ``due`` keeps the probe phase."""
        if record.serving is not None or record.name in self._kept:
            return
        record.serving = due
        if record.probing:
            self._observer.probe_lateness(now - due)
            settings = self.settings.probe
            if record.suspect:
                settings = dataclasses.replace(
                    settings, timeout=policy.suspect_timeout(settings.timeout))
            self._calls.probe(record.name, record.token, record.client, settings)
        else:
            timeout = self.settings.plugin.timeouts.get("activate")  # for Capabilities
            self._calls.activate(record.name, record.token, record.client, timeout)

    def probe_now(self, message: ProbeNow, now: float) -> None:
        record = self._book.get(message.name)
        if record is None:
            message.reply.set_exception(UnknownPlugin(message.name))
            return
        record.waiters.append(message.reply)
        record.due = None
        self.dispatch(record, now, now)

    # --- applying results ------------------------------------------------------------------
    def apply(self, result: Result, now: float) -> bool:
        """A finished activation or probe moves its registration (a stale one is dropped:
        the plugin was evicted or replaced while the call ran). True when it was an
        activation that ran its course (not only given a second chance)."""
        record = self._book.current(result.name, result.token)
        if record is None:
            return False
        due = now if record.serving is None else record.serving
        record.serving = None
        tried = False
        if isinstance(result, Probed) or (isinstance(result, Failed) and result.kind == "probe"):
            self._probed(record, result, due, now)
        else:
            tried = self._activated(record, result, now)
        record.answer_waiters()
        return tried

    def _activated(self, record: Registration, result: Activated | Failed, now: float) -> bool:
        """Apply an activation's result; False while it is only given a second chance."""
        tracked, wall, book = record.tracked, self._wall(), self._book
        if isinstance(result, Activated):
            found = result.found
            book.update(record, policy.activated(tracked, found.implements, found.scope,
                                                 wall, result.seconds, warning=found.warning))
            if found.warning is not None:
                log.warning("plugin_capabilities_odd", plugin=record.name,
                            warning=found.warning)
            book.at(record, policy.first_probe(now, self.settings.probe.interval,
                                               random.random()))  # noqa: S311 - jitter
            self._watching.identify(record)
            return True
        error = result.error
        if isinstance(error, NotAVolumePlugin):
            book.update(record, policy.rejected(tracked, error.implements, str(error), wall))
            return True
        retry = policy.second_chance(_refused(error), tracked.activation_failures,
                                     record.second_chance)
        if retry is not None:
            record.second_chance = True
            book.at(record, now + retry)
            return False
        new, delay = policy.activation_failed(tracked, _describe(error), wall)
        book.update(record, new)
        log.warning("plugin_activation_failed", plugin=record.name,
                    error=new.view.last_error, attempt=new.activation_failures,
                    retry_in=delay)
        book.at(record, now + delay)
        return True

    def _probed(self, record: Registration, result: Probed | Failed, due: float,
                now: float) -> None:
        settings, wall, seconds = self.settings.probe, self._wall(), result.seconds
        exited, record.exited = record.exited, None
        if isinstance(result, Failed):
            label = _probe_label(result.error)
            if exited is not None:  # its process exited and nobody answers: at once
                new = policy.process_exited(record.tracked, exit_error(record, exited), wall)
            else:
                new = policy.probe_failed(record.tracked, settings, _describe(result.error),
                                          wall)
        else:
            label = "success"
            new = policy.probe_succeeded(record.tracked, settings, wall, seconds)
        self._observer.probe(record.name, label, seconds)
        recovered = record.state is PluginState.UNHEALTHY and new.state is PluginState.READY
        self._book.update(record, new)
        if record.suspect and not policy.still_suspect(new, label == "success"):
            record.suspect = False
            log.info("plugin_suspect_ended", plugin=record.name, state=new.state.value)
        if record.suspect:
            self._book.at(record, policy.suspect_due(due, now))
        else:
            self._book.at(record, policy.probe_due(due, settings.interval, now))
        unwatched = not self._watching.watched(record)
        if label == "success" and (exited is not None or (recovered and unwatched)):
            self._watching.identify(record)  # handed on, or back: who serves it now?

    # --- who serves a plugin, and suspicion (``watching``) -----------------------------
    def processes(self, now: float) -> None:
        """Apply what the processes room found since the last iteration."""
        self._watching.take(now)

    def wake_at(self) -> float | None:
        """When the next volume operation running becomes overdue (None: none)."""
        return self._watching.wake_at()

    def suspects(self, now: float) -> None:
        """Probe, at once, the plugins an overdue operation makes suspect."""
        self._watching.suspects(now)

    def _probe_at_once(self, record: Registration, now: float, sooner: bool) -> None:
        """A probe now, or (one is in flight) its result decides. ``sooner``: a suspect's
        probe replaces a regular one in flight that would end later than it (unix
        sockets: their call is dropped without a result)."""
        if record.serving is not None:
            settings = self.settings.probe
            ends = record.serving + settings.timeout
            if not (sooner and record.client.address.is_unix
                    and ends > now + policy.suspect_timeout(settings.timeout)):
                return
            self._calls.forget(record.token)
            record.serving = None
        record.due = None
        self.dispatch(record, now, now)

    def operation_failed(self, failed: OperationFailed) -> None:
        record = self._book.current(failed.name, failed.token)
        if record is not None and record.probing:
            self._book.update(record, policy.probe_failed(
                record.tracked, self.settings.probe, failed.error, self._wall()))

    # --- volume operations (API threads) -----------------------------------------------------
    def call(self, view: PluginView, op: Callable[[PluginClient], T],
             put: Callable[[object], None]) -> T:
        """Run ``op`` on the plugin's client within its slots; a timeout or a lost
        connection is reported to the loop (``put``) like a failed probe."""
        record = self._book.get(view.name)
        if view.state is not PluginState.READY or record is None:
            raise PluginNotReady(view)
        if not record.slots.acquire(SLOT_WAIT):
            self._observer.busy(view.name)
            raise PluginBusy(view.name, record.slots.limit, BUSY_RETRY_AFTER)
        client = record.client
        _operation.active = True
        ticket = self._watching.begin(view.name, record.token)
        try:
            return op(client)
        except (PluginTimeout, PluginUnreachable, PluginRemoved) as err:
            put(OperationFailed(view.name, str(err), err.outcome, record.token))
            raise
        finally:
            self._watching.end(ticket)
            _operation.active = False
            record.slots.release()

    def close(self) -> None:
        self._watching.close()
        for record in self._book:
            record.client.close()
            record.fail_waiters(UnknownPlugin(record.name))


def _log_warnings(want: DesiredPlugin, known: tuple[str, ...] = ()) -> None:
    """Each of a plugin's file warnings (shadowing, an untrusted folder, https without
    verification) once per registration, and again only when it is new."""
    for warning in want.warnings:
        if warning not in known:
            log.warning("plugin_warning", plugin=want.name, warning=warning)


def _refused(error: BaseException) -> bool:
    """Nobody listens on the socket (not: the file is gone, or any other failure)."""
    cause = error.__cause__ if isinstance(error, PluginUnreachable) else None
    return cause is not None and classify(cause)[0] == Failure.REFUSED


def _describe(err: BaseException) -> str:
    if isinstance(err, PluginError):
        return str(err)
    return f"{type(err).__name__}: {err}"


def _probe_label(err: BaseException) -> str:
    outcome = err.outcome if isinstance(err, PluginError) else "error"
    return outcome if outcome in ("timeout", "refused", "bad_response") else "error"
