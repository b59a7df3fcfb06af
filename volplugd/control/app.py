"""The control API as an ``App``: routes and the access rule (the one error→HTTP table
every failure goes through is ``control.errors``).

Reads come from ``commands.snapshot()`` and its pre-encoded JSON (nothing re-encodes
the plugin list per request); volume operations go through ``commands.call``, which
fails fast for a plugin that is not ready. The server hands each ``Request`` over with
the peer's credentials and its hooks (see ``volplugd.serving``).
Runs on: connection threads; never the supervisor thread.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Callable, Mapping
from importlib import resources
from typing import Any, TypeVar

from volplugd.admission import Refusal
from volplugd.contracts import Commands, PluginBusy, PluginNotReady, UnknownPlugin
from volplugd.control.access import AccessPolicy, decide
from volplugd.control.errors import Forbidden, MetricsOff, TooManyStreams, error_reply
from volplugd.control.inputs import (
    InvalidRequest,
    check_volume_name,
    follow_flag,
    mount_id,
    read_json_object,
    since_seq,
    state_filter,
    volume_options,
)
from volplugd.control.routing import (
    JSON,
    NDJSON,
    App,
    Handler,
    Reply,
    Request,
    json_reply,
    raw_reply,
)
from volplugd.control.stream import FollowStream, follow_slot, ndjson
from volplugd.log import get_logger
from volplugd.model import encode
from volplugd.plugin.client import PluginClient
from volplugd.plugin.errors import PluginError
from volplugd.refusals import RefusalLog

__all__ = ["ROUTES", "AccessPolicy", "make_app", "make_metrics_app", "openapi_document"]

_log = get_logger(__name__)
T = TypeVar("T")


STALLED_AFTER = 10.0  # seconds without a supervisor loop iteration (it runs every second)


# --- The route table and the apps ---------------------------------------------------


ROUTES: Mapping[str, frozenset[str]] = {
    "/v1/health": frozenset({"GET"}),
    "/v1/plugins": frozenset({"GET"}),
    "/v1/plugins/{name}": frozenset({"GET"}),
    "/v1/plugins/{name}/probe": frozenset({"POST"}),
    "/v1/plugins/{name}/restart": frozenset({"POST"}),
    "/v1/plugins/{name}/capabilities": frozenset({"GET"}),
    "/v1/plugins/{name}/volumes": frozenset({"GET", "POST"}),
    "/v1/plugins/{name}/volumes/{volume}": frozenset({"GET", "DELETE"}),
    "/v1/plugins/{name}/volumes/{volume}/path": frozenset({"GET"}),
    "/v1/plugins/{name}/volumes/{volume}/mount": frozenset({"POST"}),
    "/v1/plugins/{name}/volumes/{volume}/unmount": frozenset({"POST"}),
    "/v1/rescan": frozenset({"POST"}),
    "/v1/events": frozenset({"GET"}),
    "/metrics": frozenset({"GET"}),
    "/openapi.json": frozenset({"GET"}),
}
"""Every route and its methods (HEAD is implied by GET); the OpenAPI test checks this."""

class ControlApp(App):
    """The control socket's routes over a ``Commands``."""

    def __init__(self, commands: Commands, *, metrics: Callable[[], tuple[bytes, str]] | None,
                 on_request: Callable[[str, int], None] | None, version: str,
                 started_at: float, access: AccessPolicy, probe_timeout: float,
                 rescan_timeout: float, clock: Callable[[], float]):
        self._commands = commands
        self._metrics = metrics
        self._version = version
        self._started_at = started_at
        self._access = access
        self._probe_timeout = probe_timeout
        self._rescan_timeout = rescan_timeout
        self._clock = clock
        self._openapi = _openapi_bytes()
        self._version_json = encode(version)
        self._counts: tuple[object, bytes] = (None, b"")
        self._refusals = RefusalLog(__name__)
        super().__init__(self._table(), on_request, error_reply)

    def _table(self) -> dict[str, dict[str, Handler]]:
        handlers: dict[tuple[str, str], Handler] = {
            ("/v1/health", "GET"): self.health,
            ("/v1/plugins", "GET"): self.plugins,
            ("/v1/plugins/{name}", "GET"): self.plugin,
            ("/v1/plugins/{name}/probe", "POST"): self.probe,
            ("/v1/plugins/{name}/restart", "POST"): self.restart,
            ("/v1/plugins/{name}/capabilities", "GET"): self.capabilities,
            ("/v1/plugins/{name}/volumes", "GET"): self.volumes,
            ("/v1/plugins/{name}/volumes", "POST"): self.create_volume,
            ("/v1/plugins/{name}/volumes/{volume}", "GET"): self.volume,
            ("/v1/plugins/{name}/volumes/{volume}", "DELETE"): self.remove_volume,
            ("/v1/plugins/{name}/volumes/{volume}/path", "GET"): self.volume_path,
            ("/v1/plugins/{name}/volumes/{volume}/mount", "POST"): self.mount,
            ("/v1/plugins/{name}/volumes/{volume}/unmount", "POST"): self.unmount,
            ("/v1/rescan", "POST"): self.rescan,
            ("/v1/events", "GET"): self.events,
            ("/metrics", "GET"): self.metrics,
            ("/openapi.json", "GET"): self.openapi,
        }
        table: dict[str, dict[str, Handler]] = {}
        for (template, method), handler in handlers.items():
            table.setdefault(template, {})[method] = handler
        return table

    def admit(self, req: Request) -> None:
        peer = req.peer
        if not decide(self._access, peer, req.groups, req.method):
            self._refused("control_request_forbidden", req, "forbidden")
            raise Forbidden
        super().admit(req)

    def _refused(self, event: str, req: Request, reason: str) -> None:
        """Log a refusal once per 10 s per uid and reason (each is counted by the
        server's ``on_request``: ``volplugd_control_requests_total``)."""
        peer = req.peer
        self._refusals.refused(event, None if peer is None else peer.uid, reason,
                               method=req.method, path=req.path,
                               pid=None if peer is None else peer.pid)

    # -- reads: the snapshot and its pre-encoded JSON --

    def health(self, req: Request) -> Reply:
        snapshot = self._commands.snapshot()
        counts = self._counts
        if counts[0] is not snapshot:  # once per snapshot, not per request
            counts = self._counts = (snapshot, encode(dict(snapshot.counts)))
        age = self._commands.loop_age()
        status = b"ok" if age < STALLED_AFTER else b"stalled"
        uptime = self._clock() - self._started_at
        return Reply(200, b'{"status":"%s","version":%s,"uptime_seconds":%.3f,'
                     b'"loop_age_seconds":%.3f,"plugins":%s}'  # ms, as round(x, 3) would
                     % (status, self._version_json, uptime, age, counts[1]))

    def plugins(self, req: Request) -> Reply:
        state = state_filter(req.query)
        return raw_reply(200, self._commands.snapshot().plugins_json(state))

    def plugin(self, req: Request) -> Reply:
        name = req.params["name"]
        try:
            return Reply(200, self._commands.snapshot().encoded[name])
        except KeyError:
            raise UnknownPlugin(name) from None

    def events(self, req: Request) -> Reply:
        since = since_seq(req.query)
        if not follow_flag(req.query) or req.method == "HEAD":
            lines = b"".join(ndjson(self._commands.events(since, wait=0.0)))
            return raw_reply(200, lines, NDJSON)
        release = follow_slot(req)
        if isinstance(release, Refusal):
            self._refused("control_stream_refused", req, release.value)
            raise TooManyStreams(release)
        return Reply(200, FollowStream(self._commands, since, req, release, self._refusals),
                     NDJSON)

    def metrics(self, req: Request) -> Reply:
        if self._metrics is None:
            raise MetricsOff
        body, content_type = self._metrics()
        return raw_reply(200, body, content_type)

    def openapi(self, req: Request) -> Reply:
        return raw_reply(200, self._openapi)

    # -- commands to the daemon --

    def probe(self, req: Request) -> Reply:
        view = self._commands.probe(req.params["name"], self._probe_timeout)
        return json_reply(200, view.to_json())

    def restart(self, req: Request) -> Reply:
        """202: the restart has begun (``restarting``); ``volplugctl wait`` waits for ready."""
        view = self._commands.restart(req.params["name"], self._probe_timeout)
        return json_reply(202, view.to_json())

    def rescan(self, req: Request) -> Reply:
        return json_reply(200, self._commands.rescan(self._rescan_timeout).to_json())

    # -- volume operations: through the plugin client, failing fast --

    def _call(self, req: Request, op: Callable[[PluginClient], T]) -> T:
        """``commands.call`` for the request's plugin (which fails fast)."""
        return self._commands.call(req.params["name"], op)

    def capabilities(self, req: Request) -> Reply:
        caps = self._call(req, lambda c: c.capabilities())
        return json_reply(200, {"scope": caps.scope})

    def volumes(self, req: Request) -> Reply:
        found = self._call(req, lambda c: c.list())
        return json_reply(200, {"volumes": [v.to_json() for v in found]})

    def create_volume(self, req: Request) -> Reply:
        plugin = req.params["name"]
        doc = read_json_object(req.body, req.content_length)
        if "name" not in doc:
            raise InvalidRequest("name", "required")
        volume = check_volume_name(doc["name"])
        options = volume_options(doc)
        self._call(req, lambda c: c.create(volume, options))
        location = (("Location", _volume_url(plugin, volume)),)
        return Reply(201, encode(self._describe(plugin, volume)), JSON, location)

    def _describe(self, plugin: str, volume: str) -> dict[str, Any]:
        """The created volume as the plugin's Get reports it, else just its name."""
        try:
            return dict(self._commands.call(plugin, lambda c: c.get(volume)).to_json())
        except (PluginError, PluginNotReady, PluginBusy, UnknownPlugin) as err:
            _log.info("control_get_after_create_failed", plugin=plugin, volume=volume,
                      error=str(err))
            return {"name": volume}

    def volume(self, req: Request) -> Reply:
        volume = check_volume_name(req.params["volume"], "volume")
        found = self._call(req, lambda c: c.get(volume))
        return json_reply(200, found.to_json())

    def remove_volume(self, req: Request) -> Reply:
        volume = check_volume_name(req.params["volume"], "volume")
        self._call(req, lambda c: c.remove(volume))
        return Reply(204, b"", None)

    def volume_path(self, req: Request) -> Reply:
        volume = check_volume_name(req.params["volume"], "volume")
        mountpoint = self._call(req, lambda c: c.path(volume))
        return json_reply(200, {"mountpoint": mountpoint})

    def mount(self, req: Request) -> Reply:
        volume = check_volume_name(req.params["volume"], "volume")
        ident = mount_id(read_json_object(req.body, req.content_length))
        mountpoint = self._call(req, lambda c: c.mount(volume, ident))
        return json_reply(200, {"mountpoint": mountpoint})

    def unmount(self, req: Request) -> Reply:
        volume = check_volume_name(req.params["volume"], "volume")
        ident = mount_id(read_json_object(req.body, req.content_length))
        self._call(req, lambda c: c.unmount(volume, ident))
        return Reply(204, b"", None)


