"""Settings: built-in defaults <- TOML file (tomllib) <- command-line flags.

Validation raises ConfigError naming the key and the problem. ``settings`` holds the
dataclasses, each field with its default and its check (``checks``); ``loading`` reads
and merges them and writes them back; ``folders`` judges the folders they make volplugd write in (on
disk: check-config and start-up); ``tomlwriter`` is the one TOML writer (also the
Podman drop-in's). This module only re-exports their public names.
Runs on: the main thread (start-up and SIGHUP reload).
"""

from __future__ import annotations

from volplugd.config.checks import ConfigError, parse_listen
from volplugd.config.folders import check_folders, written_folders
from volplugd.config.loading import load_settings, settings_to_dict, settings_to_toml
from volplugd.config.settings import (
    DEFAULT_CONFIG_PATH,
    DEFAULT_DIRS,
    DEFAULT_PLUGIN_TIMEOUTS,
    LOG_FORMATS,
    LOG_LEVELS,
    PROBE_ENDPOINTS,
    TIMEOUT_KEYS,
    ControlSettings,
    DiscoverySettings,
    GatewaySettings,
    LogSettings,
    MetricsSettings,
    PluginSettings,
    PodmanSettings,
    ProbeSettings,
    RestartSettings,
    Settings,
)

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_DIRS",
    "DEFAULT_PLUGIN_TIMEOUTS",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "PROBE_ENDPOINTS",
    "TIMEOUT_KEYS",
    "ConfigError",
    "ControlSettings",
    "DiscoverySettings",
    "GatewaySettings",
    "LogSettings",
    "MetricsSettings",
    "PluginSettings",
    "PodmanSettings",
    "ProbeSettings",
    "RestartSettings",
    "Settings",
    "check_folders",
    "load_settings",
    "parse_listen",
    "settings_to_dict",
    "settings_to_toml",
    "written_folders",
]
