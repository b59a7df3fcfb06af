"""The daemon's vocabulary: states, file identity, desired plugins, views, events and
snapshots (leaf module, no I/O). What crosses between the loop and its callers (the
loop's messages, the errors, the ``Commands`` and ``Observer`` protocols) is in
``contracts``.

Everything here is immutable, so any thread may read it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from types import MappingProxyType
from typing import Any

from volplugd.plugin.address import PluginAddress
from volplugd.plugin.text import json_printable, safe_value


class PluginState(StrEnum):
    ACTIVATING = "activating"
    READY = "ready"
    UNHEALTHY = "unhealthy"
    RESTARTING = "restarting"
    REJECTED = "rejected"


class Kind(StrEnum):
    SOCK = "sock"
    SPEC = "spec"
    JSON = "json"


class EventType(StrEnum):
    DISCOVERED = "discovered"
    STATE_CHANGED = "state_changed"
    EVICTED = "evicted"
    RESCAN = "rescan"
    STALE_SOCKET_REMOVED = "stale_socket_removed"
    RESTART_STARTED = "restart_started"  # reason: what is restarted ("unit x.service")
    RESTART_DONE = "restart_done"  # reason: "OUTCOME: text" (docs/supervision.md)
    RESTART_GIVEN_UP = "restart_given_up"  # reason: the budget that ran out


def rfc3339(ts: float | None) -> str | None:
    """Wall-clock seconds to RFC 3339 UTC with milliseconds; None stays None."""
    if ts is None:
        return None
    moment = dt.datetime.fromtimestamp(ts, tz=dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class FileIdentity:
    """Same path, different identity: the plugin's socket or file was replaced."""

    dev: int
    ino: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileIdentity:
        return cls(st.st_dev, st.st_ino, st.st_mtime_ns)


@dataclass(frozen=True, slots=True)
class DesiredPlugin:
    """One plugin as the filesystem says it should exist."""

    name: str
    address: PluginAddress
    source: str
    kind: Kind
    identity: FileIdentity
    warnings: tuple[str, ...] = ()


DesiredState = Mapping[str, DesiredPlugin]


@dataclass(frozen=True, slots=True)
class ProcessView:
    """The process that serves a unix-socket plugin, as the kernel told it (the plugin
    view's ``process``): ``command`` is safe text of at most 1 KiB (None: unreadable);
    ``unit`` the systemd unit that runs it (for a socket-activated plugin, the service
    behind its ``.socket`` unit); ``container`` the ``(engine, id)`` it runs in."""

    pid: int
    uid: int
    command: str | None = None
    unit: str | None = None
    container: tuple[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        container = None if self.container is None else {
            "engine": self.container[0], "id": self.container[1]}
        return {"pid": self.pid, "uid": self.uid, "command": self.command,
                "unit": self.unit, "container": container}


@dataclass(frozen=True, slots=True)
class RestartView:
    """The plugin view's ``restart`` object: volplugd's last restart of what serves it.

    ``target``: what was restarted (``unit x.service``, ``docker container ID``);
    ``outcome``: None while under way, else the word it ended with (``done``: ready
    again; docs/supervision.md lists the others) and ``error`` the exact text of a
    failure; ``recent``: restarts within ``restart.interval``; ``given_up``: the budget
    ran out, no more restarts until the plugin is ready again or an admin asks."""

    target: str
    at: float  # wall-clock time the last restart began
    outcome: str | None = None
    error: str | None = None
    recent: int = 1
    given_up: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "at": rfc3339(self.at), "outcome": self.outcome,
                "error": self.error, "recent": self.recent, "given_up": self.given_up}


@dataclass(frozen=True, slots=True)
class PluginView:
    """The published record of one plugin: the control API's ``Plugin`` object."""

    name: str
    address: str
    source: str
    kind: Kind
    state: PluginState
    registered_at: float
    implements: tuple[str, ...] = ()
    last_probe_at: float | None = None
    last_success_at: float | None = None
    last_error: str | None = None
    consecutive_failures: int = 0
    probe_latency_seconds: float | None = None
    scope: str | None = None
    warnings: tuple[str, ...] = ()
    process: ProcessView | None = None  # unix-socket plugins, once identified
    restart: RestartView | None = None  # None: volplugd never restarted it

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "address": self.address,
            "source": self.source,
            "kind": self.kind.value,
            "state": self.state.value,
            "implements": list(self.implements),
            "registered_at": rfc3339(self.registered_at),
            "last_probe_at": rfc3339(self.last_probe_at),
            "last_success_at": rfc3339(self.last_success_at),
            "last_error": self.last_error,
            "consecutive_failures": self.consecutive_failures,
            "probe_latency_seconds": self.probe_latency_seconds,
            "capabilities": None if self.scope is None else {"scope": self.scope},
            "warnings": list(self.warnings),
            "process": None if self.process is None else self.process.to_json(),
            "restart": None if self.restart is None else self.restart.to_json(),
        }


