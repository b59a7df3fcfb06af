"""``Metrics``: the daemon's Observer with its Prometheus exposition.

``exposition()`` answers a scrape: the text format 0.0.4 from ``render`` (cached
per-plugin fragments) after the process/platform/GC collectors, or OpenMetrics from the
registry (``collect``) for a client that accepts only that.

Runs on: the Observer methods wherever they are called (see ``observer``);
``exposition()`` on the control and metrics HTTP threads.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.openmetrics import exposition as openmetrics

from volplugd.metrics.collect import RegistryCollector
from volplugd.metrics.observer import Observations, Taken
from volplugd.metrics.render import TextRenderer
from volplugd.model import Snapshot

__all__ = ["Metrics"]


class Metrics(Observations):
    """The daemon's Observer and its exposition (see the module docstring).

    No ``_created`` series: the families here have none, and nothing flips
    prometheus_client's process-wide switch; ``registry`` is for these collectors.
    """

    def __init__(self, snapshot: Callable[[], Snapshot], *, version: str,
                 registry: CollectorRegistry | None = None, watcher_up: bool = False):
        super().__init__(watcher_up=watcher_up)
        self._snapshot = snapshot
        self._version = version
        self._text = TextRenderer()
        # The process/platform/GC collectors are cheap; generate_latest() writes them.
        self._runtime = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self._runtime)
        PlatformCollector(registry=self._runtime)
        GCCollector(registry=self._runtime)
        self.registry = registry if registry is not None else CollectorRegistry()
        self.registry.register(self._runtime)
        self.registry.register(RegistryCollector(self._take_now, version))

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """One scrape: (body, content type). Text format 0.0.4 unless the client accepts
        only OpenMetrics (Prometheus accepts text too, and text is the fast path)."""
        if _only_openmetrics(accept):
            body: bytes = openmetrics.generate_latest(self.registry)  # type: ignore[no-untyped-call]
            return body, openmetrics.CONTENT_TYPE_LATEST
        runtime: bytes = generate_latest(self._runtime)
        body = self._text.render(self._take_now(), self._version, head=runtime)
        return body, CONTENT_TYPE_PLAIN_0_0_4

    def _take_now(self) -> Taken:
        return self.take(self._snapshot())


def _only_openmetrics(accept: str | None) -> bool:
    types = {part.split(";")[0].strip().lower() for part in (accept or "").split(",")}
    return ("application/openmetrics-text" in types
            and not types & {"text/plain", "text/*", "*/*"})
