"""Settings: built-in defaults <- TOML file (tomllib) <- command-line flags.

Validation raises ConfigError naming the key and the problem. Every key is checked:
an unknown one is an error (a typo must not pass silently), and a value of the wrong
type is never coerced (``true`` is not a number, ``"10"`` is not a duration).
Runs on: the main thread (start-up and SIGHUP reload).
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import math
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

DEFAULT_CONFIG_PATH = "/etc/volplugd/volplugd.toml"
DEFAULT_DIRS = ("/run/docker/plugins", "/etc/docker/plugins", "/usr/lib/docker/plugins")
DEFAULT_TIMEOUTS: Mapping[str, float] = MappingProxyType(
    {"activate": 5.0, "create": 120.0, "mount": 120.0, "default": 60.0}
)
PROBE_ENDPOINTS = ("/Plugin.Activate", "/VolumeDriver.Capabilities", "/VolumeDriver.List")
TIMEOUT_KEYS = (
    "activate", "capabilities", "create", "remove", "get", "list", "path", "mount",
    "unmount", "default",
)
LOG_FORMATS = ("auto", "json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
UNIX_PATH_MAX = 107  # sun_path is 108 bytes including the terminating NUL


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
    trust: tuple[str, ...] = ()  # folders trusted whatever their owner and modes


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
    max_in_flight: int = 4  # volume operations at once per plugin; more wait, then 503


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
    status_page: bool = True  # the HTML page at "/" of the TCP listener


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
    via_gateway: bool = False  # list the gateway sockets (needs [gateway] enabled)


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    enabled: bool = False
    dir: str = "/run/volplugd/gateway"
    mode: int = 0o660
    group: str | None = None  # None: the daemon's own group
    docker_specs: bool = False
    docker_spec_dir: str = "/etc/docker/plugins"


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


# ---------------------------------------------------------------- public entry points

def load_settings(path: str | None, overrides: Mapping[str, object] | None = None) -> Settings:
    """Defaults <- the TOML file at ``path`` (None: no file) <- dotted-key ``overrides``."""
    raw = _read_toml(path) if path is not None else {}
    for key, value in (overrides or {}).items():
        _set_dotted(raw, key, value)
    return _build(raw)


def settings_to_dict(settings: Settings) -> dict[str, dict[str, object]]:
    """The TOML-shaped tables of ``settings`` (``load_settings`` reads them back equal)."""
    out: dict[str, dict[str, object]] = {}
    for section in dataclasses.fields(settings):
        values = getattr(settings, section.name)
        table: dict[str, object] = {}
        for item in dataclasses.fields(values):
            value = getattr(values, item.name)
            if value is not None:  # TOML has no null: an unset optional key is left out
                table[item.name] = _to_toml_value(section.name, item.name, value)
        out[section.name] = table
    return out


def settings_to_toml(settings: Settings) -> str:
    """The effective configuration as a TOML document (what ``check-config`` prints)."""
    lines: list[str] = []
    for section, table in settings_to_dict(settings).items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {_toml_literal(value)}" for key, value in table.items())
        lines.append("")
    return "\n".join(lines)


def parse_listen(listen: str) -> tuple[str, int]:
    """Split "HOST:PORT" or "[IPV6]:PORT" into (host, port); ValueError says what is wrong."""
    host, sep, port = listen.rpartition(":")
    if not sep:
        raise ValueError('must be "HOST:PORT" or ""')
    if not port.isascii() or not port.isdigit() or int(port) > 65535:
        raise ValueError("port must be a number 0..65535")
    if host.startswith("[") and host.endswith("]"):
        _check_ipv6(host[1:-1])
        return host[1:-1], int(port)
    if ":" in host:
        raise ValueError("an IPv6 address needs brackets, like [::1]:9612")
    if not _HOSTNAME.fullmatch(host):
        raise ValueError("host must be an IP address or a host name")
    return host, int(port)


# ---------------------------------------------------------------- reading and merging

def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as err:
        raise ConfigError("", f"{path}: cannot read: {err.strerror}") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError("", f"{path}: not valid TOML: {err}") from err
    except UnicodeDecodeError as err:  # tomllib decodes the bytes before parsing them
        raise ConfigError("", f"{path}: not valid TOML: not UTF-8 at byte {err.start}") from err


def _set_dotted(raw: dict[str, Any], key: str, value: object) -> None:
    """Set ``raw["a"]["b"] = value`` for key "a.b", creating tables on the way."""
    *parents, last = key.split(".")
    table = raw
    for depth, name in enumerate(parents):
        table = table.setdefault(name, {})
        if not isinstance(table, dict):
            where = ".".join(parents[: depth + 1])
            raise ConfigError(where, f"must be a table, got {_show(table)}")
    table[last] = value


# ---------------------------------------------------------------- building Settings

Check = Callable[[str, Any], object]


def _build(raw: Mapping[str, Any]) -> Settings:
    _reject_unknown("", raw, _SECTIONS)
    sections = {name: _build_section(name, raw.get(name, {})) for name in _SECTIONS}
    settings = Settings(**sections)
    _check_probe_timing(settings.probe)
    if settings.podman.via_gateway and not settings.gateway.enabled:
        raise ConfigError("podman.via_gateway", "needs the gateway: set gateway.enabled = "
                          "true (or --gateway)")
    if settings.gateway.docker_specs and not settings.gateway.enabled:
        raise ConfigError("gateway.docker_specs", "needs the gateway: set gateway.enabled "
                          "= true (or --gateway)")
    if settings.gateway.enabled and settings.gateway.dir in settings.discovery.dirs:
        raise ConfigError("gateway.dir", "is one of discovery.dirs: the plugins there would "
                          "be hidden (discovery skips the gateway's folder); give it its own")
    return settings


def _build_section(name: str, table: object) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(name, f"must be a table, got {_show(table)}")
    cls, checks = _SECTIONS[name]
    _reject_unknown(name, table, checks)
    values = {key: checks[key](f"{name}.{key}", value) for key, value in table.items()}
    return cls(**values)


def _reject_unknown(prefix: str, table: Mapping[str, Any], known: Mapping[str, object]) -> None:
    for key in table:
        if key not in known:
            dotted = f"{prefix}.{key}" if prefix else key
            raise ConfigError(dotted, "unknown key" + _suggest(key, list(known)))


def _suggest(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    if close:
        return f' (did you mean "{close[0]}"?)'
    return f" (expected one of: {', '.join(known)})"


def _check_probe_timing(probe: ProbeSettings) -> None:
    # A probe that may outlast the interval makes "one probe per interval" a lie and
    # hides how long a hung plugin takes to be marked unhealthy: refuse it.
    if probe.timeout > probe.interval:
        raise ConfigError(
            "probe.timeout",
            f"must be <= probe.interval ({_show(probe.interval)}), got {_show(probe.timeout)}",
        )


# ---------------------------------------------------------------- value checks

def _seconds(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(key, f"must be a number of seconds, got {_show(value)}")
    if not math.isfinite(value):
        raise ConfigError(key, f"must be a finite number, got {_show(value)}")
    if value <= 0:
        raise ConfigError(key, f"must be > 0, got {_show(value)}")
    return float(value)


def _count(key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, f"must be an integer, got {_show(value)}")
    if value < 1:
        raise ConfigError(key, f"must be >= 1, got {_show(value)}")
    return value


def _flag(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(key, f"must be true or false, got {_show(value)}")
    return value


def _text(key: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigError(key, f"must be a string, got {_show(value)}")
    if not value:
        raise ConfigError(key, "must not be empty")
    if "\0" in value:
        raise ConfigError(key, f"must not contain a NUL character, got {_show(value)}")
    return value


def _path(key: str, value: object) -> str:
    text = _text(key, value)
    if not text.startswith("/"):
        raise ConfigError(key, f"must be an absolute path, got {_show(value)}")
    return text


def _socket_path(key: str, value: object) -> str:
    path = _path(key, value)
    size = len(path.encode())
    if size > UNIX_PATH_MAX:
        raise ConfigError(key, f"must be at most {UNIX_PATH_MAX} bytes long, got {size}")
    return path


def _one_of(choices: tuple[str, ...]) -> Check:
    def check(key: str, value: object) -> str:
        text = _text(key, value).lower()
        if text not in choices:
            quoted = ", ".join(_show(c) for c in choices)
            raise ConfigError(key, f"must be one of {quoted}, got {_show(value)}")
        return text
    return check


def _endpoint(key: str, value: object) -> str:
    text = _text(key, value)
    if text not in PROBE_ENDPOINTS:
        quoted = ", ".join(_show(e) for e in PROBE_ENDPOINTS)
        raise ConfigError(key, f"must be one of {quoted}, got {_show(value)}")
    return text


def _array_of(item: Check, *, allow_empty: bool) -> Check:
    def check(key: str, value: object) -> tuple[str, ...]:
        if not isinstance(value, list | tuple):
            raise ConfigError(key, f"must be an array of strings, got {_show(value)}")
        if not value and not allow_empty:
            raise ConfigError(key, "must not be empty")
        items = tuple(str(item(f"{key}[{i}]", v)) for i, v in enumerate(value))
        for i, text in enumerate(items):
            if text in items[:i]:
                first = items.index(text)
                raise ConfigError(f"{key}[{i}]", f"repeats {key}[{first}] {_show(text)}")
        return items
    return check


def _mode(key: str, value: object) -> int:
    problem = f'must be an octal string like "0660" or an integer, got {_show(value)}'
    if isinstance(value, str):
        if not _OCTAL.fullmatch(value):
            raise ConfigError(key, problem)
        value = int(value.removeprefix("0o"), 8)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, problem)
    if not 0 <= value <= 0o777:
        raise ConfigError(key, f'must be within "0000".."0777", got "{value:04o}"')
    return value


def _listen(key: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigError(key, f"must be a string, got {_show(value)}")
    if value:
        try:
            parse_listen(value)
        except ValueError as err:
            raise ConfigError(key, f"{err}, got {_show(value)}") from None
    return value


def _timeouts(key: str, value: object) -> Mapping[str, float]:
    if not isinstance(value, dict):
        raise ConfigError(key, f"must be a table, got {_show(value)}")
    _reject_unknown(key, value, dict.fromkeys(TIMEOUT_KEYS))
    given = {name: _seconds(f"{key}.{name}", v) for name, v in value.items()}
    return MappingProxyType({**DEFAULT_TIMEOUTS, **given})


def _check_ipv6(text: str) -> None:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        raise ValueError("not an IPv6 address inside the brackets") from None


_OCTAL = re.compile(r"(0o|0)?[0-7]{3}")
_LABEL = r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOSTNAME = re.compile(rf"{_LABEL}(\.{_LABEL})*\.?")

# Section name -> (dataclass, key -> check). A key absent here is an unknown key;
# tests prove this table names every field of every dataclass.
_SECTIONS: Mapping[str, tuple[type, Mapping[str, Check]]] = {
    "discovery": (DiscoverySettings, {
        "dirs": _array_of(_path, allow_empty=False), "rescan_interval": _seconds,
        "trust": _array_of(_path, allow_empty=True)}),
    "probe": (ProbeSettings, {
        "interval": _seconds, "timeout": _seconds, "failure_threshold": _count,
        "success_threshold": _count, "endpoint": _endpoint}),
    "plugin": (PluginSettings, {"max_response_bytes": _count, "timeouts": _timeouts,
                                "max_in_flight": _count}),
    "control": (ControlSettings, {
        "socket": _socket_path, "mode": _mode, "group": _text,
        "read_groups": _array_of(_text, allow_empty=True),
        "admin_groups": _array_of(_text, allow_empty=True)}),
    "metrics": (MetricsSettings, {"listen": _listen, "status_page": _flag}),
    "log": (LogSettings, {"format": _one_of(LOG_FORMATS), "level": _one_of(LOG_LEVELS)}),
    "podman": (PodmanSettings, {
        "enabled": _flag, "dropin": _path, "volume_plugin_timeout": _count,
        "remove_on_stop": _flag, "via_gateway": _flag}),
    "gateway": (GatewaySettings, {
        "enabled": _flag, "dir": _path, "mode": _mode, "group": _text,
        "docker_specs": _flag, "docker_spec_dir": _path}),
}


# ---------------------------------------------------------------- showing values as TOML

def _show(value: object) -> str:
    """A value as the operator wrote it in TOML, so messages quote their input."""
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return str(int(value))  # a flag's "-1" arrives as -1.0: quote it back as typed
    return _toml_literal(value)


def _to_toml_value(section: str, key: str, value: object) -> object:
    if key == "mode" and section in ("control", "gateway"):
        return f"{value:04o}"
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Mapping):
        return dict(value)
    return value


def _toml_literal(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    if isinstance(value, str):
        # JSON string escapes are valid TOML basic-string escapes; DEL must be escaped too.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(_toml_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_literal(v)}" for k, v in value.items()) + " }"
    return str(value)
