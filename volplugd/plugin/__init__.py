"""volplugd.plugin: a client for Docker/Podman legacy (v1) volume plugins, usable alone.

    from volplugd.plugin import PluginAddress, PluginClient
    with PluginClient("btrfs", PluginAddress("unix", "/run/docker/plugins/btrfs.sock")) as c:
        c.create("v1", {"size": "1G"})
        print(c.mount("v1", id="my-container"))
        c.unmount("v1", id="my-container"); c.remove("v1")

Imports nothing else from volplugd (checked by import-linter). See docs/client.md.
"""

from __future__ import annotations

from volplugd.plugin.address import (
    PluginAddress,
    TLSConfig,
    address_from_json,
    address_from_socket,
    address_from_spec,
    load_address,
    parse_url,
)
from volplugd.plugin.client import OnRequest, PluginClient
from volplugd.plugin.errors import (
    NotAPlugin,
    NotAVolumePlugin,
    PluginAddressError,
    PluginBadResponse,
    PluginError,
    PluginRemoved,
    PluginReportedError,
    PluginTimeout,
    PluginUnreachable,
)
from volplugd.plugin.models import Capabilities, Manifest, Volume
from volplugd.plugin.protocol import (
    ACTIVATE,
    CAPABILITIES,
    CREATE,
    DEFAULT_TIMEOUTS,
    ENDPOINTS,
    GET,
    LIST,
    MOUNT,
    PATH,
    REMOVE,
    UNMOUNT,
)

__all__ = [
    "ACTIVATE",
    "CAPABILITIES",
    "CREATE",
    "DEFAULT_TIMEOUTS",
    "ENDPOINTS",
    "GET",
    "LIST",
    "MOUNT",
    "PATH",
    "REMOVE",
    "UNMOUNT",
    "Capabilities",
    "Manifest",
    "NotAPlugin",
    "NotAVolumePlugin",
    "OnRequest",
    "PluginAddress",
    "PluginAddressError",
    "PluginBadResponse",
    "PluginClient",
    "PluginError",
    "PluginRemoved",
    "PluginReportedError",
    "PluginTimeout",
    "PluginUnreachable",
    "TLSConfig",
    "Volume",
    "address_from_json",
    "address_from_socket",
    "address_from_spec",
    "load_address",
    "parse_url",
]