def _volume_url(plugin: str, volume: str) -> str:
    quote = urllib.parse.quote
    return f"/v1/plugins/{quote(plugin, safe='')}/volumes/{quote(volume, safe='')}"


def _openapi_bytes() -> bytes:
    return resources.files("volplugd.control").joinpath("openapi.json").read_bytes()


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 description served at ``GET /openapi.json``."""
    doc: dict[str, Any] = json.loads(_openapi_bytes())
    return doc


def make_app(commands: Commands, *, metrics: Callable[[], tuple[bytes, str]] | None,
             on_request: Callable[[str, int], None] | None = None, version: str,
             started_at: float, access: AccessPolicy, probe_timeout: float = 10.0,
             rescan_timeout: float = 10.0,
             clock: Callable[[], float] = time.time) -> App:
    """The control API. ``started_at`` is a reading of ``clock`` (``time.time()``).

    ``on_request(route, status)`` is told each answer; ``route`` is a template such as
    "/v1/plugins/{name}" or "unmatched", so its values are bounded.
    """
    return ControlApp(commands, metrics=metrics, on_request=on_request, version=version,
                      started_at=started_at, access=access, probe_timeout=probe_timeout,
                      rescan_timeout=rescan_timeout, clock=clock)


class _MetricsApp(App):
    """The TCP listener's app: ``/metrics`` and ``/`` (unless the page is off), GET and
    HEAD only."""

    def __init__(self, metrics: Callable[[], tuple[bytes, str]],
                 status_page: Callable[[], bytes] | None,
                 on_request: Callable[[str, int], None] | None):
        self._metrics = metrics
        self._status_page = status_page
        routes: dict[str, dict[str, Handler]] = {"/metrics": {"GET": self.metrics}}
        if status_page is not None:
            routes["/"] = {"GET": self.index}
        super().__init__(routes, on_request, error_reply)

    def metrics(self, req: Request) -> Reply:
        body, content_type = self._metrics()
        return raw_reply(200, body, content_type)

    def index(self, req: Request) -> Reply:
        assert self._status_page is not None  # routed only then
        return Reply(200, self._status_page(), "text/html; charset=utf-8", STATUS_PAGE_HEADERS)


# The status page shows untrusted text (plugin names, errors): no script may ever run.
STATUS_PAGE_HEADERS = (
    ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'"),
    ("X-Content-Type-Options", "nosniff"),
)


def make_metrics_app(metrics: Callable[[], tuple[bytes, str]],
                     status_page: Callable[[], bytes] | None,
                     on_request: Callable[[str, int], None] | None = None) -> App:
    """What the TCP metrics listener serves; nothing here can change state.
    ``status_page`` None: no HTML page, ``/`` is 404 ``not_found``."""
    return _MetricsApp(metrics, status_page, on_request)
