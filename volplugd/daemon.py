"""The composition root: build every part, start them in order, turn signals into
messages, and stop everything in reverse order.

Start order: metrics → supervisor (not yet running) → signal handlers → control
socket → TCP metrics listener → gateway → Podman drop-in writer → the supervisor loop on this
(the main) thread. READY=1 goes out from the loop once the first scan is reconciled and
every plugin found then has been tried; by then the sockets are bound.

Runs on: the main thread; signal handlers only enqueue.
"""

from __future__ import annotations

import grp
import os
import resource
import signal
import threading
import time
from collections.abc import Callable, Mapping
from types import FrameType

from volplugd import __version__, log
from volplugd.config import ConfigError, ControlSettings, Settings
from volplugd.contracts import Stop
from volplugd.control.app import AccessPolicy, make_app
from volplugd.control.server import ControlServer, TcpMetricsServer
from volplugd.gateway import Gateway, SpecFiles
from volplugd.metrics import Metrics
from volplugd.podman import DropinWriter, for_user
from volplugd.registry import Registry
from volplugd.statuspage import status_page
from volplugd.supervisor import Reload, Supervisor
from volplugd.systemd import Notifier, listen_fds

logger = log.get_logger(__name__)

STOP_JOIN = 1.0  # seconds each part gets to finish after it was told to stop


def run(settings: Settings, reload: Callable[[], Settings] | None = None) -> int:
    """Run the daemon until SIGTERM/SIGINT; returns the process exit code."""
    try:
        return Daemon(settings, reload).run()
    except ConfigError as err:
        logger.error("config_error", error=str(err))
        return 2


def access_policy(control: ControlSettings) -> AccessPolicy:
    """Group names from the config to gids; an unknown group is a config error."""
    def gids(key: str, names: tuple[str, ...]) -> frozenset[int]:
        try:
            return frozenset(grp.getgrnam(name).gr_gid for name in names)
        except KeyError as err:
            raise ConfigError(f"control.{key}", f"unknown group {err.args[0]}") from err
    return AccessPolicy(admin_gids=gids("admin_groups", control.admin_groups),
                        read_gids=gids("read_groups", control.read_groups))


