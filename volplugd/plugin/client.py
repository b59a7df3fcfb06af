"""PLACEHOLDER — replaced by the plugin-client work (issue 2). Signatures only."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from volplugd.plugin.address import PluginAddress

OnRequest = Callable[[str, str, float], None]


class PluginClient:
    def __init__(self, name: str, address: PluginAddress, *,
                 timeouts: Mapping[str, float] | None = None,
                 max_response_bytes: int = 16 * 1024 * 1024,
                 on_request: OnRequest | None = None) -> None:
        self.name = name
        self.address = address

    def activate(self, *, timeout: float | None = None) -> Any:
        raise NotImplementedError
