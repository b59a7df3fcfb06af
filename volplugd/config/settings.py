"""The settings: one frozen dataclass per TOML table, each field with its default and its
check beside it (``setting``). The tables and keys that exist are derived from these
classes (``SECTIONS``), so a field cannot be added without its check.

Immutable data: any thread may read it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar, get_type_hints

from volplugd.config import checks as c
from volplugd.plugin import protocol

T = TypeVar("T")

DEFAULT_CONFIG_PATH = "/etc/volplugd/volplugd.toml"
DEFAULT_DIRS = ("/run/docker/plugins", "/etc/docker/plugins", "/usr/lib/docker/plugins")
#: The keys of ``plugin.timeouts`` (``plugin.protocol``'s, in its order).
TIMEOUT_KEYS = tuple(protocol.DEFAULT_TIMEOUTS)
#: The default ``plugin.timeouts``: only the calls whose own deadline is not "default"'s,
#: so that setting ``default`` moves every other call (``protocol.resolve_timeouts``).
DEFAULT_PLUGIN_TIMEOUTS: Mapping[str, float] = MappingProxyType({
    key: seconds for key, seconds in protocol.DEFAULT_TIMEOUTS.items()
    if key == "default" or seconds != protocol.DEFAULT_TIMEOUTS["default"]
})
#: The calls a health probe may make: the ones without side effects.
PROBE_ENDPOINTS = (protocol.ACTIVATE, protocol.CAPABILITIES, protocol.LIST)
LOG_FORMATS = ("auto", "json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def _as_is(value: object) -> object:
    """How most values are written back to TOML: arrays as lists, tables as dicts."""
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Mapping):
        return dict(value)
    return value


def setting(default: T, check: c.Check,
            to_toml: Callable[[Any], object] = _as_is) -> T:
    """A field with its default, the check of a value read from TOML or a flag, and how
    its value is written back to TOML (``settings_to_dict``)."""
    metadata = {"check": check, "to_toml": to_toml}
    if isinstance(default, Mapping):  # immutable, but dataclasses want a factory for it
        return field(default_factory=lambda: default, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True, slots=True)
class DiscoverySettings:
    dirs: tuple[str, ...] = setting(DEFAULT_DIRS, c.array_of(c.path, allow_empty=False))
    rescan_interval: float = setting(30.0, c.seconds)
    # folders trusted whatever their owner and modes
    trust: tuple[str, ...] = setting((), c.array_of(c.path, allow_empty=True))
    # a socket nobody listens on this long is removed (None: never; docs/supervision.md)
    remove_stale_after: float | None = setting(None, c.duration)


@dataclass(frozen=True, slots=True)
class ProbeSettings:
    interval: float = setting(10.0, c.seconds)
    timeout: float = setting(5.0, c.seconds)
    failure_threshold: int = setting(3, c.count)
    success_threshold: int = setting(1, c.count)
    endpoint: str = setting(protocol.ACTIVATE, c.one_of(PROBE_ENDPOINTS))


@dataclass(frozen=True, slots=True)
class PluginSettings:
    max_response_bytes: int = setting(16 * 1024 * 1024, c.count)
    timeouts: Mapping[str, float] = setting(
        DEFAULT_PLUGIN_TIMEOUTS, c.seconds_table(DEFAULT_PLUGIN_TIMEOUTS, TIMEOUT_KEYS))
    # volume operations at once per plugin; more wait, then 503
    max_in_flight: int = setting(4, c.count)


@dataclass(frozen=True, slots=True)
class ControlSettings:
    socket: str = setting("/run/volplugd/control.sock", c.socket_path)
    mode: int = setting(0o660, c.mode, c.octal)
    group: str = setting("root", c.text)
    read_groups: tuple[str, ...] = setting((), c.array_of(c.text, allow_empty=True))
    admin_groups: tuple[str, ...] = setting((), c.array_of(c.text, allow_empty=True))


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    listen: str = setting("127.0.0.1:9612", c.listen)  # "" turns the TCP listener off
    status_page: bool = setting(True, c.flag)  # the HTML page at "/" of the TCP listener


@dataclass(frozen=True, slots=True)
class LogSettings:
    format: str = setting("auto", c.one_of(LOG_FORMATS, fold_case=True))
    level: str = setting("info", c.one_of(LOG_LEVELS, fold_case=True))


@dataclass(frozen=True, slots=True)
class PodmanSettings:
    enabled: bool = setting(False, c.flag)
    dropin: str = setting("/etc/containers/containers.conf.d/50-volplugd.conf", c.path)
    volume_plugin_timeout: int | None = setting(None, c.count)
    remove_on_stop: bool = setting(False, c.flag)
    # list the gateway sockets (needs [gateway] enabled)
    via_gateway: bool = setting(False, c.flag)


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    enabled: bool = setting(False, c.flag)
    dir: str = setting("/run/volplugd/gateway", c.path)
    mode: int = setting(0o660, c.mode, c.octal)
    group: str | None = setting(None, c.text)  # None: the daemon's own group
    docker_specs: bool = setting(False, c.flag)
    docker_spec_dir: str = setting("/etc/docker/plugins", c.path)


@dataclass(frozen=True, slots=True)
class RestartSettings:
    enabled: bool = setting(False, c.flag)
    after: float = setting(10.0, c.seconds)  # unhealthy this long: restart
    burst: int = setting(3, c.count)  # at most burst restarts per interval, then give up
    interval: float = setting(600.0, c.seconds)
    # a call waits this long for a restarting plugin, and a restarted one has this long
    # to be ready
    hold: float = setting(15.0, c.seconds)
    # only these units may be restarted, and no container (empty: any service or container
    # found from the kernel)
    units: tuple[str, ...] = setting((), c.array_of(c.unit_name, allow_empty=True))


@dataclass(frozen=True, slots=True)
class Settings:
    discovery: DiscoverySettings = field(default_factory=DiscoverySettings)
    probe: ProbeSettings = field(default_factory=ProbeSettings)
    plugin: PluginSettings = field(default_factory=PluginSettings)
    control: ControlSettings = field(default_factory=ControlSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    log: LogSettings = field(default_factory=LogSettings)
    podman: PodmanSettings = field(default_factory=PodmanSettings)
    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    restart: RestartSettings = field(default_factory=RestartSettings)


#: Table name -> its dataclass, in the order of the Settings fields.
SECTIONS: Mapping[str, type[Any]] = MappingProxyType(get_type_hints(Settings))
#: Table name -> key -> (check, to_toml): the keys that exist, from the fields.
KEYS: Mapping[str, Mapping[str, tuple[c.Check, Callable[[Any], object]]]] = MappingProxyType({
    name: MappingProxyType({
        f.name: (f.metadata["check"], f.metadata["to_toml"]) for f in dataclasses.fields(cls)})
    for name, cls in SECTIONS.items()
})