@dataclass(frozen=True, slots=True)
class Event:
    """One entry of the bounded event log; ``seq`` increases by one per event."""

    seq: int
    time: float
    type: EventType
    plugin: str | None = None
    from_state: PluginState | None = None
    to_state: PluginState | None = None
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "time": rfc3339(self.time),
            "type": self.type.value,
            "plugin": self.plugin,
            "from": None if self.from_state is None else self.from_state.value,
            "to": None if self.to_state is None else self.to_state.value,
            "reason": self.reason,
        }


def encode(obj: Any) -> bytes:
    """The one JSON encoding of the control API (compact separators, always valid UTF-8;
    control characters and bidi overrides always as ``\\uXXXX`` escapes).

    Outside text is made safe where it enters; should a lone surrogate get here anyway
    (a bug, or text from a path no one checked), it is escaped visibly (``\\xff``,
    ``\\ud800``) instead of failing the whole answer.
    """
    text = json_printable(json.dumps(obj, separators=(",", ":"), ensure_ascii=False))
    try:
        return text.encode()
    except UnicodeEncodeError:
        return encode(safe_value(obj, None))


class JsonRecords(Mapping[str, bytes]):
    """Each plugin's JSON record, encoded when first read and then reused for as long as
    its view is the same object. The cache is shared by successive snapshots: a plugin
    probed a thousand times but never read is never encoded, and one read once per
    change is encoded once per change. Any thread; two readers may both encode the same
    view (the same bytes), which is cheaper than a lock on every read.
    """

    __slots__ = ("_cache", "_plugins")

    def __init__(self, plugins: Mapping[str, PluginView],
                 cache: dict[str, tuple[PluginView, bytes]]):
        self._plugins = plugins
        self._cache = cache

    def __getitem__(self, name: str) -> bytes:
        view = self._plugins[name]
        hit = self._cache.get(name)
        if hit is not None and hit[0] is view:
            return hit[1]
        data = encode(view.to_json())
        self._cache[name] = (view, data)
        return data

    def __iter__(self) -> Iterator[str]:
        return iter(self._plugins)

    def __len__(self) -> int:
        return len(self._plugins)


@dataclass(frozen=True)
class Snapshot:
    """What readers see: every plugin at one instant, with its JSON already encoded.

    ``encoded[name]`` is the plugin's JSON, encoded at most once per version of its
    view (``JsonRecords``); ``plugins_json()`` only joins bytes, and the unfiltered list
    is joined once per snapshot, so 1000 records cost no re-encoding per request.
    ``plugins`` is in no particular order (a new plugin must not cost a re-sort of all):
    ``names`` is sorted, once per snapshot, when first read.
    """

    plugins: Mapping[str, PluginView]
    encoded: Mapping[str, bytes]
    generation: int = 0
    published_at: float = 0.0
    counts: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.counts:  # not given: count (the registry keeps counts incrementally)
            counts = dict.fromkeys((s.value for s in PluginState), 0)
            for view in self.plugins.values():
                counts[view.state.value] += 1
            object.__setattr__(self, "counts", MappingProxyType(counts))

    def plugins_json(self, state: PluginState | None = None) -> bytes:
        if state is None:
            return self._all_json
        plugins = self.plugins
        names = (n for n in self.names if plugins[n].state is state)
        return b'{"plugins":[' + b",".join(self.encoded[n] for n in names) + b"]}"

    @cached_property
    def names(self) -> tuple[str, ...]:
        """Every plugin's name, sorted."""
        return tuple(sorted(self.plugins))

    @cached_property
    def _all_json(self) -> bytes:
        return b'{"plugins":[' + b",".join(self.encoded[n] for n in self.names) + b"]}"


EMPTY_SNAPSHOT = Snapshot(plugins=MappingProxyType({}), encoded=MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class RescanResult:
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()

    def to_json(self) -> dict[str, list[str]]:
        return {"added": list(self.added), "removed": list(self.removed),
                "changed": list(self.changed)}
