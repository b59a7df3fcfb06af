"""``volplugctl`` arguments and entry point: parse, run one command, map failures to
exit codes (0 ok, 1 daemon or plugin error, 2 usage, 3 daemon unreachable).

Runs on: the main thread of the volplugctl process.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence

from volplugd import __version__
from volplugd.ctl import commands as c
from volplugd.ctl.client import DEFAULT_TIMEOUT, Client, DaemonError, Unreachable
from volplugd.ctl.render import terminal_width, use_color

TYPE_CHECKING = False  # typing costs ~3 ms at start-up: the types are for mypy only
if TYPE_CHECKING:
    from typing import Any, TextIO

    Command = Callable[[c.Context, argparse.Namespace], int]

__all__ = ["DEFAULT_SOCKET", "SOCKET_ENV", "build_parser", "main", "socket_path"]

DEFAULT_SOCKET = "/run/volplugd/control.sock"
SOCKET_ENV = "VOLPLUGD_SOCKET"
STATES = ("activating", "ready", "unhealthy", "restarting", "rejected")


def option(text: str) -> tuple[str, str]:
    """``-o KEY=VALUE`` (the value may contain "=" and be empty; the key may not)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def seq(text: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return int(text)


_UNITS = (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0))


def seconds(text: str) -> float:
    """A positive duration: seconds as a number, or with a unit (``500ms``, ``60s``, ``2m``)."""
    number, scale = text, 1.0
    for unit, factor in _UNITS:
        if text.endswith(unit):
            number, scale = text[:-len(unit)], factor
            break
    try:
        value = float(number) * scale
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(
            f"expected a positive duration (seconds, or with ms, s, m, h), got {text!r}")
    return value


