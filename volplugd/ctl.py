"""``volplugctl``: the command line over volplugd's control socket.

Speaks only HTTP/1.1 + JSON on the AF_UNIX control socket (``http.client``) and imports
nothing of the daemon, watchdog, prometheus_client or structlog (an import-linter
contract checks it), so it starts in a few tens of milliseconds.

Exit status: 0 success; 1 an error from the daemon or a plugin (one line on stderr,
``volplugctl: <code>: <message>``); 2 a usage error; 3 the daemon is not reachable.
``events --follow`` ends with 0 on Ctrl-C; a closed stdout (``| head``) ends quietly
with 0. Runs on: the main thread of the volplugctl process.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence

from volplugd import __version__

TYPE_CHECKING = False  # typing and dataclasses cost ~10 ms at start-up: types only for mypy
if TYPE_CHECKING:
    from typing import Any, TextIO

    Command = Callable[["Context", argparse.Namespace], int]

__all__ = ["DEFAULT_SOCKET", "Client", "DaemonError", "Unreachable", "build_parser", "main",
           "socket_path"]

DEFAULT_SOCKET = "/run/volplugd/control.sock"
SOCKET_ENV = "VOLPLUGD_SOCKET"
DEFAULT_TIMEOUT = 300.0  # the daemon bounds plugin calls itself (create: 120 s); this guards
#                          against a wedged daemon only
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
STATES = ("activating", "ready", "unhealthy", "rejected")
STATE_COLORS: Mapping[str, str] = {  # SGR codes, as docker/podman-like tools colour them
    "ready": "32", "unhealthy": "31", "activating": "33", "rejected": "35",
}
COLUMN_GAP = "   "
MIN_FLEX_WIDTH = 12  # a truncated column keeps at least this many characters


# --- Talking to the daemon ---------------------------------------------------------------


class Unreachable(Exception):
    """The control socket could not be reached (exit 3); ``reason`` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class DaemonError(Exception):
    """The daemon answered with an error (exit 1): its ``code`` and ``message``."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class _UnixConnection(http.client.HTTPConnection):
    """http.client over AF_UNIX: only ``connect`` differs."""

    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class Client:
    """One request per connection to the control socket at ``path``."""

    def __init__(self, path: str, timeout: float = DEFAULT_TIMEOUT):
        self.path = path
        self.timeout = timeout
        self._conn: _UnixConnection | None = None

    def call(self, method: str, target: str, body: Any = None) -> bytes:
        """The body of a 2xx answer; DaemonError for an error answer."""
        response = self._open(method, target, body)
        try:
            data = response.read()
        except TimeoutError:
            raise self._timed_out() from None
        except OSError as err:
            raise Unreachable(_reason(err)) from err
        finally:
            self.close()
        if response.status >= 300:
            raise error_from(response.status, data)
        return data

    def lines(self, target: str) -> Iterator[bytes]:
        """The lines of a streamed (NDJSON) answer, as they arrive, without a timeout."""
        response = self._open("GET", target, None, stream=True)
        try:
            if response.status >= 300:
                raise error_from(response.status, response.read())
            while line := response.readline():
                yield line
        finally:
            self.close()

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _open(self, method: str, target: str, body: Any,
              stream: bool = False) -> http.client.HTTPResponse:
        self.close()
        self._conn = conn = _UnixConnection(self.path, self.timeout)
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, target, body=data, headers=headers)
        except OSError as err:  # connect() failed: no socket file, nobody listening, EACCES
            self.close()
            raise Unreachable(_reason(err)) from err
        sock = conn.sock  # getresponse() may drop the reference; the stream still needs it
        try:
            response = conn.getresponse()
        except TimeoutError:
            self.close()
            raise self._timed_out() from None
        except OSError as err:
            self.close()
            raise Unreachable(_reason(err)) from err
        if stream and sock is not None:
            sock.settimeout(None)  # a quiet event stream is normal, not a failure
        return response

    def _timed_out(self) -> DaemonError:
        return DaemonError("timeout", f"volplugd did not answer within {self.timeout:g}s")


def _reason(err: OSError) -> str:
    if isinstance(err, http.client.RemoteDisconnected):
        return "the connection closed before an answer"
    return err.strerror or str(err) or type(err).__name__


def error_from(status: int, body: bytes) -> DaemonError:
    """The daemon's ``{"error": {"code", "message"}}``, or ``http_<status>`` for others."""
    try:
        error = json.loads(body)["error"]
        return DaemonError(str(error["code"]), one_line(str(error["message"])))
    except (ValueError, KeyError, TypeError):
        text = one_line(body.decode("utf-8", "replace")) or "no error message"
        return DaemonError(f"http_{status}", text)


