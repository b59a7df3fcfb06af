"""Settings: built-in defaults <- TOML file (tomllib) <- command-line flags.

Validation raises ConfigError naming the key and the problem. Runs on: the main
thread (start-up and SIGHUP reload).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

DEFAULT_DIRS = ("/run/docker/plugins", "/etc/docker/plugins", "/usr/lib/docker/plugins")
DEFAULT_TIMEOUTS: Mapping[str, float] = MappingProxyType(
    {"activate": 5.0, "create": 120.0, "mount": 120.0, "default": 60.0}
)
PROBE_ENDPOINTS = ("/Plugin.Activate", "/VolumeDriver.Capabilities", "/VolumeDriver.List")


class ConfigError(ValueError):
    """A bad setting: ``key`` is the dotted TOML key (e.g. "probe.interval")."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"{key}: {problem}" if key else problem)
        self.key = key
        self.problem = problem


@dataclass(frozen=True, slots=True)
class DiscoverySettings:
    dirs: tuple[str, ...] = DEFAULT_DIRS
    rescan_interval: float = 30.0


@dataclass(frozen=True, slots=True)
class ProbeSettings:
    interval: float = 10.0
    timeout: float = 5.0
    failure_threshold: int = 3
    success_threshold: int = 1
    endpoint: str = "/Plugin.Activate"


@dataclass(frozen=True, slots=True)
class PluginSettings:
    max_response_bytes: int = 16 * 1024 * 1024
    timeouts: Mapping[str, float] = field(default_factory=lambda: DEFAULT_TIMEOUTS)


@dataclass(frozen=True, slots=True)
class ControlSettings:
    socket: str = "/run/volplugd/control.sock"
    mode: int = 0o660
    group: str = "root"
    read_groups: tuple[str, ...] = ()
    admin_groups: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    listen: str = "127.0.0.1:9612"  # "" turns the TCP listener off


@dataclass(frozen=True, slots=True)
class LogSettings:
    format: str = "auto"  # auto | json | console
    level: str = "info"


@dataclass(frozen=True, slots=True)
class PodmanSettings:
    enabled: bool = False
    dropin: str = "/etc/containers/containers.conf.d/50-volplugd.conf"
    volume_plugin_timeout: int | None = None
    remove_on_stop: bool = False


@dataclass(frozen=True, slots=True)
class Settings:
    discovery: DiscoverySettings = field(default_factory=DiscoverySettings)
    probe: ProbeSettings = field(default_factory=ProbeSettings)
    plugin: PluginSettings = field(default_factory=PluginSettings)
    control: ControlSettings = field(default_factory=ControlSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    log: LogSettings = field(default_factory=LogSettings)
    podman: PodmanSettings = field(default_factory=PodmanSettings)
