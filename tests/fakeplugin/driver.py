"""The fake plugin's normal answers: an in-memory Docker volume driver.

Speaks the legacy (v1) volume plugin protocol: each endpoint maps a JSON request to
``(status, JSON object)``. Errors use status 500 and ``{"Err": ...}`` like Docker's
go-plugins-helpers sdk (use the ErrOn200 behaviour for plugins that answer 200).

Runs on: the fake plugin's connection threads; one lock guards ``volumes``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["ERR_STATUS", "VolumeDriver"]

ERR_STATUS = 500
Answer = tuple[int, dict[str, Any]]


class VolumeDriver:
    """Volumes kept in ``volumes``: name -> {"Mountpoint", "CreatedAt", "Opts"}."""

    def __init__(self, implements: Iterable[str], scope: str, mount_root: str) -> None:
        self.implements = list(implements)
        self.scope = scope
        self.mount_root = mount_root.rstrip("/")
        self.volumes: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._routes: dict[str, Callable[[bytes], Answer]] = {
            "/Plugin.Activate": lambda _: (200, {"Implements": list(self.implements)}),
            "/VolumeDriver.Capabilities": lambda _: (200, {"Capabilities": {"Scope": self.scope}}),
            "/VolumeDriver.List": lambda _: (200, {"Volumes": self._list(), "Err": ""}),
            "/VolumeDriver.Create": self._named(self._create),
            "/VolumeDriver.Remove": self._named(self._remove),
            "/VolumeDriver.Get": self._named(self._get),
            "/VolumeDriver.Path": self._named(self._mountpoint),
            "/VolumeDriver.Mount": self._named(self._mountpoint),
            "/VolumeDriver.Unmount": self._named(self._unmount),
        }

    def answer(self, endpoint: str, body: bytes) -> Answer | None:
        """The normal answer to a request, or None for an endpoint a driver lacks."""
        route = self._routes.get(endpoint)
        return None if route is None else route(body)

    def _named(self, action: Callable[[str, dict[str, Any]], Answer]) -> Callable[[bytes], Answer]:
        """Wrap an action that needs the request's "Name" (a 400 without one, like the sdk)."""
        def run(body: bytes) -> Answer:
            try:
                request = json.loads(body or b"null")
            except ValueError as err:
                return 400, {"Err": f"invalid JSON request body: {err}"}
            if not isinstance(request, dict) or not isinstance(request.get("Name"), str):
                return 400, {"Err": "request body needs a string Name"}
            with self._lock:
                return action(request["Name"], request)
        return run

    def _create(self, name: str, request: dict[str, Any]) -> Answer:
        opts = request.get("Opts")
        if name not in self.volumes:  # idempotent: a second Create keeps the first Opts
            self.volumes[name] = {
                "Mountpoint": f"{self.mount_root}/{name}",
                "CreatedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "Opts": dict(opts) if isinstance(opts, dict) else {},
            }
        return 200, {"Err": ""}

    def _remove(self, name: str, _: dict[str, Any]) -> Answer:
        if self.volumes.pop(name, None) is None:
            return _no_such(name)
        return 200, {"Err": ""}

    def _get(self, name: str, _: dict[str, Any]) -> Answer:
        volume = self.volumes.get(name)
        if volume is None:
            return _no_such(name)
        return 200, {"Volume": {"Name": name, "Mountpoint": volume["Mountpoint"],
                                "CreatedAt": volume["CreatedAt"], "Status": {}}, "Err": ""}

    def _mountpoint(self, name: str, _: dict[str, Any]) -> Answer:
        volume = self.volumes.get(name)
        if volume is None:
            return _no_such(name)
        return 200, {"Mountpoint": volume["Mountpoint"], "Err": ""}

    def _unmount(self, name: str, _: dict[str, Any]) -> Answer:
        return (200, {"Err": ""}) if name in self.volumes else _no_such(name)

    def _list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{"Name": name, "Mountpoint": v["Mountpoint"], "CreatedAt": v["CreatedAt"]}
                    for name, v in sorted(self.volumes.items())]


def _no_such(name: str) -> Answer:
    return ERR_STATUS, {"Err": f"{name}: no such volume"}
