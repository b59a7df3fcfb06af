"""The checks of single settings: each takes the dotted key and the value as TOML gave
it, returns the value to store, or raises ConfigError naming the key and the problem.

A value of the wrong type is never coerced (``true`` is not a number, ``"10"`` is not a
duration). Pure: runs on the main thread at start-up and on SIGHUP reload.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from volplugd.config.tomlwriter import toml_value
from volplugd.safefs import MAX_UNIX_PATH

Check = Callable[[str, Any], object]


class ConfigError(ValueError):
    """A bad setting: ``key`` is the dotted TOML key (e.g. "probe.interval")."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"{key}: {problem}" if key else problem)
        self.key = key
        self.problem = problem


def show(value: object) -> str:
    """A value as the operator wrote it in TOML, so messages quote their input."""
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return str(int(value))  # a flag's "-1" arrives as -1.0: quote it back as typed
    return toml_value(value)


def reject_unknown(prefix: str, table: Mapping[str, Any], known: Mapping[str, object]) -> None:
    """ConfigError for the first key of ``table`` not in ``known``, with a suggestion."""
    for key in table:
        if key not in known:
            dotted = f"{prefix}.{key}" if prefix else key
            raise ConfigError(dotted, "unknown key" + _suggest(key, list(known)))


def _suggest(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    if close:
        return f' (did you mean "{close[0]}"?)'
    return f" (expected one of: {', '.join(known)})"


# ---------------------------------------------------------------- value checks

def seconds(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(key, f"must be a number of seconds, got {show(value)}")
    if not math.isfinite(value):
        raise ConfigError(key, f"must be a finite number, got {show(value)}")
    if value <= 0:
        raise ConfigError(key, f"must be > 0, got {show(value)}")
    return float(value)


_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration(key: str, value: object) -> float:
    """Seconds > 0 as a number, or as text with a unit: "500ms", "90s", "2m", "1h"."""
    if isinstance(value, str):
        match = _DURATION.fullmatch(value)
        if match is None:
            raise ConfigError(key, f'must be a number of seconds or a duration such as "2m" '
                                   f"(ms, s, m, h), got {show(value)}")
        value = float(match[1]) * _DURATION_UNITS[match[2]]
    return seconds(key, value)


def count(key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, f"must be an integer, got {show(value)}")
    if value < 1:
        raise ConfigError(key, f"must be >= 1, got {show(value)}")
    return value


def flag(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(key, f"must be true or false, got {show(value)}")
    return value


def text(key: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigError(key, f"must be a string, got {show(value)}")
    if not value:
        raise ConfigError(key, "must not be empty")
    if "\0" in value:
        raise ConfigError(key, f"must not contain a NUL character, got {show(value)}")
    return value


def path(key: str, value: object) -> str:
    checked = text(key, value)
    if not checked.startswith("/"):
        raise ConfigError(key, f"must be an absolute path, got {show(value)}")
    return checked


def socket_path(key: str, value: object) -> str:
    checked = path(key, value)
    size = len(checked.encode())
    if size > MAX_UNIX_PATH:
        raise ConfigError(key, f"must be at most {MAX_UNIX_PATH} bytes long, got {size}")
    return checked


_UNIT_NAME = re.compile(r"^[A-Za-z0-9:_.\\@-]{1,250}\.service$")


def unit_name(key: str, value: object) -> str:
    """A systemd service unit's full name (``buttervolume.service``, ``plug@a.service``)."""
    checked = text(key, value)
    if _UNIT_NAME.match(checked) is None:
        raise ConfigError(key, f"must be a service unit name like \"plugin.service\", "
                               f"got {show(value)}")
    return checked


def one_of(choices: tuple[str, ...], *, fold_case: bool = False) -> Check:
    """A string among ``choices`` (compared in lower case with ``fold_case``)."""
    def check(key: str, value: object) -> str:
        checked = text(key, value)
        checked = checked.lower() if fold_case else checked
        if checked not in choices:
            quoted = ", ".join(show(c) for c in choices)
            raise ConfigError(key, f"must be one of {quoted}, got {show(value)}")
        return checked
    return check


def array_of(item: Check, *, allow_empty: bool) -> Check:
    """An array of distinct strings, each passing ``item``."""
    def check(key: str, value: object) -> tuple[str, ...]:
        if not isinstance(value, list | tuple):
            raise ConfigError(key, f"must be an array of strings, got {show(value)}")
        if not value and not allow_empty:
            raise ConfigError(key, "must not be empty")
        items = tuple(str(item(f"{key}[{i}]", v)) for i, v in enumerate(value))
        for i, checked in enumerate(items):
            if checked in items[:i]:
                first = items.index(checked)
                raise ConfigError(f"{key}[{i}]", f"repeats {key}[{first}] {show(checked)}")
        return items
    return check


def seconds_table(defaults: Mapping[str, float], keys: tuple[str, ...]) -> Check:
    """A table of seconds > 0 by ``keys``, merged over ``defaults``."""
    def check(key: str, value: object) -> Mapping[str, float]:
        if not isinstance(value, dict):
            raise ConfigError(key, f"must be a table, got {show(value)}")
        reject_unknown(key, value, dict.fromkeys(keys))
        given = {name: seconds(f"{key}.{name}", v) for name, v in value.items()}
        return MappingProxyType({**defaults, **given})
    return check


def mode(key: str, value: object) -> int:
    problem = f'must be an octal string like "0660" or an integer, got {show(value)}'
    if isinstance(value, str):
        if not _OCTAL.fullmatch(value):
            raise ConfigError(key, problem)
        value = int(value.removeprefix("0o"), 8)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, problem)
    if not 0 <= value <= 0o777:
        raise ConfigError(key, f'must be within "0000".."0777", got "{value:04o}"')
    return value


def octal(value: object) -> object:
    """How a mode is written back: the octal string operators write, not 432."""
    return f"{value:04o}"


def listen(key: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigError(key, f"must be a string, got {show(value)}")
    if value:
        try:
            parse_listen(value)
        except ValueError as err:
            raise ConfigError(key, f"{err}, got {show(value)}") from None
    return value


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


def _check_ipv6(address: str) -> None:
    try:
        ipaddress.IPv6Address(address)
    except ValueError:
        raise ValueError("not an IPv6 address inside the brackets") from None


_OCTAL = re.compile(r"(0o|0)?[0-7]{3}")
_LABEL = r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOSTNAME = re.compile(rf"{_LABEL}(\.{_LABEL})*\.?")
