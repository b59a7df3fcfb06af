"""The control app called with a ``Request``: every route, every error code."""

from __future__ import annotations

import io
import json

import pytest

from tests.control.conftest import build_app
from tests.control.helpers import ROOT, call
from tests.control.memory import MemoryClient, MemoryCommands, view
from volplugd.admission import Refusal
from volplugd.contracts import Stopping
from volplugd.control.app import ROUTES, openapi_document
from volplugd.control.routing import Request
from volplugd.model import EventType, PluginState, RescanResult
from volplugd.plugin.errors import (
    NotAPlugin,
    PluginBadResponse,
    PluginRemoved,
    PluginReportedError,
    PluginTimeout,
    PluginUnreachable,
)


@pytest.fixture
def app(commands: MemoryCommands):  # type: ignore[no-untyped-def]
    return build_app(commands)


def test_health_reports_version_uptime_and_counts(app) -> None:  # type: ignore[no-untyped-def]
    """GET /v1/health: status ok, the version, uptime and a count per state."""
    ans = call(app, "GET", "/v1/health")
    doc = ans.json()
    assert ans.status == 200
    assert ans.headers["Content-Type"] == "application/json"
    assert doc["status"] == "ok"
    assert doc["version"] == "9.9.9"
    assert doc["uptime_seconds"] >= 0
    assert doc["plugins"] == {"activating": 1, "ready": 1, "unhealthy": 1, "restarting": 0,
                              "rejected": 0}


def test_health_says_stalled_when_the_supervisor_loop_stopped_running(
        commands: MemoryCommands) -> None:
    """A loop that has not run for 10 s makes health say "stalled" (snapshot may be stale)."""
    commands.loop_age_seconds = 0.25
    fresh = call(build_app(commands), "GET", "/v1/health").json()
    commands.loop_age_seconds = 42.0
    stale = call(build_app(commands), "GET", "/v1/health").json()
    assert (fresh["status"], fresh["loop_age_seconds"]) == ("ok", 0.25)
    assert (stale["status"], stale["loop_age_seconds"]) == ("stalled", 42.0)


def test_plugins_lists_the_snapshot_sorted(app) -> None:  # type: ignore[no-untyped-def]
    """GET /v1/plugins answers the snapshot's pre-encoded records, sorted by name."""
    ans = call(app, "GET", "/v1/plugins")
    assert ans.status == 200
    assert [p["name"] for p in ans.json()["plugins"]] == ["demo", "fresh", "sick"]
    assert ans.json()["plugins"][0] == view("demo").to_json()


def test_plugins_state_filter(app) -> None:  # type: ignore[no-untyped-def]
    """?state=unhealthy keeps only unhealthy plugins; an unknown state is a 400."""
    ans = call(app, "GET", "/v1/plugins?state=unhealthy")
    assert [p["name"] for p in ans.json()["plugins"]] == ["sick"]
    bad = call(app, "GET", "/v1/plugins?state=dead")
    assert bad.status == 400
    assert bad.error == ("invalid_request",
                         "state: must be one of activating, ready, unhealthy, restarting, rejected")


def test_plugin_by_name_and_unknown(app) -> None:  # type: ignore[no-untyped-def]
    """GET /v1/plugins/{name}: the record, or 404 plugin_not_found."""
    ans = call(app, "GET", "/v1/plugins/sick")
    assert ans.json()["state"] == "unhealthy"
    assert ans.json()["last_error"] == "timeout after 5.0s"
    missing = call(app, "GET", "/v1/plugins/nope")
    assert missing.status == 404
    assert missing.error == ("plugin_not_found", "no plugin named 'nope'")


