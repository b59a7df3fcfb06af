"""volplugctl without the daemon: parsing, rendering, exit codes, and the exact requests.

The daemon's side is played by a tiny real HTTP server on a real unix socket that answers
canned JSON (``Canned``); volplugctl runs in-process through ``main(argv, ...)``, or as
the real console script where the process boundary is the point (broken pipe, bash).
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import re
import socket
import socketserver
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from tests.waiting import terminal_lines, wait_until
from volplugd.ctl import cli, render

ROOT = Path(__file__).resolve().parents[1]
COMPLETION = ROOT / "etc" / "bash_completion.d" / "volplugctl"
VOLPLUGCTL = str(Path(sys.executable).with_name("volplugctl"))
ANSI = re.compile(r"\x1b\[[0-9;]*m")
HINT = "(is volplugd running? set --socket or VOLPLUGD_SOCKET)"


# --- A canned control socket --------------------------------------------------------------


@dataclass
class Answer:
    """A whole answer; ``stream`` lines are sent without a length, then the socket closes."""

    status: int = 200
    body: Any = None
    content_type: str = "application/json"
    stream: list[bytes] | None = None
    drop: bool = False  # close without answering
    hang: bool = False  # never answer (until the server stops)
    raw: bytes | None = None  # these exact bytes, then close


@dataclass
class Seen:
    method: str
    target: str
    body: bytes


@dataclass
class Canned:
    """Answers by "METHOD /target?query"; records what volplugctl sent."""

    path: str
    answers: dict[str, Answer] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)

    def on(self, method: str, target: str, answer: Answer | Any) -> None:
        self.answers[f"{method} {target}"] = answer if isinstance(answer, Answer) else Answer(
            200, answer)

    def answer_for(self, method: str, target: str) -> Answer:
        error = {"error": {"code": "not_found", "message": "no such route"}}
        return self.answers.get(f"{method} {target}", Answer(404, error))


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def _any(self) -> None:
        canned = self.server.canned
        length = int(self.headers.get("Content-Length") or 0)
        canned.seen.append(Seen(self.command, self.path, self.rfile.read(length)))
        answer = canned.answer_for(self.command, self.path)
        try:
            self._send(answer)
        except OSError:  # volplugctl went away (broken pipe test, timeouts)
            self.close_connection = True

    def _send(self, answer: Answer) -> None:
        if answer.hang:
            self.server.canned.stopping.wait()
        if answer.drop or answer.hang:
            self.close_connection = True
            return
        if answer.raw is not None:
            self.wfile.write(answer.raw)
            self.close_connection = True
            return
        self.send_response(answer.status)
        self.send_header("Content-Type", answer.content_type)
        if answer.stream is not None:
            self.send_header("Connection", "close")
            self.end_headers()
            for line in answer.stream:
                self.wfile.write(line)
            self.close_connection = True
            return
        body = _bytes(answer.body)
        if answer.status != 204:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_DELETE = _any

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read ``Canned.seen``."""


def _bytes(body: Any) -> bytes:
    if body is None:
        return b""
    return body if isinstance(body, bytes) else json.dumps(body).encode()


class _Server(socketserver.ThreadingUnixStreamServer):
    block_on_close = True  # server_close() joins the handler threads

    def __init__(self, canned: Canned):
        self.canned = canned
        super().__init__(canned.path, _Handler)


@pytest.fixture
def canned(short_tmp: Path) -> Iterator[Canned]:
    """A control socket answering canned JSON, stopped and joined after the test."""
    fake = Canned(str(short_tmp / "control.sock"))
    server = _Server(fake)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="canned")
    thread.start()
    yield fake
    fake.stopping.set()
    server.shutdown()
    server.server_close()
    thread.join()


def run(canned: Canned | str, *argv: str, env: dict[str, str] | None = None,
        stdout: Any = None) -> tuple[int, str, str]:
    """``main()`` in-process against a socket; returns (status, stdout, stderr)."""
    path = canned if isinstance(canned, str) else canned.path
    out, err = stdout or io.StringIO(), io.StringIO()
    status = cli.main(["--socket", path, *argv], environ=env or {}, stdout=out, stderr=err)
    return status, out.getvalue() if stdout is None else "", err.getvalue()


