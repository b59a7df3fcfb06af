"""Reading settings (defaults <- TOML file <- dotted-key overrides) and writing them back.

Every key is checked by the check beside its field (``settings.setting``); an unknown one
is an error (a typo must not pass silently). Runs on: the main thread (start-up and
SIGHUP reload).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from typing import Any

from volplugd.config.checks import ConfigError, reject_unknown, show
from volplugd.config.settings import KEYS, SECTIONS, ProbeSettings, Settings
from volplugd.config.tomlwriter import toml_tables


def load_settings(path: str | None, overrides: Mapping[str, object] | None = None) -> Settings:
    """Defaults <- the TOML file at ``path`` (None: no file) <- dotted-key ``overrides``."""
    raw = _read_toml(path) if path is not None else {}
    for key, value in (overrides or {}).items():
        _set_dotted(raw, key, value)
    return _build(raw)


def settings_to_dict(settings: Settings) -> dict[str, dict[str, object]]:
    """The TOML-shaped tables of ``settings`` (``load_settings`` reads them back equal)."""
    out: dict[str, dict[str, object]] = {}
    for section, keys in KEYS.items():
        values = getattr(settings, section)
        table: dict[str, object] = {}
        for key, (_, to_toml) in keys.items():
            value = getattr(values, key)
            if value is not None:  # TOML has no null: an unset optional key is left out
                table[key] = to_toml(value)
        out[section] = table
    return out


def settings_to_toml(settings: Settings) -> str:
    """The effective configuration as a TOML document (what ``check-config`` prints)."""
    return toml_tables(settings_to_dict(settings))


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
            raise ConfigError(where, f"must be a table, got {show(table)}")
    table[last] = value


# ---------------------------------------------------------------- building Settings

def _build(raw: Mapping[str, Any]) -> Settings:
    reject_unknown("", raw, SECTIONS)
    settings = Settings(**{name: _build_section(name, raw.get(name, {})) for name in SECTIONS})
    _check_probe_timing(settings.probe)
    if settings.podman.via_gateway and not settings.gateway.enabled:
        raise ConfigError("podman.via_gateway", "needs the gateway: set gateway.enabled = "
                          "true (or --gateway)")
    if settings.gateway.docker_specs and not settings.gateway.enabled:
        raise ConfigError("gateway.docker_specs", "needs the gateway: set gateway.enabled "
                          "= true (or --gateway)")
    return settings


def _build_section(name: str, table: object) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(name, f"must be a table, got {show(table)}")
    keys = KEYS[name]
    reject_unknown(name, table, keys)
    values = {key: keys[key][0](f"{name}.{key}", value) for key, value in table.items()}
    return SECTIONS[name](**values)


def _check_probe_timing(probe: ProbeSettings) -> None:
    # A probe that may outlast the interval makes "one probe per interval" a lie and
    # hides how long a hung plugin takes to be marked unhealthy: refuse it.
    if probe.timeout > probe.interval:
        raise ConfigError(
            "probe.timeout",
            f"must be <= probe.interval ({show(probe.interval)}), got {show(probe.timeout)}",
        )