def one_line(text: str) -> str:
    """A message (a plugin's Err may span lines) as one line for stderr."""
    return "; ".join(part.strip() for part in text.splitlines() if part.strip())


def quote(name: str) -> str:
    """A plugin or volume name as one URL path segment."""
    return urllib.parse.quote(name, safe="")


def decode(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        raise DaemonError("bad_response", "volplugd answered with invalid JSON") from None


# --- Rendering --------------------------------------------------------------------------


def use_color(stream: TextIO, environ: Mapping[str, str]) -> bool:
    """Colour only on a terminal, and never with NO_COLOR set (no-color.org) or TERM=dumb."""
    if environ.get("NO_COLOR") or environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or fake stream
        return False


def terminal_width(stream: TextIO, environ: Mapping[str, str]) -> int | None:
    """Columns to fit tables into: $COLUMNS, else the terminal's; None when piped."""
    columns = environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    try:
        return os.get_terminal_size(stream.fileno()).columns if stream.isatty() else None
    except (AttributeError, ValueError, OSError):
        return None


def paint(text: str, state: str | None, color: bool) -> str:
    code = STATE_COLORS.get(state or "")
    return f"\x1b[{code}m{text}\x1b[0m" if color and code else text


def ago(stamp: str | None, now: float) -> str:
    """An RFC 3339 time as "3s ago" / "5m ago" / "2h ago" / "4d ago"; "-" when unknown."""
    if not stamp:
        return "-"
    import datetime as dt  # only the commands that show times pay for it

    try:
        then = dt.datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return stamp
    seconds = max(0, int(now - then))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def truncate(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, width: int | None = None,
          flex: int | None = None, color_column: int | None = None,
          color: bool = False) -> list[str]:
    """Aligned columns like docker/podman. Column ``flex`` is cut to fit ``width``;
    column ``color_column`` holds a state and is coloured (padding stays uncoloured)."""
    cells = [list(row) for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    if width is not None and flex is not None:
        others = sum(w for i, w in enumerate(widths) if i != flex)
        room = max(width - others - len(COLUMN_GAP) * (len(headers) - 1), MIN_FLEX_WIDTH)
        for row in cells:
            row[flex] = truncate(row[flex], room)
        widths[flex] = max([len(headers[flex])] + [len(r[flex]) for r in cells])
    lines = [_line(list(headers), widths, None, False)]
    lines += [_line(row, widths, color_column, color) for row in cells]
    return lines


def _line(cells: list[str], widths: list[int], color_column: int | None, color: bool) -> str:
    out = []
    for i, cell in enumerate(cells):
        pad = " " * (widths[i] - len(cell)) if i < len(cells) - 1 else ""
        out.append((paint(cell, cell, color) if i == color_column else cell) + pad)
    return COLUMN_GAP.join(out).rstrip()


def fields(doc: Mapping[str, Any], now: float, color: bool) -> list[str]:
    """``key: value`` lines, keys aligned; times also as "(3s ago)", lists comma-joined."""
    width = max((len(k) for k in doc), default=0) + 1
    return [f"{key + ':':<{width}} {_value(key, value, now, color)}".rstrip()
            for key, value in doc.items()]


def _value(key: str, value: Any, now: float, color: bool) -> str:
    if value is None or value in ([], {}):
        return "-"
    if key in ("state", "from", "to"):
        return paint(str(value), str(value), color)
    if key.endswith(("_at", "time")) and isinstance(value, str):
        return f"{value} ({ago(value, now)})"
    return _plain(value)


def _plain(value: Any) -> str:
    if isinstance(value, float):
        return str(round(value, 6))  # probe latencies: microseconds are enough
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def event_line(event: Mapping[str, Any], color: bool) -> str:
    """One event: time, seq, type, plugin, transition, reason."""
    before, after = event.get("from"), event.get("to")
    change = ""
    if before or after:
        change = f"{paint(before or '', before, color)} -> {paint(after or '', after, color)}"
    parts = [str(event.get("time")), f"{event.get('seq', '?'):>4}",
             f"{event.get('type', '?'):<13}", str(event.get("plugin") or "-"),
             change.strip(), str(event.get("reason") or "")]
    return "  ".join(p for p in parts if p)


# --- Commands ---------------------------------------------------------------------------


class Context:
    """What every command needs: the client, where to write, and how."""

    def __init__(self, client: Client, out: TextIO, err: TextIO, *, json: bool, color: bool,
                 width: int | None, now: float):
        self.client = client
        self.out = out
        self.err = err
        self.json = json
        self.color = color
        self.width = width
        self.now = now

    def write(self, lines: Sequence[str]) -> None:
        for line in lines:
            self.out.write(line + "\n")

    def raw(self, data: bytes) -> None:
        """The daemon's JSON as is (``--json``), newline-terminated."""
        text = data.decode("utf-8", "replace")
        self.out.write(text if text.endswith("\n") or not text else text + "\n")


def plugin_url(name: str, *rest: str) -> str:
    return "/".join(["/v1/plugins", quote(name), *rest])


def volume_url(plugin: str, volume: str, *rest: str) -> str:
    return plugin_url(plugin, "volumes", quote(volume), *rest)


def cmd_ls(ctx: Context, args: argparse.Namespace) -> int:
    target = "/v1/plugins" + (f"?state={quote(args.state)}" if args.state else "")
    data = ctx.client.call("GET", target)
    if ctx.json:
        ctx.raw(data)
        return EXIT_OK
    rows = [[p["name"], p["state"], p["kind"], p["address"],
             ago(p.get("last_probe_at"), ctx.now), one_line(p.get("last_error") or "") or "-"]
            for p in decode(data)["plugins"]]
    ctx.write(table(["NAME", "STATE", "KIND", "ADDRESS", "LAST PROBE", "LAST ERROR"], rows,
                    width=ctx.width, flex=5, color_column=1, color=ctx.color))
    return EXIT_OK


def _show(ctx: Context, data: bytes) -> Any:
    """Print a JSON document as is (``--json``) or as ``key: value`` lines; return it."""
    doc = decode(data) if data else {}
    if ctx.json:
        ctx.raw(data)
    else:
        ctx.write(fields(doc, ctx.now, ctx.color))
    return doc


def cmd_inspect(ctx: Context, args: argparse.Namespace) -> int:
    _show(ctx, ctx.client.call("GET", plugin_url(args.name)))
    return EXIT_OK


def cmd_probe(ctx: Context, args: argparse.Namespace) -> int:
    """Exit 0 only if the plugin is ready after the probe, so scripts can gate on it."""
    plugin = _show(ctx, ctx.client.call("POST", plugin_url(args.name, "probe")))
    if plugin.get("state") == "ready":
        return EXIT_OK
    detail = f": {plugin['last_error']}" if plugin.get("last_error") else ""
    _complain(ctx.err, f"plugin_not_ready: plugin {args.name} is {plugin.get('state')}{detail}")
    return EXIT_ERROR


def cmd_health(ctx: Context, args: argparse.Namespace) -> int:
    """Exit 0 only if the daemon reports "ok" (not, say, "stalled"), for health checks."""
    health = _show(ctx, ctx.client.call("GET", "/v1/health"))
    status = health.get("status")
    if status == "ok":
        return EXIT_OK
    age = health.get("loop_age_seconds")
    detail = f" (its loop last ran {age}s ago)" if age is not None else ""
    _complain(ctx.err, f"daemon_{status}: volplugd reports status {status}{detail}")
    return EXIT_ERROR


def cmd_rescan(ctx: Context, args: argparse.Namespace) -> int:
    _show(ctx, ctx.client.call("POST", "/v1/rescan"))
    return EXIT_OK


def cmd_capabilities(ctx: Context, args: argparse.Namespace) -> int:
    _show(ctx, ctx.client.call("GET", plugin_url(args.plugin, "capabilities")))
    return EXIT_OK


def cmd_events(ctx: Context, args: argparse.Namespace) -> int:
    target = f"/v1/events?since={args.since}"
    if not args.follow:
        _print_events(ctx, ctx.client.call("GET", target).splitlines())
        return EXIT_OK
    try:
        _print_events(ctx, ctx.client.lines(target + "&follow=1"), flush=True)
    except KeyboardInterrupt:  # the normal way to stop following: not a failure
        ctx.client.close()
    return EXIT_OK


def _print_events(ctx: Context, lines: Iterator[bytes] | list[bytes],
                  flush: bool = False) -> None:
    for line in lines:
        if not line.strip():
            continue
        if ctx.json:
            ctx.raw(line)
        else:
            ctx.write([event_line(decode(line), ctx.color)])
        if flush:
            ctx.out.flush()


def cmd_volume_ls(ctx: Context, args: argparse.Namespace) -> int:
    data = ctx.client.call("GET", plugin_url(args.plugin, "volumes"))
    if ctx.json:
        ctx.raw(data)
        return EXIT_OK
    rows = [[v["name"], v.get("mountpoint") or "-", ago(v.get("created_at"), ctx.now)]
            for v in decode(data)["volumes"]]
    ctx.write(table(["NAME", "MOUNTPOINT", "CREATED"], rows, width=ctx.width, flex=1))
    return EXIT_OK


def cmd_volume_create(ctx: Context, args: argparse.Namespace) -> int:
    body = {"name": args.volume, "options": dict(args.options)}
    data = ctx.client.call("POST", plugin_url(args.plugin, "volumes"), body)
    _print_name(ctx, data, "name")
    return EXIT_OK


def cmd_volume_inspect(ctx: Context, args: argparse.Namespace) -> int:
    _show(ctx, ctx.client.call("GET", volume_url(args.plugin, args.volume)))
    return EXIT_OK


def cmd_volume_rm(ctx: Context, args: argparse.Namespace) -> int:
    ctx.client.call("DELETE", volume_url(args.plugin, args.volume))
    if not ctx.json:  # 204: no document to print in JSON mode
        ctx.write([args.volume])
    return EXIT_OK


def cmd_volume_path(ctx: Context, args: argparse.Namespace) -> int:
    _print_name(ctx, ctx.client.call("GET", volume_url(args.plugin, args.volume, "path")),
                "mountpoint")
    return EXIT_OK


def cmd_volume_mount(ctx: Context, args: argparse.Namespace) -> int:
    data = ctx.client.call("POST", volume_url(args.plugin, args.volume, "mount"),
                           {"id": args.id})
    _print_name(ctx, data, "mountpoint")
    return EXIT_OK


def cmd_volume_unmount(ctx: Context, args: argparse.Namespace) -> int:
    ctx.client.call("POST", volume_url(args.plugin, args.volume, "unmount"), {"id": args.id})
    return EXIT_OK  # 204 and silence, like `docker volume` commands that succeed


def _print_name(ctx: Context, data: bytes, key: str) -> None:
    """Print one field of the answer (a name, a mountpoint), or the JSON as is."""
    if ctx.json:
        ctx.raw(data)
    else:
        ctx.write([str(decode(data).get(key) or "")])


# --- Argument parsing -------------------------------------------------------------------


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


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _global_options() -> argparse.ArgumentParser:
    """Accepted before and after the command (``volplugctl ls --json``)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--socket", metavar="PATH", default=argparse.SUPPRESS,
                        help=f"control socket (default: ${SOCKET_ENV}, then {DEFAULT_SOCKET})")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print the daemon's JSON as is (events: one JSON document a line)")
    common.add_argument("--timeout", metavar="SECONDS", type=seconds, default=argparse.SUPPRESS,
                        help=f"give up on an unanswered request (default: {DEFAULT_TIMEOUT:g})")
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

    ls = add(commands, "ls", cmd_ls, "list plugins and their states")
    ls.add_argument("--state", choices=STATES, help="only plugins in this state")
    add(commands, "inspect", cmd_inspect, "show one plugin").add_argument("name", metavar="NAME")
    add(commands, "probe", cmd_probe,
        "probe a plugin now (exit 1 unless it is ready)").add_argument("name", metavar="NAME")
    events = add(commands, "events", cmd_events, "show the event log")
    events.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    events.add_argument("--since", type=seq, default=0, metavar="SEQ",
                        help="only events after this sequence number")
    add(commands, "rescan", cmd_rescan, "scan the plugin directories now")
    add(commands, "health", cmd_health, "show the daemon's health")
    add(commands, "capabilities", cmd_capabilities,
        "ask a plugin for its capabilities").add_argument("plugin", metavar="PLUGIN")
    _volume_commands(commands, common, add)
    return parser


def _volume_commands(commands: Any, common: argparse.ArgumentParser,
                     add: Callable[[Any, str, Command, str], argparse.ArgumentParser]) -> None:
    volume = commands.add_parser("volume", parents=[common], help="volume operations",
                                 description="Volume operations through a plugin.")
    sub = volume.add_subparsers(dest="volume_command", metavar="COMMAND", required=True)
    add(sub, "ls", cmd_volume_ls, "list a plugin's volumes").add_argument("plugin",
                                                                          metavar="PLUGIN")
    create = add(sub, "create", cmd_volume_create, "create a volume")
    create.add_argument("-o", "--opt", dest="options", type=option, action="append",
                        default=[], metavar="KEY=VALUE", help="driver option (repeatable)")
    simple: list[tuple[str, Command, str]] = [
        ("inspect", cmd_volume_inspect, "show a volume"),
        ("rm", cmd_volume_rm, "remove a volume"),
        ("path", cmd_volume_path, "print a volume's mountpoint"),
    ]
    mounting: list[tuple[str, Command, str]] = [
        ("mount", cmd_volume_mount, "mount a volume for a container id"),
        ("unmount", cmd_volume_unmount, "release a mount of a container id"),
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
        return stop.code if isinstance(stop.code, int) else EXIT_USAGE
    path = socket_path(args, env)
    client = Client(path, getattr(args, "timeout", DEFAULT_TIMEOUT))
    ctx = Context(client, out, err, json=getattr(args, "json", False),
                  color=use_color(out, env), width=terminal_width(out, env), now=time.time())
    try:
        status: int = args.run(ctx, args)
        out.flush()
    except Unreachable as error:
        _complain(err, f"cannot reach volplugd at {path}: {error.reason} "
                       f"(is volplugd running? set --socket or {SOCKET_ENV})")
        return EXIT_UNREACHABLE
    except DaemonError as error:
        _complain(err, f"{error.code}: {error.message}")
        return EXIT_ERROR
    except BrokenPipeError:  # `volplugctl ... | head`: the reader is done, and so are we
        _silence(out)
        return EXIT_OK
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        client.close()
    return status


def socket_path(args: argparse.Namespace, environ: Mapping[str, str]) -> str:
    """``--socket``, else ``$VOLPLUGD_SOCKET`` (if not empty), else the standard path."""
    return getattr(args, "socket", None) or environ.get(SOCKET_ENV) or DEFAULT_SOCKET


def _complain(stream: TextIO, line: str) -> None:
    stream.write(f"volplugctl: {line}\n")
    stream.flush()


def _silence(stream: TextIO) -> None:
    """Point the closed stdout at /dev/null so the exit-time flush cannot complain."""
    try:
        fd = stream.fileno()
    except (AttributeError, ValueError, OSError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)