def stamp(seconds_ago: float) -> str:
    moment = datetime.fromtimestamp(time.time() - seconds_ago, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def plugin(name: str, state: str = "ready", last_error: str | None = None) -> dict[str, Any]:
    return {"name": name, "address": f"unix:///run/docker/plugins/{name}.sock",
            "source": f"/run/docker/plugins/{name}.sock", "kind": "sock", "state": state,
            "implements": ["VolumeDriver"], "registered_at": stamp(3 * 86400),
            "last_probe_at": stamp(2 * 3600), "last_success_at": None,
            "last_error": last_error, "consecutive_failures": 0 if last_error is None else 3,
            "probe_latency_seconds": 0.0012, "capabilities": {"scope": "local"},
            "warnings": []}


# --- Argument parsing ------------------------------------------------------------------------


def test_global_options_are_accepted_before_and_after_the_command() -> None:
    """--socket/--json/--timeout work on either side of the command, as completion uses."""
    parser = cli.build_parser()
    before = parser.parse_args(["--socket", "/s", "--json", "ls"])
    after = parser.parse_args(["ls", "--json", "--socket", "/s", "--timeout", "2"])
    assert (before.socket, before.json) == ("/s", True)
    assert (after.socket, after.json, after.timeout) == ("/s", True, 2.0)
    plain = parser.parse_args(["volume", "ls", "p"])
    assert not hasattr(plain, "socket")
    assert not hasattr(plain, "json")


def test_volume_create_collects_options_in_order() -> None:
    """-o KEY=VALUE repeats; the value may hold "=" or be empty."""
    args = cli.build_parser().parse_args(
        ["volume", "create", "p", "v", "-o", "size=1G", "--opt", "a=b=c", "-o", "empty="])
    assert (args.plugin, args.volume) == ("p", "v")
    assert args.options == [("size", "1G"), ("a", "b=c"), ("empty", "")]


@pytest.mark.parametrize(("argv", "message"), [
    ([], "the following arguments are required: COMMAND"),
    (["volume"], "the following arguments are required: COMMAND"),
    (["bogus"], "argument COMMAND: invalid choice: 'bogus'"),
    (["volume", "create", "p", "v", "-o", "novalue"],
     "argument -o/--opt: expected KEY=VALUE, got 'novalue'"),
    (["volume", "create", "p", "v", "-o", "=x"], "argument -o/--opt: expected KEY=VALUE, got '=x'"),
    (["volume", "mount", "p", "v"], "the following arguments are required: --id"),
    (["ls", "--state", "dead"], "argument --state: invalid choice: 'dead'"),
    (["events", "--since", "-1"], "argument --since: expected a non-negative integer, got '-1'"),
    (["events", "--since", "x"], "argument --since: expected a non-negative integer, got 'x'"),
    (["--timeout", "0", "ls"], "argument --timeout: expected a positive duration"),
    (["inspect"], "the following arguments are required: NAME"),
    (["volume", "rm", "p"], "the following arguments are required: VOLUME"),
])
def test_usage_errors_exit_2_with_argparse_message(
        argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A usage error is exit 2 and argparse's one-line reason on stderr; nothing is sent."""
    assert cli.main(argv, environ={}) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: volplugctl")
    assert message in err.splitlines()[-1]


def test_version_and_help_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    """--version prints "volplugctl VERSION"; --help lists every command and the exit codes."""
    from volplugd import __version__

    assert cli.main(["--version"], environ={}) == 0
    assert capsys.readouterr().out == f"volplugctl {__version__}\n"
    assert cli.main(["--help"], environ={}) == 0
    text = capsys.readouterr().out
    for command in ("ls", "inspect", "probe", "events", "rescan", "health", "capabilities",
                    "volume"):
        assert command in text
    assert "3 volplugd not reachable" in " ".join(text.split())


def test_socket_path_comes_from_flag_then_environment_then_default() -> None:
    """--socket wins over $VOLPLUGD_SOCKET, which wins over /run/volplugd/control.sock."""
    parser = cli.build_parser()
    env = {"VOLPLUGD_SOCKET": "/env.sock"}
    assert cli.socket_path(parser.parse_args(["--socket", "/flag.sock", "ls"]), env) == "/flag.sock"
    assert cli.socket_path(parser.parse_args(["ls"]), env) == "/env.sock"
    assert cli.socket_path(parser.parse_args(["ls"]), {"VOLPLUGD_SOCKET": ""}) == cli.DEFAULT_SOCKET
    assert cli.DEFAULT_SOCKET == "/run/volplugd/control.sock"


def test_a_whole_run_loads_none_of_the_daemons_modules(short_tmp: Path) -> None:
    """volplugctl, run to the end, never loads the daemon, watchdog, prometheus_client,
    structlog (nor asyncio, which structlog drags in), nor the plugin client's requests:
    what keeps it starting fast."""
    code = ("import sys; from volplugd.ctl import main; "
            f"main(['--socket', {str(short_tmp / 'x.sock')!r}, 'ls']); "
            "print(' '.join(sorted(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    loaded = set(done.stdout.split())
    heavy = {"watchdog", "prometheus_client", "structlog", "asyncio", "volplugd.daemon",
             "volplugd.supervisor", "volplugd.control", "volplugd.plugin", "requests"}
    assert "volplugd.ctl.cli" in loaded
    assert loaded & heavy == set()


# --- Rendering ----------------------------------------------------------------------------------


def test_table_aligns_columns_and_leaves_no_trailing_spaces() -> None:
    """Every column starts at the same offset in each line, like docker's tables."""
    lines = render.table(["NAME", "STATE", "LAST ERROR"],
                      [["a", "ready", "-"], ["longer-name", "unhealthy", "timeout after 5.0s"]])
    assert lines == [
        "NAME          STATE       LAST ERROR",
        "a             ready       -",
        "longer-name   unhealthy   timeout after 5.0s",
    ]


def test_table_cuts_the_flexible_column_to_the_width() -> None:
    """The flex column is cut with "…" so each line fits; the other columns stay whole."""
    error = "connection refused: " + "x" * 80
    lines = render.table(["NAME", "STATE", "LAST ERROR"], [["p", "unhealthy", error]],
                      width=40, flex=2)
    assert all(len(line) <= 40 for line in lines)
    assert lines[1] == "p      unhealthy   connection refused: …"


def test_table_colours_only_the_state_and_keeps_alignment() -> None:
    """On a TTY the state is wrapped in its colour; padding stays outside the colour."""
    rows = [["a", "ready", "x"], ["b", "unhealthy", "y"], ["c", "activating", "z"],
            ["d", "rejected", "w"]]
    coloured = render.table(["NAME", "STATE", "E"], rows, color_column=1, color=True)
    plain = render.table(["NAME", "STATE", "E"], rows, color_column=1, color=False)
    assert [ANSI.sub("", line) for line in coloured] == plain
    assert coloured[1] == "a      \x1b[32mready\x1b[0m        x"
    assert "\x1b[31munhealthy\x1b[0m" in coloured[2]
    assert "\x1b[33mactivating\x1b[0m" in coloured[3]
    assert "\x1b[35mrejected\x1b[0m" in coloured[4]
    assert not any("\x1b" in line for line in plain)


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s ago"), (59, "59s ago"), (60, "1m ago"), (3599, "59m ago"), (3600, "1h ago"),
    (86399, "23h ago"), (86400 * 3 + 5, "3d ago"), (-5, "0s ago"),
])
def test_ago_renders_relative_times(seconds: int, text: str) -> None:
    """RFC 3339 stamps become "3s ago"; a clock skew never shows a negative age."""
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()
    moment = datetime.fromtimestamp(now - seconds, tz=UTC).isoformat().replace("+00:00", "Z")
    assert render.ago(moment, now) == text
    assert render.ago(None, now) == "-"


@pytest.fixture
def tty() -> Iterator[tuple[int, io.TextIOWrapper]]:
    """A real pseudo-terminal 100 columns wide: (master fd, slave as a text stream)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    stream = open(slave, "w", encoding="utf-8")  # noqa: SIM115 - closed below
    yield master, stream
    stream.close()
    os.close(master)


def test_color_only_on_a_terminal_without_no_color(
        tty: tuple[int, io.TextIOWrapper]) -> None:
    """Colour needs a TTY; NO_COLOR (any non-empty value) or TERM=dumb turns it off."""
    _, terminal = tty
    assert render.use_color(terminal, {}) is True
    assert render.use_color(terminal, {"NO_COLOR": "1"}) is False
    assert render.use_color(terminal, {"NO_COLOR": ""}) is True
    assert render.use_color(terminal, {"TERM": "dumb"}) is False
    assert render.use_color(io.StringIO(), {}) is False


def test_width_from_columns_then_the_terminal_else_none(
        tty: tuple[int, io.TextIOWrapper]) -> None:
    """Tables fit $COLUMNS, else the terminal's width; piped output is never cut."""
    _, terminal = tty
    assert render.terminal_width(terminal, {}) == 100
    assert render.terminal_width(terminal, {"COLUMNS": "132"}) == 132
    assert render.terminal_width(io.StringIO(), {}) is None
    read, write = os.pipe()
    with open(read, "rb") as _, open(write, "w") as pipe:
        assert render.terminal_width(pipe, {}) is None


def test_ls_on_a_terminal_is_coloured_and_fits_it(
        canned: Canned, tty: tuple[int, io.TextIOWrapper]) -> None:
    """`ls` on a 100-column TTY: states coloured, the error cut to fit the width."""
    master, terminal = tty
    canned.on("GET", "/v1/plugins",
              {"plugins": [plugin("bv", "unhealthy", "timeout after 5.0s " + "x" * 60)]})
    status, _, _ = run(canned, "ls", stdout=terminal)
    assert status == 0
    shown = terminal_lines(master, 2)  # the header and the plugin's row
    assert "\x1b[31munhealthy\x1b[0m" in shown[1]
    assert all(len(ANSI.sub("", line)) <= 100 for line in shown)
    assert ANSI.sub("", shown[1]).endswith("…")


# --- Requests, answers and output ---------------------------------------------------------


def test_ls_prints_an_aligned_table(canned: Canned) -> None:
    """`ls` shows NAME STATE KIND ADDRESS LAST PROBE LAST ERROR; piped: no colour, no cut."""
    error = "Post \"http://plugin/VolumeDriver.Capabilities\": connection refused " + "x" * 90
    canned.on("GET", "/v1/plugins", {"plugins": [plugin("alpha"), plugin("bv", "unhealthy",
                                                                          error)]})
    header = "NAME    STATE       KIND   ADDRESS                                 LAST PROBE"
    assert run(canned, "ls") == (0, (
        f"{header}   LAST ERROR\n"
        "alpha   ready       sock   unix:///run/docker/plugins/alpha.sock   2h ago       -\n"
        f"bv      unhealthy   sock   unix:///run/docker/plugins/bv.sock      2h ago       {error}\n"
    ), "")


def test_ls_state_filter_and_json_pass_through(canned: Canned) -> None:
    """`ls --state S --json` asks for ?state=S and prints the daemon's bytes as they are."""
    raw = b'{"plugins":[{"name":"\xc3\xa9t\xc3\xa9"}]}'
    canned.on("GET", "/v1/plugins?state=unhealthy", Answer(200, raw))
    assert run(canned, "ls", "--state", "unhealthy", "--json") == (0, raw.decode() + "\n", "")
    assert canned.seen[-1].method == "GET"


def test_inspect_quotes_the_name_and_prints_key_value(canned: Canned) -> None:
    """Names are one URL segment ("/" and spaces quoted); fields print as aligned key: value."""
    doc = plugin("a b/c")
    canned.on("GET", "/v1/plugins/a%20b%2Fc", doc)
    status, out, err = run(canned, "inspect", "a b/c")
    assert (status, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == "name:                  a b/c"
    assert "state:                 ready" in lines
    assert "last_success_at:       -" in lines
    assert "capabilities:          scope=local" in lines
    assert "implements:            VolumeDriver" in lines
    assert next(line for line in lines if line.startswith("registered_at:")).endswith("(3d ago)")


def test_probe_exits_0_when_ready_and_1_otherwise(canned: Canned) -> None:
    """probe POSTs; a plugin still not ready after it is exit 1 with plugin_not_ready."""
    canned.on("POST", "/v1/plugins/ok/probe", plugin("ok"))
    canned.on("POST", "/v1/plugins/bad/probe", plugin("bad", "unhealthy", "timeout after 5.0s"))
    assert run(canned, "probe", "ok")[0] == 0
    status, out, err = run(canned, "probe", "bad")
    assert status == 1
    assert "state:                 unhealthy" in out.splitlines()
    assert err == "volplugctl: plugin_not_ready: plugin bad is unhealthy: timeout after 5.0s\n"


def test_restart_posts_and_prints_the_plugin_restarting(canned: Canned) -> None:
    """restart POSTs (exit 0 with the record); a refusal is exit 1 with the daemon's reason;
    inspect prints the restart object on one line."""
    began = stamp(2)
    doc = {**plugin("p", "restarting"), "restart": {
        "target": "unit p.service", "at": began, "outcome": None, "error": None,
        "recent": 1, "given_up": False}}
    canned.on("POST", "/v1/plugins/p/restart", Answer(202, json.dumps(doc).encode()))
    status, out, err = run(canned, "restart", "p")
    assert (status, err) == (0, "")
    assert "state:                 restarting" in out.splitlines()
    assert ("restart:               unit p.service: under way, began "
            f"{began} (2s ago), 1 within restart.interval") in out.splitlines()
    assert canned.seen[-1].method == "POST"
    failed = {**doc, "state": "unhealthy", "restart": {**doc["restart"], "recent": 3,
              "outcome": "no_such_unit", "error": "Unit p.service not found.",
              "given_up": True}}
    canned.on("GET", "/v1/plugins/p", failed)
    assert ("restart:               unit p.service: no_such_unit, began "
            f"{began} (2s ago), 3 within restart.interval; error: Unit p.service not "
            "found.; given up") in run(canned, "inspect", "p")[1].splitlines()
    canned.on("POST", "/v1/plugins/q/restart", Answer(409, json.dumps({"error": {
        "code": "not_restartable",
        "message": "plugin q cannot be restarted: it is restarting already"}}).encode()))
    assert run(canned, "restart", "q") == (
        1, "", "volplugctl: not_restartable: plugin q cannot be restarted: it is restarting "
               "already\n")


def test_health_rescan_and_capabilities(canned: Canned) -> None:
    """health, rescan (a POST) and capabilities print their documents as key: value."""
    canned.on("GET", "/v1/health", {"status": "ok", "version": "0.1.0", "uptime_seconds": 12.5,
                                     "plugins": {"ready": 2, "unhealthy": 0}})
    canned.on("POST", "/v1/rescan", {"added": ["a", "b"], "removed": [], "changed": ["c"]})
    canned.on("GET", "/v1/plugins/p/capabilities", {"scope": "global"})
    assert run(canned, "health") == (0, "status:         ok\nversion:        0.1.0\n"
                                        "uptime_seconds: 12.5\n"
                                        "plugins:        ready=2, unhealthy=0\n", "")
    assert run(canned, "rescan") == (0, "added:   a, b\nremoved: -\nchanged: c\n", "")
    assert run(canned, "capabilities", "p") == (0, "scope: global\n", "")
    assert [(s.method, s.target) for s in canned.seen] == [
        ("GET", "/v1/health"), ("POST", "/v1/rescan"), ("GET", "/v1/plugins/p/capabilities")]


def test_health_other_than_ok_exits_1(canned: Canned) -> None:
    """A daemon reporting "stalled" (its loop stopped): the document, then exit 1."""
    canned.on("GET", "/v1/health", {"status": "stalled", "version": "0.1.0",
                                     "uptime_seconds": 99.0, "loop_age_seconds": 75.5,
                                     "plugins": {}})
    status, out, err = run(canned, "health")
    assert (status, out.splitlines()[0]) == (1, "status:           stalled")
    assert err == ("volplugctl: daemon_stalled: volplugd reports status stalled (its loop last "
                   "ran 75.5s ago)\n")


EVENTS = [
    {"seq": 1, "time": "2026-01-01T00:00:00.000Z", "type": "discovered", "plugin": "p",
     "from": None, "to": "activating", "reason": "/run/docker/plugins/p.sock"},
    {"seq": 2, "time": "2026-01-01T00:00:00.001Z", "type": "rescan", "plugin": None,
     "from": None, "to": None, "reason": "startup"},
    {"seq": 3, "time": "2026-01-01T00:00:00.002Z", "type": "state_changed", "plugin": "p",
     "from": "activating", "to": "ready", "reason": "ok"},
]
NDJSON = b"".join(json.dumps(e, separators=(",", ":")).encode() + b"\n" for e in EVENTS)


def test_events_one_line_each_and_ndjson_with_json(canned: Canned) -> None:
    """events: one line per event (time, seq, type, plugin, transition, reason); --json: NDJSON."""
    canned.on("GET", "/v1/events?since=0", Answer(200, NDJSON, "application/x-ndjson"))
    assert run(canned, "events") == (0, (
        "2026-01-01T00:00:00.000Z     1  discovered     p  -> activating  "
        "/run/docker/plugins/p.sock\n"
        "2026-01-01T00:00:00.001Z     2  rescan         -  startup\n"
        "2026-01-01T00:00:00.002Z     3  state_changed  p  activating -> ready  ok\n"), "")
    assert run(canned, "events", "--json") == (0, NDJSON.decode(), "")


def test_events_follow_prints_the_stream_and_exits_3_when_it_ends(canned: Canned) -> None:
    """--follow --since N asks for follow=1 and prints each streamed line; only volplugd
    going away ends a follow stream, so its end is exit 3 with a line saying so."""
    lines = NDJSON.splitlines(keepends=True)
    canned.on("GET", "/v1/events?since=1&follow=1",
              Answer(200, stream=lines[1:], content_type="application/x-ndjson"))
    status, out, err = run(canned, "events", "--follow", "--since", "1", "--json")
    assert (status, out) == (3, b"".join(lines[1:]).decode())
    assert err == (f"volplugctl: cannot reach volplugd at {canned.path}: the event stream "
                   f"ended {HINT}\n")


def test_volume_commands_send_the_documented_requests(canned: Canned) -> None:
    """Each volume command's method, path and body, and what it prints."""
    vol = {"name": "v 1", "mountpoint": "/mnt/v1", "created_at": stamp(120), "status": {}}
    base = "/v1/plugins/bv/volumes"
    canned.on("GET", base, {"volumes": [vol, {"name": "w", "mountpoint": None,
                                              "created_at": None, "status": None}]})
    canned.on("POST", base, Answer(201, vol))
    canned.on("GET", f"{base}/v%201", vol)
    canned.on("DELETE", f"{base}/v%201", Answer(204))
    canned.on("GET", f"{base}/v%201/path", {"mountpoint": "/mnt/v1"})
    canned.on("POST", f"{base}/v%201/mount", {"mountpoint": "/mnt/v1"})
    canned.on("POST", f"{base}/v%201/unmount", Answer(204))
    assert run(canned, "volume", "ls", "bv") == (
        0, "NAME   MOUNTPOINT   CREATED\nv 1    /mnt/v1      2m ago\nw      -            -\n", "")
    assert run(canned, "volume", "create", "bv", "v 1", "-o", "size=1G") == (0, "v 1\n", "")
    status, out, _ = run(canned, "volume", "inspect", "bv", "v 1")
    assert (status, out.splitlines()[:2]) == (0, ["name:       v 1", "mountpoint: /mnt/v1"])
    assert run(canned, "volume", "path", "bv", "v 1") == (0, "/mnt/v1\n", "")
    assert run(canned, "volume", "mount", "bv", "v 1", "--id", "c1") == (0, "/mnt/v1\n", "")
    assert run(canned, "volume", "unmount", "bv", "v 1", "--id", "c1") == (0, "", "")
    assert run(canned, "volume", "rm", "bv", "v 1") == (0, "v 1\n", "")
    sent = [(s.method, s.target, json.loads(s.body) if s.body else None) for s in canned.seen]
    assert sent == [
        ("GET", base, None),
        ("POST", base, {"name": "v 1", "options": {"size": "1G"}}),
        ("GET", f"{base}/v%201", None),
        ("GET", f"{base}/v%201/path", None),
        ("POST", f"{base}/v%201/mount", {"id": "c1"}),
        ("POST", f"{base}/v%201/unmount", {"id": "c1"}),
        ("DELETE", f"{base}/v%201", None),
    ]


def test_volume_json_mode_prints_documents_and_nothing_for_204(canned: Canned) -> None:
    """--json prints the daemon's document; 204 answers (rm, unmount) print nothing."""
    canned.on("POST", "/v1/plugins/p/volumes", Answer(201, b'{"name":"v"}'))
    canned.on("DELETE", "/v1/plugins/p/volumes/v", Answer(204))
    assert run(canned, "--json", "volume", "create", "p", "v") == (0, '{"name":"v"}\n', "")
    assert run(canned, "--json", "volume", "rm", "p", "v") == (0, "", "")


# --- Failures and exit codes ----------------------------------------------------------------


def test_missing_socket_exits_3_with_the_hint(short_tmp: Path) -> None:
    """No socket file: exit 3, one line naming the socket, the reason and the hint."""
    path = str(short_tmp / "nope.sock")
    assert run(path, "ls") == (
        3, "", f"volplugctl: cannot reach volplugd at {path}: No such file or directory {HINT}\n")


def test_socket_nobody_listens_on_exits_3_refused(short_tmp: Path) -> None:
    """A stale socket file (the daemon died): exit 3, "Connection refused"."""
    path = str(short_tmp / "stale.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(path)  # bound, never listening: connect() is refused
        assert run(path, "health") == (
            3, "", f"volplugctl: cannot reach volplugd at {path}: Connection refused {HINT}\n")


def test_socket_from_environment_is_used_and_named(short_tmp: Path) -> None:
    """Without --socket, $VOLPLUGD_SOCKET is the socket the error names."""
    path = str(short_tmp / "env.sock")
    out, err = io.StringIO(), io.StringIO()
    status = cli.main(["ls"], environ={"VOLPLUGD_SOCKET": path}, stdout=out, stderr=err)
    assert (status, err.getvalue()) == (
        3, f"volplugctl: cannot reach volplugd at {path}: No such file or directory {HINT}\n")


def test_daemon_error_exits_1_with_code_and_message(canned: Canned) -> None:
    """An error answer is exit 1 and `volplugctl: <code>: <message>`, nothing on stdout."""
    canned.on("GET", "/v1/plugins/nope", Answer(404, {"error": {
        "code": "plugin_not_found", "message": "no plugin named 'nope'"}}))
    assert run(canned, "inspect", "nope") == (
        1, "", "volplugctl: plugin_not_found: no plugin named 'nope'\n")


def test_multiline_plugin_error_is_one_line(canned: Canned) -> None:
    """A plugin's Err with newlines (buttervolume's) is joined into one stderr line."""
    message = "ERROR: not a btrfs filesystem: /srv/volumes\n"
    canned.on("POST", "/v1/plugins/bv/volumes", Answer(502, {"error": {
        "code": "plugin_error", "message": message + "  second line\n"}}))
    assert run(canned, "volume", "create", "bv", "v") == (
        1, "", "volplugctl: plugin_error: ERROR: not a btrfs filesystem: /srv/volumes; "
               "second line\n")


def test_non_json_error_is_reported_with_its_status(canned: Canned) -> None:
    """An error answer that is not the daemon's JSON shape: `http_<status>` and its text."""
    canned.on("GET", "/v1/health", Answer(503, b"<h1>busy</h1>\n", "text/html"))
    assert run(canned, "health") == (1, "", "volplugctl: http_503: <h1>busy</h1>\n")


def test_connection_closed_without_answer_exits_3(canned: Canned) -> None:
    """The daemon closing the connection before answering counts as unreachable."""
    canned.on("GET", "/v1/health", Answer(drop=True))
    assert run(canned, "health") == (3, "", (
        f"volplugctl: cannot reach volplugd at {canned.path}: Remote end closed connection "
        f"without response {HINT}\n"))


def test_unanswered_request_times_out_with_exit_1(canned: Canned) -> None:
    """--timeout bounds the wait for an answer: exit 1, `timeout: ...`."""
    canned.on("POST", "/v1/rescan", Answer(hang=True))
    assert run(canned, "--timeout", "0.2", "rescan") == (
        1, "", "volplugctl: timeout: volplugd did not answer within 0.2s\n")


HEAD_200 = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"


@pytest.mark.parametrize(("raw", "problem"), [
    (HEAD_200 + b"Content-Length: 100\r\n\r\n{}", "the answer ended early (2 bytes read)"),
    (b"SSH-2.0-OpenSSH_9.2\r\n", "not an HTTP status line: 'SSH-2.0-OpenSSH_9.2'"),
    (HEAD_200 + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
     "the answer ended early (0 bytes read)"),
    (HEAD_200 + b"X: y\r\n" * 101 + b"\r\n", "got more than 100 headers"),
], ids=["short-body", "not-http", "bad-chunk", "many-headers"])
def test_broken_http_from_the_socket_exits_1(canned: Canned, raw: bytes, problem: str) -> None:
    """Whatever answers on the socket speaks broken HTTP: bad_response naming the fault."""
    canned.on("GET", "/v1/health", Answer(raw=raw))
    assert run(canned, "health") == (
        1, "", f"volplugctl: bad_response: volplugd answered with broken HTTP: {problem}\n")


@pytest.mark.parametrize("raw", [
    HEAD_200 + b"Transfer-Encoding: chunked\r\n\r\n"
    b"7\r\n{\"scope\r\n8;ext=1\r\n\": \"x\"}\n\r\n0\r\nTrailer: t\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n" + HEAD_200 + b"Content-Length: 14\r\n\r\n{\"scope\": \"x\"}",
    HEAD_200 + b"\r\n{\"scope\": \"x\"}",
], ids=["chunked", "interim-100", "close-delimited"])
def test_every_http_body_framing_is_read(canned: Canned, raw: bytes) -> None:
    """Chunked (with extensions and trailers), after a 100, or up to the close: same body."""
    canned.on("GET", "/v1/plugins/p/capabilities", Answer(raw=raw))
    assert run(canned, "capabilities", "p") == (0, "scope: x\n", "")


def test_invalid_json_from_the_daemon_exits_1(canned: Canned) -> None:
    """A 200 whose body is not JSON is a bad_response error, not a traceback."""
    canned.on("GET", "/v1/health", Answer(200, b"not json"))
    assert run(canned, "health") == (
        1, "", "volplugctl: bad_response: volplugd answered with invalid JSON\n")


def test_closed_stdout_ends_quietly_with_0(canned: Canned) -> None:
    """`volplugctl events | head -1`: no traceback, no "Broken pipe", exit 0."""
    many = [json.dumps({**EVENTS[0], "seq": i}).encode() + b"\n" for i in range(20000)]
    canned.on("GET", "/v1/events?since=0", Answer(200, b"".join(many), "application/x-ndjson"))
    proc = subprocess.Popen([VOLPLUGCTL, "--socket", canned.path, "events"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read()
    proc.stderr.close()
    assert (proc.wait(30), first[:24], err) == (0, b"2026-01-01T00:00:00.000Z", b"")


# --- Bash completion -------------------------------------------------------------------------


def complete(*words: str, socket_path: str | None = None) -> list[str]:
    """COMPREPLY of `_volplugctl` for ``words`` (the last one is being completed)."""
    script = ('source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _volplugctl; '
              'printf "%s\\n" "${COMPREPLY[@]}"')
    env = {"PATH": f"{Path(VOLPLUGCTL).parent}:{os.environ['PATH']}"}
    if socket_path is not None:
        env["VOLPLUGD_SOCKET"] = socket_path
    done = subprocess.run(["bash", "--norc", "-c", script, "bash", str(COMPLETION), *words],
                          capture_output=True, text=True, env=env, timeout=30, check=True)
    assert done.stderr == ""
    return [line for line in done.stdout.splitlines() if line]


def test_completion_of_commands_subcommands_and_flags() -> None:
    """Commands, volume subcommands, per-command flags and --state values complete."""
    assert complete("volplugctl", "vol") == ["volume"]
    assert complete("volplugctl", "") == ["ls", "inspect", "probe", "restart", "events",
                                          "rescan", "health", "capabilities", "wait",
                                          "volume"]
    assert complete("volplugctl", "volume", "") == ["ls", "create", "inspect", "rm", "path",
                                                    "mount", "unmount"]
    assert complete("volplugctl", "events", "--f") == ["--follow"]
    assert complete("volplugctl", "volume", "mount", "p", "v", "--i") == ["--id"]
    assert complete("volplugctl", "ls", "--state", "r") == ["ready", "restarting", "rejected"]
    assert complete("volplugctl", "ls", "--state", "=", "u") == ["unhealthy"]
    assert complete("volplugctl", "--v") == ["--version"]


def test_completion_of_plugin_and_volume_names(canned: Canned) -> None:
    """Plugin names come from `ls --json`, volume names from `volume ls PLUGIN --json`."""
    canned.on("GET", "/v1/plugins", {"plugins": [plugin("alpha"), plugin("beta")]})
    canned.on("GET", "/v1/plugins/alpha/volumes", {"volumes": [
        {"name": "data", "mountpoint": "/m", "created_at": None, "status": None}]})
    assert complete("volplugctl", "inspect", "", socket_path=canned.path) == ["alpha", "beta"]
    assert complete("volplugctl", "volume", "rm", "a", socket_path=canned.path) == ["alpha"]
    assert complete("volplugctl", "volume", "path", "alpha", "d",
                    socket_path=canned.path) == ["data"]
    assert complete("volplugctl", "--socket", canned.path, "probe", "b") == ["beta"]
    assert complete("volplugctl", "restart", "a", socket_path=canned.path) == ["alpha"]
    assert complete("volplugctl", "wait", "alpha", "", socket_path=canned.path) == ["alpha",
                                                                                    "beta"]


def test_completion_is_quiet_without_a_daemon(short_tmp: Path) -> None:
    """An unreachable daemon completes names to nothing, with nothing on stderr."""
    assert complete("volplugctl", "inspect", "", socket_path=str(short_tmp / "no.sock")) == []


# --- wait ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "value"), [("1.5", 1.5), ("500ms", 0.5), ("60s", 60.0),
                                             ("2m", 120.0), ("1h", 3600.0)])
def test_durations_take_an_optional_unit(text: str, value: float) -> None:
    """--timeout takes seconds, or a number with ms, s, m or h."""
    assert cli.seconds(text) == value


@pytest.mark.parametrize("text", ["0", "-1s", "s", "abc", "1d", "infs", "nan", "1e999"])
def test_a_duration_that_is_not_positive_and_finite_is_a_usage_error(
        text: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Exit 2, and argparse names the value."""
    assert cli.main(["wait", f"--timeout={text}"], environ={}) == 2
    assert (f"argument --timeout: expected a positive duration (seconds, or with ms, s, m, h), "
            f"got {text!r}") in capsys.readouterr().err


def test_wait_with_no_name_waits_for_every_plugin_but_rejected_ones(canned: Canned) -> None:
    """Ready and rejected plugins only: exit 0 at once, one line per plugin waited for."""
    canned.on("GET", "/v1/plugins", {"plugins": [plugin("a"), plugin("b"),
                                                 plugin("no-driver", state="rejected")]})
    assert run(canned, "wait") == (0, "a: ready\nb: ready\n", "")
    assert [s.target for s in canned.seen] == ["/v1/plugins"]


def test_wait_json_prints_the_daemons_list_as_is(canned: Canned) -> None:
    """--json: the last GET /v1/plugins answer, unchanged."""
    listed = {"plugins": [plugin("a")]}
    canned.on("GET", "/v1/plugins", listed)
    status, out, err = run(canned, "--json", "wait", "a")
    assert (status, json.loads(out), err) == (0, listed, "")


def test_wait_times_out_with_each_plugins_state_on_stderr(canned: Canned) -> None:
    """Exit 1; one line per plugin not ready, unknown names too, with its last error."""
    canned.on("GET", "/v1/plugins", {"plugins": [
        plugin("a"), plugin("slow", state="activating", last_error="connect: refused\nagain"),
        plugin("sick", state="unhealthy"), plugin("bad\x1b", state="activating")]})
    status, out, err = run(canned, "wait", "--timeout", "300ms", "a", "slow", "sick", "gone",
                           "bad\x1b")
    assert (status, out) == (1, "")
    assert err.splitlines() == [
        "volplugctl: timeout: after 0.3s, plugin gone is not known to volplugd",
        "volplugctl: timeout: after 0.3s, plugin slow is activating: connect: refused; again",
        "volplugctl: timeout: after 0.3s, plugin sick is unhealthy",
        "volplugctl: timeout: after 0.3s, plugin bad\\x1b is activating",
    ]
    assert len(canned.seen) >= 2  # it asked again before giving up


def test_wait_waits_for_a_restarting_plugin_until_it_is_ready(canned: Canned) -> None:
    """`restarting` is not ready: wait keeps asking, and exits 0 once the plugin is ready."""
    canned.on("GET", "/v1/plugins", {"plugins": [
        plugin("a", state="restarting", last_error="process 7 (vp) exited")]})
    done: list[tuple[int, str, str]] = []
    waiting = threading.Thread(target=lambda: done.append(run(canned, "wait", "a")))
    waiting.start()
    try:
        wait_until(lambda: len(canned.seen) >= 3, message="wait asked again")
        assert done == []
    finally:
        canned.on("GET", "/v1/plugins", {"plugins": [plugin("a")]})
        waiting.join(30)
    assert done == [(0, "a: ready\n", "")]


def test_wait_times_out_on_a_plugin_still_restarting(canned: Canned) -> None:
    """Exit 1, the state and last error on stderr, as for any plugin not ready."""
    canned.on("GET", "/v1/plugins", {"plugins": [
        plugin("a", state="restarting", last_error="process 7 (vp) exited")]})
    assert run(canned, "wait", "--timeout", "300ms", "a") == (1, "", (
        "volplugctl: timeout: after 0.3s, plugin a is restarting: process 7 (vp) exited\n"))


def test_wait_without_a_daemon_exits_3(short_tmp: Path) -> None:
    """Nothing to wait on: exit 3 at once, with the hint."""
    path = str(short_tmp / "none.sock")
    status, out, err = run(path, "wait", "--timeout", "60s")
    assert (status, out) == (3, "")
    assert err == (f"volplugctl: cannot reach volplugd at {path}: No such file or directory "
                   f"{HINT}\n")


def test_wait_on_a_daemon_that_never_answers_names_the_whole_timeout(short_tmp: Path) -> None:
    """A socket that listens but never answers: exit 1 once --timeout has passed, and the
    line names the --timeout given (not what was left of it at the last look)."""
    path = str(short_tmp / "mute.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as mute:
        mute.bind(path)
        mute.listen(8)
        assert run(path, "wait", "--timeout", "300ms", "a") == (
            1, "", "volplugctl: timeout: volplugd did not answer within 0.3s\n")


def test_wait_passes_on_a_daemon_error(canned: Canned) -> None:
    """An error answer (here 403) is exit 1 with its code, not a wait until the timeout."""
    canned.on("GET", "/v1/plugins", Answer(403, {"error": {"code": "forbidden",
                                                           "message": "uid 7 may not"}}))
    assert run(canned, "wait", "a") == (1, "", "volplugctl: forbidden: uid 7 may not\n")
