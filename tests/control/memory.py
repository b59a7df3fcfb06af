"""An in-memory ``Commands`` for control-API tests: real PluginViews, real events,
and per-plugin clients (any object with the PluginClient volume methods).

It keeps the daemon's fail-fast rule (no call reaches a plugin that is not ready) so
the API's error mapping is exercised exactly as the supervisor will drive it.
Runs on: any thread (a lock guards the little state it has).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, TypeVar

from volplugd.contracts import PluginNotReady, UnknownPlugin
from volplugd.model import (
    Event,
    EventType,
    Kind,
    PluginState,
    PluginView,
    RescanResult,
    Snapshot,
    encode,
)

T = TypeVar("T")


def view(name: str, state: PluginState = PluginState.READY, **kw: Any) -> PluginView:
    """A plausible PluginView for ``name``."""
    base: dict[str, Any] = {
        "address": f"unix:///run/docker/plugins/{name}.sock",
        "source": f"/run/docker/plugins/{name}.sock", "kind": Kind.SOCK, "state": state,
        "registered_at": 1_700_000_000.0, "implements": ("VolumeDriver",)}
    base.update(kw)
    return PluginView(name=name, **base)


@dataclass(frozen=True)
class Vol:
    """Stands in for volplugd.plugin.models.Volume (same fields, same to_json)."""

    name: str
    mountpoint: str | None = None
    created_at: str | None = None
    status: Mapping[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "mountpoint": self.mountpoint,
                "created_at": self.created_at,
                "status": None if self.status is None else dict(self.status)}


@dataclass(frozen=True)
class Caps:
    scope: str = "local"


class MemoryClient:
    """An in-memory volume driver with the PluginClient volume API.

    ``fail`` (an exception) is raised by every call while set; ``fail_on`` by the
    named methods only.
    """

    def __init__(self, name: str, scope: str = "local"):
        self.name = name
        self.scope = scope
        self.volumes: dict[str, Vol] = {}
        self.mounts: dict[str, set[str]] = {}
        self.fail: BaseException | None = None
        self.fail_on: dict[str, BaseException] = {}
        self.calls: list[tuple[Any, ...]] = []
        self._lock = threading.Lock()

    def _enter(self, method: str, *args: Any) -> None:
        self.calls.append((method, *args))
        error = self.fail_on.get(method, self.fail)
        if error is not None:
            raise error

    def capabilities(self) -> Caps:
        self._enter("capabilities")
        return Caps(self.scope)

    def create(self, volume: str, options: Mapping[str, str] | None = None) -> None:
        self._enter("create", volume, dict(options or {}))
        with self._lock:
            self.volumes.setdefault(volume, Vol(volume, f"/mnt/{self.name}/{volume}",
                                                "2024-01-01T00:00:00Z", dict(options or {})))

    def get(self, volume: str) -> Vol:
        self._enter("get", volume)
        with self._lock:
            return self.volumes[volume] if volume in self.volumes else self._missing(volume)

    def list(self) -> list[Vol]:
        self._enter("list")
        with self._lock:
            return sorted(self.volumes.values(), key=lambda v: v.name)

    def remove(self, volume: str) -> None:
        self._enter("remove", volume)
        with self._lock:
            if self.volumes.pop(volume, None) is None:
                self._missing(volume)

    def path(self, volume: str) -> str:
        self._enter("path", volume)
        return self.get(volume).mountpoint or ""

    def mount(self, volume: str, ident: str) -> str:
        self._enter("mount", volume, ident)
        found = self.get(volume)
        with self._lock:
            self.mounts.setdefault(volume, set()).add(ident)
        return found.mountpoint or ""

    def unmount(self, volume: str, ident: str) -> None:
        self._enter("unmount", volume, ident)
        self.get(volume)
        with self._lock:
            self.mounts.get(volume, set()).discard(ident)

    def _missing(self, volume: str) -> Any:
        from volplugd.plugin.errors import PluginReportedError
        raise PluginReportedError(f"on /VolumeDriver.Get on volume {volume} in volume "
                                  f"plugin {self.name}: no such volume",
                                  err="no such volume", plugin=self.name, volume=volume)


@dataclass
class MemoryCommands:
    """Plugins, their clients and an event log, behind the ``Commands`` protocol."""

    views: dict[str, PluginView] = field(default_factory=dict)
    clients: dict[str, Any] = field(default_factory=dict)
    log: list[Event] = field(default_factory=list)
    rescan_result: RescanResult = field(default_factory=RescanResult)
    probe_error: BaseException | None = None
    rescan_error: BaseException | None = None
    restart_error: BaseException | None = None
    calls_seen: int = 0
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def add(self, plugin: PluginView, client: Any = None) -> None:
        self.views[plugin.name] = plugin
        self.clients[plugin.name] = client or MemoryClient(plugin.name)

    loop_age_seconds: float = 0.0

    def loop_age(self) -> float:
        return self.loop_age_seconds

    def snapshot(self) -> Snapshot:
        views = {n: self.views[n] for n in sorted(self.views)}
        encoded = {n: encode(v.to_json()) for n, v in views.items()}
        return Snapshot(MappingProxyType(views), MappingProxyType(encoded))

    def emit(self, kind: EventType, plugin: str | None = None, reason: str = "") -> Event:
        with self._cond:
            event = Event(len(self.log) + 1, time.time(), kind, plugin, reason=reason)
            self.log.append(event)
            self._cond.notify_all()
        return event

    def events(self, since: int, wait: float = 0.0) -> tuple[Event, ...]:
        with self._cond:
            self._cond.wait_for(lambda: any(e.seq > since for e in self.log), timeout=wait)
            return tuple(e for e in self.log if e.seq > since)

    def rescan(self, timeout: float) -> RescanResult:
        if self.rescan_error is not None:
            raise self.rescan_error
        return self.rescan_result

    def probe(self, name: str, timeout: float) -> PluginView:
        if self.probe_error is not None:
            raise self.probe_error
        if name not in self.views:
            raise UnknownPlugin(name)
        probed = replace(self.views[name], last_probe_at=time.time(),
                         probe_latency_seconds=0.001)
        self.views[name] = probed
        return probed

    def restart(self, name: str, timeout: float) -> PluginView:
        if name not in self.views:
            raise UnknownPlugin(name)
        if self.restart_error is not None:
            raise self.restart_error
        return replace(self.views[name], state=PluginState.RESTARTING)

    def fail_fast(self, name: str) -> PluginView:
        if name not in self.views:
            raise UnknownPlugin(name)
        plugin = self.views[name]
        if plugin.state is not PluginState.READY:
            raise PluginNotReady(plugin)
        return plugin

    def call(self, name: str, op: Callable[[Any], T]) -> T:
        self.fail_fast(name)
        self.calls_seen += 1
        return op(self.clients[name])