def _global_options() -> argparse.ArgumentParser:
    """Accepted before and after the command (``volplugctl ls --json``)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--socket", metavar="PATH", default=argparse.SUPPRESS,
                        help=f"control socket (default: ${SOCKET_ENV}, then {DEFAULT_SOCKET})")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print the daemon's JSON as is (events: one JSON document a line)")
    common.add_argument("--timeout", metavar="DURATION", type=seconds,
                        default=argparse.SUPPRESS,
                        help="give up on an unanswered request (default: "
                             f"{DEFAULT_TIMEOUT:g}s); for wait: on the whole wait")
    return common


def build_parser() -> argparse.ArgumentParser:
    """The parser of every ``volplugctl`` command."""
    common = _global_options()
    parser = argparse.ArgumentParser(
        prog="volplugctl", parents=[common],
        description="Query and drive volplugd, the volume plugin supervisor, over its "
                    "control socket.",
        epilog="exit status: 0 ok, 1 error from volplugd or a plugin, 2 usage, "
               "3 volplugd not reachable")
    parser.add_argument("--version", action="version", version=f"volplugctl {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(sub: Any, name: str, run: Command, text: str) -> argparse.ArgumentParser:
        cmd: argparse.ArgumentParser = sub.add_parser(name, parents=[common], help=text,
                                                      description=text)
        cmd.set_defaults(run=run)
        return cmd

    ls = add(commands, "ls", c.cmd_ls, "list plugins and their states")
    ls.add_argument("--state", choices=STATES, help="only plugins in this state")
    add(commands, "inspect", c.cmd_inspect, "show one plugin").add_argument("name", metavar="NAME")
    add(commands, "probe", c.cmd_probe,
        "probe a plugin now (exit 1 unless it is ready)").add_argument("name", metavar="NAME")
    add(commands, "restart", c.cmd_restart,
        "restart what serves a plugin now (its unit or container; admin only)"
        ).add_argument("name", metavar="NAME")
    events = add(commands, "events", c.cmd_events, "show the event log")
    events.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    events.add_argument("--since", type=seq, default=0, metavar="SEQ",
                        help="only events after this sequence number")
    add(commands, "rescan", c.cmd_rescan, "scan the plugin directories now")
    add(commands, "health", c.cmd_health, "show the daemon's health")
    add(commands, "capabilities", c.cmd_capabilities,
        "ask a plugin for its capabilities").add_argument("plugin", metavar="PLUGIN")
    wait = add(commands, "wait", c.cmd_wait,
               "wait until plugins are ready (exit 1 if --timeout, default "
               f"{c.WAIT_TIMEOUT:g} s, passes first)")
    wait.add_argument("names", nargs="*", metavar="NAME",
                      help="plugins to wait for (default: every plugin present, but rejected "
                           "ones)")
    _volume_commands(commands, common, add)
    return parser


def _volume_commands(commands: Any, common: argparse.ArgumentParser,
                     add: Callable[[Any, str, Command, str], argparse.ArgumentParser]) -> None:
    volume = commands.add_parser("volume", parents=[common], help="volume operations",
                                 description="Volume operations through a plugin.")
    sub = volume.add_subparsers(dest="volume_command", metavar="COMMAND", required=True)
    add(sub, "ls", c.cmd_volume_ls, "list a plugin's volumes").add_argument("plugin",
                                                                          metavar="PLUGIN")
    create = add(sub, "create", c.cmd_volume_create, "create a volume")
    create.add_argument("-o", "--opt", dest="options", type=option, action="append",
                        default=[], metavar="KEY=VALUE", help="driver option (repeatable)")
    simple: list[tuple[str, Command, str]] = [
        ("inspect", c.cmd_volume_inspect, "show a volume"),
        ("rm", c.cmd_volume_rm, "remove a volume"),
        ("path", c.cmd_volume_path, "print a volume's mountpoint"),
    ]
    mounting: list[tuple[str, Command, str]] = [
        ("mount", c.cmd_volume_mount, "mount a volume for a container id"),
        ("unmount", c.cmd_volume_unmount, "release a mount of a container id"),
    ]
    targets = [create] + [add(sub, *spec) for spec in simple + mounting]
    for cmd in targets:
        cmd.add_argument("plugin", metavar="PLUGIN")
        cmd.add_argument("volume", metavar="VOLUME")
    for cmd in targets[-len(mounting):]:
        cmd.add_argument("--id", required=True, help="the caller's id (a container id)")


# --- Entry point ------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None, *, environ: Mapping[str, str] | None = None,
         stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Entry point of the ``volplugctl`` console script; returns the exit status."""
    env = os.environ if environ is None else environ
    out, err = stdout or sys.stdout, stderr or sys.stderr
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # --help, --version and usage errors end here
        return stop.code if isinstance(stop.code, int) else c.EXIT_USAGE
    path = socket_path(args, env)
    client = Client(path, getattr(args, "timeout", DEFAULT_TIMEOUT))
    ctx = c.Context(client, out, err, json=getattr(args, "json", False),
                    color=use_color(out, env), width=terminal_width(out, env), now=time.time())
    try:
        status: int = args.run(ctx, args)
        out.flush()
    except Unreachable as error:
        c.complain(err, f"cannot reach volplugd at {path}: {error.reason} "
                        f"(is volplugd running? set --socket or {SOCKET_ENV})")
        return c.EXIT_UNREACHABLE
    except DaemonError as error:
        retry = "" if error.retry_after is None else f"; retry in {error.retry_after} s"
        c.complain(err, f"{error.code}: {error.message}{retry}")
        return c.EXIT_ERROR
    except BrokenPipeError:  # `volplugctl ... | head`: the reader is done, and so are we
        _silence(out)
        return c.EXIT_OK
    except KeyboardInterrupt:
        return c.EXIT_INTERRUPTED
    finally:
        client.close()
    return status


def socket_path(args: argparse.Namespace, environ: Mapping[str, str]) -> str:
    """``--socket``, else ``$VOLPLUGD_SOCKET`` (if not empty), else the standard path."""
    return getattr(args, "socket", None) or environ.get(SOCKET_ENV) or DEFAULT_SOCKET


def _silence(stream: TextIO) -> None:
    """Point the closed stdout at /dev/null so the exit-time flush cannot complain."""
    try:
        fd = stream.fileno()
    except (AttributeError, ValueError, OSError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)