def test_reads_use_the_pre_encoded_bytes(commands: MemoryCommands) -> None:
    """The API serves Snapshot.encoded as is: it never re-encodes a plugin record."""
    snap = commands.snapshot()
    marker = b'{"name":"demo","marker":true}'
    fixed = type(snap)(snap.plugins, {**snap.encoded, "demo": marker})
    commands.snapshot = lambda: fixed  # type: ignore[method-assign]
    app = build_app(commands)
    assert call(app, "GET", "/v1/plugins/demo").body == marker
    assert marker in call(app, "GET", "/v1/plugins").body


def test_probe_answers_the_probed_record(app, commands: MemoryCommands) -> None:  # type: ignore[no-untyped-def]
    """POST /v1/plugins/{name}/probe answers the plugin after the probe."""
    ans = call(app, "POST", "/v1/plugins/demo/probe")
    assert ans.status == 200
    assert ans.json()["probe_latency_seconds"] == 0.001
    assert ans.json()["last_probe_at"] is not None


def test_probe_that_times_out_is_503(commands: MemoryCommands) -> None:
    """The daemon's own wait running out is 503 unavailable, not a plugin error."""
    commands.probe_error = TimeoutError()
    ans = call(build_app(commands), "POST", "/v1/plugins/demo/probe")
    assert ans.status == 503
    assert ans.error == ("unavailable", "the daemon did not answer in time; try again")


def test_rescan_while_stopping_is_503(commands: MemoryCommands) -> None:
    """A request the stopping loop will never handle is 503 unavailable, at once."""
    commands.rescan_error = Stopping()
    ans = call(build_app(commands), "POST", "/v1/rescan")
    assert ans.status == 503
    assert ans.error == ("unavailable", "volplugd is stopping")


def test_rescan_answers_what_changed(commands: MemoryCommands) -> None:
    """POST /v1/rescan: added, removed, changed names."""
    commands.rescan_result = RescanResult(added=("a",), removed=("b",), changed=())
    ans = call(build_app(commands), "POST", "/v1/rescan")
    assert ans.status == 200
    assert ans.json() == {"added": ["a"], "removed": ["b"], "changed": []}


