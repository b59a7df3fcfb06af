"""What crosses between the supervisor loop and its callers: the messages that reach
the loop, the errors a caller may get instead of an answer, and the two protocols
(``Commands``, what the control API and the gateway may ask of the daemon; ``Observer``,
what the supervisor reports as it works). Leaf module apart from ``model``, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol, TypeVar

from volplugd.model import Event, PluginView, RescanResult, Snapshot
from volplugd.plugin.client import PluginClient

T = TypeVar("T")


# --- Messages to the supervisor loop: named facts and commands --------------------


@dataclass(frozen=True, slots=True)
class FsHint:
    """Something changed at ``path`` (a hint from the watcher: verify by looking)."""

    path: str


@dataclass(frozen=True, slots=True)
class Rescan:
    """Run a full scan. ``trigger`` is a metrics label: startup, periodic, overflow,
    watcher_restart, flood, manual, reload."""

    trigger: str
    reply: Future[RescanResult] | None = None


@dataclass(frozen=True, slots=True)
class Flooded:
    """The watcher muted plugin dir ``folder``: it sent more events than its share. At
    ``until`` (the loop's clock) the loop re-arms the watcher and runs one full scan."""

    folder: str
    until: float


@dataclass(frozen=True, slots=True)
class ProbeNow:
    """Probe ``name`` at once and answer with its view after the probe."""

    name: str
    reply: Future[PluginView]


@dataclass(frozen=True, slots=True)
class RestartNow:
    """An admin asks: restart what serves ``name`` now (a fresh budget); answer with its
    view once the restart has begun (``restarting``)."""

    name: str
    reply: Future[PluginView]


@dataclass(frozen=True, slots=True)
class OperationFailed:
    """A volume operation through the control API hit a timeout or transport failure."""

    name: str
    error: str
    outcome: str
    token: int


@dataclass(frozen=True, slots=True)
class Stop:
    """Leave the loop."""


class UnknownPlugin(LookupError):
    """No plugin of that name is registered (the control API's 404 plugin_not_found)."""

    def __init__(self, name: str):
        super().__init__(f"no plugin named {name!r}")
        self.name = name


class Stopping(RuntimeError):
    """The daemon is shutting down: the request will not be handled (503 unavailable)."""

    def __init__(self) -> None:
        super().__init__("volplugd is stopping")


class PluginNotReady(RuntimeError):
    """Fail fast: the plugin is not ready, so no request is sent (409 plugin_not_ready)."""

    def __init__(self, view: PluginView):
        detail = f": {view.last_error}" if view.last_error else ""
        super().__init__(f"plugin {view.name} is {view.state.value}{detail}")
        self.view = view


class NotRestartable(RuntimeError):
    """volplugd cannot restart the plugin now; the message says why (409 not_restartable)."""

    def __init__(self, name: str, why: str):
        super().__init__(f"plugin {name} cannot be restarted: {why}")
        self.name = name


class PluginBusy(RuntimeError):
    """The plugin has its most operations in flight and no slot came free within the
    short wait: refused at once, nothing sent (503 plugin_busy, ``Retry-After``)."""

    def __init__(self, name: str, in_flight: int, retry_after: int):
        many = "operation" if in_flight == 1 else "operations"
        super().__init__(f"plugin {name} is busy ({in_flight} {many} in flight)")
        self.name = name
        self.in_flight = in_flight
        self.retry_after = retry_after


class Commands(Protocol):
    """The narrow interface the control API and metrics have to the daemon."""

    def snapshot(self) -> Snapshot: ...

    def loop_age(self) -> float:
        """Seconds since the supervisor loop last ran (it runs at least once a second)."""
        ...

    def events(self, since: int, wait: float = 0.0) -> tuple[Event, ...]:
        """Events with ``seq > since``; waits up to ``wait`` s for the first one."""
        ...

    def rescan(self, timeout: float) -> RescanResult: ...

    def probe(self, name: str, timeout: float) -> PluginView: ...

    def restart(self, name: str, timeout: float) -> PluginView:
        """Restart what serves ``name`` now (UnknownPlugin, NotRestartable); its view
        once the restart has begun."""
        ...

    def fail_fast(self, name: str) -> PluginView:
        """Raise what ``call`` would raise at once, without contacting the plugin, for a
        plugin that is unknown or not ready (UnknownPlugin, PluginNotReady); else the
        ready view a call would go to (``call`` goes through this check)."""
        ...

    def call(self, name: str, op: Callable[[PluginClient], T]) -> T:
        """Run one plugin-client call for a control request on the caller's thread.

        Raises UnknownPlugin, PluginNotReady, PluginBusy (these without contacting the
        plugin), or the client's PluginError; timeouts and transport failures also
        reach the loop.
        """
        ...


class Observer(Protocol):
    """What the supervisor reports as it works; the daemon wires it to metrics.

    Called from the supervisor thread and worker threads: must not block or raise.
    """

    def request(self, plugin: str, endpoint: str, outcome: str, seconds: float) -> None:
        """One plugin-client call ended (the client's ``on_request`` hook, plus name)."""

    def probe(self, plugin: str, result: str, seconds: float) -> None:
        """A health probe ended; result: success, timeout, refused, bad_response, error."""

    def busy(self, plugin: str) -> None:
        """A volume operation was refused: the plugin had its most in flight."""

    def discovery(self, event: str) -> None:
        """Discovery saw a plugin file: added, removed, changed, ignored."""

    def rescan(self, trigger: str) -> None:
        """A full scan ran; trigger: startup, periodic, overflow, watcher_restart,
        flood, manual, reload."""

    def evicted(self, plugin: str, reason: str) -> None:
        """A plugin left the registry; reason: removed, replaced, reload."""

    def watcher(self, up: bool) -> None:
        """The filesystem watcher is running (True) or down/restarting (False)."""

    def probe_lateness(self, seconds: float) -> None:
        """A probe was dispatched ``seconds`` after it was due (the scheduler's slack)."""

    def loop_error(self, code: int) -> None:
        """The loop met an OSError (``errno`` ``code``) and went on."""

    def stale_socket_removed(self) -> None:
        """A stale plugin socket was removed (``discovery.remove_stale_after``)."""

    def restart(self, plugin: str, outcome: str) -> None:
        """A restart of what serves the plugin ended with ``outcome`` (or its budget
        was given up: ``given_up``)."""

    def restart_given_up(self, plugin: str, given_up: bool) -> None:
        """volplugd gave up restarting the plugin (True), or began a restart of it or
        lifted the give-up (False)."""


class NullObserver:
    """An Observer that records nothing (library use and unit tests)."""

    def request(self, plugin: str, endpoint: str, outcome: str, seconds: float) -> None:
        pass

    def probe(self, plugin: str, result: str, seconds: float) -> None:
        pass

    def busy(self, plugin: str) -> None:
        pass

    def discovery(self, event: str) -> None:
        pass

    def rescan(self, trigger: str) -> None:
        pass

    def evicted(self, plugin: str, reason: str) -> None:
        pass

    def watcher(self, up: bool) -> None:
        pass

    def probe_lateness(self, seconds: float) -> None:
        pass

    def loop_error(self, code: int) -> None:
        pass

    def stale_socket_removed(self) -> None:
        pass

    def restart(self, plugin: str, outcome: str) -> None:
        pass

    def restart_given_up(self, plugin: str, given_up: bool) -> None:
        pass
