"""A reusable fake Docker volume plugin for tests (real HTTP on a real unix socket).

    from tests.fakeplugin import FakePlugin, behaviours as b
    with FakePlugin(sock_path) as fp:
        fp.set("/VolumeDriver.Create", b.ErrOn200("boom"))
        ...
        fp.requests[-1].raw   # the exact bytes received

Also a script: ``python -m tests.fakeplugin SOCKET [--behave ENDPOINT=SPEC]...``.
"""

from __future__ import annotations

from tests.fakeplugin import behaviours
from tests.fakeplugin.server import DEFAULT_CONTENT_TYPE, FakePlugin, Recorded

__all__ = ["DEFAULT_CONTENT_TYPE", "FakePlugin", "Recorded", "behaviours"]
