"""volplugctl's commands: one request each, then the answer as a table, key: value
lines, or the daemon's JSON as is (``--json``).

Each ``cmd_*`` returns the exit status; errors travel as ``DaemonError``/``Unreachable``
to ``main``. Runs on: the main thread of the volplugctl process.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator, Sequence

from volplugd.ctl.client import Client, DaemonError, Unreachable, decode, one_line, quote
from volplugd.ctl.render import ago, event_line, fields, printable, table

TYPE_CHECKING = False  # typing costs ~3 ms at start-up: the types are for mypy only
if TYPE_CHECKING:
    from typing import Any, TextIO

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
WAIT_TIMEOUT = 60.0  # `wait`'s --timeout when none is given: the whole wait, not one request
WAIT_POLL = 0.2  # how often `wait` asks; one GET /v1/plugins is cheap for the daemon


def complain(stream: TextIO, line: str) -> None:
    """The one-line error format: ``volplugctl: <line>``."""
    stream.write(f"volplugctl: {line}\n")
    stream.flush()


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
    complain(ctx.err, f"plugin_not_ready: plugin {args.name} is {plugin.get('state')}{detail}")
    return EXIT_ERROR


def cmd_restart(ctx: Context, args: argparse.Namespace) -> int:
    """Exit 0 once volplugd has begun the restart (``volplugctl wait NAME`` waits for
    ready); 1 with the daemon's reason when it will not (not_restartable, forbidden)."""
    _show(ctx, ctx.client.call("POST", plugin_url(args.name, "restart")))
    return EXIT_OK


def cmd_health(ctx: Context, args: argparse.Namespace) -> int:
    """Exit 0 only if the daemon reports "ok" (not, say, "stalled"), for health checks."""
    health = _show(ctx, ctx.client.call("GET", "/v1/health"))
    status = health.get("status")
    if status == "ok":
        return EXIT_OK
    age = health.get("loop_age_seconds")
    detail = f" (its loop last ran {age}s ago)" if age is not None else ""
    complain(ctx.err, f"daemon_{status}: volplugd reports status {status}{detail}")
    return EXIT_ERROR


def cmd_rescan(ctx: Context, args: argparse.Namespace) -> int:
    _show(ctx, ctx.client.call("POST", "/v1/rescan"))
    return EXIT_OK


def cmd_capabilities(ctx: Context, args: argparse.Namespace) -> int:
    _show(ctx, ctx.client.call("GET", plugin_url(args.plugin, "capabilities")))
    return EXIT_OK


def cmd_wait(ctx: Context, args: argparse.Namespace) -> int:
    """Exit 0 once every plugin waited for is ``ready``; 1 when ``--timeout`` passes first.

    Named plugins are waited for even while volplugd does not know them yet (a plugin
    may start after volplugd); with no name, every plugin present at each look is, but
    rejected ones (they are not volume drivers and stay rejected until their file
    changes). Any state but ``ready`` is waited on (``restarting`` too: it is on its
    way to ``ready``). On a timeout each plugin that is not ready gets one line on stderr.
    """
    timeout = getattr(args, "timeout", WAIT_TIMEOUT)
    deadline = time.monotonic() + timeout
    while True:
        ctx.client.timeout = max(deadline - time.monotonic(), WAIT_POLL)
        try:
            data = ctx.client.call("GET", "/v1/plugins")
        except DaemonError as err:  # the client names what was left of the timeout
            if err.code == "timeout":
                raise DaemonError("timeout", f"volplugd did not answer within {timeout:g}s"
                                  ) from None
            raise
        waited, pending = _waited(decode(data)["plugins"], args.names)
        if not pending:
            _print_ready(ctx, data, waited)
            return EXIT_OK
        left = deadline - time.monotonic()
        if left <= 0:
            for name, state in pending:
                complain(ctx.err, f"timeout: after {timeout:g}s, plugin {printable(name)} is "
                                  f"{state}")
            return EXIT_ERROR
        time.sleep(min(WAIT_POLL, left))


def _waited(plugins: list[dict[str, Any]], names: Sequence[str]
            ) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """(the plugins waited for, (name, state text) of those not ready yet)."""
    by_name = {p["name"]: p for p in plugins}
    if names:
        waited = [by_name[n] for n in dict.fromkeys(names) if n in by_name]
        missing = [(n, "not known to volplugd") for n in dict.fromkeys(names) if n not in by_name]
    else:
        waited = [p for p in plugins if p["state"] != "rejected"]
        missing = []
    pending = [(p["name"], _state_text(p)) for p in waited if p["state"] != "ready"]
    return waited, missing + pending


def _state_text(plugin: dict[str, Any]) -> str:
    error = plugin.get("last_error")
    return f"{plugin['state']}: {one_line(error)}" if error else str(plugin["state"])


def _print_ready(ctx: Context, data: bytes, waited: list[dict[str, Any]]) -> None:
    if ctx.json:
        ctx.raw(data)
    else:
        ctx.write([f"{printable(p['name'])}: ready" for p in waited])


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
    raise Unreachable("the event stream ended")  # volplugd ends it only when stopping


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
        ctx.write([printable(str(decode(data).get(key) or ""))])