def test_events_are_ndjson_after_since(app, commands: MemoryCommands) -> None:  # type: ignore[no-untyped-def]
    """GET /v1/events?since=1: one Event JSON a line, seq > since."""
    for name in ("a", "b", "c"):
        commands.emit(EventType.DISCOVERED, name, "appeared")
    ans = call(app, "GET", "/v1/events?since=1")
    assert ans.status == 200
    assert ans.headers["Content-Type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in ans.body.splitlines()]
    assert [(e["seq"], e["plugin"], e["type"]) for e in lines] == [
        (2, "b", "discovered"), (3, "c", "discovered")]
    assert ans.body == b"".join(
        json.dumps(e.to_json(), separators=(",", ":")).encode() + b"\n"
        for e in commands.log[1:])


@pytest.mark.parametrize(("query", "message"), [
    ("since=-1", "since: must be a non-negative integer (an event seq)"),
    ("since=abc", "since: must be a non-negative integer (an event seq)"),
    ("since=99999999999999999999", "since: must be a non-negative integer (an event seq)"),
    ("follow=maybe", "follow: must be 1 or 0 (true/false)"),
])
def test_events_bad_query(app, query: str, message: str) -> None:  # type: ignore[no-untyped-def]
    """A malformed since or follow is a 400 naming it."""
    ans = call(app, "GET", f"/v1/events?{query}")
    assert ans.status == 400
    assert ans.error == ("invalid_request", message)


def test_follow_stream_yields_events_then_ends_when_stopping(commands: MemoryCommands) -> None:
    """?follow=1 keeps yielding new events and ends once the server says it is stopping."""
    import threading

    app = build_app(commands)
    stopping = threading.Event()
    commands.emit(EventType.RESCAN, reason="startup")
    reply = app(Request("GET", "/v1/events", "follow=1", peer=ROOT, groups=frozenset({0}),
                        stopping=stopping))
    assert not isinstance(reply.body, bytes)
    chunks = iter(reply.body)
    assert next(chunks) == b""  # headers go out before the first event
    assert json.loads(next(chunks))["seq"] == 1
    commands.emit(EventType.DISCOVERED, "x")
    assert json.loads(next(chunks))["plugin"] == "x"
    stopping.set()
    assert list(chunks) == []
    reply.body.close()  # type: ignore[attr-defined]
    assert reply.status == 200


def test_follow_stream_limit_is_429(app) -> None:  # type: ignore[no-untyped-def]
    """With no follow slot left the server's hook refuses and the app answers 429; the
    message says whether the user's share or every slot is taken."""
    ans = call(app, "GET", "/v1/events?follow=1", follow_slot=lambda p, g: Refusal.FULL)
    assert ans.status == 429
    assert ans.error == ("too_many_streams", "too many open follow streams; try again later")
    ans = call(app, "GET", "/v1/events?follow=1", follow_slot=lambda p, g: Refusal.UID_LIMIT)
    assert (ans.status, ans.error) == (429, (
        "too_many_streams", "this user has as many follow streams open as one user may; "
        "close one and try again"))


def test_follow_slot_released_even_if_never_iterated(app) -> None:  # type: ignore[no-untyped-def]
    """close() on an un-iterated follow stream still gives the slot back."""
    released: list[bool] = []
    reply = app(Request("GET", "/v1/events", "follow=1", peer=ROOT, groups=frozenset({0}),
                        follow_slot=lambda p, g: lambda: released.append(True)))
    assert reply.status == 200
    reply.body.close()  # type: ignore[union-attr]
    reply.body.close()  # type: ignore[union-attr]
    assert released == [True]


def test_capabilities(app) -> None:  # type: ignore[no-untyped-def]
    """GET …/capabilities answers the plugin's scope."""
    ans = call(app, "GET", "/v1/plugins/demo/capabilities")
    assert (ans.status, ans.json()) == (200, {"scope": "local"})


def test_volume_lifecycle(app, commands: MemoryCommands) -> None:  # type: ignore[no-untyped-def]
    """create → list → get → path → mount → unmount → remove through the plugin client."""
    created = call(app, "POST", "/v1/plugins/demo/volumes",
                   body={"name": "v1", "options": {"size": "1G"}})
    assert created.status == 201
    assert created.headers["Location"] == "/v1/plugins/demo/volumes/v1"
    assert created.json() == {"name": "v1", "mountpoint": "/mnt/demo/v1",
                              "created_at": "2024-01-01T00:00:00Z", "status": {"size": "1G"}}
    assert call(app, "GET", "/v1/plugins/demo/volumes").json() == {
        "volumes": [created.json()]}
    assert call(app, "GET", "/v1/plugins/demo/volumes/v1").json() == created.json()
    assert call(app, "GET", "/v1/plugins/demo/volumes/v1/path").json() == {
        "mountpoint": "/mnt/demo/v1"}
    mounted = call(app, "POST", "/v1/plugins/demo/volumes/v1/mount", body={"id": "c1"})
    assert (mounted.status, mounted.json()) == (200, {"mountpoint": "/mnt/demo/v1"})
    unmounted = call(app, "POST", "/v1/plugins/demo/volumes/v1/unmount", body={"id": "c1"})
    assert (unmounted.status, unmounted.body) == (204, b"")
    assert "Content-Length" not in unmounted.headers
    removed = call(app, "DELETE", "/v1/plugins/demo/volumes/v1")
    assert (removed.status, removed.body) == (204, b"")
    client = commands.clients["demo"]
    assert [c[0] for c in client.calls] == [
        "create", "get", "list", "get", "path", "get", "mount", "get", "unmount", "get",
        "remove"]
    assert client.calls[0] == ("create", "v1", {"size": "1G"})
    assert client.calls[6] == ("mount", "v1", "c1")


def test_create_falls_back_to_name_when_get_fails(commands: MemoryCommands) -> None:
    """201 with only {"name"} when the Get after the Create fails."""
    commands.clients["demo"].fail_on["get"] = PluginTimeout("slow", plugin="demo")
    ans = call(build_app(commands), "POST", "/v1/plugins/demo/volumes", body={"name": "v2"})
    assert (ans.status, ans.json()) == (201, {"name": "v2"})


@pytest.mark.parametrize(("body", "message"), [
    (b"", "body: a JSON object is required"),
    (b"{nope", "body: not valid JSON (Expecting property name enclosed in double quotes: "
               "line 1 column 2 (char 1))"),
    (b"[1]", "body: must be a JSON object"),
    (b"{}", "name: required"),
    (b'{"name": 5}', "name: must be a string"),
    (b'{"name": ""}', "name: must not be empty"),
    (b'{"name": "a/b"}', 'name: must not contain "/"'),
    (b'{"name": "a\\u0000b"}', "name: must not contain control characters (NUL included)"),
    (b'{"name": ".."}', 'name: must not be "." or ".."'),
    (b'{"name": "\\ud800"}', "name: must be valid Unicode (no lone surrogates)"),
    (json.dumps({"name": "x" * 256}).encode(), "name: must be at most 255 bytes (UTF-8)"),
    (json.dumps({"name": "é" * 128}).encode(), "name: must be at most 255 bytes (UTF-8)"),
    (b'{"name": "v", "options": [1]}', "options: must be an object of strings"),
    (b'{"name": "v", "options": {"size": 1}}', "options.size: must be a string"),
])
def test_create_refuses_bad_bodies(app, commands: MemoryCommands, body: bytes,
                                   message: str) -> None:  # type: ignore[no-untyped-def]
    """A malformed create body is a 400 naming the field; the plugin is not called."""
    ans = call(app, "POST", "/v1/plugins/demo/volumes", body=body)
    assert ans.status == 400
    assert ans.error == ("invalid_request", message)
    assert commands.clients["demo"].calls == []


def test_longest_allowed_name_passes(app) -> None:  # type: ignore[no-untyped-def]
    """255 bytes is allowed (NAME_MAX); options null means none."""
    ans = call(app, "POST", "/v1/plugins/demo/volumes",
               body={"name": "x" * 255, "options": None})
    assert ans.status == 201


@pytest.mark.parametrize(("target", "message"), [
    ("/v1/plugins/demo/volumes/a%2Fb", 'volume: must not contain "/"'),
    ("/v1/plugins/demo/volumes/a%00b", "volume: must not contain control characters "
                                       "(NUL included)"),
    ("/v1/plugins/demo/volumes/..", 'volume: must not be "." or ".."'),
    ("/v1/plugins/demo/volumes/%ff", "path: bytes (raw or percent-encoded) are not UTF-8"),
])
def test_volume_path_segment_is_validated(app, target: str, message: str) -> None:  # type: ignore[no-untyped-def]
    """Volume names in the path are checked before a plugin sees them."""
    ans = call(app, "GET", target)
    assert ans.status == 400
    assert ans.error == ("invalid_request", message)


@pytest.mark.parametrize(("body", "message"), [
    (b"{}", "id: required"),
    (b'{"id": 7}', "id: must be a string"),
    (b'{"id": "x/y"}', 'id: must not contain "/"'),
])
def test_mount_id_is_validated(app, body: bytes, message: str) -> None:  # type: ignore[no-untyped-def]
    """mount and unmount need a valid "id"."""
    for action in ("mount", "unmount"):
        ans = call(app, "POST", f"/v1/plugins/demo/volumes/v1/{action}", body=body)
        assert ans.status == 400
        assert ans.error == ("invalid_request", message)


def test_not_ready_plugin_fails_fast_with_state_and_error(app, commands: MemoryCommands) -> None:  # type: ignore[no-untyped-def]
    """409 plugin_not_ready names the state and the last error; the plugin is not called."""
    ans = call(app, "GET", "/v1/plugins/sick/volumes")
    assert ans.status == 409
    assert ans.error == ("plugin_not_ready", "plugin sick is unhealthy: timeout after 5.0s")
    assert commands.clients["sick"].calls == []
    fresh = call(app, "POST", "/v1/plugins/fresh/volumes", body={"name": "v"})
    assert fresh.error == ("plugin_not_ready", "plugin fresh is activating")


@pytest.mark.parametrize(("error", "status", "code", "message"), [
    (PluginReportedError("on /VolumeDriver.List in volume plugin demo: disk on fire",
                         err="disk on fire"), 502, "plugin_error", "disk on fire"),
    (PluginBadResponse("bad json"), 502, "plugin_bad_response", "bad json"),
    (NotAPlugin("target does not appear to be a valid plugin"), 502, "plugin_bad_response",
     "target does not appear to be a valid plugin"),
    (PluginUnreachable("connection refused"), 502, "plugin_unreachable", "connection refused"),
    (PluginRemoved("plugin is no longer available (shut down?)"), 502, "plugin_unreachable",
     "plugin is no longer available (shut down?)"),
    (PluginTimeout("deadline of 60.0s passed"), 504, "plugin_timeout",
     "deadline of 60.0s passed"),
])
def test_plugin_errors_map_through_one_table(commands: MemoryCommands, error: Exception,
                                             status: int, code: str, message: str) -> None:
    """Each client error class has one status and code; a plugin's Err is verbatim."""
    commands.clients["demo"].fail = error
    app = build_app(commands)
    for method, target, body in [("GET", "/v1/plugins/demo/volumes", None),
                                 ("GET", "/v1/plugins/demo/capabilities", None),
                                 ("DELETE", "/v1/plugins/demo/volumes/v", None),
                                 ("POST", "/v1/plugins/demo/volumes/v/mount", {"id": "c"})]:
        ans = call(app, method, target, body=body)
        assert (ans.status, ans.error) == (status, (code, message)), target


def test_unexpected_exception_is_500_and_logged(commands: MemoryCommands) -> None:
    """A bug answers 500 internal_error without leaking details, and is logged."""
    from structlog.testing import capture_logs

    commands.clients["demo"].fail = ZeroDivisionError("oops")
    with capture_logs() as logs:
        ans = call(build_app(commands), "GET", "/v1/plugins/demo/volumes")
    assert (ans.status, ans.error) == (500, ("internal_error",
                                             "internal error; the daemon logged it"))
    assert logs[0]["event"] == "control_request_failed"
    assert logs[0]["log_level"] == "error"


def test_route_params_are_read_only_so_a_path_keeps_its_own() -> None:
    """A path's route match, params included, is remembered and shared by every request
    of that path: a handler that tried to change its params would change them for the
    requests after it. They are read-only: that handler gets the JSON 500, and the next
    request of the path still sees its own name."""
    from structlog.testing import capture_logs

    from volplugd.control.errors import error_reply
    from volplugd.control.routing import App, Reply

    def greet(req: Request) -> Reply:
        name = req.params["name"]
        if req.query:
            req.params["name"] = "someone else"  # type: ignore[index]
        return Reply(200, name.encode())

    app = App({"/hello/{name}": {"GET": greet}}, None, error_reply)
    with capture_logs() as logs:
        assert call(app, "GET", "/hello/ann?change=1").status == 500
    assert logs[0]["event"] == "control_request_failed"
    assert (call(app, "GET", "/hello/ann").status, call(app, "GET", "/hello/ann").body) \
        == (200, b"ann")


def test_unknown_route_is_404_not_found(app) -> None:  # type: ignore[no-untyped-def]
    """A path no route matches is 404 not_found (not plugin_not_found)."""
    for target in ("/v2/health", "/v1/plugins/demo/nothing", "/v1/plugins/", "/"):
        ans = call(app, "GET", target)
        assert (ans.status, ans.error) == (404, ("not_found", "no such route")), target


def test_wrong_method_is_405_with_allow(app) -> None:  # type: ignore[no-untyped-def]
    """A known path with another method: 405 method_not_allowed and an Allow header."""
    ans = call(app, "PUT", "/v1/plugins/demo/volumes")
    assert ans.status == 405
    assert ans.headers["Allow"] == "GET, HEAD, POST"
    assert ans.error == ("method_not_allowed", "allowed: GET, HEAD, POST")
    assert call(app, "GET", "/v1/rescan").headers["Allow"] == "POST"


def test_head_is_routed_as_get(app) -> None:  # type: ignore[no-untyped-def]
    """HEAD on a GET route: the GET's status and body (the server sends its length and
    leaves the body out: ``test_server.test_head_has_length_and_no_body``)."""
    full = call(app, "GET", "/v1/plugins")
    head = call(app, "HEAD", "/v1/plugins")
    assert (head.status, head.body) == (200, full.body)


def test_body_over_one_mib_is_413(app) -> None:  # type: ignore[no-untyped-def]
    """A declared body over 1 MiB is refused with 413 before anything reads it."""
    body = io.BytesIO()
    reply = app(Request("POST", "/v1/plugins/demo/volumes", content_length=2 * 1024 * 1024,
                        body=body, peer=ROOT, groups=frozenset({0})))
    assert reply.status == 413
    assert json.loads(reply.body)["error"] == {
        "code": "request_too_large",
        "message": "request body of 2097152 bytes exceeds the limit of 1048576 bytes"}
    assert body.tell() == 0


def test_metrics_route(commands: MemoryCommands) -> None:
    """GET /metrics answers the metrics callable's bytes and content type; 404 when off."""
    ans = call(build_app(commands), "GET", "/metrics")
    assert ans.status == 200
    assert ans.body == b"# HELP x y\nx 1\n"
    assert ans.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    import time

    from volplugd.control import AccessPolicy, make_app
    off = make_app(commands, metrics=None, version="1", started_at=time.time(),
                   access=AccessPolicy())
    assert call(off, "GET", "/metrics").error == ("not_found", "metrics are turned off")


def test_openapi_route_serves_the_document(app) -> None:  # type: ignore[no-untyped-def]
    """GET /openapi.json answers the packaged document."""
    ans = call(app, "GET", "/openapi.json")
    assert ans.json() == openapi_document()


def test_on_request_gets_route_templates_and_status(commands: MemoryCommands) -> None:
    """on_request sees the route template (bounded), never the raw path."""
    seen: list[tuple[str, int]] = []
    app = build_app(commands, seen=seen)
    call(app, "GET", "/v1/plugins/demo")
    call(app, "GET", "/v1/plugins/zzz")
    call(app, "POST", "/v1/plugins/demo/volumes/v/mount", body={"id": "c"})
    call(app, "GET", "/random/thing")
    assert seen == [("/v1/plugins/{name}", 200), ("/v1/plugins/{name}", 404),
                    ("/v1/plugins/{name}/volumes/{volume}/mount", 502),
                    ("unmatched", 404)]


def test_every_route_answers(commands: MemoryCommands) -> None:
    """Each (route, method) of ROUTES reaches a handler (no 404/405 from routing)."""
    commands.clients["demo"].create("v")
    app = build_app(commands)
    pairs = [(t, m) for t, methods in ROUTES.items() for m in methods]
    for template, method in sorted(pairs, key=lambda p: p[1] == "DELETE"):  # remove last
        target = template.replace("{name}", "demo").replace("{volume}", "v")
        ans = call(app, method, target, body={"id": "c", "name": "w"}
                   if method == "POST" else None)
        assert ans.status < 300, (method, target, ans.body)


def test_ready_plugin_list_helper_view_is_ready() -> None:
    """The test helper builds ready views by default (guards the fixtures)."""
    assert view("x").state is PluginState.READY
    assert MemoryClient("x").list() == []
