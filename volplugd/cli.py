"""The ``volplugd`` command: parse flags, load settings, set up logging, run the daemon.

``volplugd [FLAGS]`` runs in the foreground; ``volplugd check-config [FLAGS]`` prints
the effective configuration (defaults <- file <- flags) and exits; ``--version``.
A bad configuration is one line on stderr, ``volplugd: config error: KEY: PROBLEM``,
and exit status 2, like a usage error; so is a folder volplugd would write in but may
not (``config.check_folders``), in check-config and before the daemon starts.
Runs on: the main thread.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from volplugd import __version__
from volplugd.config import (
    DEFAULT_CONFIG_PATH,
    LOG_FORMATS,
    LOG_LEVELS,
    ConfigError,
    Settings,
    check_folders,
    load_settings,
    settings_to_toml,
)

EXIT_USAGE = 2  # argparse's status for a usage error; a config error is one too

# Flag destination -> the dotted config key it sets (flags win over the file).
_FLAG_KEYS = {
    "plugin_dir": "discovery.dirs",
    "control_socket": "control.socket",
    "metrics_listen": "metrics.listen",
    "probe_interval": "probe.interval",
    "probe_timeout": "probe.timeout",
    "failure_threshold": "probe.failure_threshold",
    "log_format": "log.format",
    "log_level": "log.level",
    "podman_dropin": "podman.dropin",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``volplugd`` console script; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # --help, --version and usage errors end here
        return stop.code if isinstance(stop.code, int) else EXIT_USAGE
    path = resolve_config_path(getattr(args, "config", None))
    overrides = flag_overrides(args)
    try:
        settings = load_settings(path, overrides)
        check_folders(settings)
    except ConfigError as err:
        print(f"volplugd: config error: {err}", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "check-config":
        sys.stdout.write(_effective_config(settings, path))
        return 0
    # The daemon calls this on SIGHUP: the same file re-read, the same flags on top.
    return _run(settings, lambda: load_settings(path, overrides))


def resolve_config_path(given: str | None, default: str = DEFAULT_CONFIG_PATH) -> str | None:
    """The file to read: ``--config`` if given (it must exist), else ``default`` if present.

    Without ``--config`` and without the default file, built-in defaults apply (None).
    """
    if given is not None:
        return given
    return default if os.path.exists(default) else None


def flag_overrides(args: argparse.Namespace) -> dict[str, object]:
    """The dotted config keys set by the flags that were actually given."""
    given = vars(args)
    overrides: dict[str, object] = {
        key: given[dest] for dest, key in _FLAG_KEYS.items() if dest in given
    }
    if given.get("no_metrics"):
        overrides["metrics.listen"] = ""
    if given.get("podman") or "podman_dropin" in given:
        overrides["podman.enabled"] = True
    if given.get("gateway"):
        overrides["gateway.enabled"] = True
    return overrides


def _run(settings: Settings, reload: Callable[[], Settings]) -> int:
    # Imported here: check-config and --version must not pay for (or depend on) the
    # daemon's imports (structlog alone takes ~0.2 s: it imports asyncio).
    from volplugd import daemon, log

    log.configure(settings.log.format, settings.log.level)
    return daemon.run(settings, reload=reload)


def _effective_config(settings: Settings, path: str | None) -> str:
    source = path if path is not None else "no file (built-in defaults)"
    header = f"# volplugd {__version__} effective configuration\n# config file: {source}\n\n"
    return header + settings_to_toml(settings)


# ---------------------------------------------------------------- argument parsing

def build_parser() -> argparse.ArgumentParser:
    """The parser of ``volplugd [FLAGS]`` and ``volplugd check-config [FLAGS]``."""
    flags = _flags_parser()
    parser = argparse.ArgumentParser(
        prog="volplugd",
        description="Supervise Docker/Podman legacy volume plugins on this node.",
        parents=[flags],
    )
    parser.add_argument("--version", action="version", version=f"volplugd {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser(
        "check-config", parents=[flags],
        help="validate the configuration, print the effective settings, and exit",
        description="Validate the configuration and print the effective settings as TOML.",
    )
    return parser


def _flags_parser() -> argparse.ArgumentParser:
    """Flags shared by the daemon and check-config.

    Defaults are SUPPRESS so that an absent flag leaves the file's value alone, and a
    flag given before the sub-command is not reset by the sub-command's defaults.
    """
    flags = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    flags.add_argument("--config", metavar="FILE",
                       help=f"TOML config file (default: {DEFAULT_CONFIG_PATH} if it exists)")
    flags.add_argument("--plugin-dir", metavar="DIR", action="append",
                       help="watch DIR for plugins; repeat for more (replaces discovery.dirs)")
    flags.add_argument("--control-socket", metavar="PATH", help="control socket path")
    metrics = flags.add_mutually_exclusive_group()
    metrics.add_argument("--metrics-listen", metavar="HOST:PORT",
                         help="Prometheus metrics listener, e.g. 127.0.0.1:9612 or [::1]:9612")
    metrics.add_argument("--no-metrics", action="store_true",
                         help="no TCP metrics listener (metrics stay on the control socket)")
    flags.add_argument("--probe-interval", metavar="SECONDS", type=float,
                       help="seconds between health probes of a plugin")
    flags.add_argument("--probe-timeout", metavar="SECONDS", type=float,
                       help="seconds a health probe may take")
    flags.add_argument("--failure-threshold", metavar="N", type=int,
                       help="failed probes in a row that make a plugin unhealthy")
    flags.add_argument("--log-format", choices=LOG_FORMATS, type=str.lower,
                       help="auto: console on a TTY, JSON lines otherwise")
    flags.add_argument("--log-level", choices=LOG_LEVELS, type=str.lower, help="log level")
    flags.add_argument("--podman", action="store_true",
                       help="keep Podman's drop-in file listing the ready plugins")
    flags.add_argument("--podman-dropin", metavar="FILE",
                       help="path of that drop-in file (implies --podman)")
    flags.add_argument("--gateway", action="store_true",
                       help="serve a fail-fast gateway socket per plugin (docs/gateway.md)")
    return flags