class Daemon:
    """One volplugd process: every long-lived part and the order they live in."""

    def __init__(self, settings: Settings, reload: Callable[[], Settings] | None = None):
        self.settings = settings
        self._reload_settings = reload
        self.started_at = time.time()
        self.notifier = Notifier()
        self.registry = Registry()
        self.metrics = Metrics(self.registry.snapshot, version=__version__)
        interval = self.notifier.watchdog_interval
        self.supervisor = Supervisor(
            settings, self.registry, observer=self.metrics, reload=self._reload,
            heartbeat=None if interval is None else (interval, self.notifier.watchdog),
            on_status=self._report_status, on_started=self._on_started,
        )
        self._stoppers: list[tuple[str, Callable[[], None], Callable[[float], None]]] = []

    def run(self) -> int:
        raise_fd_limit()
        # Handlers first: a SIGHUP that arrives once the socket is visible must not kill us.
        previous = self._install_signals()
        threading.excepthook = _log_thread_crash
        try:
            self._start_servers()
        except BaseException as err:
            self._stop_all()
            _restore(previous)
            if not isinstance(err, OSError | ValueError):
                raise
            # A socket in use, a folder that cannot be created, a port taken, malformed
            # LISTEN_FDS from the service manager: one clear line, not a traceback.
            logger.error("startup_failed", error=str(err))
            return 1
        logger.info("volplugd_starting", version=__version__,
                    dirs=list(self.settings.discovery.dirs),
                    control_socket=self.settings.control.socket,
                    metrics_listen=self.settings.metrics.listen or None)
        try:
            self.supervisor.run()
        finally:
            self.notifier.stopping()
            logger.info("volplugd_stopping")
            self._stop_all()
            _restore(previous)
            self.notifier.close()
        logger.info("volplugd_stopped")
        return 0

    def _start_servers(self) -> None:
        inherited = listen_fds()
        control_sock = inherited.pop("control", None)
        if control_sock is None and len(inherited) == 1 and "metrics" not in inherited:
            control_sock = inherited.popitem()[1]
        access = access_policy(self.settings.control)
        app = make_app(self.supervisor, metrics=self.metrics.exposition,
                       on_request=self.metrics.control_request, version=__version__,
                       started_at=self.started_at, access=access)
        control = self.settings.control
        server = ControlServer(app, path=control.socket, mode=control.mode, group=control.group,
                               sock=control_sock, access=access,
                               on_refused=self.metrics.control_refused)
        self._start("control", server.start, server.stop, server.join)
        listen, metrics_sock = self.settings.metrics.listen, inherited.pop("metrics", None)
        if listen or metrics_sock is not None:
            tcp = TcpMetricsServer(self.metrics.exposition, self._status_page, listen=listen,
                                   sock=metrics_sock,
                                   show_status_page=self.settings.metrics.status_page)
            self._start("metrics", tcp.start, tcp.stop, tcp.join)
            logger.info("metrics_listening", host=tcp.host, port=tcp.port)
        gateway = self._gateway()
        if self.settings.podman.enabled:
            podman = for_user(self.settings.podman, os.getuid())
            route = gateway.socket_for if gateway and podman.via_gateway else None
            writer = DropinWriter(podman, self.registry.wait, route=route)
            self._start("podman", writer.start, writer.stop, writer.join)

    def _gateway(self) -> Gateway | None:
        """The gateway, started (before the drop-in writer: stopped after it, so the
        drop-in lists the plugins' own sockets again before the gateway's go away)."""
        settings = self.settings.gateway
        if not settings.enabled:
            return None
        specs = SpecFiles(settings.docker_spec_dir) if settings.docker_specs else None
        gateway = Gateway(settings, self.supervisor, self.registry.wait,
                          on_request=self.metrics.gateway_request, specs=specs,
                          on_refused=self.metrics.gateway_refused)
        self._start("gateway", gateway.start, gateway.stop, gateway.join)
        logger.info("gateway_listening", dir=settings.dir,
                    docker_specs=settings.docker_spec_dir if specs else None)
        return gateway

    def _start(self, name: str, start: Callable[[], None], stop: Callable[[], None],
               join: Callable[[float], None]) -> None:
        start()
        self._stoppers.append((name, stop, join))

    def _stop_all(self) -> None:
        """Stop in reverse start order; nobody waits on a hung plugin call."""
        while self._stoppers:
            name, stop, join = self._stoppers.pop()
            try:
                stop()
                join(STOP_JOIN)
            except Exception:  # one part failing to stop must not keep the others running
                logger.exception("stop_failed", part=name)

    def _install_signals(self) -> dict[int, Callable[[int, FrameType | None], object] | int]:
        def enqueue(message: object) -> Callable[[int, FrameType | None], None]:
            return lambda signum, frame: self.supervisor.put(message)
        previous = {}
        for signum, message in ((signal.SIGTERM, Stop()), (signal.SIGINT, Stop()),
                                (signal.SIGHUP, Reload())):
            previous[signum] = signal.signal(signum, enqueue(message))
        return {s: h for s, h in previous.items() if h is not None}

    # --- callbacks from the supervisor loop ---------------------------------------

    def _on_started(self) -> None:
        counts = self.registry.snapshot().counts
        self.notifier.ready(_status_text(counts))
        logger.info("volplugd_ready", **dict(counts))

    def _report_status(self, counts: Mapping[str, int]) -> None:
        """Counts changed (the supervisor sends at most one a second)."""
        self.notifier.status(_status_text(counts))

    def _reload(self) -> Settings | None:
        if self._reload_settings is None:
            return None
        self.notifier.reloading()
        try:
            new = self._reload_settings()
        except ConfigError as err:
            logger.error("config_reload_failed", error=str(err))
            return None
        finally:
            self.notifier.ready()
        log.configure(new.log.format, new.log.level)
        unchanged = ("control", "metrics", "podman", "gateway")
        for key in unchanged:
            if getattr(new, key) != getattr(self.settings, key):
                logger.warning("config_needs_restart", section=key)
        self.settings = new
        return new

    def _status_page(self) -> bytes:
        return status_page(self.registry.snapshot(), __version__)


def raise_fd_limit() -> tuple[int, int]:
    """Raise the descriptor soft limit to the hard limit (every plugin may hold a few);
    log both. Refused (EPERM: the unit's seccomp filter denies @resources, and the unit
    sets LimitNOFILE= itself), the limit stays as it is. Returns (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (OSError, ValueError) as err:
            logger.warning("fd_limit_not_raised", soft=soft, hard=hard, error=str(err))
    logger.info("fd_limit", soft=soft, hard=hard)
    return soft, hard


def _restore(previous: Mapping[int, Callable[[int, FrameType | None], object] | int]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def _status_text(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{n} {state}" for state, n in counts.items())


def _log_thread_crash(args: threading.ExceptHookArgs) -> None:
    name = args.thread.name if args.thread is not None else "?"
    logger.critical("thread_crashed", thread=name, error=repr(args.exc_value),
                    exc_info=(args.exc_type, args.exc_value, args.exc_traceback))
