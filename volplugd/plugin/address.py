"""PluginAddress: where a plugin listens, parsed from .sock / .spec / .json files (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["PluginAddress", "TLSConfig"]

Scheme = Literal["unix", "tcp", "http", "https"]


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """Docker's TLSConfig of a .json plugin file. No CA file means: skip verification."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure_skip_verify: bool = False


@dataclass(frozen=True, slots=True)
class PluginAddress:
    """``scheme`` "unix" has a socket path as ``target``; the others "host:port"."""

    scheme: Scheme
    target: str
    tls: TLSConfig | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.target}"

    @property
    def is_unix(self) -> bool:
        return self.scheme == "unix"
